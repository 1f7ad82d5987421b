"""Model stealing (attacks/stealing/): the label-only oracle, MEGA and its baselines on a budget, PGD transfer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks.stealing.oracle import BudgetExhausted, LabelOracle
from attacks.stealing.steal import StealConfig, generator_loss, steal
from attacks.stealing.transfer import pgd, transfer_success
from fedsim.models.networks import SmallCNN

SHAPE = (1, 8, 8)


def rule(x: torch.Tensor) -> torch.Tensor:
    """A target that is a rule, not a model: class 1 where the left half is brighter than the right."""
    return (x[..., :4].mean((1, 2, 3)) > x[..., 4:].mean((1, 2, 3))).long()


def test_the_oracle_gives_labels_only_and_counts_the_budget():
    model = SmallCNN(1, 10)
    oracle = LabelOracle.of_model(model, budget=10)
    y = oracle(torch.randn(6, *SHAPE))
    assert y.dtype == torch.long and y.shape == (6,) and not y.requires_grad and oracle.left == 4
    with pytest.raises(BudgetExhausted):
        oracle(torch.randn(5, *SHAPE))
    assert not any(isinstance(v, nn.Module) for v in vars(oracle).values())  # the model is not reachable


@pytest.mark.parametrize("method", ["mega", "dfme", "random"])
def test_each_method_spends_the_budget_on_labels_alone_and_learns_the_rule(method):
    """The oracle is a bare function of the images (no logits exist to read): every method runs on it,
    stops at its budget, and random queries learn the rule."""
    budget = 3000 if method == "random" else 600  # the generators' steps cost more; random must learn
    oracle = LabelOracle(rule, budget=budget)
    sub = SmallCNN(1, 2)
    probe = torch.rand(500, *SHAPE, generator=torch.Generator().manual_seed(9)) * 2 - 1

    def agreement(s):
        with torch.no_grad():
            return {"agreement": float((s(probe).argmax(1) == rule(probe)).float().mean())}

    rows = steal(oracle, sub, SHAPE, StealConfig(method=method, batch_size=100, eval_every=budget // 3),
                 generator=torch.Generator().manual_seed(0), evaluate=agreement)
    assert [r["queries"] for r in rows] == [budget // 3, 2 * budget // 3, budget] and oracle.used == budget
    if method == "random":
        assert rows[-1]["agreement"] > 0.85


def test_generator_objectives():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    uniform = -(torch.log(torch.tensor(0.5)))
    confident = -(torch.softmax(logits[0], 0) * torch.log_softmax(logits[0], 0)).sum()
    assert float(generator_loss("mega", "entropy", logits, y)) == pytest.approx(float((confident + uniform) / 2))
    assert float(generator_loss("mega", "max-softmax", logits, y)) == pytest.approx(
        -float((torch.softmax(logits[0], 0).max() + 0.5) / 2))
    assert float(generator_loss("dfme", "entropy", logits, y)) == pytest.approx(
        -float(nn.functional.cross_entropy(logits, y)))
    balanced = generator_loss("mega", "entropy", logits, y, balance=1.0)
    mean = torch.softmax(logits, 1).mean(0)
    assert float(balanced) == pytest.approx(float(generator_loss("mega", "entropy", logits, y)
                                                  + (mean * mean.log()).sum()))
    with pytest.raises(ValueError):
        StealConfig(method="maze")


def test_pgd_stays_in_the_ball_and_fools_the_model_it_attacks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    x = torch.rand(64, *SHAPE) * 2 - 1
    y = model(x).argmax(1)
    adv = pgd(model, x, y, eps=0.5, alpha=0.1, steps=10)
    assert float((adv - x).abs().max()) <= 0.5 + 1e-6 and float(adv.abs().max()) <= 1.0
    assert transfer_success(model, model, x, y, eps=0.5, alpha=0.1, steps=10) > 0.9
    assert transfer_success(model, model, x, y, eps=0.0, alpha=0.1, steps=10) == 0.0


def test_fedsim_steal_end_to_end_on_a_small_run(tmp_path, capsys):
    """A run folder holding a CNN trained a little on the 8x8 digits: `fedsim steal` writes the curve,
    the final table with the transfer success, and the plot; bad input is one line."""
    from fedsim.cli.main import main
    from fedsim.config import RunConfig, write_toml
    from fedsim.data.clients import dataset
    from fedsim.models.train import ClassifierTask, train_local

    run = tmp_path / "run"
    run.mkdir()
    cfg = RunConfig(model="cnn", dataset="digits")
    write_toml(cfg, run / "config.toml")
    train = dataset(cfg, "train")
    model = SmallCNN(1, 10)
    train_local(model, ClassifierTask(), train.images, torch.as_tensor(train.labels.copy()), epochs=2, batch_size=32,
                lr=1e-2, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(run / "model")
    assert main(["steal", str(run), "--budget", "400", "--eval-every", "200", "--batch-size", "100",
                 "--methods", "mega,random"]) == 0
    import pandas as pd

    curve, final = pd.read_csv(run / "steal" / "curve.csv"), pd.read_csv(run / "steal" / "final.csv")
    assert list(curve.queries) == [200, 400, 200, 400] and set(final.method) == {"mega", "random"}
    assert final.transfer_success.between(0, 1).all() and (run / "steal" / "curve.png").stat().st_size > 0
    assert main(["steal", str(run), "--methods", "maze"]) == 2
    assert "unknown maze" in capsys.readouterr().err


def test_stealing_experiment_table_by_hand():
    """experiments/stealing/run.py: per method the mean ± t-interval over seeds; MEGA vs each baseline paired."""
    import pandas as pd

    from fedsim.cli.sweep import sibling

    exp = sibling(__file__.replace("tests/test_stealing.py", "experiments/stealing/run.py"), "run", "stealing")
    final = pd.DataFrame({"method": ["mega"] * 3 + ["random"] * 3, "seed": [0, 1, 2] * 2,
                          "accuracy": [0.8, 0.7, 0.9, 0.5, 0.6, 0.4], "agreement": [0.8] * 3 + [0.5] * 3,
                          "transfer_success": [0.3] * 3 + [0.1] * 3})
    md = exp.table(final, 1000, 0.95)
    assert "the target's test accuracy is 95.0 %" in md
    assert "| mega | 80 ± 24.8 (n = 3)" in md  # sd 10, t(0.975, 2) = 4.303: 4.303 * 10 / sqrt(3) = 24.8
    assert "| mega vs random | +30 ± 50 (n = 3), not significant | +30 ± 0 (n = 3), better | +20 ± 0 (n = 3), better |" in md
