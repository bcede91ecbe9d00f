"""File I/O shared by every jaxmpc module: atomic writes and JSON.

Atomic write: the data go to a new temporary file in the destination's folder (so the rename
never crosses a file system), which is flushed and ``fsync``-ed, then ``os.replace``-d over the
destination and the folder is ``fsync``-ed. A reader sees the old file or the new one, never a
partial one; a failed or interrupted write leaves the destination untouched and removes the
temporary file (a hard kill can leave one ``.<name>.<random>.tmp`` behind, never a partial
destination).

File permissions are those of a plain ``open(path, "w")`` (``0o666`` less the umask), or
``0o600`` with ``private=True`` (private keys): the temporary file is created with them, so the
destination never has wider permissions, not even for an instant.

This module imports nothing from jaxmpc and nothing heavy (numpy only), so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

__all__ = [
    "JSONFileError",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "json_default",
    "dumps_json",
    "write_json",
    "read_json",
]


class JSONFileError(ValueError):
    """A JSON file exists but cannot be read as JSON (malformed, not UTF-8, unreadable)."""


def _tmp_name(path: str) -> str:
    folder, base = os.path.split(path)
    return os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, private: bool = False, makedirs: bool = False,
    encoding: str = "utf-8",
) -> Iterator[IO]:
    """Opens a temporary file that replaces ``path`` when the ``with`` block ends without error.

    Args:
      path: the destination.
      mode: ``"w"`` (text, ``encoding``) or ``"wb"`` (bytes).
      private: create the file with permissions ``0o600`` (e.g. private keys).
      makedirs: create the destination's folder if missing (otherwise it must exist).
      encoding: of text mode.

    Yields:
      the open temporary file (e.g. for ``np.savez(f, ...)`` or ``json.dump(obj, f)``).

    Raises:
      ValueError: for another ``mode``.
      OSError: if the folder is missing or not writable (nothing is written).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes new files only: mode must be 'w' or 'wb', got {mode!r}")
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if makedirs:
        os.makedirs(folder, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = _tmp_name(path)
        try:
            fd = os.open(tmp, flags, 0o600 if private else 0o666)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": encoding})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, private: bool = False,
                       makedirs: bool = False) -> str:
    """Writes ``data`` to ``path`` atomically (see the module docstring); returns the path."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    with atomic_open(path, "wb", private=private, makedirs=makedirs) as f:
        f.write(data)
    return os.fspath(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, private: bool = False, makedirs: bool = False,
                      encoding: str = "utf-8") -> str:
    """Writes ``text`` to ``path`` atomically (see the module docstring); returns the path."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    with atomic_open(path, "w", private=private, makedirs=makedirs, encoding=encoding) as f:
        f.write(text)
    return os.fspath(path)


def json_default(obj: Any) -> Any:
    """``default=`` of :func:`json.dump` for numpy and JAX values, sets and paths.

    numpy integers, floats and bools become Python numbers; arrays (numpy, JAX or anything with
    ``__array__``) become nested lists; sets become sorted lists (in insertion order when their
    items do not compare); paths become strings.

    Raises:
      TypeError: for any other type (naming it).
    """
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serialisable")


def dumps_json(obj: Any, *, indent: int | None = 1, allow_nan: bool = True, **kw) -> str:
    """``json.dumps`` with :func:`json_default` (``allow_nan=False`` refuses NaN and infinities)."""
    return json.dumps(obj, indent=indent, allow_nan=allow_nan, default=json_default, **kw)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, allow_nan: bool = True,
               makedirs: bool = True, private: bool = False) -> str:
    """Writes ``obj`` as JSON (with :func:`json_default`, a final newline) to ``path`` atomically.

    The text is built first, so a value that cannot be written raises before any file is made.
    Creates the destination's folder by default. Returns the path.
    """
    text = dumps_json(obj, indent=indent, allow_nan=allow_nan) + "\n"
    return atomic_write_text(path, text, makedirs=makedirs, private=private)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Reads a JSON file.

    Args:
      path: the file.
      what: how errors name the file (e.g. ``"pipeline config"``).

    Raises:
      FileNotFoundError: ``"missing <what>: <path>"``.
      JSONFileError: ``"malformed <what> <path>: <reason>"`` (not JSON, not UTF-8, a folder, ...).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing {what}: {path}") from None
    except json.JSONDecodeError as e:
        raise JSONFileError(f"malformed {what} {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise JSONFileError(f"malformed {what} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (IsADirectoryError, PermissionError) as e:
        raise JSONFileError(f"cannot read {what} {path}: {e.strerror}") from None
