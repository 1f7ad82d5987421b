"""Record what the server observes, for chosen clients and rounds.

A wrapper: ``configure_train`` remembers the global weights and config sent in
the round; ``aggregate_train`` stores each chosen client's reply as an
Observation (fedsim/records/observations.py) before passing the replies on unchanged.
Placed inside the byte meter and outside any decoder, it records exactly what
arrived: a compressed update is stored as its bytes and as the dense update the
server decodes from them (what the attacks read).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.compression.codecs import from_settings
from fedsim.records.observations import Observation, save
from fedsim.records.wire import to_numpy_dict, to_state_dict
from strategies.client_registry import ClientInfo
from strategies.compression.compressed import COMPRESSED, blob_bytes, decode_reply, layout_of
from strategies.wrappers.base import StrategyWrapper


class Recording(StrategyWrapper):
    def __init__(self, inner: Strategy, root: Path, clients: dict[int, ClientInfo], *,
                 partitions: set[int] | None = None, rounds: set[int] | None = None,
                 codec_settings: dict | None = None) -> None:
        """partitions / rounds: which to record (None: all); codec_settings: the run's
        compression keys, to decode compressed replies (fedsim.compression.codecs.codec_settings)."""
        super().__init__(inner)
        self.codec = from_settings(codec_settings)[0] if codec_settings else None
        self.root, self.registry = Path(root), clients
        self.partitions, self.rounds = partitions, rounds
        self._sent: dict[int, tuple[ArrayRecord, dict]] = {}

    def _wanted(self, server_round: int, partition_id: int | None = None) -> bool:
        if self.rounds is not None and server_round not in self.rounds:
            return False
        return partition_id is None or self.partitions is None or partition_id in self.partitions

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if self._wanted(server_round) and messages:
            sent_config = dict(messages[0].content["config"]) if "config" in messages[0].content else {}
            self._sent = {server_round: (arrays, sent_config)}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if server_round not in self._sent:
            return self.inner.aggregate_train(server_round, replies)
        arrays, config = self._sent.pop(server_round)
        return self.inner.aggregate_train(server_round, self._recorded(server_round, replies, arrays, config))

    def _recorded(self, server_round: int, replies: Iterable[Message], arrays: ArrayRecord,
                  config: dict) -> Iterable[Message]:
        """Each reply saved as it passes (a stream), then passed on unchanged."""
        sent = to_state_dict(arrays)
        reference = to_numpy_dict(arrays)  # zero-copy views, shared by every reply of the round
        for reply in replies:
            info = self.registry.get(reply.metadata.src_node_id)
            if not reply.has_error() and info is not None and self._wanted(server_round, info.partition_id):
                self._save(server_round, info.partition_id, reply, sent, reference, config)
            yield reply

    def _save(self, server_round: int, partition_id: int, reply: Message, sent: dict, reference: dict,
              config: dict) -> None:
        content, encoded = reply.content, None
        if COMPRESSED in content.array_records and self.codec is not None:
            encoded = blob_bytes(content[COMPRESSED])
            content = decode_reply(self.codec, content, layout_of(reference), reference)
        meta = dict(content["meta"]) if "meta" in content.config_records else {}
        save(Observation(server_round=server_round, partition_id=partition_id, sent=sent,
                         received=to_state_dict(content["arrays"]),
                         codec=str(meta.get("codec", "")), encoded=encoded,
                         payload=str(meta.get("payload", "weights")),
                         num_examples=int(content["metrics"]["num-examples"]),
                         metrics={**dict(content["metrics"]),
                                  **({"steps": int(meta["steps"])} if "steps" in meta else {})},
                         config=config), self.root)
