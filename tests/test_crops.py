"""Batched crop-and-resize (`pipeline/crops.py`) on CPU tensors, against timm's PIL geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from w2s_pipe.pipeline.data.crops import flip_where, resized_crops, size_groups


def smooth(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / rng.uniform(8, 30) + c) * np.cos(yy / rng.uniform(8, 30)) for c in range(3)], -1)
    return np.clip(base * 90 + 128, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["random", "imagenet"])
def test_size_groups_cover_every_image_once_and_bound_the_padding(kind):
    rng = np.random.default_rng(0)
    if kind == "random":
        sizes = [(int(h), int(w)) for h, w in rng.integers(50, 500, size=(255, 2))]
    else:  # ImageNet-like: long side 500, short side 300..500, either orientation
        short = rng.integers(300, 501, size=255)
        sizes = [(int(s), 500) if rng.random() < 0.7 else (500, int(s)) for s in short]
    sizes.append((3000, 4000))
    groups = size_groups(sizes, waste=0.5)
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    for g in groups:
        padded = max(sizes[i][0] for i in g) * max(sizes[i][1] for i in g) * len(g)
        assert len(g) == 1 or sum(sizes[i][0] * sizes[i][1] for i in g) >= 0.5 * padded
    assert [len(g) for g in groups if 255 in g] == [1]  # the huge one pads nobody else
    if kind == "imagenet":
        assert len(groups) <= 4


@pytest.mark.parametrize("resample", [Image.BILINEAR, Image.BICUBIC])
def test_a_box_resized_in_a_batch_matches_pil_crop_then_resize(resample):
    """timm's RandomResizedCrop is PIL's crop, then resize: the batched path gives each image its own
    box and is within 0.3 grey levels of that on average on smooth images, whatever the other images'
    sizes: at most 1 level with bicubic, 2 with PIL's bilinear (a triangle filter wider than our box
    average), 3 on the crop's outermost pixels (PIL filters only the cropped pixels; roi_align's
    bilinear samples also read those just outside the box, as an uncropped resize would)."""
    arrays = [smooth(120, 160, 0), smooth(90, 70, 1), smooth(200, 210, 2)]
    boxes = [(10, 5, 110, 85), (0, 0, 70, 90), (33, 17, 180, 199)]  # (left, top, right, bottom)
    images = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays]
    out = resized_crops(images, torch.tensor(boxes, dtype=torch.float32), (48, 40))
    assert out.shape == (3, 3, 48, 40) and out.dtype == torch.float32
    for a, box, got in zip(arrays, boxes, out):
        ref = np.asarray(Image.fromarray(a).crop(box).resize((40, 48), resample))
        diff = np.abs(got.permute(1, 2, 0).round().numpy() - ref)
        assert diff[1:-1, 1:-1].max() <= (1 if resample == Image.BICUBIC else 2) and diff.max() <= 3
        assert diff.mean() < 0.3


def test_flip_where_mirrors_only_the_chosen():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    y = flip_where(x, torch.tensor([True, False]))
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1])
