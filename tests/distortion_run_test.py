"""Device sharding, host shards and merging, resumable run folders (distortion sweep)."""

import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc.distortion import RunError, merge_runs, parse_shard, profile_distortion, run_progress
from jaxmpc.distortion._run import Item, make_items, select_shard
from jaxmpc.nn import ResNetSmall

LAYERS = ["stem/relu", "layer2_0/relu2", "layer3_0/relu1"]


def random_variables(model, images, seed):
    """Random weights and BatchNorm statistics without compiling model.init."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if str(getattr(path[0], "key", path[0])) == "block_sizes":
            return jnp.ones(s.shape, s.dtype)
        if name == "var":
            return jnp.asarray(rng.uniform(0.3, 2.0, s.shape), s.dtype)
        if name in ("mean", "bias"):
            return jnp.asarray(0.4 * rng.standard_normal(s.shape), s.dtype)
        if name == "scale":
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return jnp.asarray(rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def problem():
    model = ResNetSmall()
    images = jax.random.normal(jax.random.key(0), (4, 8, 8, 1), jnp.float32)
    variables = random_variables(model, images, 1)
    reference = profile_distortion(model, variables, images, layers=LAYERS, devices=1, progress=False)
    return model, variables, images, reference


def assert_tables_equal(a, b, rtol=0.0, atol=0.0):
    assert a.names == b.names
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_array_equal(la.candidates, lb.candidates)
        np.testing.assert_array_equal(la.costs, lb.costs)
        if rtol == 0 and atol == 0:
            np.testing.assert_array_equal(la.distortion, lb.distortion, err_msg=la.name)
        else:
            np.testing.assert_allclose(la.distortion, lb.distortion, rtol=rtol, atol=atol, err_msg=la.name)


def test_four_devices_equal_one_device(problem):
    model, variables, images, reference = problem
    if len(jax.local_devices()) < 4:
        pytest.skip("needs 4 (forced host) devices")
    sharded = profile_distortion(model, variables, images, layers=LAYERS, devices=4, progress=False)
    assert sharded.meta["devices"].startswith("4 x")
    assert_tables_equal(sharded, reference, rtol=1e-5, atol=1e-12)


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 3 / 4 ") == (3, 4) and parse_shard((1, 2)) == (1, 2)
    assert parse_shard(None) == (0, 1)
    for bad in ("4/4", "-1/2", "1/0", "a/b", "1:2", (1,), (2, 1)):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_work_list_and_shards_partition_it():
    items = make_items([8, 16, 32], [42, 25, 4], pairs_per_item=50)
    assert items[0] == Item(0, 0, 2) and items[-1] == Item(2, 26, 32)
    for li, c in enumerate([8, 16, 32]):  # every channel covered exactly once
        covered = [ch for it in items if it.layer == li for ch in range(it.c0, it.c1)]
        assert covered == list(range(c))
    costs = np.arange(1, len(items) + 1, dtype=float)
    parts = [select_shard(items, costs, (i, 3)) for i in range(3)]
    assert [it for part in parts for it in part] == items  # contiguous, ordered, disjoint, complete
    loads = [sum(costs[items.index(it)] for it in p) for p in parts]
    assert max(loads) < 0.5 * sum(loads)


def test_host_shards_in_separate_folders_merge_to_the_full_table(problem, tmp_path):
    model, variables, images, reference = problem
    dirs = [tmp_path / f"host{i}" for i in range(3)]
    for i, d in enumerate(dirs):
        out = profile_distortion(
            model,
            variables,
            images,
            layers=LAYERS,
            out_dir=d,
            shard=f"{i}/3",
            pairs_per_item=64,
            devices=1,
            progress=False,
        )
        assert out is None  # each folder alone is incomplete
    with pytest.raises(RunError, match="incomplete run"):
        merge_runs(dirs[:2])
    merged = merge_runs(dirs)
    assert_tables_equal(merged, reference, rtol=1e-6, atol=1e-12)
    assert merged.meta["fingerprint"]


def test_host_shards_in_one_folder_finish_with_the_table(problem, tmp_path):
    model, variables, images, reference = problem
    kw = {"layers": LAYERS, "out_dir": tmp_path, "pairs_per_item": 64, "devices": 1, "progress": False}
    assert profile_distortion(model, variables, images, shard="1/2", **kw) is None
    done, total = run_progress(tmp_path)
    assert 0 < done < total
    table = profile_distortion(model, variables, images, shard="0/2", **kw)
    assert_tables_equal(table, reference, rtol=1e-6, atol=1e-12)


def test_merge_detects_inconsistent_and_foreign_runs(problem, tmp_path):
    model, variables, images, _ = problem
    kw = {"layers": LAYERS[1:], "pairs_per_item": 64, "devices": 1, "progress": False}
    profile_distortion(model, variables, images, out_dir=tmp_path / "a", **kw)
    profile_distortion(model, variables, images, out_dir=tmp_path / "b", **kw)
    merge_runs([tmp_path / "a", tmp_path / "b"])  # duplicates that agree are fine
    item = min(os.listdir(tmp_path / "b" / "items"))
    arr = np.load(tmp_path / "b" / "items" / item)
    np.save(tmp_path / "b" / "items" / item, arr * 2 + 1)
    with pytest.raises(RunError, match="differs between"):
        merge_runs([tmp_path / "a", tmp_path / "b"])
    other = profile_distortion(model, variables, images * 0.5, out_dir=tmp_path / "c", **kw)
    assert other is not None
    with pytest.raises(RunError, match="different problems"):
        merge_runs([tmp_path / "a", tmp_path / "c"])
    # A folder holding another problem is refused before any work.
    with pytest.raises(RunError, match="different problem"):
        profile_distortion(model, variables, images, out_dir=tmp_path / "c", **kw)
    with pytest.raises(RunError, match="no manifest"):
        merge_runs([tmp_path])


class _Stop(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_table(problem, tmp_path):
    model, variables, images, _ = problem
    kw = {"layers": LAYERS, "out_dir": tmp_path, "pairs_per_item": 48, "devices": 1, "progress": False}
    uninterrupted = profile_distortion(model, variables, images, **{**kw, "out_dir": tmp_path / "full"})
    seen = []

    def stop_after_three(item):
        seen.append(item)
        if len(seen) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        profile_distortion(model, variables, images, on_item=stop_after_three, **kw)
    done, total = run_progress(tmp_path)
    assert done == 3 and total > 3
    assert not [f for f in os.listdir(tmp_path / "items") if f.endswith(".tmp")]
    resumed_items = []
    table = profile_distortion(model, variables, images, on_item=resumed_items.append, **kw)
    assert len(resumed_items) == total - 3  # finished items are not recomputed
    assert {(i.layer, i.c0) for i in resumed_items}.isdisjoint({(i.layer, i.c0) for i in seen})
    assert_tables_equal(table, uninterrupted)  # bit-identical
    again = profile_distortion(model, variables, images, **kw)
    assert again.meta["pairs_evaluated"] == 0
    assert_tables_equal(again, uninterrupted)


def test_damaged_item_file_is_recomputed(problem, tmp_path):
    model, variables, images, _ = problem
    kw = {"layers": LAYERS[2:], "out_dir": tmp_path, "pairs_per_item": 48, "devices": 1, "progress": False}
    first = profile_distortion(model, variables, images, **kw)
    victim = min(os.listdir(tmp_path / "items"))
    (tmp_path / "items" / victim).write_bytes(b"garbage")
    table = profile_distortion(model, variables, images, **kw)
    assert table.meta["pairs_evaluated"] > 0
    assert_tables_equal(table, first)


@pytest.mark.slow
def test_killed_subprocess_resumes_to_the_same_table(problem, tmp_path):
    """SIGKILL a profiling process after some items are written, then resume in this process."""
    model, variables, images, _ = problem
    np.save(tmp_path / "images.npy", np.asarray(images))
    flat, _ = jax.tree_util.tree_flatten(variables)
    np.savez(tmp_path / "vars.npz", *[np.asarray(x) for x in flat])
    script = textwrap.dedent(
        f"""
        import time, jax, numpy as np
        from jaxmpc.nn import ResNetSmall
        from jaxmpc.distortion import profile_distortion
        model = ResNetSmall()
        images = np.load({str(tmp_path / "images.npy")!r})
        shapes = jax.eval_shape(model.init, jax.random.key(0), images)
        z = np.load({str(tmp_path / "vars.npz")!r})
        leaves = [z[f"arr_{{i}}"] for i in range(len(z.files))]
        variables = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), leaves)
        profile_distortion(model, variables, images, layers={LAYERS!r}, out_dir={str(tmp_path / "run")!r},
                           pairs_per_item=48, devices=1, progress=False, on_item=lambda it: time.sleep(1.0))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "XLA_FLAGS": ""})
    items_dir = tmp_path / "run" / "items"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if items_dir.exists() and len([f for f in os.listdir(items_dir) if f.endswith(".npy")]) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("the profiling subprocess ended before it could be killed")
            time.sleep(0.1)
        else:
            pytest.fail("no items written in time")
    finally:
        proc.kill()
        proc.wait()
    done, total = run_progress(tmp_path / "run")
    assert 2 <= done < total
    kw = {"layers": LAYERS, "pairs_per_item": 48, "devices": 1, "progress": False}
    resumed = profile_distortion(model, variables, images, out_dir=tmp_path / "run", **kw)
    assert resumed.meta["pairs_evaluated"] > 0
    uninterrupted = profile_distortion(model, variables, images, out_dir=tmp_path / "full", **kw)
    assert_tables_equal(resumed, uninterrupted, rtol=1e-6, atol=1e-12)


def test_batch_size_and_padding_do_not_change_results(problem):
    model, variables, images, reference = problem
    name = "layer3_0/relu1"
    small_batches = profile_distortion(
        model, variables, images, layers=[name], max_batch=3, devices=[jax.local_devices()[0]], progress=False
    )
    np.testing.assert_allclose(small_batches[name].distortion, reference[name].distortion, rtol=1e-5, atol=1e-12)
