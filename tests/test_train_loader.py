"""The training stream: each sample's view is drawn from (seed, shard, key, pass) alone; a resumed
stream replays the uninterrupted one; the shuffle buffer holds encoded samples."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from w2s_pipe.pipeline.train_loader import TrainStream, batches_before, train_loader
from w2s_pipe.pipeline.views import seeded, view_seed

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def draws(image):
    """A probe transform: what the three global generators give it (timm's transforms use all three)."""
    return torch.tensor([random.random(), float(np.random.rand()), float(torch.rand(()))], dtype=torch.float64)


def stream(digits_dir, transform=draws, **kw):
    urls = sorted(str(p) for p in digits_dir.glob("digits-transfer-*.tar"))
    base = dict(transform=transform, image_fields=("png",), label_field="cls", need_labels=True, join=None, seed=3,
                shuffle_buffer=100, batch_size=16)
    return TrainStream(urls, **{**base, **kw})


def views(s: TrainStream, workers: int, batches: int) -> list[tuple[tuple, torch.Tensor]]:
    out = []
    for batch in itertools.islice(train_loader(s, workers, False), batches):
        out.extend((tuple(k), img) for k, img in zip(batch["key"], batch["image"]))
    return out


def test_batches_before_follows_the_round_robin():
    for workers in (1, 2, 3):
        for step in range(12):
            made = [b % workers for b in range(step)]
            assert [batches_before(step, w, workers) for w in range(workers)] == [made.count(w) for w in range(workers)]


def test_a_view_depends_on_the_sample_not_on_ranks_workers_or_batch_size(digits_dir):
    """One pass of 897 samples: 2 ranks x 1 worker, 1 rank x 2 workers, in-process with another batch
    size: every sample drew the same numbers in each, and no two samples drew the same."""
    one = dict(views(stream(digits_dir, batch_size=13), 0, 100))  # keys are (shard, key, pass)
    assert len(one) == 1300 and len({k[:2] for k in one}) == 897
    two_workers = views(stream(digits_dir), 2, 40)
    ranks = views(stream(digits_dir, rank=0, world_size=2), 1, 20) + views(stream(digits_dir, rank=1, world_size=2), 1, 20)
    for got in (two_workers, ranks):
        for key, value in got:
            torch.testing.assert_close(value, one[key], rtol=0, atol=0)
    drawn = [tuple(v.tolist()) for v in one.values()]
    assert len(set(drawn)) == len(drawn)  # every sample, and every pass of it, draws its own
    assert {k[2] for k in one} == {0, 1}


def test_timm_train_transform_gives_the_same_crop_whatever_the_workers(digits_dir):
    import timm.data

    transform = timm.data.create_transform(input_size=(3, 32, 32), is_training=True, hflip=0.5, scale=(0.08, 1.0),
                                           color_jitter=0.4)
    a = dict(views(stream(digits_dir, transform, batch_size=16), 0, 10))
    b = dict(views(stream(digits_dir, transform, batch_size=32), 2, 10))
    common = set(a) & set(b)
    assert len(common) > 50
    for key in common:
        assert torch.equal(a[key], b[key]), key
    # and the seed is what decides: another run seed, other crops
    c = dict(views(stream(digits_dir, transform, seed=4), 0, 10))
    assert sum(torch.equal(a[k], c[k]) for k in set(a) & set(c)) == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_started_at_step_s_replays_the_rest(digits_dir, workers):
    full = [k for k, _ in views(stream(digits_dir), workers, 70)]  # 1120 samples: into the second pass
    for start in (1, 5, 56):
        rest = [k for k, _ in views(stream(digits_dir, start_step=start), workers, 70 - start)]
        assert rest == full[16 * start:]


def test_the_shuffle_buffer_holds_encoded_samples(digits_dir):
    """The first batch of 8 decodes and augments 8 images, not the 500 waiting in the buffer."""
    calls = []

    def counting(image):
        calls.append(1)
        return torch.zeros(1)

    next(iter(train_loader(stream(digits_dir, counting, shuffle_buffer=500, batch_size=8), 0, False)))
    assert len(calls) == 8


def test_seeded_leaves_the_callers_generators_alone():
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    first = seeded(draws, view_seed(1, "s.tar", "k", 0), None)
    assert torch.equal(first, seeded(draws, view_seed(1, "s.tar", "k", 0), None))
    assert not torch.equal(first, seeded(draws, view_seed(1, "s.tar", "k", 1), None))
    assert (torch.rand(3), random.random(), np.random.rand())[1:] == expected[1:]
