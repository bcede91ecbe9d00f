"""Test configuration: 64-bit mode on, a deterministic Hypothesis profile, strict dtype fixture."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

try:
    from hypothesis import settings

    settings.register_profile("jaxmpc", derandomize=True, database=None, deadline=None, max_examples=25)
    settings.load_profile("jaxmpc")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def strict_dtypes():
    """Runs a test under strict dtype promotion, so uint64 + int64 raises instead of giving float64."""
    with jax.numpy_dtype_promotion("strict"):
        yield
