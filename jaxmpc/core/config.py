"""Protocol configuration and the 64-bit guard.

Every knob of the secure protocols lives in :class:`ProtocolConfig`, a frozen, hashable
dataclass that is validated when it is built. It is passed explicitly (never read from a
global) and is a static argument of every jitted entry point.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax

__all__ = ["ProtocolConfig", "enable_compilation_cache", "require_x64", "x64_enabled"]


def x64_enabled() -> bool:
    """Whether ``jax_enable_x64`` is on (without it ``uint64`` silently becomes ``uint32``)."""
    return bool(jax.config.read("jax_enable_x64"))


def require_x64() -> None:
    """Raises a clear error if 64-bit mode is off.

    jaxmpc computes in the ring Z_2^64 with ``uint64`` arrays. Without ``jax_enable_x64`` JAX
    silently truncates them to ``uint32``, which would wreck every protocol, so every secure
    entry point calls this before doing any work. jaxmpc never flips the flag as a side effect
    of being imported; turn it on deliberately, first thing in your program::

        import jax
        jax.config.update("jax_enable_x64", True)

    or set the environment variable ``JAX_ENABLE_X64=1``. The ``jaxmpc`` command line does it
    for you.
    """
    if not x64_enabled():
        raise RuntimeError(
            "jaxmpc needs 64-bit mode: call jax.config.update('jax_enable_x64', True) at the start of "
            "your program (or set JAX_ENABLE_X64=1) before using secure computation; without it uint64 "
            "silently becomes uint32."
        )


DEFAULT_CACHE_DIR = "~/.cache/jaxmpc/xla"


def enable_compilation_cache(directory: str | None = None, *, min_compile_seconds: float = 1.0) -> str | None:
    """Turns on JAX's persistent compilation cache, so that a new process loads a secure program
    compiled before instead of compiling it again (minutes for a ResNet; see BENCHMARKS.md).

    A process-wide JAX setting, so jaxmpc never turns it on as a side effect of importing or
    calling it: call this once at the start of a program (the ``jaxmpc`` command line does).

    Args:
      directory: where to keep compiled programs; default ``$JAXMPC_COMPILATION_CACHE`` or
        ``~/.cache/jaxmpc/xla``. ``"0"`` (or ``JAXMPC_COMPILATION_CACHE=0``) leaves the cache off.
      min_compile_seconds: only programs that took at least this long to compile are stored.

    Returns:
      the cache directory, or ``None`` when left off.

    Note: programs with host callbacks -- the networked parties' programs, whose sends and receives
    are ``io_callback`` s -- are never stored by JAX; only simulated runs benefit.
    """
    import os

    if min_compile_seconds < 0:
        raise ValueError(f"min_compile_seconds must be >= 0, got {min_compile_seconds}")
    if directory is None:
        directory = os.environ.get("JAXMPC_COMPILATION_CACHE", DEFAULT_CACHE_DIR)
    if not directory or directory == "0":
        return None
    directory = os.path.expanduser(str(directory))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


LinearProtocol = Literal["server_weights", "shared_weights"]
NonlinearProtocol = Literal["jaxmpc", "securenn"]
MaxPoolSchedule = Literal["tree", "sequential"]
Permutation = Literal["uniform", "cyclic"]


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Parameters of the 3-party protocols (hashable; a static argument of jitted code).

    Attributes:
      frac_bits: fractional bits T of the signed fixed-point encoding ``round(x * 2^T)``.
      compare_bits: bits m of each share that DReLU compares (64 = exact). DReLU is evaluated
        on ``floor(x / 2^lsb_drop_bits) mod 2^m`` (paper §4, "reduced-bit DReLU"), for every
        use: ReLU, Block ReLU and MaxPool.
      lsb_drop_bits: low bits s dropped (by local truncation) before the comparison.
      linear_protocol: ``"server_weights"`` (default) uses the server's knowledge of its weights:
        the weights are masked once per session, the client sends only its masked input share.
        ``"shared_weights"`` re-shares the weights for every call and runs a plain Beaver
        protocol, as the paper's reference implementation does.
      nonlinear_protocol: ``"jaxmpc"`` (default) is SecureNN with dealer-derived masks, a
        dealer-known output bit (no multiplication inside MSB) and a 24-byte bit-times-value
        product; ``"securenn"`` is the textbook SecureNN ComputeMSB with its Beaver
        multiplication and a Beaver product for ReLU, which reproduces the reference costs.
      maxpool_schedule: ``"tree"`` compares window elements pairwise in log2(k) levels;
        ``"sequential"`` uses the reference's running maximum (same bytes, more rounds).
      permutation: the fresh per-element permutation of PrivateCompare's m positions:
        ``"cyclic"`` (default: a uniformly random rotation) or ``"uniform"`` (a uniformly random
        permutation, via a sort: several times slower). Both hide the position of the zero
        perfectly, because all other entries are i.i.d. uniform on Z_67^* (see
        ``jaxmpc/protocols/compare.py``).
      compact_wire: send elements of a reduced ring Z_2^m in the smallest unsigned integer that
        holds m bits (the reference always sends 8 bytes).
    """

    frac_bits: int = 12
    compare_bits: int = 64
    lsb_drop_bits: int = 0
    linear_protocol: LinearProtocol = "server_weights"
    nonlinear_protocol: NonlinearProtocol = "jaxmpc"
    maxpool_schedule: MaxPoolSchedule = "tree"
    permutation: Permutation = "cyclic"
    compact_wire: bool = True

    def __post_init__(self):
        def check_int(name, lo, hi):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"ProtocolConfig.{name} must be an int, got {type(v).__name__}")
            if not lo <= v <= hi:
                raise ValueError(f"ProtocolConfig.{name} must lie in [{lo}, {hi}], got {v}")

        check_int("frac_bits", 0, 30)
        check_int("compare_bits", 2, 64)
        check_int("lsb_drop_bits", 0, 62)
        if self.compare_bits + self.lsb_drop_bits > 64:
            raise ValueError(
                f"compare_bits + lsb_drop_bits must be <= 64, got {self.compare_bits} + {self.lsb_drop_bits}"
            )
        choices = {
            "linear_protocol": ("server_weights", "shared_weights"),
            "nonlinear_protocol": ("jaxmpc", "securenn"),
            "maxpool_schedule": ("tree", "sequential"),
            "permutation": ("uniform", "cyclic"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ProtocolConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.compact_wire, bool):
            raise TypeError("ProtocolConfig.compact_wire must be a bool")

    @property
    def exact_compare(self) -> bool:
        """True when DReLU compares all 64 bits and drops none (exact sign everywhere)."""
        return self.compare_bits == 64 and self.lsb_drop_bits == 0

    def replace(self, **changes) -> "ProtocolConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def reference(cls, **overrides) -> "ProtocolConfig":
        """The protocol choices of the paper's reference implementation (for cost comparisons).

        Weights re-shared per call, textbook SecureNN DReLU with Beaver products, sequential
        MaxPool and 8-byte ring elements on the wire. Correct (jaxmpc fixes the reference's
        bugs), but with the reference's communication.
        """
        base = dict(
            linear_protocol="shared_weights",
            nonlinear_protocol="securenn",
            maxpool_schedule="sequential",
            compact_wire=False,
        )
        base.update(overrides)
        return cls(**base)
