"""The server side of unlearning (strategies/unlearning/protocol.py, strategies/unlearning/federaser.py) and
the ``fedsim unlearn`` driver's configs: rounds driven in one process through the real
strategy stack with fake clients whose updates are known."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsim.config import ConfigError, RunConfig
from fedsim.records.ledger import LedgerWriter, load_ledger
from fedsim.records.round_log import RoundLog
from fedsim.records.wire import to_numpy_dict
from fedsim.rng import derive
from fedsim.unlearning.mask import combine_masks, pack_each, pack_mask, top_share, unpack_each, unpack_mask
from strategies import build_strategy
from strategies.client_registry import ClientInfo
from strategies.selection.selectors import RandomSelector
from strategies.unlearning.federaser import calibrate, calibration_rounds, start_model
from strategies.unlearning.protocol import HolderSelector, UnlearningPlan

pytestmark = pytest.mark.usefixtures('task_identity')

N = 4
SHAPES = {"w": (8, 6), "b": (6,)}
W0 = {k: np.random.default_rng(0).normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def clients(num_forget=(0, 0, 0, 0), num_examples=(10, 11, 12, 13)):
    return {200 + p: ClientInfo(200 + p, p, num_examples[p], np.zeros(2, np.int64), num_forget[p])
            for p in range(N)}


class FakeGrid:
    def __init__(self, ids):
        self.ids = list(ids)

    def get_node_ids(self):
        return self.ids


def step(pid: int, rnd: int, scale: float = 0.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 * rnd + pid + int(1000 * scale))
    return {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


def drive(cfg: RunConfig, infos: dict, rounds: int, reply=None):
    """reply(msg, pid, rnd, sent) -> content; default: weights = sent + step(pid, rnd)."""
    log = RoundLog()
    strategy = build_strategy(cfg, infos, log)
    arrays = ArrayRecord({k: Array(v) for k, v in W0.items()})
    history, sent_configs = [to_numpy_dict(arrays)], []
    for rnd in range(1, rounds + 1):
        replies = []
        for m in strategy.configure_train(rnd, arrays, ConfigRecord({}), FakeGrid(infos)):
            pid = infos[m.metadata.dst_node_id].partition_id
            sent = to_numpy_dict(m.content["arrays"])
            sent_configs.append((rnd, pid, dict(m.content["config"])))
            if reply is not None:
                content = reply(m, pid, rnd, sent)
            else:
                content = RecordDict({
                    "arrays": ArrayRecord({k: Array(sent[k] + v) for k, v in step(pid, rnd).items()}),
                    "metrics": MetricRecord({"num-examples": infos[m.metadata.dst_node_id].num_examples,
                                             "train-loss": 0.0}),
                    "meta": ConfigRecord({"partition-id": pid, "payload": "weights"})})
            replies.append(Message(content, reply_to=m))
        new, _ = strategy.aggregate_train(rnd, replies)
        arrays = new if new is not None else arrays
        history.append(to_numpy_dict(arrays))
    return log, history, sent_configs


# -- plan, selection, mask ------------------------------------------------------

def test_plan_phases():
    assert [UnlearningPlan("salun", 2, False).phase(r) for r in (1, 2, 3, 4)] == ["saliency", "salun", "salun", "train"]
    assert [UnlearningPlan("gradient-ascent", 1, True).phase(r) for r in (1, 2, 3)] == \
        ["gradient-ascent", "train", "train"]


def test_holder_selector_picks_holders_only_in_ascent_rounds_and_forces_requesting_clients():
    infos = list(clients(num_forget=(0, 5, 0, 9), num_examples=(10, 0, 12, 13)).values())
    rng = np.random.default_rng(0)
    ga = HolderSelector(RandomSelector(), UnlearningPlan("gradient-ascent", 1, client_level=False))
    assert [c.partition_id for c in ga.select(1, infos, 2, rng)] == [1, 3]
    assert not ga.eligible(2, infos[1]) and ga.eligible(1, infos[1])  # no data left to train on normally
    msgm = HolderSelector(RandomSelector(), UnlearningPlan("msgm", 3, client_level=True))
    for rnd in (1, 2, 3):
        chosen = [c.partition_id for c in msgm.select(rnd, infos, 3, np.random.default_rng(rnd))]
        assert {1, 3} <= set(chosen) and len(chosen) == 3
    chosen = [c.partition_id for c in msgm.select(4, [c for c in infos if msgm.eligible(4, c)], 2, rng)]
    assert 1 not in chosen and len(chosen) == 2
    p = msgm.probabilities(1, infos)
    assert p[1] == 0 and np.isclose(p.sum(), 1)


def test_top_share_keeps_the_largest_magnitudes_and_the_mask_packs_losslessly():
    grads = {"a": np.array([[0.5, -3.0], [0.1, 2.0]]), "b": np.array([-1.0, 0.0, 4.0])}
    mask = top_share(grads, 3 / 7)
    assert mask["a"].tolist() == [[False, True], [False, True]] and mask["b"].tolist() == [False, False, True]
    rng = np.random.default_rng(1)
    big = {"x": rng.normal(size=(33, 7)), "y": rng.normal(size=(5,))}
    for ratio in (0.5, 0.1):
        m = top_share(big, ratio)
        assert sum(v.sum() for v in m.values()) == round(ratio * 236)
        back = unpack_mask(pack_mask(m, ["x", "y"]), {"x": (33, 7), "y": (5,)})
        assert all(np.array_equal(back[k], m[k]) for k in m)
        each = pack_each(m)  # a holder's upload: ceil(n / 8) bytes per parameter
        assert [(v.dtype, v.size) for v in each.values()] == [(np.uint8, 29), (np.uint8, 1)]
        assert all(np.array_equal(unpack_each(each, {"x": (33, 7), "y": (5,)})[k], m[k]) for k in m)
    with pytest.raises(ValueError, match="packed bytes"):
        unpack_each({"x": np.zeros(29, np.float32)}, {"x": (33, 7)})


def test_top_share_ties_follow_the_given_order():
    scores = {"a": np.array([2.0, 1.0, 1.0]), "b": np.array([1.0, 0.0])}  # three entries tie at 1
    assert top_share(scores, 0.4)["a"].tolist() == [True, True, False]  # default: the earlier entry
    late_first = np.array([0, 4, 3, 1, 2])  # places: b[0] before a[2] before a[1]
    got = top_share(scores, 0.4, rank=late_first)
    assert got["a"].tolist() == [True, False, False] and got["b"].tolist() == [True, False]


class FixedOrder:
    """Stands in for the server's generator: a known permutation."""

    def __init__(self, order):
        self.order = np.array(order)

    def permutation(self, n):
        assert n == self.order.size
        return self.order


def test_combined_mask_is_the_top_share_by_votes_by_hand():
    """Three holders' masks over 8 weights; keep 4. Votes a = [[1, 1, 0], [3, 2, 2]], b = [0, 1]:
    the 3 and both 2s, then one of the three 1s (a[0, 0], a[0, 1], b[1]), the first in the order."""
    t, f = True, False
    masks = [{"a": np.array([[t, f, f], [t, t, t]]), "b": np.array([f, f])},
             {"a": np.array([[f, t, f], [t, t, f]]), "b": np.array([f, f])},
             {"a": np.array([[f, f, f], [t, f, t]]), "b": np.array([f, t])}]
    got = combine_masks(masks, 0.5, FixedOrder([0, 1, 2, 3, 4, 5, 6, 7]))  # a[0, 0] first
    assert got["a"].tolist() == [[t, f, f], [t, t, t]] and got["b"].tolist() == [f, f]
    got = combine_masks(masks, 0.5, FixedOrder([1, 2, 3, 4, 5, 6, 7, 0]))  # b[1] first
    assert got["a"].tolist() == [[f, f, f], [t, t, t]] and got["b"].tolist() == [f, t]
    one = top_share({"a": np.arange(6.0).reshape(2, 3), "b": np.array([9.0, -7.0])}, 0.5)
    for seed in (0, 1):  # a single holder: its own mask, whatever the tie order
        assert all(np.array_equal(combine_masks([one], 0.5, np.random.default_rng(seed))[k], one[k]) for k in one)
    seeded = [combine_masks(masks[:2], 0.25, derive(7, "salun-mask")) for _ in range(2)]
    assert all(np.array_equal(seeded[0][k], seeded[1][k]) for k in seeded[0])  # deterministic for a seed


def test_salun_rounds_build_the_mask_from_holders_masks_and_enforce_it(tmp_path):
    infos = clients(num_forget=(3, 0, 4, 0))
    cfg = RunConfig(num_clients=N, clients_per_round=2, model="ddpm-tiny", forget_class=1,
                    unlearn_method="salun", unlearn_rounds=2, salun_mask_ratio=0.25)
    own = {p: top_share(step(p, 0, scale=1.0), 0.25) for p in range(N)}  # each holder's mask

    def reply(m, pid, rnd, sent):
        cfg_sent = m.content["config"]
        if cfg_sent["objective"] == "saliency":
            arrays, payload, n = pack_each(own[pid]), "mask", 0
        else:
            arrays, payload, n = {k: sent[k] + v for k, v in step(pid, rnd).items()}, "weights", 10
        return RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                           "metrics": MetricRecord({"num-examples": n, "train-loss": 0.0, "num-forget": 3}),
                           "meta": ConfigRecord({"partition-id": pid, "payload": payload})})

    log, history, configs = drive(cfg, infos, 3, reply)
    assert sorted(pid for rnd, pid, _ in configs if rnd == 1) == [0, 2]  # holders only
    assert log.get(1)["phase"] == "saliency" and log.get(2)["phase"] == "salun"
    assert all(np.array_equal(history[1][k], W0[k]) for k in W0)  # the mask round changes nothing
    expected = combine_masks([own[0], own[2]], 0.25, derive(cfg.seed, "salun-mask"))
    assert expected["w"].sum() + expected["b"].sum() == round(0.25 * 54)
    for rnd in (2, 3):
        sent_cfg = next(c for r, _, c in configs if r == rnd)
        assert sent_cfg["objective"] == "salun"
        got = unpack_mask(bytes(sent_cfg["salun-mask"]), {k: SHAPES[k] for k in ("w", "b")})
        assert all(np.array_equal(got[k], expected[k]) for k in SHAPES)
        for k in SHAPES:  # only the salient entries moved
            moved = history[rnd][k] != history[rnd - 1][k]
            assert not moved[~expected[k]].any() and moved[expected[k]].all()


# -- forget-only updates ------------------------------------------------------------

def weights_reply(n_kept: dict[int, int], scale: float = 0.1):
    """Replies of weights sent + step(pid, rnd), num-examples = the data the client keeps."""
    def reply(m, pid, rnd, sent):
        return RecordDict({
            "arrays": ArrayRecord({k: Array(sent[k] + v) for k, v in step(pid, rnd, scale).items()}),
            "metrics": MetricRecord({"num-examples": n_kept[pid], "train-loss": 0.0, "num-forget": 5}),
            "meta": ConfigRecord({"partition-id": pid, "payload": "weights"})})
    return reply


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_a_client_that_keeps_nothing_has_zero_weight_and_its_delta_one_equal_share(weighting):
    """Client-level request on client 1 (keeps nothing). Method round: FedAvg over the others by
    samples, plus client 1's delta / 3 (its share in an equal-weight round of 3); the normal round
    after it: plain FedAvg without client 1. Uniform weighting: every delta / 3, nothing added."""
    kept = {0: 10, 1: 0, 2: 30, 3: 13}
    infos = clients(num_forget=(0, 9, 0, 0), num_examples=tuple(kept.values()))
    cfg = RunConfig(num_clients=N, clients_per_round=3, model="ddpm-tiny", forget_clients="1",
                    unlearn_method="msgm", unlearn_rounds=1, weighting=weighting)
    log, history, configs = drive(cfg, infos, 2, weights_reply(kept))
    who = {rnd: sorted(pid for r, pid, _ in configs if r == rnd) for rnd in (1, 2)}
    assert 1 in who[1] and len(who[1]) == 3 and 1 not in who[2]
    others = [p for p in who[1] if p != 1]
    total = sum(kept[p] for p in others)
    for k in SHAPES:
        d = {p: step(p, 1)[k].astype(np.float64) for p in who[1]}
        if weighting == "samples":
            want = sum(kept[p] / total * d[p] for p in others) + d[1] / 3
        else:
            want = sum(d.values()) / 3
        np.testing.assert_allclose(history[1][k] - W0[k], want, rtol=1e-5, atol=1e-6)
        total2 = sum(kept[p] for p in who[2])
        want2 = sum(kept[p] / total2 * step(p, 2)[k].astype(np.float64) for p in who[2]) \
            if weighting == "samples" else sum(step(p, 2)[k].astype(np.float64) for p in who[2]) / 3
        np.testing.assert_allclose(history[2][k] - history[1][k], want2, rtol=1e-5, atol=1e-6)
    assert log.get(1)["clients_forget_only"] == 1


def test_a_round_of_forget_only_updates_averages_them_with_equal_weights():
    """Gradient ascent: only the holders take part, every reply trained on forget data alone
    (num-examples 0, whatever they keep): their models' plain mean is the new global model."""
    infos = clients(num_forget=(0, 9, 0, 2))
    cfg = RunConfig(num_clients=N, clients_per_round=3, model="cnn", forget_class=1,
                    unlearn_method="gradient-ascent", unlearn_rounds=1)
    log, history, configs = drive(cfg, infos, 1, weights_reply({p: 0 for p in range(N)}))
    assert sorted(pid for _, pid, _ in configs) == [1, 3]
    for k in SHAPES:
        want = (step(1, 1)[k].astype(np.float64) + step(3, 1)[k]) / 2
        np.testing.assert_allclose(history[1][k] - W0[k], want, rtol=1e-5, atol=1e-6)
    assert log.get(1)["clients_forget_only"] == 2


@pytest.mark.parametrize("method", ["fine-tune", "continue"])
def test_controls_train_their_rounds_at_unlearn_lr_as_an_ordinary_run(method):
    """fine-tune / continue: every round is theirs, at unlearn-lr; clients drawn and
    aggregated exactly as in an ordinary run on the same data (no holder forced in, no mask)."""
    if method == "fine-tune":  # client 1 asked to be forgotten and keeps nothing
        infos = clients(num_forget=(0, 11, 0, 0), num_examples=(10, 0, 12, 13))
    else:  # continue: the request removes nothing, every client declares all its data
        infos = clients(num_examples=(10, 11, 12, 13))
    base = RunConfig(num_clients=N, clients_per_round=2, model="cnn", forget_clients="1", rounds=4)
    control = base.replace(unlearn_method=method, unlearn_rounds=4, unlearn_lr=0.05)
    log, history, configs = drive(control, infos, 4)
    _, plain_history, plain_configs = drive(base, infos, 4)
    assert [(r, p) for r, p, _ in configs] == [(r, p) for r, p, _ in plain_configs]
    assert all(c["objective"] == method and c["lr"] == 0.05 for _, _, c in configs)
    assert [log.get(r)["phase"] for r in (1, 2, 3, 4)] == [method] * 4
    for ours, plain in zip(history, plain_history):
        assert all(np.array_equal(ours[k], plain[k]) for k in SHAPES)
    drawn = {p for _, p, _ in configs}
    assert (1 in drawn) == (method == "continue")


# -- FedEraser --------------------------------------------------------------------

def test_calibration_keeps_the_old_norm_and_the_new_direction():
    rng = np.random.default_rng(3)
    old, new = rng.normal(size=(4, 5)), 0.01 * rng.normal(size=(4, 5))
    out = calibrate(old, new)
    assert np.isclose(np.linalg.norm(out), np.linalg.norm(old))
    assert np.isclose(out.ravel() @ new.ravel(), np.linalg.norm(out) * np.linalg.norm(new))  # same direction
    assert not calibrate(old, np.zeros_like(new)).any()


@pytest.mark.parametrize("calibration", ["per-client", "per-layer-mean"])
def test_federaser_replays_the_stored_rounds_with_calibrated_updates(tmp_path, calibration):
    infos = clients()
    original = tmp_path / "original"
    drive(RunConfig(num_clients=N, clients_per_round=3, model="cnn", ledger_every=2, out_dir=str(original)),
          infos, 6)
    ledger = load_ledger(original)
    assert ledger.stored_rounds() == [1, 3, 5]
    forgotten = 1
    rounds = calibration_rounds(ledger, client_level=True)
    assert rounds == [3, 5]
    # M~(t_2): M(t_1) plus the others' stored updates of t_1, uncalibrated
    start = start_model(ledger, {forgotten}, client_level=True)
    keep = {p: n for p, n in ledger.participants(1).items() if p != forgotten}
    for k in SHAPES:
        want = W0[k] + sum(n / sum(keep.values()) * ledger.update(1, p)[k].numpy() for p, n in keep.items())
        np.testing.assert_allclose(start[k].numpy(), want, rtol=1e-6, atol=1e-7)
    cfg = RunConfig(num_clients=N, clients_per_round=3, model="cnn", forget_clients=str(forgotten),
                    unlearn_method="federaser", unlearn_from=str(original), federaser_calibration=calibration)
    infos_after = clients(num_examples=(10, 0, 12, 13))
    log, history, configs = drive(cfg, infos_after, len(rounds),
                                  reply=lambda m, pid, rnd, sent: RecordDict({
                                      "arrays": ArrayRecord({k: Array(sent[k] + v)
                                                             for k, v in step(pid, rnd, 0.01).items()}),
                                      "metrics": MetricRecord({"num-examples": 10 + pid, "train-loss": 0.0}),
                                      "meta": ConfigRecord({"partition-id": pid, "payload": "weights"})}))
    for j, t in enumerate(rounds, start=1):
        who = sorted(pid for rnd, pid, _ in configs if rnd == j)
        assert who == sorted(p for p in ledger.participants(t) if p != forgotten)
        weights = np.array([10 + p for p in who], dtype=float)
        weights /= weights.sum()
        for k in SHAPES:
            new = [step(p, j, 0.01)[k].astype(np.float64) for p in who]
            old = [ledger.update(t, p)[k].numpy().astype(np.float64) for p in who]
            if calibration == "per-client":
                want = sum(w * calibrate(o, n) for w, o, n in zip(weights, old, new))
            else:
                want = calibrate(sum(w * o for w, o in zip(weights, old)), sum(w * n for w, n in zip(weights, new)))
            np.testing.assert_allclose(history[j][k] - history[j - 1][k], want, rtol=1e-4, atol=1e-6)


# -- the driver's configs ---------------------------------------------------------

@pytest.fixture
def finished_run(tmp_path):
    """A run folder as fedsim run leaves it (config, model, ledger), without training."""
    from fedsim.config import write_toml
    from fedsim.data.clients import dataset
    from fedsim.models.networks import save_model
    from fedsim.models.workspace import fresh_model

    run = tmp_path / "run"
    cfg = RunConfig(model="ddpm-tiny", timesteps=20, sample_steps=10, num_clients=6, clients_per_round=3, rounds=8,
                    local_epochs=4, ledger_every=2, out_dir=str(run))
    run.mkdir()
    write_toml(cfg, run / "config.toml")
    model = fresh_model(cfg, dataset(cfg, "train"))
    save_model(model, run / "model")
    sent = {k: v.numpy() for k, v in model.state_dict().items()}
    writer = LedgerWriter(run, seed=0, every=2, max_bytes=1e9)
    writer.start(sent)
    rng = np.random.default_rng(0)
    for rnd in range(1, 9):
        pids = sorted(rng.choice(6, size=3, replace=False).tolist())
        entries = [(p, 20 + p, {k: 0.01 * rng.normal(size=v.shape).astype(np.float32) for k, v in sent.items()}
                    if writer.stores(rnd) else None) for p in pids]
        writer.record(rnd, sent, entries)
    return run


def test_driver_configures_each_method(finished_run, tmp_path):
    from fedsim.cli.unlearn import original_config, request_keys, unlearn_config

    run, out = finished_run, tmp_path / "out"
    original = original_config(run)
    req = request_keys(original, None, 3)
    retrain = unlearn_config(run, "retrain", req, [], out / "r")
    assert retrain.replay == str(run) and retrain.rounds == 8 and retrain.forget_class == 3
    assert retrain.unlearn_method == "" and retrain.ledger_every == 0
    salun = unlearn_config(run, "salun", req, ["unlearn-rounds=3"], out / "s")
    assert (salun.unlearn_method, salun.rounds, salun.pretrained) == ("salun", 4, str(run / "model"))
    assert salun.record_clients == ""  # no observations unless asked
    assert unlearn_config(run, "salun", req, ["record-clients=all"], out / "s2").record_clients == "all"
    ga = unlearn_config(run, "gradient-ascent", req, [], out / "g")
    assert ga.rounds == ga.unlearn_rounds + 2
    assert unlearn_config(run, "msgm", req, ["rounds=9"], out / "m").rounds == 9
    fe = unlearn_config(run, "federaser", request_keys(original, 2, None), [], out / "f")
    assert fe.rounds == 3 and fe.local_epochs == 2 and fe.forget_clients == "2"  # stored 1,3,5,7 -> calibrate 3,5,7
    assert (out / "f" / "unlearning" / "start_model" / "config.json").is_file()
    for control in ("fine-tune", "continue"):  # the methods' rounds and lr, from the trained model
        c = unlearn_config(run, control, req, ["unlearn-lr=0.05", "unlearn-rounds=3"], out / control)
        assert (c.unlearn_method, c.rounds, c.unlearn_lr, c.pretrained) == (control, 3, 0.05, str(run / "model"))
        assert (c.replay, c.forget_class, c.lr, c.local_epochs) == ("", 3, original.lr, original.local_epochs)
    assert unlearn_config(run, "fine-tune", req, [], out / "ft").rounds == original.unlearn_rounds
    with pytest.raises(ConfigError, match="unknown method"):
        unlearn_config(run, "forget-everything", req, [], out / "x")
    with pytest.raises(ConfigError, match="exactly one"):
        request_keys(original, 1, 2)
    with pytest.raises(ConfigError, match="not a partition id"):
        request_keys(original, 6, None)


def test_unlearn_cli_bad_input_is_one_line(finished_run, tmp_path, capsys):
    from fedsim.cli.main import main

    assert main(["unlearn", "--run", str(tmp_path / "nope"), "--class", "0", "--method", "salun",
                 "--out", str(tmp_path / "o")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["unlearn", "--run", str(finished_run), "--class", "0", "--client", "1", "--method", "salun"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
    assert main(["unlearn", "--run", str(finished_run), "--class", "0", "--method", "msgm",
                 "--set", "msgm-loss=sideways", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "msgm-loss must be one of" in err[0]
    assert main(["unlearn", "--run", str(finished_run), "--class", "0", "--method", "finetune",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'finetune'" in err[0] and "fine-tune, continue" in err[0]
    assert main(["unlearn", "--run", str(finished_run), "--class", "0", "--method", "continue",
                 "--set", "unlearn-rounds=0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unlearn-rounds must be >= 1" in err[0]


def test_config_rejects_a_method_without_a_request():
    with pytest.raises(ConfigError, match="needs a request"):
        RunConfig(unlearn_method="msgm")
    with pytest.raises(ConfigError, match="diffusion"):
        RunConfig(model="cnn", unlearn_method="salun", forget_class=1)
