"""Batched crop-and-resize (`pipeline/crops.py`) on CPU tensors, against timm's PIL geometry."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from w2s_pipe.pipeline.image.crops import flip_where, resized_crops, size_groups


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


def test_erase_boxes_are_drawn_as_timms_random_erasing():
    """--reprob: the box of each sample's view has timm's RandomErasing distribution (its share of
    the image and its shape, against timm's own on 3000 images), with the given probability, and
    leaves the crop and flip as they were."""
    import dataclasses

    from timm.data.random_erasing import RandomErasing

    from w2s_pipe.pipeline.views.params import TrainViews

    size = (32, 40)
    views, plain = TrainViews(0, reprob=0.25, hflip=0.5, size=size), TrainViews(0, hflip=0.5, size=size)
    drawn = [views.draw("s", str(k), 0, 50, 60) for k in range(3000)]
    assert [dataclasses.replace(v, erase_top=0, erase_left=0, erase_height=0, erase_width=0, erase_key=0)
            for v in drawn[:200]] == \
        [plain.draw("s", str(k), 0, 50, 60) for k in range(200)]
    erased = [v for v in drawn if v.erase_height]
    assert 0.22 < len(erased) / len(drawn) < 0.28
    assert all(0 <= v.erase_top and v.erase_top + v.erase_height <= size[0] and 0 <= v.erase_left
               and v.erase_left + v.erase_width <= size[1] for v in erased)
    ours = torch.tensor([[v.erase_height * v.erase_width / (size[0] * size[1]), v.erase_height / v.erase_width]
                         for v in erased])
    timm_erase = RandomErasing(probability=1.0, mode="const", device="cpu")
    random.seed(0)
    theirs = []
    for _ in range(3000):
        image = timm_erase(torch.ones(3, *size))
        rows, cols = (image[0] == 0).any(1).sum().item(), (image[0] == 0).any(0).sum().item()
        theirs.append([rows * cols / (size[0] * size[1]), rows / cols])
    theirs = torch.tensor(theirs)
    assert abs(ours[:, 0].mean() - theirs[:, 0].mean()) < 0.01  # mean share of the image, about 0.17
    assert abs(ours[:, 1].log().mean() - theirs[:, 1].log().mean()) < 0.1  # shape: log aspect about 0
    assert abs(ours[:, 0].std() - theirs[:, 0].std()) < 0.01


def test_erase_where_fills_each_box_with_its_views_noise_and_nothing_else():
    """The noise is N(0, 1), inside the box only, and a function of the view's erase_key alone: the
    same view erased in another batch (other neighbours, other position) gets the same pixels, and
    another key other noise."""
    from w2s_pipe.pipeline.views.erasing import erase_where, view_noise
    from w2s_pipe.pipeline.views.params import View

    boxed = View(0, 0, 1, 1, False, 1, 1, 4, 6, 20, 30, erase_key=12345)
    rows = torch.tensor([View(0, 0, 1, 1, False, 1, 1).as_row(), boxed.as_row()])
    images = torch.full((2, 3, 32, 40), 7.0)
    out = erase_where(images.clone(), rows)  # in place: a copy, to compare
    assert torch.equal(out[0], images[0])  # no box
    inside = torch.zeros(32, 40, dtype=torch.bool)
    inside[4:24, 6:36] = True
    assert torch.equal(out[1][:, ~inside], images[1][:, ~inside])
    noise = out[1][:, inside]
    assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1  # N(0, 1) in the normalised space, as timm's
    alone = erase_where(torch.full((1, 3, 32, 40), -1.0), torch.tensor([boxed.as_row()]))
    assert torch.equal(alone[0][:, inside], noise)  # another batch, the same view: the same noise
    assert torch.equal(view_noise(torch.tensor([12345]), (3, 32, 40), "cpu")[0][:, inside], noise)
    other = erase_where(images.clone(), torch.tensor([rows[0].tolist(), View(**{**boxed.__dict__, "erase_key": 1}).as_row()]))
    assert not torch.allclose(other[1][:, inside], noise)
    unboxed = rows.clone()
    unboxed[1, 10] = 0  # erase_height 0: nothing to erase
    assert torch.equal(erase_where(images.clone(), unboxed), images)
    big = view_noise(torch.arange(8), (3, 64, 64), "cpu")
    assert abs(big.mean()) < 0.02 and abs(big.std() - 1) < 0.02 and big.abs().max() < 6.5
    pairs = torch.corrcoef(big.flatten(1))[~torch.eye(8, dtype=torch.bool)]
    assert pairs.abs().max() < 0.05  # no two keys' noise alike (nor shifted copies: hashed apart)