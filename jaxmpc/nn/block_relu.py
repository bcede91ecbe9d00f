"""Plaintext Block ReLU: the function and the Flax layer.

Block ReLU (Gorski & Avidan, arXiv 2304.10442, §3; ``paper_reference.md`` §1.7 and §4.4) replaces
the per-pixel sign of a ReLU by one sign per rectangular patch of a channel, so a channel of an
``H x W`` map needs ``ceil(H/bh) * ceil(W/bw)`` DReLUs instead of ``H * W``. The per-channel
patch sizes follow :mod:`jaxmpc.core.blocks`:

* ``(1, 1)`` -- ordinary ReLU, ``y = x * [x >= 0]``;
* ``(bh, bw)`` -- patches tiled from the top-left corner (edge patches may be smaller); the mean
  over the *valid* pixels of a patch decides the whole patch, ``y = x * [mean(patch) >= 0]``;
* ``(0, 1)`` -- identity; ``(1, 0)`` -- zero.

The comparison is ``>= 0``, as in the secure DReLU (the reference's plaintext layer uses
``> 0``; the two differ only on exact zeros).

Contract with the secure interpreter (``jaxmpc.secure_apply``): the computation is the jitted
function :func:`jaxmpc_block_relu`, so every Block ReLU shows up in a jaxpr as one equation
``jit[name=jaxmpc_block_relu]`` with operands ``(x, sizes)``. The interpreter recognises that
equation and runs the secure Block ReLU protocol in its place. Nothing about its body is part of
the contract.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmpc.core import blocks

__all__ = ["BLOCK_RELU_JIT_NAME", "BLOCK_SIZES_COLLECTION", "BlockReLU", "block_relu", "jaxmpc_block_relu"]

#: Name of the jitted function in jaxprs (``jit[name=...]``); the secure interpreter matches it.
BLOCK_RELU_JIT_NAME = "jaxmpc_block_relu"
#: Flax variable collection that holds every BlockReLU's ``"sizes"`` variable.
BLOCK_SIZES_COLLECTION = "block_sizes"


def _patch_sums(x: jax.Array, sizes: jax.Array) -> jax.Array:
    """Sum of each pixel's patch, broadcast back to the pixel (``[..., H, W, C]``).

    One segment sum over the whole tensor: pixel ``(b, i, j, c)`` belongs to segment
    ``((b * H + i // bh[c]) * W + j // bw[c]) * C + c``. The sums run over the members of each
    patch only (no prefix-sum cancellation), cost O(N) for any traced ``sizes`` and vmap
    cleanly. Channels that are identity or zero are computed as 1x1 patches; the caller
    overrides them.
    """
    *_, h, w, c = x.shape
    xb = x.reshape((-1, h, w, c))
    n = xb.size
    if n >= 2**31 and not jax.config.read("jax_enable_x64"):
        raise ValueError(f"block_relu: tensor of {n} elements needs 64-bit indices; enable jax_enable_x64")
    idx = jnp.int64 if n >= 2**31 else jnp.int32
    bh = jnp.maximum(sizes[:, 0], 1).astype(idx)
    bw = jnp.maximum(sizes[:, 1], 1).astype(idx)
    prow = jnp.arange(h, dtype=idx)[:, None] // bh[None, :]  # [H, C]
    pcol = jnp.arange(w, dtype=idx)[:, None] // bw[None, :]  # [W, C]
    batch = jnp.arange(xb.shape[0], dtype=idx)[:, None, None, None]
    seg = ((batch * h + prow[None, :, None, :]) * w + pcol[None, None, :, :]) * c + jnp.arange(c, dtype=idx)[None, None, None, :]
    sums = jax.ops.segment_sum(xb.reshape(-1), seg.reshape(-1), num_segments=n)
    return sums[seg].reshape(x.shape)


def _mask(x: jax.Array, sizes: jax.Array) -> jax.Array:
    """0/1 mask of ``x.dtype``: which pixels a Block ReLU keeps."""
    bh, bw = sizes[:, 0], sizes[:, 1]
    patch = (bh >= 1) & (bw >= 1)
    identity = (bh == 0) & (bw == 1)
    # Any other pair (only reachable with invalid traced sizes) zeroes the channel.

    lead = (1,) * (x.ndim - 1)  # explicit broadcasting: no implicit rank promotion
    patch_b, identity_b = patch.reshape(lead + (-1,)), identity.reshape(lead + (-1,))

    def pixelwise(x):  # every patch is 1x1: the statistic is the pixel itself
        return jnp.where(patch_b, x >= 0, identity_b)

    def general(x):
        return jnp.where(patch_b, _patch_sums(x, sizes) >= 0, identity_b)

    # A scalar predicate runs one branch; under vmap over sizes it becomes a select (both run).
    only_pixels = jnp.all(~patch | ((bh == 1) & (bw == 1)))
    return lax.cond(only_pixels, pixelwise, general, x).astype(x.dtype)


@jax.jit
def jaxmpc_block_relu(x: jax.Array, sizes: jax.Array) -> jax.Array:
    """Jitted Block ReLU core (no validation); use :func:`block_relu`.

    Its name, ``jaxmpc_block_relu``, is what the secure interpreter matches in the jaxpr.
    The mask is computed from ``stop_gradient(x)``; the gradient flows through ``x`` only
    (straight-through, paper §4.4 / ``paper_reference.md`` §4.4).
    """
    sizes = sizes.astype(jnp.int32)
    return x * _mask(lax.stop_gradient(x), sizes)


def block_relu(x: jax.typing.ArrayLike, sizes: jax.typing.ArrayLike) -> jax.Array:
    """Applies a per-channel Block ReLU to an NHWC activation (paper §3, ``paper_reference.md`` §4.4).

    Validates shapes (and, when ``sizes`` is concrete, its values with
    :func:`jaxmpc.core.blocks.validate_block_sizes`), then calls the jitted core
    :func:`jaxmpc_block_relu`. ``sizes`` may be a traced array, e.g. under ``jax.vmap`` over
    thousands of candidate specs; no Python control flow depends on its values.

    Semantics per channel ``c`` with ``(bh, bw) = sizes[c]``: ``(1, 1)`` is ``x * (x >= 0)``;
    other patches tile the map from the top-left and each patch keeps or zeroes all its pixels
    by the sign (``>= 0``) of the mean of its valid pixels; ``(0, 1)`` is identity and ``(1, 0)``
    zero. Invalid pairs can only reach the function when traced; they zero their channel.

    Cost: an elementwise ReLU when no channel has a patch larger than 1x1; otherwise one segment
    sum plus one gather over the tensor (O(N), independent of the patch sizes). Sums are taken
    over the members of each patch only, so the sign agrees with an exact computation except
    when ``|patch mean|`` is within float rounding of zero (on GPU the order of the scatter-add,
    and so those last bits, is not deterministic).

    Args:
      x: float array ``[..., H, W, C]`` (any number of leading batch dimensions).
      sizes: integer array ``[C, 2]`` of ``(bh, bw)`` per channel.

    Returns:
      ``x * mask`` with the dtype and shape of ``x``; the mask carries no gradient.

    Raises:
      TypeError: if ``x`` is not floating point or ``sizes`` is not integer.
      ValueError: if the shapes do not match, or concrete ``sizes`` contain an invalid pair.

    Example::

      >>> x = jnp.array([[3.0, -1.0], [-1.0, -2.0]])[None, :, :, None]  # [1, 2, 2, 1]
      >>> block_relu(x, jnp.array([[1, 2]]))[0, :, :, 0]  # 1x2 patches: row means 1 and -1.5
      Array([[ 3., -1.],
             [ 0.,  0.]], dtype=float32)
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"block_relu: x must be a float array, got dtype {x.dtype}")
    if x.ndim < 3:
        raise ValueError(f"block_relu: x must have shape [..., H, W, C], got {x.shape}")
    if isinstance(sizes, jax.core.Tracer):
        if not jnp.issubdtype(sizes.dtype, jnp.integer):
            raise TypeError(f"block_relu: sizes must be an integer array, got dtype {sizes.dtype}")
    else:
        sizes = jnp.asarray(blocks.validate_block_sizes(np.asarray(sizes), x.shape[-1], name="block_relu sizes"))
    if sizes.shape != (x.shape[-1], 2):
        raise ValueError(f"block_relu: sizes must have shape [C, 2] = {(x.shape[-1], 2)}, got {sizes.shape}")
    return jaxmpc_block_relu(x, sizes)


class BlockReLU(nn.Module):
    """A ReLU layer whose per-channel patch sizes live in the ``"block_sizes"`` collection.

    The sizes are the variable ``variables["block_sizes"][...path...]["sizes"]``, int32
    ``[C, 2]``, created as all ``(1, 1)`` by ``model.init``: a freshly initialised model is an
    all-ReLU model. Changing the spec means replacing that collection
    (:func:`jaxmpc.nn.apply_spec`), never re-instantiating the model, so the same code runs
    all-ReLU, with a Block ReLU spec, or vmapped over candidate specs. The layer's *name* in
    spec files is its module path joined with ``"/"`` (e.g. ``"layer1_0/relu1"``).

    Every ReLU of jaxmpc's models is a BlockReLU with an explicit name. Paper §3,
    ``paper_reference.md`` §4.4.

    Example::

      >>> layer = BlockReLU()
      >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 4, 4, 3)))
      >>> variables["block_sizes"]["sizes"].shape
      (3, 2)
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if not self.has_variable(BLOCK_SIZES_COLLECTION, "sizes") and not self.is_mutable_collection(
            BLOCK_SIZES_COLLECTION
        ):
            name = "/".join(self.path) or "<top>"
            raise ValueError(
                f"BlockReLU {name!r}: no 'sizes' in the {BLOCK_SIZES_COLLECTION!r} collection; pass the full "
                "variables from model.init (or jaxmpc.nn.apply_spec), not only params/batch_stats"
            )
        sizes = self.variable(BLOCK_SIZES_COLLECTION, "sizes", lambda: jnp.ones((c, 2), jnp.int32)).value
        if sizes.shape != (c, 2):
            name = "/".join(self.path) or "<top>"
            raise ValueError(f"BlockReLU {name!r}: sizes have shape {sizes.shape}, expected {(c, 2)} for {c} channels")
        return block_relu(x, sizes)
