"""In-memory membership pools: batched crop/flip, query views, presets and pool consistency checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.pool import MembershipPool, query_offsets, query_views, random_crop_flip


def _image_pool(n: int = 6, size: int = 8, seed: int = 0, augment: str = "none") -> MembershipPool:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    return MembershipPool(
        images, np.arange(n) % 3, [f"x{i}" for i in range(n)], augment, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    )


# --------------------------------------------------------------------------- pool: augmentation and views


def test_pool_rejects_inconsistent_or_duplicate_examples() -> None:
    images = torch.zeros((3, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match="3 inputs, 2 labels and 3 ids"):
        MembershipPool(images, np.zeros(2, dtype=np.int64), ["a", "b", "c"])
    with pytest.raises(ValueError, match="unique"):
        MembershipPool(images, np.zeros(3, dtype=np.int64), ["a", "b", "a"])


def test_random_crop_flip_is_a_window_of_the_zero_padded_image() -> None:
    n, size, pad = 64, 8, 2
    images = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    out = random_crop_flip(images, pad, torch.Generator().manual_seed(5))
    assert out.shape == images.shape and out.dtype == torch.uint8
    again = random_crop_flip(images, pad, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)  # same generator state, same crops
    padded = F.pad(images, (pad,) * 4)
    found = []
    for i in range(n):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, :, dy : dy + size, dx : dx + size].flip(-1)
                if flip
                else padded[i, :, dy : dy + size, dx : dx + size],
            )
        ]
        assert len(matches) == 1, f"image {i}: output is no (unique) window of the padded image: {matches}"
        found.append(matches[0])
    offsets = {(dy, dx) for dy, dx, _ in found}
    flips = {flip for _, _, flip in found}
    assert len(offsets) > 5 and flips == {False, True}  # crops really vary per image
    assert any(dy != pad or dx != pad for dy, dx, _ in found)  # zero border shows up in some crops
    # One image against a direct slice: shifted window, zero rows/columns where it leaves the image.
    dy, dx, flip = found[0]
    direct = torch.zeros_like(images[0])
    src = images[0]
    ys, xs = dy - pad, dx - pad  # shift of the window relative to the image
    rows = slice(max(0, -ys), size - max(0, ys))
    cols = slice(max(0, -xs), size - max(0, xs))
    direct[:, rows, cols] = src[:, max(0, ys) : size + min(0, ys), max(0, xs) : size + min(0, xs)]
    assert torch.equal(out[0], direct.flip(-1) if flip else direct)


def test_training_inputs_shapes_and_presets() -> None:
    pool = _image_pool(n=6)
    positions = torch.tensor([[0, 1, 2], [3, 4, 5]])
    x = pool.training_inputs(positions, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 3, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x[1, 2], pool.normalise(pool.inputs[5]))  # 'none': normalised, no augmentation
    cifar = _image_pool(n=6, augment="cifar")
    y = cifar.training_inputs(positions, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    with pytest.raises(ValueError, match="needs the source's training transform"):
        _image_pool(augment="tckr").training_inputs(positions, torch.Generator().manual_seed(0))
    features = MembershipPool(torch.randn(5, 7), np.zeros(5, dtype=np.int64), list("abcde"))
    f = features.training_inputs(torch.tensor([[4, 0]]), torch.Generator())
    assert f.shape == (1, 2, 7)
    torch.testing.assert_close(f[0, 0], features.inputs[4])


def test_query_views() -> None:
    pool = _image_pool(n=5)
    positions = torch.tensor([3, 1])
    expected = pool.normalise(pool.inputs[positions])
    assert [len(query_offsets(k)) for k in ("none", "mirror", "mirror_shifts")] == [1, 2, 18]

    none = query_views(pool, positions, "none")
    assert none.shape == (2, 1, 3, 8, 8)
    torch.testing.assert_close(none[:, 0], expected)

    mirror = query_views(pool, positions, "mirror")
    assert mirror.shape == (2, 2, 3, 8, 8)
    torch.testing.assert_close(mirror[:, 0], expected)
    torch.testing.assert_close(mirror[:, 1], mirror[:, 0].flip(-1))
    assert not torch.equal(mirror[:, 1], mirror[:, 0])

    shifts = query_views(pool, positions, "mirror_shifts")
    assert shifts.shape == (2, 18, 3, 8, 8)
    offsets = query_offsets("mirror_shifts")
    torch.testing.assert_close(shifts[:, offsets.index((False, 0, 0))], expected)
    torch.testing.assert_close(shifts[:, offsets.index((True, 0, 0))], expected.flip(-1))
    down = shifts[:, offsets.index((False, 1, 0))]  # one pixel down: rows 1.. of the image, reflected last row
    torch.testing.assert_close(down[..., :-1, :], expected[..., 1:, :])
    torch.testing.assert_close(down[..., -1, :], expected[..., -2, :])
    right = shifts[:, offsets.index((False, 0, -1))]  # one pixel the other way: reflected first column
    torch.testing.assert_close(right[..., :, 1:], expected[..., :, :-1])
    torch.testing.assert_close(right[..., :, 0], expected[..., :, 1])
    assert len({tuple(o) for o in offsets}) == 18

    features = MembershipPool(torch.randn(4, 6), np.zeros(4, dtype=np.int64), list("abcd"))
    views = query_views(features, torch.tensor([2, 0]), "none")
    assert views.shape == (2, 1, 6)
    torch.testing.assert_close(views[:, 0], features.inputs[[2, 0]])
    for kind in ("mirror", "mirror_shifts"):
        with pytest.raises(ValueError, match="feature pools need 'none'"):
            query_views(features, torch.tensor([0]), kind)
