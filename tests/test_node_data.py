"""A SuperNode's own data (node config data-dir) and `fedsim split-data`, which writes
the run's partition as one data-dir per node; the server's checks of what nodes declare.

One split of digits (3 clients, Dirichlet alpha 0.1, so nodes miss classes) is written
once per module; everything else reads it back. No Flower process is started.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict

from fedsim.app import client_app
from fedsim.app.node_data import NodeDataError, client_id, node_workspace
from fedsim.cli import main as cli
from fedsim.config import RunConfig
from fedsim.data.clients import dataset, run_partition
from fedsim.data.datasets import DataError, load_dataset, load_local
from fedsim.data.split import split_data, summary
from fedsim.models.workspace import workspace
from strategies import client_registry
from strategies.client_registry import ClientInfo, check_classes, discover_clients

SPLIT = RunConfig(num_clients=3, clients_per_round=3, partition_alpha=0.1, model="cnn", local_epochs=1)
NO_DATA = ("this SuperNode's node config has neither data-dir=<directory of its own data> nor "
           "partition-id=<k> [num-partitions=<n>]; start it with --node-config 'data-dir=\"/path/to/data\"'")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "data"
    return split_data(SPLIT, out)


def folder_cfg(split, **changes) -> RunConfig:
    """The run the summary tells the user to start on the written data."""
    return SPLIT.replace(dataset="folder", dataset_path=str(split.out / "server"), image_size=split.image_size,
                         **changes)


def context(node_config: dict, cfg: RunConfig, node_id: int = 4242) -> Context:
    return Context(run_id=1, node_id=node_id, node_config=node_config, state=RecordDict(),
                   run_config=cfg.to_flwr())


def hist(labels: np.ndarray, n: int = 10) -> list[int]:
    return np.bincount(labels, minlength=n).tolist()


# --- split-data ---

def test_split_data_round_trip(split):
    train = dataset(SPLIT, "train")
    parts = run_partition(SPLIT, train.labels)
    assert split.node_sizes == [len(p) for p in parts] and split.image_size == 8
    node = load_local("folder", split.out / "node-0", image_size=8)
    assert node.num_classes == 10 and node.shape == (3, 8, 8)
    assert hist(node.labels) == hist(train.labels[parts[0]])
    assert 0 in hist(node.labels)  # empty class directories are read as classes held by nobody here
    order = parts[0][np.lexsort((parts[0], train.labels[parts[0]]))]  # files sort by (class, index)
    want = train.images[order][:, 0].numpy()
    for c in range(3):  # grayscale PNG read as RGB: all channels equal the original value
        np.testing.assert_allclose(node.images[:, c].numpy(), want, atol=1 / 127.5 + 1e-6)
    for s in ("train", "test"):
        server = load_dataset("folder", s, str(split.out / "server"), 8)
        assert hist(server.labels) == hist(dataset(SPLIT, s).labels)


def test_split_data_summary_names_node_and_run_config(split):
    text = "\n".join(summary(split))
    assert f"node-0 {split.node_sizes[0]}" in text
    assert f"--node-config 'data-dir=\"{split.out}/node-<k>\" client-id=<k>'" in text
    assert f'dataset = "folder"  dataset-path = "{split.out}/server"  image-size = 8' in text


def test_split_data_cli_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    code = cli.main(["split-data", "--set", "num-clients=3", "--set", "clients-per-round=3", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err == f"fedsim: error: --out {tmp_path} exists and is not an empty folder; choose a new one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# --- load_local ---

def test_load_local_refuses_bundled_unknown_and_missing(tmp_path):
    with pytest.raises(DataError, match="dataset 'digits' ships with fedsim and is not read from a node's data-dir"):
        load_local("digits", tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_local("nope", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_local("folder", tmp_path / "missing")
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no .* images"):  # empty class directories only: no data at all
        load_local("folder", tmp_path)


def test_load_local_reads_train_subfolder(split, tmp_path):
    (tmp_path / "train").symlink_to(split.out / "node-1", target_is_directory=True)
    assert hist(load_local("folder", tmp_path, 8).labels) == hist(load_local("folder", split.out / "node-1", 8).labels)


# --- node config -> workspace ---

def test_data_dir_node_trains_on_all_its_data(split):
    cfg = folder_cfg(split)
    got_cfg, ws, cid = node_workspace(context({"data-dir": str(split.out / "node-1"), "client-id": 1}, cfg))
    train = dataset(SPLIT, "train")
    assert got_cfg == cfg and cid == 1 and list(ws.parts) == [1]
    assert ws.label_hist(1).tolist() == hist(train.labels[run_partition(SPLIT, train.labels)[1]])
    assert len(ws.forget[1]) == 0
    images, labels = ws.client_data(1)
    assert images.shape == (split.node_sizes[1], 3, 8, 8) and len(labels) == split.node_sizes[1]
    _, _, cid = node_workspace(context({"data-dir": str(split.out / "node-1")}, cfg, node_id=4242))
    assert cid == 4242  # no client-id: the node id


def test_data_dir_node_applies_the_forget_request(split):
    cfg = folder_cfg(split, forget_class=0, forget_clients="2")
    _, ws, _ = node_workspace(context({"data-dir": str(split.out / "node-0"), "client-id": 0}, cfg))
    whole = load_local("folder", split.out / "node-0", 8)
    assert 0 not in ws.train.labels[ws.parts[0]] and set(ws.train.labels[ws.forget[0]]) == {0}
    assert len(ws.forget[0]) == hist(whole.labels)[0] and len(ws.parts[0]) + len(ws.forget[0]) == len(whole)
    _, ws, _ = node_workspace(context({"data-dir": str(split.out / "node-2"), "client-id": 2}, cfg))
    assert len(ws.parts[2]) == 0 and len(ws.forget[2]) == split.node_sizes[2]  # forget-clients names client ids


def test_partition_id_node_is_the_simulation(split):
    _, ws, pid = node_workspace(context({"partition-id": 2, "num-partitions": 3}, SPLIT))
    assert pid == 2 and ws is workspace(SPLIT)
    np.testing.assert_array_equal(ws.parts[2], workspace(SPLIT).parts[2])
    cfg, _, _ = node_workspace(context({"partition-id": 1, "num-partitions": 2}, SPLIT))
    assert cfg.num_clients == 2 and cfg.clients_per_round == 2  # num-partitions overrides num-clients


def test_node_config_errors_are_one_line(split):
    with pytest.raises(NodeDataError) as err:
        node_workspace(context({}, SPLIT))
    assert str(err.value) == NO_DATA
    with pytest.raises(NodeDataError, match=r"^partition-id=3 is outside 0\.\.2 "):
        node_workspace(context({"partition-id": 3, "num-partitions": 3}, SPLIT))
    with pytest.raises(NodeDataError, match="client-id must be a whole number"):
        node_workspace(context({"data-dir": str(split.out / "node-0"), "client-id": "x"}, folder_cfg(split)))
    with pytest.raises(DataError, match="dataset 'digits' ships with fedsim"):
        node_workspace(context({"data-dir": str(split.out / "node-0")}, SPLIT))
    with pytest.raises(DataError, match=r"^folder data-dir: path .*nowhere does not exist [^\n]*$"):
        node_workspace(context({"data-dir": str(split.out / "nowhere")}, folder_cfg(split)))


def test_client_id_prefers_partition_then_client_id_then_node():
    ctx = lambda nc: SimpleNamespace(node_id=77, node_config=nc)  # noqa: E731
    assert client_id(ctx({"partition-id": 3, "client-id": 5})) == 3
    assert client_id(ctx({"data-dir": "/d", "client-id": "5"})) == 5
    assert client_id(ctx({"data-dir": "/d"})) == 77


@pytest.mark.usefixtures("task_identity")
def test_query_reply_of_a_data_dir_node(split):
    cfg = folder_cfg(split)
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 0})}), dst_node_id=4242,
                  message_type=MessageType.QUERY)
    info = client_app.query(msg, context({"data-dir": str(split.out / "node-2"), "client-id": 2}, cfg)).content["info"]
    assert info["partition-id"] == 2 and info["num-examples"] == split.node_sizes[2]
    assert len(info["label-hist"]) == 10 and info["num-forget"] == 0


# --- server side ---

def test_check_classes_names_clients_and_both_counts():
    ok = {n: ClientInfo(n, p, 5, np.ones(10, np.int64)) for n, p in ((11, 0), (12, 1))}
    check_classes(ok, 10)
    bad = {**ok, 13: ClientInfo(13, 7, 5, np.ones(9, np.int64))}
    with pytest.raises(RuntimeError) as err:
        check_classes(bad, 10)
    assert str(err.value) == ("client 7 declares 9 classes, but the server's test set has 10; "
                              "every node's data-dir must hold the same class directories")


class FakeGrid:
    def __init__(self, node_ids, answer):
        self.node_ids, self.answer = node_ids, answer

    def get_node_ids(self):
        return self.node_ids

    def send_and_receive(self, messages, timeout=None):
        return [self.answer(m) for m in messages]


@pytest.mark.usefixtures("task_identity")
def test_discovery_logs_error_reasons(monkeypatch):
    logged = []
    monkeypatch.setattr(client_registry, "log", lambda level, fmt, *args: logged.append((level, fmt % args)))

    def answer(m):
        if m.metadata.dst_node_id == 20:
            return Message(Error(code=0, reason=f"<class 'NodeDataError'>:<'{NO_DATA}'>"), reply_to=m)
        info = ConfigRecord({"partition-id": 0, "num-examples": 5, "label-hist": [4, 1]})
        return Message(RecordDict({"info": info}), reply_to=m)

    assert set(discover_clients(FakeGrid([10, 20], answer))) == {10}
    assert len(logged) == 1 and logged[0][0] == 30  # WARNING
    assert logged[0][1].startswith("discovery: node 20 left out: <class 'NodeDataError'>:<'this SuperNode's")
    with pytest.raises(RuntimeError, match=r"no client answered the discovery query; first reason: .*neither data-dir"):
        discover_clients(FakeGrid([20], answer))
    with pytest.raises(RuntimeError, match=r"no client answered the discovery query \(no node is connected\)"):
        discover_clients(FakeGrid([], answer))
