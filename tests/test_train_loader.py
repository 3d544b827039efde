"""The training stream: each sample's view is drawn from (seed, shard, key, pass) alone; a resumed
stream replays the uninterrupted one; the shuffle buffer holds encoded samples."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from w2s_pipe.pipeline.loaders.train_stream import TrainStream, batches_before, train_loader
from w2s_pipe.pipeline.views.params import TrainViews, seeded, view_seed
from w2s_pipe.pipeline.views.pixels import TrainAugment

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


CONFIG = {"input_size": [3, 16, 16], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}


def stream(digits_dir, augment=None, seed=3, **kw):
    urls = sorted(str(p) for p in digits_dir.glob("digits-transfer-*.tar"))
    augment = augment or TrainAugment(CONFIG, TrainViews(seed), "cpu")
    base = dict(augment=augment, image_fields=("png",), label_field="cls", need_labels=True, join=None, seed=seed,
                shuffle_buffer=100, batch_size=16)
    return TrainStream(urls, **{**base, **kw})


def views(s: TrainStream, workers: int, batches: int) -> list[tuple[tuple, tuple, torch.Tensor]]:
    """(shard, key, pass), view row, image of each sample of the first `batches` batches."""
    out = []
    for batch in itertools.islice(train_loader(s, workers, False), batches):
        out.extend((tuple(k), tuple(v.tolist()), img) for k, v, img in zip(batch["key"], batch["view"], batch["image"]))
    return out


def test_batches_before_follows_the_round_robin():
    for workers in (1, 2, 3):
        for step in range(12):
            made = [b % workers for b in range(step)]
            assert [batches_before(step, w, workers) for w in range(workers)] == [made.count(w) for w in range(workers)]


def test_a_view_depends_on_the_sample_not_on_ranks_workers_or_batch_size(digits_dir):
    """In-process at batch 13, 1 rank x 2 workers, 2 ranks x 1 worker: every (sample, pass) got the
    same view (plain data in the batch) and the same pixels in each."""
    one = {k: (v, img) for k, v, img in views(stream(digits_dir, batch_size=13), 0, 100)}
    assert len(one) == 1300 and len({k[:2] for k in one}) == 897 and {k[2] for k in one} == {0, 1}
    two_workers = views(stream(digits_dir), 2, 40)
    ranks = views(stream(digits_dir, rank=0, world_size=2), 1, 20) + views(stream(digits_dir, rank=1, world_size=2), 1, 20)
    for got in (two_workers, ranks):
        for key, view, image in got:
            assert view == one[key][0] and torch.equal(image, one[key][1]), key
    # another run seed, other views
    other = {k: v for k, v, _ in views(stream(digits_dir, seed=4), 0, 20)}
    assert sum(other[k] == one[k][0] for k in set(other) & set(one)) < 0.3 * len(set(other) & set(one))


def test_auto_augment_and_erasing_are_part_of_the_view(digits_dir):
    """With RandAugment and random erasing boxes, in-process and 2 loading processes at other batch
    sizes give each (sample, pass) the same pixels and the same erase box."""
    def augment():
        return TrainAugment(CONFIG, TrainViews(3, reprob=0.5, size=(16, 16)), "cpu", auto_augment="rand-m9-mstd0.5-inc1")

    one = {k: (v, img) for k, v, img in views(stream(digits_dir, augment=augment(), batch_size=10), 0, 20)}
    plain = {k: img for k, _, img in views(stream(digits_dir, batch_size=10), 0, 20)}
    assert sum(not torch.equal(one[k][1], plain[k]) for k in one) > 0.5 * len(one)  # the policy changed most
    assert 0.3 < np.mean([v[-2] > 0 for v, _ in one.values()]) < 0.7  # erase_height: half have a box
    for key, view, image in views(stream(digits_dir, augment=augment(), batch_size=8), 2, 20):
        if key in one:
            assert view == one[key][0] and torch.equal(image, one[key][1]), key


def test_views_differ_between_samples_and_passes():
    """Each (sample, pass) draws its own view: 2000 keys on a 375 x 500 image, all different; and
    each sample's view changes from one pass to the next."""
    draw = TrainViews(seed=0).draw
    first = [draw("s-000001.tar", f"k{i}", 0, 375, 500) for i in range(2000)]
    assert len(set(first)) == 2000
    assert sum(draw("s-000001.tar", f"k{i}", 1, 375, 500) == first[i] for i in range(2000)) == 0
    assert 0.4 < sum(v.flip for v in first) / 2000 < 0.6
    assert all(0 <= v.top and v.top + v.height <= 375 and 0 <= v.left and v.left + v.width <= 500 for v in first)


def test_crop_box_is_timms_random_resized_crop_for_the_same_draws(monkeypatch):
    """Fed the same uniform numbers, timm's RandomResizedCropAndInterpolation.get_params and
    views.crop_box choose the same box: attempts that do not fit, then one that does, and the
    centre-crop fallback when none fits."""
    from PIL import Image
    from timm.data import transforms as timm_transforms

    from w2s_pipe.pipeline.views.params import DRAWS, crop_box

    rng = np.random.default_rng(0)
    for height, width, scale in [(375, 500, (0.08, 1.0)), (60, 400, (0.9, 1.0)), (100, 100, (0.5, 1.0))]:
        for _ in range(200):
            u = rng.random(DRAWS)
            stream_of_u = iter(u)

            def uniform(a, b):
                return a + (b - a) * next(stream_of_u)

            def randint(a, b):
                return a + min(int(next(stream_of_u) * (b - a + 1)), b - a)

            monkeypatch.setattr(timm_transforms.random, "uniform", uniform)
            monkeypatch.setattr(timm_transforms.random, "randint", randint)
            ratio = (3 / 4, 4 / 3)
            expected = timm_transforms.RandomResizedCropAndInterpolation.get_params(
                Image.new("RGB", (width, height)), scale, ratio)
            # timm draws the area, then the log-ratio, then top and left only for a fitting attempt;
            # crop_box reads the same four numbers of each attempt in the same order.
            view = crop_box(_reorder(u, height, width, scale, ratio), height, width, scale, ratio)
            assert (view.top, view.left, view.height, view.width) == expected
            monkeypatch.undo()


def _reorder(u, height, width, scale, ratio):
    """timm consumes 2 numbers per failed attempt and 4 for the fitting one; crop_box reads attempt a
    at u[4a:4a+4]. Lay timm's sequence out in crop_box's slots."""
    import math

    out, it = np.zeros_like(u), iter(u)
    for a in range(10):
        area = height * width * (scale[0] + (scale[1] - scale[0]) * (ua := next(it)))
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * (ur := next(it)))
        w, h = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        out[4 * a: 4 * a + 2] = ua, ur
        if w <= width and h <= height:
            out[4 * a + 2: 4 * a + 4] = next(it), next(it)
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_started_at_step_s_replays_the_rest(digits_dir, workers):
    full = [k for k, _, _ in views(stream(digits_dir), workers, 70)]  # 1120 samples: into the second pass
    for start in (1, 5, 56):
        rest = [k for k, _, _ in views(stream(digits_dir, start_step=start), workers, 70 - start)]
        assert rest == full[16 * start:]


def test_the_shuffle_buffer_holds_encoded_samples(digits_dir):
    """The first batch of 8 decodes and augments 8 images, not the 500 waiting in the buffer."""
    calls = []
    real = TrainAugment(CONFIG, TrainViews(0), "cpu")

    def counting(*args):
        calls.append(1)
        return real(*args)

    next(iter(train_loader(stream(digits_dir, counting, shuffle_buffer=500, batch_size=8), 0, False)))
    assert len(calls) == 8


def draws(_):
    """What the three global generators give (timm's and torchvision's transforms use all three)."""
    return torch.tensor([random.random(), float(np.random.rand()), float(torch.rand(()))], dtype=torch.float64)


def test_seeded_leaves_the_callers_generators_alone():
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    first = seeded(draws, view_seed(1, "s.tar", "k", 0), None)
    assert torch.equal(first, seeded(draws, view_seed(1, "s.tar", "k", 0), None))
    assert not torch.equal(first, seeded(draws, view_seed(1, "s.tar", "k", 1), None))
    assert (torch.rand(3), random.random(), np.random.rand())[1:] == expected[1:]
