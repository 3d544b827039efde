"""Replayable mixing (views/mixing.py): each sample's mix a function of (seed, shard, key, pass, position)
with timm's distributions, applied by one function at any size; checked against timm's own box
and target code and against hand computations. CPU, float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from w2s_pipe.pipeline.views.mixing import MixPlan, MixRecipe, mix_pixels, plan, soft_targets


def test_a_plan_depends_on_seed_shard_key_and_pass_only_and_pairs_within_the_shard():
    recipe = MixRecipe(mixup=0.8, cutmix=1.0)
    a = plan(recipe, 0, "s.tar", "k3", 2, 3, 10)
    assert a == plan(recipe, 0, "s.tar", "k3", 2, 3, 10)
    assert a != plan(recipe, 0, "s.tar", "k3", 3, 3, 10) and a != plan(recipe, 1, "s.tar", "k3", 2, 3, 10)
    partners = [plan(recipe, 0, "s.tar", f"k{i}", p, i, 10).partner for i in range(10) for p in range(50)]
    assert all(0 <= j < 10 for j in partners) and all(j != i for i, j in zip(np.repeat(range(10), 50), partners))
    assert plan(recipe, 0, "s.tar", "k", 0, 0, 1).partner == -1  # a shard of one sample has no partner
    assert plan(MixRecipe(), 0, "s.tar", "k", 0, 0, 10).partner == -1  # mixing off


def test_the_mixes_follow_timms_distributions():
    recipe = MixRecipe(mixup=0.8, cutmix=1.0, prob=0.7, switch_prob=0.3)
    plans = [plan(recipe, 0, "s", f"k{i}", 0, i, 1000) for i in range(4000)]
    mixed = [p for p in plans if p.partner >= 0]
    assert abs(len(mixed) / len(plans) - 0.7) < 0.03
    cut = [p for p in mixed if p.cutmix]
    assert abs(len(cut) / len(mixed) - 0.3) < 0.03
    lam = np.array([p.lam for p in mixed if not p.cutmix])
    assert abs(lam.mean() - 0.5) < 0.02 and abs(lam.var() - 0.25 / (2 * 0.8 + 1)) < 0.01  # Beta(0.8, 0.8)
    only_cut = plan(MixRecipe(cutmix=1.0), 0, "s", "k", 0, 0, 10)
    assert only_cut.cutmix


def test_the_cutmix_box_is_timms_for_the_same_centre(monkeypatch):
    import timm.data.mixup as timm_mixup

    for lam, cy, cx, (h, w) in [(0.3, 0.5, 0.5, (24, 24)), (0.9, 0.05, 0.97, (32, 20)), (0.01, 0.99, 0.0, (7, 9))]:
        mine = MixPlan(1, True, lam, cy, cx).box(h, w)
        centres = iter([min(int(cy * h), h - 1), min(int(cx * w), w - 1)])
        monkeypatch.setattr(np.random, "randint", lambda low, high, size=None: next(centres))
        yl, yh, xl, xh = timm_mixup.rand_bbox((h, w), lam)
        assert mine == (yl, yh, xl, xh)
        row = MixPlan(1, True, lam, cy, cx).row(h, w)
        assert row[2] == pytest.approx(1 - (yh - yl) * (xh - xl) / (h * w))  # timm's correct_lam


def test_mix_pixels_blends_pastes_or_leaves_each_image_by_its_row():
    torch.manual_seed(0)
    a, b = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    cut = MixPlan(1, True, 0.5, 0.5, 0.5)
    rows = torch.tensor([MixPlan().row(8, 8), MixPlan(1, False, 0.3).row(8, 8), cut.row(8, 8)])
    out = mix_pixels(a, b, rows)
    assert torch.equal(out[0], a[0])
    torch.testing.assert_close(out[1], 0.3 * a[1] + 0.7 * b[1])
    top, bottom, left, right = cut.box(8, 8)
    expected = a[2].clone()
    expected[:, top:bottom, left:right] = b[2][:, top:bottom, left:right]
    assert torch.equal(out[2], expected) and 0 < (bottom - top) * (right - left) < 64


def test_soft_targets_are_timms_mixup_target_with_a_weight_per_sample():
    from timm.data.mixup import mixup_target

    labels, partners = torch.tensor([1, 4]), torch.tensor([4, 1])
    mine = soft_targets(labels, partners, torch.tensor([0.3, 0.7]), 6, smoothing=0.1)
    theirs = mixup_target(labels, 6, 0.3, 0.1)  # timm pairs sample i with N-1-i: here 1 with 4, one λ
    torch.testing.assert_close(mine[0], theirs[0])
    torch.testing.assert_close(mine.sum(1), torch.ones(2))


def test_a_stores_recipe_gives_its_mixing_and_predated_options_their_defaults():
    from w2s_pipe.storage.schema import views_meta

    old = {"views": {"k": 2, "seed": 0, "recipe": {"crop_scale": 0.6, "ratio": [0.75, 4 / 3], "hflip": 0.0}}}
    assert MixRecipe.from_recipe(views_meta(old)["recipe"]) == MixRecipe() and not MixRecipe().on
    mixed = {"views": {**old["views"], "recipe": {**old["views"]["recipe"], "cutmix": 1.0, "mixup_prob": 0.5}}}
    assert MixRecipe.from_recipe(views_meta(mixed)["recipe"]) == MixRecipe(cutmix=1.0, prob=0.5)
