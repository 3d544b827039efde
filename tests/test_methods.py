"""The methods after the paper (issue 28), each against its formula on a small hand-computed case,
then as runs: learned ensemble weights (global and per sample), the easy-sample start, the
evidential loss, co-supervision by class specialists (`train --classes`), fine-tuned and as probes."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, resume_against_whole, same_weights
from scipy.special import digamma, gammaln

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.losses import functional as L
from w2s_pipe.pipeline.train.losses import objective
from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.pipeline.weak.members import Members, class_owner, simplex_step
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.stages.train import TrainConfig, run_train
from w2s_pipe.storage import open_store


def softmax(x):
    z = np.exp(np.asarray(x, float) - np.max(x, axis=-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_simplex_step_is_the_euclidean_projection():
    w = simplex_step(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 3.0]]), 0.1)
    torch.testing.assert_close(w, torch.tensor([[0.6, 0.4]]))  # (0.4, 0.2) + theta 0.1
    # a step larger than the weights still moves by the members' difference (RAVEN's clamp would give 0.5, 0.5)
    big = simplex_step(torch.tensor([[0.5, 0.5]]), torch.tensor([[2.6, 2.4]]), 0.5)
    torch.testing.assert_close(big, torch.tensor([[0.45, 0.55]]))
    corner = simplex_step(torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([[0.0, 0.0, 9.0]]), 0.1)
    torch.testing.assert_close(corner, torch.tensor([[0.45, 0.55, 0.0]]))  # (0.2, 0.3, -0.4): theta -0.25
    assert torch.allclose(simplex_step(torch.rand(50, 4), torch.randn(50, 4), 0.3).sum(-1), torch.ones(50))


def test_learned_weights_combine_probabilities_and_step_on_each_members_cross_entropy():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    members = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]],
                            [[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]])  # (B=2, M=2, C=3)
    method = Members("learned", 2, lr=0.2)
    weak, mask, parts = method(student, members, epoch=0)
    p = softmax(members.numpy())
    np.testing.assert_allclose(weak.exp().numpy(), 0.5 * p[:, 0] + 0.5 * p[:, 1], rtol=1e-6)  # start: uniform
    assert mask is None and parts["ens_w0"] == pytest.approx(0.5)
    log_ps = np.log(softmax(student.numpy()))
    ce = -(p * log_ps[:, None, :]).sum(-1)  # (B, M): CE(s, softmax(z_m))
    w = 0.5 - 0.2 * ce.mean(0)
    np.testing.assert_allclose(method.weights[0].numpy(), w - (w.sum() - 1) / 2, rtol=1e-5)  # projected (interior)
    assert method.weights[0, 0] > method.weights[0, 1]  # member 0 explains this student better
    # per sample: only the batch's rows move, each on its own sample's cross-entropy
    per = Members("learned-sample", 2, lr=0.2, rows=5)
    per(student, members, epoch=0, ids=torch.tensor([3, 1]))
    for row, i in ((3, 0), (1, 1)):
        w = 0.5 - 0.2 * ce[i]
        np.testing.assert_allclose(per.weights[row].numpy(), np.clip(w - (w.sum() - 1) / 2, 0, 1), rtol=1e-5,
                                   atol=1e-7)
    assert torch.equal(per.weights[[0, 2, 4]], torch.full((3, 2), 0.5))
    restored = Members("learned-sample", 2, rows=5)
    restored.load_state_dict(per.state_dict())
    assert torch.equal(restored.weights, per.weights)


def test_the_easy_start_keeps_only_agreeing_samples_and_freezes_the_weights():
    student = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    members = torch.tensor([[[3.0, 0.0, 0.0], [2.0, 0.0, 0.0]],  # agree on class 0
                            [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])  # disagree
    method = Members("learned", 2, lr=0.5, easy_epochs=2)
    _, mask, parts = method(student, members, epoch=1)
    assert mask.tolist() == [1.0, 0.0] and parts["easy_kept"] == 0.5
    assert torch.equal(method.weights, torch.full((1, 2), 0.5))  # frozen during the easy start
    _, mask, _ = method(student, members, epoch=2)
    assert mask is None and not torch.equal(method.weights, torch.full((1, 2), 0.5))
    # in the objective the mask multiplies the per-sample loss (mean over the batch)
    f = objective("hard", members=Members("mean-prob", 2, easy_epochs=1))
    loss, _ = f(student, members, None, 0.0, 0)
    ce = torch.nn.functional.cross_entropy(student, torch.tensor([0, 0]), reduction="none")  # mean-prob's argmax
    assert loss.item() == pytest.approx((ce[0] * 1 + ce[1] * 0).item() / 2)


def test_a_specialist_labels_the_classes_it_holds_and_counts_where_the_student_agrees():
    members = torch.tensor([[[5.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]],
                            [[5.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]]])
    student = torch.tensor([[0.0, 0.0, 3.0, 1.0],  # argmax 2: member 1 (classes 2-3), whose argmax 3 is its top-2
                            [1.0, 3.0, 0.0, 0.0]])  # argmax 1: member 0 (classes 0-1), argmax 0 in its top-2
    method = Members("specialist", 2, classes=[[0, 1], [2, 3]], num_classes=4, topk=2)
    weak, mask, parts = method(student, members, epoch=0)
    assert torch.equal(weak, torch.stack([members[0, 1], members[1, 0]]))
    assert mask.tolist() == [1.0, 1.0] and parts["agreed"] == 1.0
    # --specialist-by: an earlier student's stored output, after the members, assigns and agrees instead
    earlier = torch.tensor([[4.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 5.0]])  # argmax 0 (member 0), 3 (member 1)
    by = Members("specialist", 2, classes=[[0, 1], [2, 3]], num_classes=4, topk=1, assigner=True)
    weak, mask, _ = by(student, torch.cat([members, earlier[:, None]], 1), epoch=0)
    assert torch.equal(weak, torch.stack([members[0, 0], members[1, 1]])) and mask.tolist() == [1.0, 1.0]
    strict = Members("specialist", 2, classes=[[0, 1], [2, 3]], num_classes=4, topk=1)
    assert strict(student, members, epoch=0)[1].tolist() == [0.0, 0.0]
    with pytest.raises(W2SError, match="class 1 is held by members 1 and 2"):
        class_owner([[0, 1], [1, 2, 3]], 4)
    with pytest.raises(W2SError, match="class 3 is held by no member"):
        class_owner([[0, 1], [2]], 4)


def _edl_by_hand(s, y, anneal):
    alpha = np.maximum(s, 0) + 1
    total = alpha.sum()
    nll = np.log(total) - np.log(alpha[y])
    a = alpha.copy()
    a[y] = 1.0  # (alpha - 1)(1 - y) + 1
    kl = (gammaln(a.sum()) - gammaln(a).sum() - gammaln(len(a))
          + ((a - 1) * (digamma(a) - digamma(a.sum()))).sum())
    return nll + anneal * kl


def test_the_evidential_loss_is_its_formula():
    s = np.array([2.0, -1.0, 0.5])
    members = np.array([[0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])  # argmax 1 and 2
    gamma, progress = 0.3, 0.4
    expected = (1 - gamma) * (_edl_by_hand(s, 1, progress) + _edl_by_hand(s, 2, progress)) \
        + gamma * _edl_by_hand(s, 0, progress)
    loss, parts = L.evidential(torch.tensor(s[None]), torch.tensor(members[None]), gamma, progress)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert _edl_by_hand(s, 0, 0.0) == pytest.approx(math.log(5.5 / 3))  # alpha (3, 1, 1.5)
    # through the objective: one store is one member, the knob is --evidential-gamma
    f = objective("evidential", evidential_gamma=gamma)
    one, _ = f(torch.tensor(s[None]), torch.tensor(members[:1]), None, progress)
    assert one.item() == pytest.approx((1 - gamma) * _edl_by_hand(s, 1, progress) + gamma * _edl_by_hand(s, 0, progress),
                                       rel=1e-5)


def test_bad_pairings_of_methods_are_one_line_each():
    cases = [
        (dict(labels="a", ensemble="learned"), "--ensemble learned combines several stores"),
        (dict(labels="a", easy_epochs=2), "--easy-epochs trains first on the samples several teachers agree on"),
        (dict(labels="a,b", loss="evidential", ensemble="vote"), "reads each --labels store on its own"),
        (dict(labels="a,b", ensemble="learned", mixup=0.2), "mix one weak output per sample"),
        (dict(labels="a,b", ensemble="vote", ensemble_lr=0.3), "--ensemble-lr is the step size"),
        (dict(labels="a,b", specialist_topk=2), "--specialist-topk and --specialist-by are co-supervision's"),
        (dict(labels="a,b", specialist_by="s"), "--specialist-topk and --specialist-by are co-supervision's"),
        (dict(loss="hard", classes="0-4"), "give --loss gt"),
        (dict(loss="gt", classes="4-1"), "'4-1' is not a class index or a range"),
    ]
    for options, message in cases:
        with pytest.raises(W2SError, match=message):
            TrainConfig.tiny(**options)


@pytest.fixture
def two_stores(workspace_store, tmp_path):
    other = run_label(LabelConfig.tiny(weak_checkpoint=make_checkpoint(tmp_path / "weak2.pt", seed=3),
                                       labels=str(tmp_path / "second"))).store
    return workspace_store, other


def test_learned_weights_train_with_the_student_and_resume_exactly(two_stores):
    """Fine-tuning: per-sample weights reach the step through the stream (each sample's id), are saved
    in last.pt and restored by --resume (the uninterrupted run's weights and ensemble weights)."""
    a, b = two_stores
    options = dict(labels=f"{a},{b}", ensemble="learned-sample", ensemble_lr=0.5, epochs=2)
    whole, split = resume_against_whole(3, **options)
    assert same_weights(whole.run_dir, split.run_dir)
    saved = [torch.load(os.path.join(r.run_dir, "last.pt"), weights_only=True)["members"]["weights"]
             for r in (whole, split)]
    assert torch.equal(saved[0], saved[1])
    n = sum(s["count"] for s in open_store(a).shards)
    assert saved[0].shape == (n, 2) and (saved[0] != 0.5).any(1).sum() > n // 2  # most rows moved
    end = read_metrics(whole.run_dir)[-1]
    assert end["kind"] == "end" and len(end["ensemble_weights"]) == 2
    steps = read_metrics(whole.run_dir)
    assert any("ens_w0" in r for r in steps if r.get("kind") == "step")


def test_specialists_trained_on_class_subsets_co_supervise(digits_data, tmp_path):
    """`train --classes` trains a weak teacher on some classes; `label` records them; `train
    --ensemble specialist` reads them, and refuses a generalist member."""
    stores = []
    for part, classes in enumerate(("0-4", "5-9")):
        run = run_train(TrainConfig.tiny(loss="gt", data="digits", split="weak", classes=classes, epochs=1,
                                         run=f"specialist{part}", no_eval=True))
        config = json.load(open(os.path.join(run.run_dir, "config.json")))
        assert config["classes"] == classes
        n_kept = run.step * 32
        assert 0 < n_kept <= 400  # about half of the weak split's samples
        store = run_label(LabelConfig.tiny(weak_checkpoint=os.path.join(run.run_dir, "last.pt"),
                                           labels=str(tmp_path / f"s{part}")))
        assert open_store(store.store).attrs["weak"]["classes"] == list(range(5 * part, 5 * part + 5))
        stores.append(store.store)
    result = run_train(TrainConfig.tiny(labels=",".join(stores), ensemble="specialist", loss="hard", run="csl"))
    records = read_metrics(result.run_dir)
    assert result.finished and all(0 <= r["agreed"] <= 1 for r in records if r.get("kind") == "step")
    # as CSL: assigned by an earlier student's labels of the same shards (this run's, labelled)
    earlier = run_label(LabelConfig.tiny(weak_checkpoint=os.path.join(result.run_dir, "last.pt"),
                                         labels=str(tmp_path / "earlier"))).store
    by = run_train(TrainConfig.tiny(labels=",".join(stores), ensemble="specialist", specialist_by=earlier,
                                    loss="hard", run="csl-by"))
    config = json.load(open(os.path.join(by.run_dir, "config.json")))
    assert by.finished and config["data_source"]["ensemble"]["specialist_by"]["store"] == earlier
    generalist = run_label(LabelConfig.tiny(weak_checkpoint=make_checkpoint(tmp_path / "g.pt"),
                                            labels=str(tmp_path / "g"))).store
    with pytest.raises(W2SError, match="was trained on every class"):
        run_train(TrainConfig.tiny(labels=f"{stores[0]},{generalist}", ensemble="specialist", run="bad"))
    with pytest.raises(W2SError, match="--classes 12 is outside the data's 10 classes"):
        run_train(TrainConfig.tiny(loss="gt", data="digits", classes="3,12", run="outside"))
