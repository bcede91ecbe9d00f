"""jaxmpc._io: atomic writes, the one JSON encoder, JSON reads with clear errors."""

import json
import os
import pathlib
import stat

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmpc import _io


def test_atomic_write_replaces_and_leaves_nothing_behind(tmp_path):
    p = tmp_path / "f.txt"
    assert _io.atomic_write_text(p, "one") == str(p)
    _io.atomic_write_text(p, "two")
    assert p.read_text() == "two" and os.listdir(tmp_path) == ["f.txt"]
    _io.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_a_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with _io.atomic_open(p, "w") as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_atomic_open_for_numpy_and_folders(tmp_path):
    p = tmp_path / "sub" / "a.npz"
    with pytest.raises(FileNotFoundError):
        _io.atomic_write_bytes(p, b"x")  # the folder must exist unless makedirs
    with _io.atomic_open(p, "wb", makedirs=True) as f:
        np.savez(f, a=np.arange(3))
    with np.load(p) as z:
        assert z["a"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with _io.atomic_open(p, "a"):
            pass
    with pytest.raises(TypeError, match="bytes"):
        _io.atomic_write_bytes(p, "text")
    with pytest.raises(TypeError, match="str"):
        _io.atomic_write_text(p, b"bytes")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        _io.atomic_write_text(tmp_path / "public", "x")
        _io.atomic_write_text(tmp_path / "key", "secret", private=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "public").st_mode) == 0o644  # as open(): 0o666 less the umask
    assert stat.S_IMODE(os.stat(tmp_path / "key").st_mode) == 0o600


def test_json_default():
    obj = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "a": np.arange(3), "j": jnp.ones(2),
           "s": {3, 1, 2}, "p": pathlib.Path("x/y"), "t": (1, 2)}
    assert json.loads(_io.dumps_json(obj)) == {"i": 3, "f": 0.5, "b": True, "a": [0, 1, 2], "j": [1.0, 1.0],
                                               "s": [1, 2, 3], "p": "x/y", "t": [1, 2]}
    with pytest.raises(TypeError, match="value of type object is not JSON-serialisable"):
        _io.dumps_json({"o": object()})
    with pytest.raises(ValueError):
        _io.dumps_json({"x": float("nan")}, allow_nan=False)


def test_write_json_checks_before_writing(tmp_path):
    p = tmp_path / "deep" / "r.json"
    _io.write_json(p, {"a": np.float64(1.5)})
    assert p.read_text() == '{\n "a": 1.5\n}\n'
    with pytest.raises(ValueError):
        _io.write_json(tmp_path / "nan.json", {"x": float("inf")}, allow_nan=False)
    with pytest.raises(TypeError):
        _io.write_json(tmp_path / "bad.json", {"x": object()})
    assert sorted(os.listdir(tmp_path)) == ["deep"]


def test_read_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing run config: .*nope.json"):
        _io.read_json(tmp_path / "nope.json", "run config")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(_io.JSONFileError, match="malformed run config .*bad.json: Expecting property name"):
        _io.read_json(tmp_path / "bad.json", "run config")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(_io.JSONFileError, match="not UTF-8"):
        _io.read_json(tmp_path / "bin.json")
    with pytest.raises(_io.JSONFileError, match="cannot read"):
        _io.read_json(tmp_path)
    assert issubclass(_io.JSONFileError, ValueError)
    _io.write_json(tmp_path / "ok.json", [1, 2])
    assert _io.read_json(tmp_path / "ok.json") == [1, 2]
