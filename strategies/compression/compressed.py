"""Compressed: the server side of update compression, wrapping any strategy.

Uplink. ``configure_train`` adds the codec settings to the TRAIN config (the
client mod fedsim/app/compression_mod.py encodes with them, keeping its
error-feedback residual in its own context). ``aggregate_train`` decodes each
reply's ``compressed`` record into the dense reply the inner strategy expects
(weights = the global model sent + the decoded delta; FedSGD: the decoded
gradient), so FedAvg, selectors and validation run unchanged.

Downlink (``downlink=True``, STC's two-way form). The global model becomes what
clients can rebuild: after the inner strategy aggregates, the change of the
global model (plus the server's residual) is encoded once per round, and
w~_t = w~_{t-1} + decode(code_t) is the model everyone, the server's evaluation
included, uses. A client selected in round t that last synced after round s
gets the codes of rounds s+1 .. t-1 (or the dense model, if that is smaller or
it never synced) and rebuilds w~_{t-1} from the copy in its context.

Placed inside the byte meter and the recorder: both see the compressed
messages that really travel. Logs per round: the compression ratio of the
uplink (dense reply bytes / compressed reply bytes, both measured), mean client
encode time and server decode time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.compression.codecs import Codec, decode_update, encode_update, from_settings
from fedsim.records.round_log import RoundLog
from fedsim.records.wire import array_view, numpy_array, payload_bytes, to_array_record, to_numpy_dict
from fedsim.rng import derive
from strategies.wrappers.base import StrategyWrapper

COMPRESSED = "compressed"  # reply record holding the encoded update
DOWNLINK = "downlink"  # TRAIN record holding the global-model codes


def blob_array(data: bytes) -> ArrayRecord:
    """An encoded update as one uint8 array (one npy header of overhead)."""
    return ArrayRecord({"update": numpy_array(np.frombuffer(data, dtype=np.uint8))}, keep_input=True)


def blob_bytes(record: ArrayRecord, key: str = "update") -> bytes:
    return array_view(record[key]).tobytes()


def layout_of(tensors: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype), in order: what decode_update needs."""
    return {k: (v.shape, v.dtype) for k, v in tensors.items()}


def decode_reply(codec: Codec, content: RecordDict, layout, reference: dict[str, np.ndarray]) -> RecordDict:
    """The dense reply (record ``arrays``) a compressed reply stands for; other records kept.
    reference: the global weights the client was sent. Raises ValueError if undecodable."""
    delta = decode_update(codec, blob_bytes(content[COMPRESSED]), layout)
    meta = content["meta"] if "meta" in content.config_records else ConfigRecord()
    if str(meta.get("payload", "weights")) == "gradient":
        dense = delta
    else:
        dense = {k: (reference[k] + v).astype(reference[k].dtype) if np.issubdtype(v.dtype, np.floating)
                 else v for k, v in delta.items()}
    out = RecordDict({"arrays": to_array_record(dense)})
    for key, record in content.array_records.items():  # e.g. SCAFFOLD's dc_i, sent dense
        if key != COMPRESSED:
            out[key] = record
    for key, record in content.metric_records.items():
        out[key] = record
    for key, record in content.config_records.items():
        out[key] = record
    return out


class Compressed(StrategyWrapper):
    checkpointed = ("_view", "_server_residual", "_codes", "_synced")  # the downlink's state

    def __init__(self, inner: Strategy, settings: dict, *, seed: int, log_book: RoundLog,
                 downlink: bool = False) -> None:
        """settings: the codec keys of the run config (fedsim.compression.codecs.codec_settings)."""
        super().__init__(inner)
        self.codec, self.error_feedback = from_settings(settings)
        if self.codec is None:
            raise ValueError("Compressed needs a codec (compression != 'none')")
        self.settings = dict(settings)
        self.seed, self.log_book, self.downlink = seed, log_book, downlink
        self._sent: ArrayRecord | None = None  # global model of the current round (dense)
        # downlink state
        self._view: dict[str, np.ndarray] | None = None  # w~: what clients rebuild
        self._server_residual: dict[str, np.ndarray] = {}
        self._codes: dict[int, bytes] = {}  # round -> code of w~_r - w~_{r-1}
        # partition id -> round r whose w~_r that client holds (partition ids, not node ids: they
        # are what a resumed run's fresh nodes share with the checkpoint)
        self._synced: dict[int, int] = {}

    @property
    def metric_columns(self) -> list[str]:
        return list(getattr(self.inner, "metric_columns", [])) + ["compression_ratio", "encode_s", "decode_s"]

    # -- downlink ------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        for key, value in self.settings.items():
            config[key] = value
        config["downlink"] = self.downlink
        self._sent = arrays
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if not self.downlink:
            return messages
        if self._view is None:
            self._view = {k: v.copy() for k, v in to_numpy_dict(arrays).items()}
        dense_size = payload_bytes(RecordDict({"arrays": arrays}))
        return [self._downlink_message(m, server_round, dense_size) for m in messages]

    def _downlink_message(self, message: Message, server_round: int, dense_size: int) -> Message:
        client = self._partition_of(message.metadata.dst_node_id)
        base = self._synced.get(client)
        self._synced[client] = server_round - 1
        if base is None or base >= server_round - 1:
            return message  # never synced: the dense model (already up to date: idem)
        rounds = [r for r in range(base + 1, server_round) if r in self._codes]
        if sum(len(self._codes[r]) for r in rounds) >= dense_size:
            return message
        content = message.content
        codes = ArrayRecord({f"round-{r}": numpy_array(np.frombuffer(self._codes[r], np.uint8))
                             for r in rounds}, keep_input=True)
        config = ConfigRecord(dict(content["config"]))
        config["downlink-base"] = base
        out = RecordDict({DOWNLINK: codes, "config": config})
        for key, record in content.array_records.items():  # e.g. SCAFFOLD's control variate, sent dense
            if key != "arrays":
                out[key] = record
        message.content = out
        return message

    def _partition_of(self, node_id: int) -> int:
        info = self.clients.get(node_id)  # the registry of the strategy inside
        return info.partition_id if info is not None else -node_id - 1

    def _compress_global(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """w~_t = w~_{t-1} + C(w_t - w~_{t-1} + e), e <- the rest."""
        new = to_numpy_dict(arrays)
        delta = {k: new[k].astype(np.float32) - self._view[k] if np.issubdtype(new[k].dtype, np.floating)
                 else new[k] for k in new}
        rng = derive(self.seed, "downlink", server_round) if self.codec.needs_rng else None
        code, sent = encode_update(self.codec, delta, rng=rng,
                                   residual=self._server_residual if self.error_feedback else None)
        self._codes[server_round] = code
        for k, v in sent.items():
            if np.issubdtype(v.dtype, np.floating):
                self._view[k] = (self._view[k] + v).astype(self._view[k].dtype)
            else:
                self._view[k] = np.array(v, copy=True)
        oldest = min(self._synced.values(), default=server_round)
        self._codes = {r: c for r, c in self._codes.items() if r > oldest}  # nobody needs older codes
        return to_array_record(self._view)

    # -- uplink ----------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        reference = to_numpy_dict(self._sent)
        layout = layout_of(reference)
        sizes = {"compressed": 0, "dense": 0, "decode_s": 0.0}
        encode_s: list[float] = []

        def decoded(stream: Iterable[Message]):  # each reply decoded as it passes (a stream)
            for reply in stream:
                self._decode(server_round, reply, layout, reference, sizes, encode_s)
                yield reply

        arrays, metrics = self.inner.aggregate_train(server_round, decoded(replies))
        self.log_book.record(server_round, decode_s=sizes["decode_s"],
                             encode_s=float(np.mean(encode_s)) if encode_s else 0.0,
                             compression_ratio=sizes["dense"] / sizes["compressed"] if sizes["compressed"] else 1.0)
        if self.downlink and arrays is not None:
            arrays = self._compress_global(server_round, arrays)
        return arrays, metrics

    def _decode(self, server_round: int, reply: Message, layout, reference: dict[str, np.ndarray],
                sizes: dict, encode_s: list[float]) -> None:
        """Replace a compressed reply's content by the dense update it codes (in place)."""
        t0 = time.perf_counter()
        if self.downlink and reply.has_error():
            self._synced.pop(self._partition_of(reply.metadata.src_node_id), None)  # its copy may be stale: resend dense
        if reply.has_error() or COMPRESSED not in reply.content.array_records:
            return
        size = payload_bytes(reply.content)
        meta = reply.content["meta"] if "meta" in reply.content.config_records else {}
        try:
            reply.content = decode_reply(self.codec, reply.content, layout, reference)
        except ValueError as err:  # the inner strategy rejects the undecoded reply
            log(WARNING, "round %d: reply from node %d not decoded: %s",
                server_round, reply.metadata.src_node_id, err)
            return
        sizes["compressed"] += size
        sizes["dense"] += payload_bytes(reply.content)
        encode_s.append(float(meta.get("encode-s", 0.0)))
        sizes["decode_s"] += time.perf_counter() - t0

