"""The import direction between the layers of jaxmpc (docs/architecture.md), read from the source.

Parses every module of ``jaxmpc/`` with ``ast`` (nothing is imported), resolves its ``jaxmpc``
imports -- module level and inside functions, absolute and relative -- to modules, and checks
them against the layer table below. A failure names the importing file, the line and the rule.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "jaxmpc")

# layer -> its top-level modules / packages of jaxmpc (docs/architecture.md)
LAYERS = {
    "base": {"_io", "core.ring", "core.parties", "core.config", "core.blocks"},
    "core": {"core", "core.randomness", "core.runtime", "core.comm", "core.sharing", "protocols.costs",
             "protocols.reference", "protocols"},
    "api": {"ops", "simulate", "inference"},
    "models": {"nn"},
    "planning": {"distortion", "knapsack"},
    "training": {"data", "train"},
    "app": {"pipeline", "cli", "__main__", "net"},
}

# layer -> the layers it may import (its own included)
ALLOWED = {
    "base": {"base"},
    "core": {"base", "core"},
    "models": {"base", "models"},
    "api": {"base", "core", "api", "models"},
    "planning": {"base", "core", "models", "planning"},
    "training": {"base", "models", "training"},
    "app": set(LAYERS) | {"root"},
}

# finer rules inside a layer: module -> top-level modules it must not import
FORBIDDEN = {
    "core.randomness": {"core.runtime", "core.sharing", "protocols", "core.comm", "protocols.costs",
                        "protocols.reference"},
    "core.comm": {"core.runtime", "core.sharing", "protocols", "core.randomness", "protocols.costs",
                  "protocols.reference"},
    "core.runtime": {"core.sharing", "protocols", "protocols.costs", "protocols.reference"},
    "core.sharing": {"protocols", "protocols.costs", "protocols.reference"},
    "protocols": {"protocols.reference", "protocols.costs"},
    "ops": {"inference", "simulate", "nn"},
    "simulate": {"ops", "inference", "nn"},
    "knapsack": {"distortion", "nn"},
    "data": {"train", "nn"},
}

OUTSIDE = ("experiments", "benchmarks", "tests")


def _modules():
    """``[(dotted module name, path)]`` of every .py file under jaxmpc/."""
    out = []
    for folder, dirs, files in os.walk(PKG):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out.append((".".join(rel), path))
    return out


def _is_module(dotted: str) -> bool:
    base = os.path.join(ROOT, *dotted.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def _imports(mod: str, path: str, source: str | None = None):
    """``[(line, imported dotted name)]``: jaxmpc modules, ``jaxmpc`` itself, or outside packages.

    ``source`` replaces the file's text (to test the checker itself).
    """
    if source is None:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    tree = ast.parse(source, filename=path)
    is_pkg = path.endswith("__init__.py")
    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # `from pkg import name`: the submodule if it is one
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else target))
    return [(line, name) for line, name in out
            if name == "jaxmpc" or name.startswith("jaxmpc.") or name.split(".")[0] in OUTSIDE]


# modules of these packages are units of their own (their layers differ inside the package)
SPLIT = {"core": None, "protocols": {"costs", "reference"}}


def _top(dotted: str) -> str:
    """The unit a module belongs to: ``core.ring``, ``protocols.costs``, ``protocols``, ``nn``..."""
    parts = dotted.split(".")
    if len(parts) == 1:
        return "root"
    if len(parts) > 2 and parts[1] in SPLIT and (SPLIT[parts[1]] is None or parts[2] in SPLIT[parts[1]]):
        return f"{parts[1]}.{parts[2]}"
    return parts[1]


def _layer(top: str) -> str:
    if top == "root":
        return "root"
    for layer, tops in LAYERS.items():
        if top in tops:
            return layer
    raise AssertionError(f"jaxmpc.{top} is in no layer: add it to LAYERS here and to docs/architecture.md")


MODULES = _modules()


def test_every_module_has_a_layer():
    tops = {_top(m) for m, _ in MODULES if m != "jaxmpc"}
    for top in sorted(tops):
        _layer(top)
    assert {t for ts in LAYERS.values() for t in ts} == tops, "LAYERS names modules that no longer exist"


def _violations(modules=None):
    """Broken rules of ``modules`` (``[(module, path, source or None)]``; default: all of jaxmpc)."""
    out = []
    for mod, path, source in modules if modules is not None else [(m, p, None) for m, p in MODULES]:
        if mod == "jaxmpc":
            continue
        src = _top(mod)
        layer = _layer(src)
        for line, name in _imports(mod, path, source):
            where = f"{os.path.relpath(path, ROOT)}:{line} imports {name}"
            if name.split(".")[0] in OUTSIDE:
                out.append(f"{where}: jaxmpc never imports {name.split('.')[0]}/")
                continue
            dst = _top(name)
            if dst == src:
                continue
            dst_layer = _layer(dst)
            if dst_layer not in ALLOWED[layer]:
                out.append(f"{where}: layer {layer} ({src}) may not import layer {dst_layer} ({dst})")
            elif dst in FORBIDDEN.get(src, ()):
                out.append(f"{where}: {src} sits below {dst}")
            parts = name.split(".")
            if len(parts) > 2 and any(p.startswith("_") for p in parts[2:]):
                out.append(f"{where}: private module of another package (import the package's public API)")
    return out


def test_import_direction():
    bad = _violations()
    assert not bad, "import rules broken (see docs/architecture.md):\n" + "\n".join(bad)


def test_root_package_does_not_pull_in_the_application():
    init = os.path.join(PKG, "__init__.py")
    names = {_top(n) for _, n in _imports("jaxmpc", init)}
    assert not names & LAYERS["app"], names & LAYERS["app"]


def test_importing_jaxmpc_loads_no_application_module():
    """At run time too: the root's aliases of moved modules (``jaxmpc.stats``...) are imported
    eagerly, so none of them may live in the application layer."""
    import subprocess
    import sys

    code = ("import sys, jaxmpc, jaxmpc.stats; "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            f"[['jaxmpc', t] for t in {sorted(LAYERS['app'])!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("source, expected", [
    ("from jaxmpc import pipeline\n", "layer core (protocols) may not import layer app (pipeline)"),
    ("from jaxmpc.nn import models\n", "layer core (protocols) may not import layer models (nn)"),
    ("def f():\n    import jaxmpc.train\n", "may not import layer training (train)"),
    ("from ..inference import api\n", "may not import layer api (inference)"),
    ("import experiments.common\n", "jaxmpc never imports experiments/"),
    ("from jaxmpc.protocols import reference\n", "protocols sits below protocols.reference"),
])
def test_the_checker_catches_violations(source, expected):
    """The rules can fail: the same checker on a protocols module with a bad import reports it."""
    fake = [("jaxmpc.protocols.compare", os.path.join(PKG, "protocols", "compare.py"), source)]
    bad = _violations(fake)
    assert any(expected in b for b in bad), bad
    assert not _violations([("jaxmpc.protocols.compare", fake[0][1], "from jaxmpc.core import ring, sharing\n")])
