"""The optimizer's weight-decay groups and the learning-rate schedule, alone and inside a real run."""

from __future__ import annotations

import math
import os

import pytest
import timm
import torch

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.train.optim import Schedule, ScheduleSpec, build_optimizer
from w2s_pipe.pipeline.train.runs import read_metrics


def decay_groups(optimizer) -> list[tuple[float, int]]:
    """(weight decay, number of tensors) of each parameter group."""
    return [(float(g.get("weight_decay", 0.0)), len(g["params"])) for g in optimizer.param_groups]


def no_decay_names(model, optimizer) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}


def test_vit_decays_only_its_matrices():
    model = timm.create_model("test_vit", num_classes=10, img_size=32)
    optimizer = build_optimizer(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    exempt = no_decay_names(model, optimizer)
    assert {"pos_embed", "cls_token"} <= exempt
    for name, p in model.named_parameters():
        assert (name in exempt) == (p.ndim <= 1 or name in {"pos_embed", "cls_token"}), name
    assert sorted(decay_groups(optimizer)) == sorted([(0.0, len(exempt)), (0.05, sum(1 for _ in model.parameters()) - len(exempt))])


def test_linear_probe_decays_the_head_weight_only():
    model = timm.create_model("test_resnet", num_classes=10)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc."))
    optimizer = build_optimizer(model, opt="sgd", lr=0.1, weight_decay=1e-4)
    assert sorted(decay_groups(optimizer)) == [(0.0, 1), (1e-4, 1)]
    assert no_decay_names(model, optimizer) == {"fc.bias"}


def schedule(**spec):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.pop("lr", 0.1))
    return Schedule(optimizer, ScheduleSpec(**spec))


def test_cosine_warms_up_inside_the_run_and_ends_on_min_lr():
    s = schedule(sched="cosine", total_steps=100, warmup_steps=20, warmup_lr=1e-4, min_lr=1e-3)
    lrs = [s.apply(k) for k in range(100)]
    assert lrs[0] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:20]))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))  # then the cosine falls
    assert lrs[-1] == pytest.approx(1e-3)  # the last step trains at the floor
    # Warm-up inside the run: the cosine is evaluated at the global step, as the official configs do.
    assert lrs[20] == pytest.approx(1e-3 + 0.5 * (0.1 - 1e-3) * (1 + math.cos(math.pi * 20 / 99)))


def test_step_schedule_decays_every_interval():
    s = schedule(sched="step", total_steps=90, decay_steps=30, decay_rate=0.5)
    assert [s.apply(k) for k in (0, 29, 30, 59, 60, 89)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_apply_sets_the_rate_of_that_step_whatever_came_before():
    s = schedule(sched="cosine", total_steps=10, warmup_steps=2, warmup_lr=0.0)
    in_order = [s.apply(k) for k in range(10)]
    for k in (9, 0, 5, 3, 5):  # any order: a function of the step alone, as a resumed run needs
        assert s.apply(k) == s.optimizer.param_groups[0]["lr"] == in_order[k]
    assert len(set(in_order)) == 9  # steps 0 and 9 both at 0: the warm-up start and the floor


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(W2SError, match="warm-up .* must be shorter than the run"):
        ScheduleSpec(total_steps=10, warmup_steps=10)


def test_a_run_logs_the_rate_each_step_used(digits_data, tmp_path):
    """--epochs 4 --warmup-epochs 1: step 1 trains at --warmup-lr, the last step at --min-lr."""
    from w2s_pipe.stages.train import TrainConfig, run_train

    result = run_train(TrainConfig.tiny(strong="test_vit", loss="gt", data="digits", split="weak", epochs=4,
                                        steps_per_epoch=3, warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5, lr=1e-3,
                                        log_every=1, no_eval=True, run="sched"))
    records = read_metrics(result.run_dir)
    lrs = [r["lr"] for r in records if r["kind"] == "step"]
    assert len(lrs) == 12
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-5)
    assert max(lrs) <= 1e-3 and lrs[3] > lrs[2]  # the end of the warm-up is the top
    # The saved optimizer has timm's two groups: the ViT's tokens, biases and norms undecayed.
    saved = torch.load(os.path.join(result.run_dir, "last.pt"), weights_only=True)["optimizer"]
    decays = sorted(g["weight_decay"] for g in saved["param_groups"])
    assert decays == [0.0, 0.05]
