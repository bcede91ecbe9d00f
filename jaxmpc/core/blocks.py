"""Block-ReLU patch sizes: their meaning, their DReLU cost and the default candidate lists.

A *patch size* ``(bh, bw)`` decides how one channel of a ReLU layer is evaluated
(Gorski & Avidan, arXiv 2304.10442, §3; ``paper_reference.md`` §1.7 and §4.3):

* ``(1, 1)`` -- an ordinary ReLU: one DReLU per pixel.
* ``(bh, bw)`` with ``bh, bw >= 1`` -- a Block ReLU: the channel is cut into patches of
  ``bh`` rows by ``bw`` columns, starting at the top-left corner; the sign of each patch's
  *mean over its valid pixels* (edge patches may be smaller) decides the whole patch:
  ``y = x * [mean(patch) >= 0]``. One DReLU per patch.
* ``(0, 1)`` -- identity: the channel passes through unchanged, no DReLU.
* ``(1, 0)`` -- zero: the channel is set to zero, no DReLU.

Any other pair containing a zero, and negative sizes, are invalid. The meaning is the same
in the plaintext layer, the fixed-point reference and the secure protocol.

This module is plain numpy: it is shared by the models, the knapsack planner, the
distortion profiler and the secure runtime, and it never traces.
"""

from __future__ import annotations

import numpy as np

RELU = (1, 1)
IDENTITY = (0, 1)
ZERO = (1, 0)

__all__ = [
    "RELU",
    "IDENTITY",
    "ZERO",
    "validate_block_sizes",
    "is_patch",
    "num_patches",
    "drelu_count",
    "mult_count",
    "default_candidates",
    "paper_candidates",
    "CANDIDATE_LISTS",
    "candidate_list",
    "fit_candidates",
    "patch_grid",
    "patch_counts",
]


def validate_block_sizes(sizes, num_channels: int | None = None, *, name: str = "block sizes") -> np.ndarray:
    """Checks and returns a ``[C, 2]`` int32 array of patch sizes.

    Raises:
      TypeError: if ``sizes`` is not an integer array.
      ValueError: naming the first offending channel, if the shape is not ``[C, 2]`` (with
        ``C == num_channels`` when given) or a pair is not a patch, ``(0, 1)`` or ``(1, 0)``.
    """
    arr = np.asarray(sizes)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        if np.issubdtype(arr.dtype, np.floating) and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name}: expected an integer array of shape [C, 2], got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name}: expected shape [C, 2], got {arr.shape}")
    if num_channels is not None and arr.shape[0] != num_channels:
        raise ValueError(f"{name}: expected {num_channels} channels, got {arr.shape[0]}")
    bh, bw = arr[:, 0], arr[:, 1]
    ok = ((bh >= 1) & (bw >= 1)) | ((bh == 0) & (bw == 1)) | ((bh == 1) & (bw == 0))
    if not np.all(ok):
        c = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"{name}: channel {c} has patch size {tuple(int(v) for v in arr[c])}; expected (bh, bw) with "
            "bh, bw >= 1, or (0, 1) for identity, or (1, 0) for zero"
        )
    return arr.astype(np.int32)


def is_patch(sizes) -> np.ndarray:
    """Boolean mask of the channels that need DReLUs (every size other than identity and zero)."""
    arr = np.asarray(sizes)
    return (arr[..., 0] >= 1) & (arr[..., 1] >= 1)


def num_patches(height: int, width: int, sizes) -> np.ndarray:
    """Number of patches (= DReLUs) per channel of an ``height x width`` map; 0 for identity/zero."""
    arr = np.asarray(sizes, dtype=np.int64)
    bh = np.maximum(arr[..., 0], 1)
    bw = np.maximum(arr[..., 1], 1)
    n = (-(-height // bh)) * (-(-width // bw))
    return np.where(is_patch(arr), n, 0)


def drelu_count(height: int, width: int, sizes) -> int:
    """Total DReLUs of one image for a layer with per-channel ``sizes`` on an ``height x width`` map."""
    return int(np.sum(num_patches(height, width, sizes)))


def mult_count(height: int, width: int, sizes) -> int:
    """Elements multiplied by their patch's sign (``H*W`` per channel that is neither identity nor zero)."""
    return int(np.sum(is_patch(sizes))) * height * width


def default_candidates(height: int, width: int) -> np.ndarray:
    """Default candidate patch sizes for a ReLU layer on an ``height x width`` map.

    Follows the shape of the paper's lists (``paper_reference.md`` §3.3): ``(1, 1)`` first, then
    rectangles with sides in 1..8 (aspect ratio at most 8 for maps wider than 8 pixels, at most 2
    otherwise), then larger squares up to the whole map, then identity ``(0, 1)`` and zero ``(1, 0)``.
    Sizes larger than the map in either dimension are dropped, as are duplicates. A ``1 x 1`` map
    gets ``[(1, 1), (0, 1), (1, 0)]``.

    Returns:
      int32 array ``[n, 2]``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"map size must be positive, got {height}x{width}")
    d = min(height, width)
    max_aspect = 8 if d > 8 else 2
    sides = [s for s in range(1, 9) if s <= d]
    out: list[tuple[int, int]] = [RELU]
    for bh in sides:
        for bw in sides:
            if (bh, bw) != RELU and max(bh, bw) <= max_aspect * min(bh, bw):
                out.append((bh, bw))
    for s in (12, 16, 24, 32, 64, 128, 256):
        if s <= d:
            out.append((s, s))
    if d > 1:
        out.append((height, width))  # one DReLU per channel
    out += [IDENTITY, ZERO]
    seen: set[tuple[int, int]] = set()
    uniq = [c for c in out if not (c in seen or seen.add(c))]
    return np.asarray(uniq, dtype=np.int32)


def paper_candidates(height: int, width: int) -> np.ndarray:
    """Candidate patch sizes shaped like the paper's lists (``paper_reference.md`` §3.3).

    ``(1, 1)`` first; then ``bh x bw`` rectangles with sides from {1..6, 8, 10, 12, 16} (area at
    most 256) or, for maps whose size is a multiple of 7 but not a power of two, from
    {1..7, 10, 12, 14} (area at most 196), with aspect ratio at most 4 (8 for strips one or two
    pixels thin); then the squares ``d, d/2, d/4, ...`` larger than those sides, up to the whole
    map (``d = min(H, W)``); then identity ``(0, 1)`` and zero ``(1, 0)``. Maps of at most 8
    pixels use the sides that divide ``d`` (and 3 from 6 up). This reproduces the paper's list
    sizes approximately (e.g. 9 sizes for 4x4, 95 for 32x32, against the reference's 9 and 80);
    the reference's hand-written lists themselves are not copied.

    Returns:
      int32 array ``[n, 2]``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"map size must be positive, got {height}x{width}")
    d = min(height, width)
    if d == 1:
        return np.array([[1, 1], [0, 1], [1, 0]], np.int32)
    if d <= 8:
        sides = sorted({v for v in range(1, d + 1) if d % v == 0} | ({3} if d >= 6 else set()))
        area, aspect, thin_aspect = d * d, (2 if d <= 4 else 8), (2 if d <= 4 else 8)
    elif d % 7 == 0 and d & (d - 1):
        sides, area, aspect, thin_aspect = [1, 2, 3, 4, 5, 6, 7, 10, 12, 14], 196, 4, 8
    else:
        sides, area, aspect, thin_aspect = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16], 256, 4, 8
    sides = [v for v in sides if v <= d]
    out = [(1, 1)]
    for a in sides:
        for b in sides:
            lo, hi = min(a, b), max(a, b)
            if (a, b) != (1, 1) and a * b <= area and (hi <= aspect * lo or (lo <= 2 and hi <= thin_aspect * lo)):
                out.append((a, b))
    big, q = [], d
    while q > max(sides):
        big.append(q)
        q //= 2
    out += [(q, q) for q in sorted(big)]
    out += [(0, 1), (1, 0)]
    return np.asarray(out, np.int32)


CANDIDATE_LISTS = {"default": default_candidates, "paper": paper_candidates}
"""The named candidate lists: ``{name: fn(height, width) -> int32 [n, 2]}``."""


def candidate_list(name: str, height: int, width: int) -> np.ndarray:
    """The candidate list ``name`` (a key of :data:`CANDIDATE_LISTS`) for an ``height x width`` map."""
    try:
        fn = CANDIDATE_LISTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown candidate list {name!r}; expected one of {sorted(CANDIDATE_LISTS)}") from None
    return fn(height, width)


def fit_candidates(candidates, height: int, width: int) -> np.ndarray:
    """One given candidate list fitted to an ``height x width`` map.

    Patches larger than the map in either dimension are dropped (identity and zero are kept),
    duplicates are dropped, and ``(1, 1)`` is put first if missing (every layer can stay a ReLU).

    Raises:
      TypeError / ValueError: if ``candidates`` is not a valid ``[n, 2]`` list of patch sizes.
    """
    arr = validate_block_sizes(candidates, name="candidates")
    out: list[tuple[int, int]] = [] if any(tuple(c) == RELU for c in arr.tolist()) else [RELU]
    for bh, bw in arr.tolist():
        fits = not is_patch(np.array([bh, bw])) or (bh <= height and bw <= width)
        if fits and (bh, bw) not in out:
            out.append((bh, bw))
    return np.asarray(out, dtype=np.int32)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def patch_grid(height: int, width: int, bh: int, bw: int) -> tuple[int, int]:
    """Number of patch rows and columns for a ``bh x bw`` patch on an ``height x width`` map."""
    if bh < 1 or bw < 1:
        raise ValueError(f"patch sides must be >= 1, got ({bh}, {bw})")
    return _ceil_div(height, bh), _ceil_div(width, bw)


def patch_counts(height: int, width: int, bh: int, bw: int) -> np.ndarray:
    """Valid pixels per patch, shape ``[ceil(H/bh), ceil(W/bw)]`` (edge patches may be smaller)."""
    ph, pw = patch_grid(height, width, bh, bw)
    rows = np.minimum(bh, height - bh * np.arange(ph))
    cols = np.minimum(bw, width - bw * np.arange(pw))
    return np.outer(rows, cols).astype(np.int64)

