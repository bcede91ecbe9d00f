"""jaxmpc.core.blocks: the patch-size encoding, its DReLU counts and the candidate lists.

What the module guarantees: which pairs are valid (and the error names the channel), the count
of patches (= DReLUs) and multiplied pixels per channel for any map (square or not, edge
patches included), the patch grid and the valid pixels per patch, and the candidate lists:
``(1, 1)`` first, identity and zero last, no duplicates, nothing larger than the map.
"""

import numpy as np
import pytest

from jaxmpc.core import blocks


def test_validate_block_sizes():
    ok = blocks.validate_block_sizes([[1, 1], [2, 3], [0, 1], [1, 0], [100, 1]])
    assert ok.dtype == np.int32 and ok.shape == (5, 2)
    assert blocks.validate_block_sizes(np.array([[2.0, 2.0]])).tolist() == [[2, 2]]  # integral floats
    assert blocks.validate_block_sizes(np.zeros((0, 2), np.int64)).shape == (0, 2)
    with pytest.raises(TypeError, match="integer array"):
        blocks.validate_block_sizes([[1.5, 1]])
    with pytest.raises(TypeError, match="integer array"):
        blocks.validate_block_sizes([[True, True]])
    with pytest.raises(TypeError, match="integer array"):
        blocks.validate_block_sizes([[np.nan, 1]])
    with pytest.raises(ValueError, match=r"expected shape \[C, 2\], got \(3,\)"):
        blocks.validate_block_sizes([1, 1, 1])
    with pytest.raises(ValueError, match="expected 3 channels, got 2"):
        blocks.validate_block_sizes([[1, 1], [1, 1]], 3)
    for bad, c in [([[1, 1], [0, 0]], 1), ([[0, 2]], 0), ([[2, 0]], 0), ([[1, 1], [1, 1], [-1, 3]], 2)]:
        with pytest.raises(ValueError, match=f"mine: channel {c} has patch size"):
            blocks.validate_block_sizes(bad, name="mine")


def test_counts_per_channel():
    sizes = np.array([[1, 1], [2, 2], [3, 2], [7, 5], [100, 100], [0, 1], [1, 0], [1, 5]])
    h, w = 7, 5
    assert blocks.is_patch(sizes).tolist() == [True] * 5 + [False, False, True]
    expected = [35, 4 * 3, 3 * 3, 1, 1, 0, 0, 7]
    assert blocks.num_patches(h, w, sizes).tolist() == expected
    assert blocks.drelu_count(h, w, sizes) == sum(expected)
    assert blocks.mult_count(h, w, sizes) == 6 * h * w
    # every patch count is the size of the patch grid
    for bh, bw in sizes[blocks.is_patch(sizes)]:
        assert int(np.prod(blocks.patch_grid(h, w, bh, bw))) == blocks.num_patches(h, w, [[bh, bw]])[0]


@pytest.mark.parametrize("h, w, bh, bw", [(7, 5, 2, 2), (8, 8, 3, 3), (4, 6, 4, 6), (1, 1, 1, 1), (5, 3, 9, 1)])
def test_patch_grid_and_counts(h, w, bh, bw):
    ph, pw = blocks.patch_grid(h, w, bh, bw)
    counts = blocks.patch_counts(h, w, bh, bw)
    assert counts.shape == (ph, pw) and counts.sum() == h * w  # the patches tile the map exactly
    assert counts[0, 0] == min(bh, h) * min(bw, w)  # patches start at the top-left corner
    assert counts.min() >= 1 and counts.max() <= bh * bw


def test_patch_grid_refuses_non_patches():
    for bh, bw in [(0, 1), (1, 0), (-1, 2)]:
        with pytest.raises(ValueError, match="patch sides must be >= 1"):
            blocks.patch_grid(4, 4, bh, bw)


@pytest.mark.parametrize("name", sorted(blocks.CANDIDATE_LISTS))
@pytest.mark.parametrize("h, w", [(1, 1), (2, 2), (4, 4), (7, 7), (8, 8), (14, 14), (32, 32), (56, 56), (8, 16),
                                  (3, 9), (1, 8)])
def test_candidate_lists(name, h, w):
    cand = blocks.candidate_list(name, h, w)
    assert cand.dtype == np.int32 and cand.ndim == 2 and cand.shape[1] == 2
    pairs = [tuple(c) for c in cand.tolist()]
    assert pairs[0] == blocks.RELU and pairs[-2:] == [blocks.IDENTITY, blocks.ZERO]
    assert len(set(pairs)) == len(pairs)
    blocks.validate_block_sizes(cand)
    patches = cand[blocks.is_patch(cand)]
    assert np.all(patches[:, 0] <= h) and np.all(patches[:, 1] <= w)
    if h == w == 1:
        assert pairs == [(1, 1), (0, 1), (1, 0)]
    assert np.array_equal(cand, blocks.CANDIDATE_LISTS[name](h, w))


def test_default_candidates_include_the_whole_map():
    assert (32, 32) in [tuple(c) for c in blocks.default_candidates(32, 32).tolist()]
    assert (8, 16) in [tuple(c) for c in blocks.default_candidates(8, 16).tolist()]


def test_paper_candidates_sizes():
    # the documented approximate sizes of the paper's lists
    assert len(blocks.paper_candidates(4, 4)) == 9
    assert len(blocks.paper_candidates(32, 32)) == 95


def test_candidate_list_errors():
    with pytest.raises(ValueError, match="unknown candidate list 'best'"):
        blocks.candidate_list("best", 4, 4)
    for fn in blocks.CANDIDATE_LISTS.values():
        with pytest.raises(ValueError, match="map size must be positive"):
            fn(0, 4)


def test_fit_candidates():
    got = blocks.fit_candidates([[2, 2], [8, 1], [0, 1], [2, 2], [1, 0], [4, 4]], 4, 6)
    assert got.tolist() == [[1, 1], [2, 2], [0, 1], [1, 0], [4, 4]]  # (1, 1) added, 8x1 and the duplicate dropped
    keep_order = blocks.fit_candidates([[2, 2], [1, 1]], 4, 4)
    assert keep_order.tolist() == [[2, 2], [1, 1]]
    assert blocks.fit_candidates([[9, 9]], 2, 2).tolist() == [[1, 1]]
    with pytest.raises(ValueError, match="candidates: channel 0 has patch size"):
        blocks.fit_candidates([[0, 0]], 4, 4)
