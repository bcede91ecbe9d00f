"""experiments/: every problem's config is valid, missing data and weights fail clearly, smoke runs work.

The default suite checks every problem's configuration and failure messages. The smoke runs take
minutes each on 2 cores and are marked slow: one problem through the steps that do not compile a
secure forward pass (with resumption), and every problem through every step.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import common  # noqa: E402

from jaxmpc import pipeline as pl  # noqa: E402


@pytest.mark.parametrize("problem", common.PROBLEMS)
def test_every_problem_has_a_valid_pipeline_config(problem):
    exp = common.get_experiment(problem)
    assert exp.name == problem
    extra = {"init_weights": "published.pth"} if exp.needs_weights else {}
    cfg = exp.pipeline_config(**extra)  # PipelineConfig validates every field
    smoke = exp.pipeline_config(smoke=True)
    assert cfg.budgets and smoke.infer_images <= 4
    if problem != "fashion_mnist":
        assert exp.paper, "the paper's published numbers are recorded beside each problem"
    # the saved form round-trips (resuming a work folder compares it)
    assert pl.PipelineConfig.from_json(json.loads(json.dumps(cfg.to_json(), default=list))).to_json() == \
        json.loads(json.dumps(cfg.to_json(), default=list))


def test_unknown_problem_and_steps_fail_clearly(tmp_path):
    with pytest.raises(common.ExperimentError, match="unknown problem"):
        common.get_experiment("mnist_lenet")
    exp = common.get_experiment("cifar100_resnet18")
    with pytest.raises(common.ExperimentError, match="unknown steps"):
        common.run(exp, tmp_path / "w", steps="train,evaluate", smoke=True, log=lambda *_: None)


def _run_script(*args, timeout=600):
    env = dict(os.environ, JAXMPC_COMPILATION_CACHE="0")
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "run.py"), *args, "--no-progress"],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.mark.parametrize("problem,flag,needle", [("cifar100_resnet18", "--data-dir", "cifar100"),
                                                 ("ade20k_mobilenetv2", "--root", "ADE")])
def test_missing_dataset_exits_2_with_instructions(tmp_path, problem, flag, needle):
    res = _run_script("--problem", problem, "--workdir", str(tmp_path / "w"), flag, str(tmp_path / "nothing"))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "not available" in res.stderr and needle.lower() in res.stderr.lower(), res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_dataset_flag_that_does_not_apply_is_an_error(tmp_path):
    res = _run_script("--problem", "ade20k_mobilenetv2", "--workdir", str(tmp_path / "w"),
                      "--data-dir", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "--data-dir does not apply" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_problem_that_needs_published_weights_says_so(tmp_path, monkeypatch):
    exp = common.get_experiment("voc2012_resnet50")
    ds = common.synthetic_dataset("voc", (64, 64, 3), 21, "segmentation")
    monkeypatch.setattr(common, "_load_dataset", lambda *a, **k: ds)
    with pytest.raises(common.ExperimentError, match="published weights"):
        common.run(exp, tmp_path / "w", log=lambda *_: None)
    assert not os.path.exists(tmp_path / "w" / "pipeline.json"), "nothing is written before the error"


@pytest.mark.slow
def test_smoke_run_without_secure_inference(tmp_path):
    """cifar100_resnet18 (tiny ResNet18): train -> profile -> plan -> cost -> report, then a rerun
    resumes from the finished steps."""
    lines = []
    exp = common.get_experiment("cifar100_resnet18")
    steps = "train,profile,plan,cost,report"
    summary = common.run(exp, tmp_path / "w", steps=steps, smoke=True, progress=False, log=lines.append)
    plan = json.load(open(tmp_path / "w" / "plans" / "knapsack_6pct.summary.json"))
    assert 0 < plan["drelus"] <= 0.06 * plan["all_relu_drelus"] + 1
    rows = {(r["model"], r["protocol"]): r for r in summary["cost"]["rows"]}
    ref, ours = rows[("all_relu", "reference, exact DReLU")], rows[("all_relu", "jaxmpc, exact DReLU")]
    assert ref["drelus"] == ours["drelus"] == plan["all_relu_drelus"]
    assert ours["bytes"] < ref["bytes"] and ours["rounds"] < ref["rounds"]
    knap = rows[("knapsack_6pct", "jaxmpc, exact DReLU")]
    assert knap["drelus"] == plan["drelus"] and knap["bytes"] < ours["bytes"]
    assert os.path.exists(tmp_path / "w" / "report" / "experiment.md")
    assert "78.27%" in summary["markdown"]  # the paper's number beside ours
    mtime = os.path.getmtime(tmp_path / "w" / "profile" / "distortion.npz")
    common.run(exp, tmp_path / "w", steps="train,profile,plan", smoke=True, progress=False, log=lines.append)
    assert os.path.getmtime(tmp_path / "w" / "profile" / "distortion.npz") == mtime, "finished steps are reused"


@pytest.mark.slow
@pytest.mark.parametrize("problem", common.PROBLEMS)
def test_full_smoke_run(tmp_path, problem):
    """Every step of every problem on synthetic data, through the script: secure = plaintext."""
    res = _run_script("--problem", problem, "--smoke", "--workdir", str(tmp_path / "w"), timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    for path in ["report/summary.json", "report/experiment.md", "cost/summary.json"]:
        assert os.path.exists(tmp_path / "w" / path), path
    for tag in os.listdir(tmp_path / "w" / "infer"):
        r = json.load(open(tmp_path / "w" / "infer" / tag / "result.json"))
        # with ReLUs secure logits are the float model's up to fixed-point error; a Block ReLU whose patch
        # mean is within that error of zero may take the other sign, moving logits further (VOC: 0.44)
        assert r["max_abs_logit_error"] < (0.05 if tag == "all_relu" else 1.0), (tag, r)
        if r["task"] == "classification":
            assert r["same_predictions"] == r["images"], (tag, r)
        else:  # untrained 150/21-class maps have near-ties at some pixels, and one flipped Block-ReLU
            # patch moves many pixels (VOC smoke, knapsack spec: 96.5% of the pixels agree)
            assert r["pixel_agreement"] > (0.99 if tag == "all_relu" else 0.9), (tag, r)


@pytest.mark.slow
def test_colab_notebook_executes_on_the_embedded_default(tmp_path):
    """experiments/colab.ipynb top to bottom with nbclient (reduced demo; CIFAR-100 cell in smoke mode)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(os.path.join(ROOT, "experiments", "colab.ipynb"), as_version=4)
    os.environ["JAXMPC_NOTEBOOK_SMOKE"] = "1"
    os.environ["JAXMPC_NOTEBOOK_WORKDIR"] = str(tmp_path)
    try:
        client = nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3",
                                         resources={"metadata": {"path": ROOT}})
        client.execute()
    finally:
        os.environ.pop("JAXMPC_NOTEBOOK_SMOKE")
        os.environ.pop("JAXMPC_NOTEBOOK_WORKDIR")
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "all-ReLU" in text and "knapsack" in text
    assert os.path.exists(tmp_path / "demo" / "report" / "summary.md")
    assert os.path.exists(tmp_path / "cifar100" / "report" / "experiment.md")
