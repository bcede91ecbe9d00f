"""The command line refuses bad values before any work starts: one line on stderr, exit status 2.

Budgets take an explicit unit (``6%``, a fraction in (0, 1], or ``--budget-unit drelus``); specs
that omit a ReLU layer or hold patches larger than the map are refused. In-process through
``cli.main`` (fast), plus two subprocess runs that check the real exit status and that no
traceback is printed.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxmpc.core import blocks
from jaxmpc import cli
from jaxmpc import pipeline as pl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_error_line(err: str, cmd: str | None) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"jaxmpc {cmd}: error: " if cmd else "jaxmpc: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    cmd = argv[0] if argv[0] in ("plan", "demo", "infer", "finetune", "cost", "launch", "pki", "party") else None
    return _one_error_line(capsys.readouterr().err, cmd)


# --------------------------------------------------------------------------------------------
# budgets


@pytest.mark.parametrize("text, unit, expected", [
    ("6%", "fraction", 0.06), ("100%", "fraction", 1.0), ("0.5%", "fraction", 0.005),
    ("0.06", "fraction", 0.06), ("1", "fraction", 1.0), ("1.0", "fraction", 1.0), (" 0.1 ", "fraction", 0.1),
    ("5000", "drelus", 5000), ("1", "drelus", 1),
])
def test_parse_budget_accepts(text, unit, expected):
    got = pl.parse_budget(text, unit)
    assert got == pytest.approx(expected) and type(got) is type(expected)


@pytest.mark.parametrize("text, unit, message", [
    ("1.5", "fraction", "ambiguous"), ("2.7", "fraction", "ambiguous"), ("5000", "fraction", "--budget-unit drelus"),
    ("inf", "fraction", "finite"), ("nan", "fraction", "finite"), ("-inf", "fraction", "finite"),
    ("0", "fraction", "positive"), ("-0.1", "fraction", "positive"), ("0%", "fraction", "positive"),
    ("150%", "fraction", "100%"), ("zero", "fraction", "percentage like 6%"), ("%", "fraction", "percentage"),
    ("", "fraction", "percentage"), ("2.7", "drelus", "whole number"), ("1e4", "drelus", "whole number"),
    ("0", "drelus", "at least 1"), ("inf", "drelus", "whole number"), ("-5", "drelus", "whole number"),
    ("6%", "drelus", "percentage but --budget-unit is drelus"), ("0.1", "percent", "unit must be one of"),
])
def test_parse_budget_refuses(text, unit, message):
    with pytest.raises(pl.PipelineError, match=re.escape(message)):
        pl.parse_budget(text, unit)


def test_check_budget_type_is_the_unit():
    assert pl.check_budget(0.06) == 0.06 and pl.check_budget(np.float32(0.5)) == 0.5
    assert pl.check_budget(np.int64(7)) == 7 and type(pl.check_budget(np.int64(7))) is int
    assert pl.check_budget(1.0) == 1.0 and pl.check_budget(1) == 1  # 100% vs one DReLU
    for bad in (2.7, 5000.0, float("inf"), float("nan"), 0.0, -1.0, 0, -3, True, "0.1", None):
        with pytest.raises(pl.PipelineError):
            pl.check_budget(bad)
    assert pl.budget_tag(0.1) == "10pct" and pl.budget_tag(1.0) == "100pct" and pl.budget_tag(5000) == "5000drelus"
    assert pl.budget_drelus(1.0, 999) == 999 and pl.budget_drelus(0.5, 999) == 499 and pl.budget_drelus(5, 999) == 5


def test_pipeline_config_refuses_ambiguous_budgets():
    with pytest.raises(pl.PipelineError, match="fraction of the all-ReLU count in \\(0, 1\\]"):
        pl.PipelineConfig(budgets=(2.7,))
    with pytest.raises(pl.PipelineError, match="positive, finite"):
        pl.PipelineConfig(budgets=(float("inf"),))
    cfg = pl.PipelineConfig(budgets=(np.float64(0.1), 1.0, np.int64(5000)))
    assert cfg.budgets == (0.1, 1.0, 5000) and [type(b) for b in cfg.budgets] == [float, float, int]
    back = pl.PipelineConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert back.budgets == cfg.budgets and [type(b) for b in back.budgets] == [float, float, int]


@pytest.mark.parametrize("argv, message", [
    (["plan", "--workdir", "w", "--budget", "inf"], "argument --budget: budget must be positive and finite"),
    (["plan", "--workdir", "w", "--budget", "nan"], "finite"),
    (["plan", "--workdir", "w", "--budget", "1.5"], "ambiguous"),
    (["plan", "--workdir", "w", "--budget", "2.7", "--budget-unit", "drelus"], "whole number of DReLUs"),
    (["plan", "--workdir", "w", "--budget", "6%", "--budget-unit", "drelus"], "percentage"),
    (["plan", "--workdir", "w", "--budget", "0.1", "--budget-unit", "percent"], "invalid choice"),
    (["plan", "--workdir", "w"], "required: --budget"),
    (["demo", "--budget", "0.1", "7"], "ambiguous"),
    (["demo", "--images", "0"], "argument --images: expected a positive whole number"),
    (["demo", "--epochs", "inf"], "argument --epochs"),
    (["infer", "--workdir", "w", "--tag", "../../etc"], "argument --tag"),
    (["finetune", "--workdir", "w", "--tag", "a/b"], "argument --tag"),
    (["infer", "--workdir", "w", "--batch-size", "-1"], "argument --batch-size"),
    (["no-such-command"], "invalid choice"),
    (["launch", "--weights", "w", "--input", "x.npy", "--batch-size", "0"], "argument --batch-size"),
    (["launch", "--weights", "w", "--input", "x.npy", "--latency-ms", "-1"], "argument --latency-ms: expected a"),
    (["launch", "--weights", "w", "--input", "x.npy", "--timeout", "nan"], "argument --timeout"),
    (["pki", "--out", "d", "--days", "0"], "argument --days: expected a positive whole number"),
    (["party", "--role", "dealer", "--config", "p.toml"], "argument --role: invalid choice"),
])
def test_bad_command_lines_are_one_line(argv, message, capsys, tmp_path):
    line = _usage_error(argv, capsys)
    assert message in line


def _tiny_workdir(tmp_path) -> pl.Workdir:
    """A work folder with pipeline.json and a small distortion table (no training needed)."""
    from jaxmpc.distortion import DistortionTable, LayerDistortion

    rng = np.random.default_rng(0)
    layers = []
    for name, (h, w, c) in {"a": (4, 4, 3), "b": (2, 6, 2)}.items():
        cand = blocks.default_candidates(h, w)
        costs = blocks.num_patches(h, w, cand).astype(np.int64)
        layers.append(LayerDistortion(name, h, w, c, cand, rng.uniform(0, 1, (c, len(cand))), costs))
    wd = pl.Workdir(str(tmp_path))
    wd.save_config(pl.PipelineConfig(budgets=(0.1,)))
    os.makedirs(wd.path("profile"))
    DistortionTable(tuple(layers)).save(wd.path("profile", "distortion.npz"))
    return wd


def test_plan_units_end_to_end(tmp_path, capsys):
    wd = _tiny_workdir(tmp_path)
    total = 4 * 4 * 3 + 2 * 6 * 2
    assert cli.main(["plan", "--workdir", wd.root, "--budget", "100%"]) == 0
    full = pl.read_json(wd.path("plans", "knapsack_100pct.summary.json"), "summary")
    assert full["budget_drelus"] == total and full["budget_unit"] == "fraction"
    assert cli.main(["plan", "--workdir", wd.root, "--budget", "1.0"]) == 0  # the same plan: 100%, not 1 DReLU
    assert not os.path.exists(wd.path("plans", "knapsack_1drelus.json"))
    assert cli.main(["plan", "--workdir", wd.root, "--budget", "10", "--budget-unit", "drelus"]) == 0
    ten = pl.read_json(wd.path("plans", "knapsack_10drelus.summary.json"), "summary")
    assert ten["budget_drelus"] == 10 and ten["drelus"] <= 10 and ten["budget"] == 10
    assert cli.main(["plan", "--workdir", wd.root, "--budget", "25%", "--method", "uniform"]) == 0
    quarter = pl.read_json(wd.path("plans", "uniform_25pct.summary.json"), "summary")
    assert quarter["budget_drelus"] == total // 4
    capsys.readouterr()
    # the library call refuses what the command line refuses
    with pytest.raises(pl.PipelineError, match="fraction"):
        pl.plan_step(wd, wd.config(), 2.7)
    with pytest.raises(pl.PipelineError, match="unknown planning method"):
        pl.plan_step(wd, wd.config(), 0.1, "greedy")


def test_unexpected_errors_are_one_line_status_2_with_a_debug_hint(tmp_path, capsys, monkeypatch):
    """Every error the command line reports has status 2, an internal one too (with a hint);
    --debug (before or after the command) or JAXMPC_DEBUG=1 shows the traceback instead."""
    wd = _tiny_workdir(tmp_path)
    monkeypatch.delenv("JAXMPC_DEBUG", raising=False)

    def boom(*a, **k):
        raise RuntimeError("something broke\non two lines")

    monkeypatch.setattr(pl, "plan_step", boom)
    argv = ["plan", "--workdir", wd.root, "--budget", "6%"]
    assert cli.main(argv) == cli.EXIT_ERROR == 2
    line = _one_error_line(capsys.readouterr().err, "plan")
    assert "unexpected RuntimeError: something broke on two lines" in line
    assert line.endswith("(rerun with --debug or JAXMPC_DEBUG=1 for the traceback)")
    for debug_argv in (["--debug"] + argv, argv + ["--debug"]):
        with pytest.raises(RuntimeError, match="something broke"):
            cli.main(debug_argv)
    monkeypatch.setenv("JAXMPC_DEBUG", "0")  # "0" means off
    assert cli.main(argv) == 2
    capsys.readouterr()
    monkeypatch.setenv("JAXMPC_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(argv)


def test_bad_values_found_while_running_are_one_line_status_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JAXMPC_DEBUG", raising=False)
    wd = _tiny_workdir(tmp_path)

    def bad(*a, **k):
        raise KeyError("layer 'b' is not in the table")

    monkeypatch.setattr(pl, "plan_step", bad)
    assert cli.main(["plan", "--workdir", wd.root, "--budget", "6%"]) == 2
    line = _one_error_line(capsys.readouterr().err, "plan")
    assert "KeyError" in line and "layer 'b'" in line and "--debug" not in line
    # a file that cannot be written: one line, status 2
    (tmp_path / "file").write_text("x")
    assert cli.main(["pki", "--out", str(tmp_path / "file" / "pki")]) == 2
    assert "jaxmpc pki: error: " in _one_error_line(capsys.readouterr().err, "pki")


def test_a_broken_install_is_one_line_status_2(monkeypatch, capsys):
    monkeypatch.delenv("JAXMPC_DEBUG", raising=False)

    def broken():
        raise ImportError("libtpu is missing")

    monkeypatch.setattr(cli, "_enable_x64", broken)
    assert cli.main(["report", "--workdir", "w"]) == 2
    line = _one_error_line(capsys.readouterr().err, "report")
    assert "cannot load jaxmpc: ImportError: libtpu is missing" in line and "--debug" in line


# --------------------------------------------------------------------------------------------
# cost: input shape, model, spec files


@pytest.mark.parametrize("shape", ["0,-3,3", "8,8", "8,8,1,1", "a,b,c", "8.5,8,1", "", "8,,1"])
def test_cost_bad_input_shape(shape, capsys):
    assert cli.main(["cost", "--model", "ResNetSmall", "--input", shape]) == 2
    assert "--input must be H,W,C" in _one_error_line(capsys.readouterr().err, "cost")


@pytest.mark.parametrize("name", ["NoSuchNet", "BlockReLU", "relu_layers", "_private", "ResNet"])
def test_cost_unknown_model(name, capsys):
    assert cli.main(["cost", "--model", name, "--input", "8,8,1"]) == 2
    line = _one_error_line(capsys.readouterr().err, "cost")
    assert f"unknown model {name!r}" in line and "ResNet18" in line


@pytest.fixture(scope="module")
def small_layers():
    from jaxmpc import nn as jnn

    return jnn.relu_layers(jnn.ResNetSmall(), (8, 8, 1))


def _full_spec(layers):
    return {name: np.ones((c, 2), np.int32) for name, (_, _, c) in layers}


def test_cost_refuses_incomplete_or_oversized_specs(tmp_path, capsys, small_layers):
    from jaxmpc import nn as jnn

    partial = _full_spec(small_layers)
    dropped = next(iter(partial))
    del partial[dropped]
    jnn.save_spec(tmp_path / "partial.json", partial)
    argv = ["cost", "--model", "ResNetSmall", "--input", "8,8,1", "--spec"]
    assert cli.main(argv + [str(tmp_path / "partial.json")]) == 2
    assert f"missing layer {dropped!r}" in _one_error_line(capsys.readouterr().err, "cost")

    big = _full_spec(small_layers)
    name, (h, w, _) = small_layers[-1]
    big[name][0] = (10**6, 2)
    jnn.save_spec(tmp_path / "big.json", big)
    assert cli.main(argv + [str(tmp_path / "big.json")]) == 2
    line = _one_error_line(capsys.readouterr().err, "cost")
    assert f"patch size (1000000, 2), larger than the layer's {h}x{w} activation map" in line

    assert cli.main(argv + [str(tmp_path / "missing.json")]) == 2
    assert "No such file" in _one_error_line(capsys.readouterr().err, "cost")
    (tmp_path / "broken.json").write_text("{not json")
    assert cli.main(argv + [str(tmp_path / "broken.json")]) == 2
    assert "not a valid JSON block-spec file" in _one_error_line(capsys.readouterr().err, "cost")


# --------------------------------------------------------------------------------------------
# real processes: exit status and no traceback


@pytest.mark.parametrize("argv", [
    ["plan", "--workdir", "unused", "--budget", "inf"],
    ["cost", "--model", "ResNet18", "--input", "0,-3,3"],
])
def test_process_exit_status_and_one_line(argv, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.pop("JAXMPC_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "jaxmpc", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _one_error_line(proc.stderr, argv[0])
    assert proc.stdout == ""
