"""The pipeline and the command line: a reduced demo end to end, and clear errors on bad files."""

import json
import os

import numpy as np
import pytest

from jaxmpc import cli
from jaxmpc import pipeline as pl


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("demo"))
    cfg = pl.PipelineConfig(budgets=(0.1,), overrides={"num_epochs": 3}, finetune_overrides={"num_epochs": 1},
                            profile_samples=16, infer_images=8, finetune_seeds=2)
    summary = pl.run_demo(wd, cfg, progress=False, log=lambda *a: None)
    return wd, summary


def test_reduced_demo_end_to_end(demo):
    wd, summary = demo
    for f in ("summary.md", "summary.json", "accuracy_vs_budget.png", "communication.png"):
        assert os.path.getsize(os.path.join(wd, "report", f)) > 0
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"knapsack", "uniform", "random"}
    k = rows["knapsack"]
    assert k["plan"]["drelus"] <= k["plan"]["budget_drelus"] and k["plan"]["ratio"] <= 0.1
    assert rows["knapsack"]["plan"]["total_distortion"] <= rows["random"]["plan"]["total_distortion"]
    inf = k["infer"]
    assert inf["same_predictions"] == inf["images"] == 8  # secure predictions equal plaintext
    assert inf["per_image"]["drelus"] == k["plan"]["drelus"]
    allr = summary["all_relu"]["secure"]
    assert allr["per_image"]["bytes"] > inf["per_image"]["bytes"]
    text = open(os.path.join(wd, "report", "summary.md")).read()
    assert "knapsack" in text and "all-ReLU" in text
    # every accuracy carries its interval and seed spread; the knapsack is compared on the same images
    acc, n_test = k["accuracy"], summary["all_relu"]["accuracy"]["n"]
    assert acc["seeds"] == 2 and len(acc["values"]) == 2 and acc["lo"] <= acc["mean"] <= acc["hi"]
    assert os.path.exists(os.path.join(wd, "finetune_seeds", "knapsack_10pct", "seed1", "result.json"))
    saved = json.load(open(os.path.join(wd, "finetune", "knapsack_10pct", "test_correct.json")))
    assert len(saved["correct"]) == 2 and len(saved["correct"][0]) == n_test
    assert saved["accuracy"] == pytest.approx(acc["values"], abs=1e-6)  # the same evaluation as training's
    comps = {c["baseline"]: c for c in summary["comparisons"]}
    assert set(comps) == {"uniform", "random"} and all(c["paired"]["n"] == n_test for c in comps.values())
    assert "[95% CI]" in text and "paired" in text
    # rerunning is idempotent and cheap (everything is reused)
    assert cli.main(["report", "--workdir", wd]) == 0


def test_steps_fail_clearly_on_missing_inputs(tmp_path, capsys):
    wd = str(tmp_path)
    assert cli.main(["profile", "--workdir", wd]) == 2
    assert "missing pipeline config" in capsys.readouterr().err
    pl.Workdir(wd).save_config(pl.PipelineConfig())
    assert cli.main(["profile", "--workdir", wd, "--no-progress"]) == 2
    assert "missing trained model" in capsys.readouterr().err
    assert cli.main(["plan", "--workdir", wd, "--budget", "0.1"]) == 2
    assert "missing distortion table" in capsys.readouterr().err
    assert cli.main(["finetune", "--workdir", wd, "--tag", "knapsack_10pct"]) == 2
    assert "missing" in capsys.readouterr().err
    assert cli.main(["infer", "--workdir", wd, "--no-progress"]) == 2
    assert "missing model" in capsys.readouterr().err
    assert cli.main(["report", "--workdir", wd]) == 2
    assert "missing training result" in capsys.readouterr().err


def test_malformed_files(tmp_path, capsys, demo):
    wd = str(tmp_path)
    with open(os.path.join(wd, "pipeline.json"), "w") as f:
        f.write("{not json")
    assert cli.main(["plan", "--workdir", wd, "--budget", "0.1"]) == 2
    assert "malformed pipeline config" in capsys.readouterr().err
    with open(os.path.join(wd, "pipeline.json"), "w") as f:
        json.dump({"budgets": [0.1], "colour": "red"}, f)
    assert cli.main(["plan", "--workdir", wd, "--budget", "0.1"]) == 2
    assert "unknown fields" in capsys.readouterr().err
    # a corrupt spec file in a finished work folder
    demo_wd, _ = demo
    bad = os.path.join(demo_wd, "plans", "broken.json")
    with open(bad, "w") as f:
        json.dump({"format": "jaxmpc-block-spec", "version": 1, "layers": {"no_such_layer": [[1, 1]]}}, f)
    with pytest.raises(ValueError, match="no_such_layer"):
        pl.finetune_step(pl.Workdir(demo_wd), pl.Workdir(demo_wd).config(), "broken", progress=False)
    assert cli.main(["finetune", "--workdir", demo_wd, "--tag", "broken", "--no-progress"]) == 2
    assert "no_such_layer" in capsys.readouterr().err


def test_missing_dataset_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
    monkeypatch.delenv("JAXMPC_DEBUG", raising=False)
    assert cli.main(["train", "--workdir", str(tmp_path / "w"), "--config", "cifar100_resnet18",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "DatasetNotFoundError" in err and "cifar100" in err and "Traceback" not in err


def test_bad_config_values():
    with pytest.raises(pl.PipelineError, match="unknown training preset"):
        pl.PipelineConfig(train_config="imagenet_from_scratch")
    with pytest.raises(pl.PipelineError, match="budget"):
        pl.PipelineConfig(budgets=(-1,))
    with pytest.raises(pl.PipelineError, match="protocol"):
        pl.PipelineConfig(compare_bits=80)
    with pytest.raises(SystemExit):
        cli.main(["plan", "--workdir", "x", "--budget", "zero"])


def test_uniform_baseline_fills_the_budget_with_one_size():
    from jaxmpc.core import blocks
    from jaxmpc.knapsack import LayerCandidates

    layers = [LayerCandidates("a", 8, 8, np.array([[1, 1], [0, 1]]), np.zeros((4, 2))),
              LayerCandidates("b", 4, 6, np.array([[1, 1], [0, 1]]), np.zeros((3, 2)))]
    spec = pl.uniform_spec(layers, 40)
    sizes = {tuple(s) for v in spec.values() for s in v}
    used = sum(blocks.drelu_count(lay.height, lay.width, spec[lay.name]) for lay in layers)
    assert used <= 40 and len({tuple(v[0]) for v in spec.values()}) <= 2 and sizes
    with pytest.raises(pl.PipelineError, match="no uniform patch size"):
        pl.uniform_spec(layers, 3)
