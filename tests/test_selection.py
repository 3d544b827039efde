"""Choosing which weak labels to trust (`train --select`, `--keep-frac --rank-by [--per-class]`):
the kept sets against an independent pyarrow / numpy computation, the training stream against the
kept keys, and the run's record.

Device: the CPU, fp32 (the end-to-end run); the rest is table arithmetic."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from launch import torchrun

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.pipeline.weak.selection import choose, most_trusted, selected
from w2s_pipe.stages.train import TrainConfig, run_train
from w2s_pipe.storage import open_store


def index_table(n=400, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    confidence = np.round(rng.uniform(0.2, 1.0, n), 2)  # rounded: ties to break
    return pa.table({
        "key": [f"k{i:04d}" for i in range(n)],
        "shard": [f"s{i // 100}" for i in range(n)],
        "row": pa.array(np.arange(n) + 28 * (np.arange(n) // 100), pa.int64()),  # shards of 100 rows, capacity 128
        "pred": pa.array(rng.integers(0, classes, n), pa.int32()),
        "confidence": pa.array(confidence, pa.float32()),
        "margin": pa.array(np.round(confidence * rng.uniform(0, 1, n), 2), pa.float32()),
        "entropy": pa.array(np.round(rng.uniform(0, 1.6, n), 2), pa.float32()),
        "label": pa.array(rng.integers(0, classes, n), pa.int32()),
    })


@pytest.mark.parametrize("text,reference", [
    ("confidence >= 0.6", lambda t: pc.greater_equal(t["confidence"], 0.6)),
    ("margin > 0.2 AND pred != 3", lambda t: pc.and_(pc.greater(t["margin"], 0.2), pc.not_equal(t["pred"], 3))),
    ("NOT (pred = 1 OR pred = 2) and entropy < .5",
     lambda t: pc.and_(pc.invert(pc.or_(pc.equal(t["pred"], 1), pc.equal(t["pred"], 2))), pc.less(t["entropy"], 0.5))),
    ("pred = label", lambda t: pc.equal(t["pred"], t["label"])),
    ("shard <> 's1' OR margin<=-1e3", lambda t: pc.not_equal(t["shard"], "s1")),
])
def test_select_keeps_what_an_independent_pyarrow_computation_keeps(text, reference):
    table = index_table()
    expected = reference(table).to_numpy(zero_copy_only=False)
    assert 0 < expected.sum() < table.num_rows  # the case can fail either way
    assert np.array_equal(selected(table, text), expected)


@pytest.mark.parametrize("text,match", [
    ("confidnce > 0.5", r"no column 'confidnce'; the columns are key, shard, row, pred, confidence, margin, entropy, label"),
    ("(margin > 0.2", r"it ends too soon|a '\(' is not closed"),
    ("margin > 0.2 pred", "unexpected 'pred'"),
    ("margin > ; 3", "cannot read it from '; 3' on"),
    ("confidence > 'high'", r"--select \"confidence > 'high'\": "),
    ("", "--select is empty"),
])
def test_a_bad_select_is_one_line_naming_it(text, match):
    with pytest.raises(W2SError, match=match) as raised:
        selected(index_table(), text)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("rank_by", ["margin", "confidence", "entropy"])
@pytest.mark.parametrize("per_class", [False, True])
def test_keep_frac_keeps_the_most_trusted_with_ties_to_the_earlier_row(rank_by, per_class):
    table = index_table()
    candidates = selected(table, "pred != 4")  # --keep-frac ranks what --select left
    got = most_trusted(table, candidates, 0.3, rank_by, per_class)
    score = table[rank_by].to_numpy().astype(np.float64)
    pred = table["pred"].to_numpy()
    expected = np.zeros(table.num_rows, dtype=bool)
    for group in ([set(range(4))] if not per_class else [{c} for c in range(4)]):
        rows = [i for i in range(table.num_rows) if candidates[i] and pred[i] in group]
        # most trusted first; among equal scores the earlier row
        rows.sort(key=lambda i: (-score[i] if rank_by != "entropy" else score[i], i))
        expected[rows[:math.ceil(0.3 * len(rows))]] = True
    assert np.array_equal(got, expected)
    assert not got[pred == 4].any()
    if per_class:
        for c in range(4):
            assert got[pred == c].sum() == math.ceil(0.3 * (candidates & (pred == c)).sum())
    # One ranking serves every fraction (inspect's curve): each the same as ranked afresh by hand.
    from w2s_pipe.pipeline.weak.selection import Ranking

    ranking = Ranking(table, candidates, rank_by, per_class)
    for frac in (0.05, 0.5, 0.71, 1.0):
        by_hand = np.zeros(table.num_rows, dtype=bool)
        for group in ([set(range(4))] if not per_class else [{c} for c in range(4)]):
            rows = sorted((i for i in range(table.num_rows) if candidates[i] and pred[i] in group),
                          key=lambda i: (-score[i] if rank_by != "entropy" else score[i], i))
            by_hand[rows[:math.ceil(frac * len(rows) - 1e-9)]] = True
        assert np.array_equal(ranking.keep(frac), by_hand), frac


def test_choose_makes_per_shard_masks_and_the_record():
    table = index_table()
    kept = choose(table, "confidence >= 0.5", 0.5, "margin", True)
    mask = np.concatenate([kept.masks[f"s{s}"] for s in range(4)])
    assert kept.count == mask.sum() and kept.total == 400
    expected = most_trusted(table, selected(table, "confidence >= 0.5"), 0.5, "margin", True)
    assert np.array_equal(mask, expected)
    pred, label = table["pred"].to_numpy(), table["label"].to_numpy()
    assert kept.weak_accuracy == pytest.approx((pred[mask] == label[mask]).mean(), abs=1e-6)
    assert kept.per_class == {c: pytest.approx(mask[pred == c].mean(), abs=1e-6) for c in range(5)}
    assert choose(table, None, None, "margin", False) is None
    with pytest.raises(W2SError, match="--select 'confidence > 2' keeps none of the store's 400 samples"):
        choose(table, "confidence > 2", None, "margin", False)


@pytest.mark.parametrize("options,match", [
    (dict(keep_frac=0.0), "--keep-frac 0.0 is invalid: must be above 0 and at most 1"),
    (dict(per_class=True), "--rank-by and --per-class say how --keep-frac ranks"),
    (dict(rank_by="confidence"), "--rank-by and --per-class say how --keep-frac ranks"),
    (dict(rank_by="loss", keep_frac=0.5), "--rank-by"),
    (dict(select="margin > 0", teacher="t.pt", data="digits"), "--teacher reads no store"),
    (dict(keep_frac=0.5, loss="gt"), "--loss gt reads no store"),
    (dict(weight_by="entropy"), "--weight-by"),
    (dict(weight_by="margin", teacher="t.pt", data="digits"), "--teacher reads no store"),
])
def test_selection_options_are_checked_at_once(options, match):
    with pytest.raises(W2SError, match=match):
        TrainConfig.tiny(**options)


def test_a_selected_run_trains_on_the_kept_samples_only(workspace_store, tmp_path):
    """The training stream yields exactly the kept keys (each pass); steps per epoch follow the kept
    count; config.json records the choice."""
    from w2s_pipe.pipeline.loaders.join import StoreJoin
    from w2s_pipe.pipeline.loaders.train_stream import TrainStream
    from w2s_pipe.pipeline.views.params import TrainViews
    from w2s_pipe.pipeline.views.pixels import TrainAugment

    store = open_store(workspace_store)
    index = store.index()
    select = f"confidence >= {float(np.quantile(index['confidence'].to_numpy(), 0.25)):.6f}"  # the tiny model's scale
    kept = choose(index, select, 0.5, "margin", True)
    expected = set(pc.filter(index["key"], most_trusted(index, selected(index, select), 0.5, "margin",
                                                        True)).to_pylist())
    assert 0 < len(expected) < index.num_rows
    config = {"input_size": [3, 16, 16], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    stream = TrainStream([s["url"] for s in store.shards], augment=TrainAugment(config, TrainViews(0, size=(16, 16)), "cpu"),
                         image_fields=("png",), label_field="cls", need_labels=False,
                         join=StoreJoin(workspace_store, keep=kept.masks), seed=0, shuffle_buffer=1)
    seen = [s["key"][1] for _, s in zip(range(2 * len(expected)), stream)]
    assert set(seen) == expected and len(seen) == 2 * len(expected)  # two passes, nothing else

    done = run_train(TrainConfig.tiny(labels=workspace_store, run="kept", device="cpu", no_eval=True, epochs=1,
                                      select=select, keep_frac=0.5, per_class=True,
                                      workspace=str(tmp_path)))
    record = json.load(open(os.path.join(done.run_dir, "config.json")))
    assert record["select"] == select and record["keep_frac"] == 0.5
    assert record["data_source"]["selection"]["kept"] == len(expected)
    assert done.step == len(expected) // 32  # one epoch of the kept samples at batch 32


# --weight-by -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hard", "kd", "augconf", "adaptconf"])
def test_weights_follow_the_formula_and_weigh_the_weak_label_loss_alone(name):
    """w_i = s_i / mean(s): the weighted objective is mean(w_i * loss_i) of the unweighted
    per-sample losses (each recovered as the loss of a batch of one), plus the unweighted gt term."""
    import torch

    from w2s_pipe.pipeline.losses import functional as L
    from w2s_pipe.pipeline.train.losses import objective

    torch.manual_seed(0)
    s, w, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    trust = torch.tensor([0.9, 0.1, 0.5, 0.0, 0.7, 0.3])
    f = objective(name, epochs=4, threshold=0.7, temperature=2.0)
    per_sample = torch.stack([f(s[i:i + 1], w[i:i + 1], y[i:i + 1], 0.5, 2)[0] for i in range(6)])
    weights = trust / trust.mean()
    torch.testing.assert_close(L.trust_weights(trust), weights)
    weighted = f(s, w, y, 0.5, 2, trust)[0]
    torch.testing.assert_close(weighted, (weights * per_sample).mean())
    assert not torch.allclose(weighted, per_sample.mean())  # the weights change it
    torch.testing.assert_close(f(s, w, y, 0.5, 2, torch.full((6,), 0.4))[0], per_sample.mean())  # even: unweighted
    torch.testing.assert_close(f(s, w, y, 0.5, 2, torch.zeros(6))[0], per_sample.mean())  # all zero: even
    with_gt = objective(name, epochs=4, threshold=0.7, temperature=2.0, gt_weight=1.5)(s, w, y, 0.5, 2, trust)[0]
    torch.testing.assert_close(with_gt, weighted + 1.5 * torch.nn.functional.cross_entropy(s, y))


def test_a_mixed_batch_mixes_its_samples_trust_by_lambda():
    import torch

    from w2s_pipe.pipeline.train.batch import StepInputs
    from w2s_pipe.pipeline.views.mixing import BatchMix
    from w2s_pipe.pipeline.views.params import View

    config = {"input_size": [3, 8, 8], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    mixer = BatchMix(mixup=0.8, cutmix=0.0, prob=1.0, switch_prob=0.5, smoothing=0.0, num_classes=3, seed=0)
    prepare = StepInputs(config, torch.device("cpu"), decoder="cpu", rank=0, need_labels=False, mixer=mixer)
    trust = torch.tensor([0.8, 0.2, 0.6, 0.4])
    batch = {"image": torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8),
             "view": torch.tensor([View(0, 0, 8, 8, False, 8, 8).as_row()] * 4), "label": torch.zeros(4, dtype=torch.long),
             "weak": torch.randn(4, 3), "trust": trust, "dropped": torch.tensor(0), "key": [("s", str(i), 0) for i in range(4)]}
    out = prepare(batch, step=5)
    lam = float(mixer(torch.zeros(4, 3, 8, 8), None, None, rank=0, step=5)[3])  # the same draw: (seed, rank, step)
    assert 0 < lam < 1
    torch.testing.assert_close(out["trust"], lam * trust + (1 - lam) * trust.flip(0))


def test_a_weighted_run_reads_each_samples_stored_statistic(workspace_store, tmp_path):
    from w2s_pipe.pipeline.loaders.join import StoreJoin
    from w2s_pipe.pipeline.loaders.train_stream import TrainStream, collate
    from w2s_pipe.pipeline.views.params import TrainViews
    from w2s_pipe.pipeline.views.pixels import TrainAugment

    store = open_store(workspace_store)
    index = store.index()
    margin = dict(zip(index["key"].to_pylist(), index["margin"].to_pylist()))
    config = {"input_size": [3, 16, 16], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    stream = TrainStream([s["url"] for s in store.shards], augment=TrainAugment(config, TrainViews(0, size=(16, 16)), "cpu"),
                         image_fields=("png",), label_field="cls", need_labels=False,
                         join=StoreJoin(workspace_store, trust="margin"), seed=0, shuffle_buffer=4)
    samples = [s for _, s in zip(range(40), stream)]
    batch = collate(samples)
    assert batch["trust"].tolist() == pytest.approx([margin[s["key"][1]] for s in samples])
    assert len(set(batch["trust"].tolist())) > 10  # the statistic varies: weights can matter
    done = run_train(TrainConfig.tiny(labels=workspace_store, run="weighted", device="cpu", no_eval=True, epochs=1,
                                      steps_per_epoch=3, weight_by="margin", log_every=1, workspace=str(tmp_path)))
    plain = run_train(TrainConfig.tiny(labels=workspace_store, run="plain", device="cpu", no_eval=True, epochs=1,
                                       steps_per_epoch=3, log_every=1, workspace=str(tmp_path)))
    assert done.finished and json.load(open(os.path.join(done.run_dir, "config.json")))["weight_by"] == "margin"
    first = read_metrics(done.run_dir)[0]
    base = read_metrics(plain.run_dir)[0]
    assert first["kd"] == pytest.approx(base["kd"], rel=1e-5) and first["loss"] != pytest.approx(base["loss"], rel=1e-4)


# ensembles --------------------------------------------------------------------------------------
def test_ensemble_targets_match_a_hand_computation():
    from w2s_pipe.pipeline.weak.ensemble import agreement, combine

    a = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = np.array([[0.0, 2.0, 0.0], [0.0, 3.0, 0.0]])
    c = np.array([[0.0, 0.0, 1.0], [1.0, 2.0, 0.0]])

    def softmax(x):
        return np.exp(x) / np.exp(x).sum(1, keepdims=True)

    mean_prob = np.log((softmax(a) + softmax(b) + softmax(c)) / 3)
    np.testing.assert_allclose(combine([a, b, c], "mean-prob"), mean_prob, rtol=1e-6)
    np.testing.assert_allclose(combine([a, b, c], "mean-logit"), (a + b + c) / 3, rtol=1e-6)
    # votes: sample 0 has one vote each (a tie: the lower class wins the argmax), sample 1 three for class 1
    np.testing.assert_allclose(combine([a, b, c], "vote"),
                               np.log([[1 / 3, 1 / 3, 1 / 3], [1e-6, 1.0, 1e-6]]).astype(np.float32), rtol=1e-6)
    assert combine([a, b, c], "vote").argmax(1).tolist() == [0, 1]
    assert agreement([a, b, c], combine([a, b, c], "vote")).tolist() == [1, 3]
    assert agreement([a, b, c], combine([a, b, c], "mean-prob")).tolist() == [1, 3]


@pytest.fixture
def three_stores(digits_data, tmp_path):
    """The digits transfer split labelled by three tiny weak models of other seeds."""
    from conftest import make_checkpoint

    from w2s_pipe.stages.label import LabelConfig, run_label

    stores = []
    for seed in (0, 1, 2):
        ckpt = make_checkpoint(tmp_path / f"weak{seed}.pt", seed=seed)
        stores.append(run_label(LabelConfig(weak=None, weak_checkpoint=ckpt, data="digits", labels=str(tmp_path / f"s{seed}"),
                                            workers=0, precision="fp32", progress=False)).store)
    return stores


def test_an_ensemble_run_learns_the_combined_targets_and_selects_by_agreement(three_stores, tmp_path):
    from w2s_pipe.pipeline.loaders.join import StoreJoin
    from w2s_pipe.pipeline.weak.ensemble import ensemble_index

    members = [open_store(s) for s in three_stores]
    join = StoreJoin(three_stores[0], members=tuple(three_stores), ensemble="vote", trust="confidence")
    shard = members[0].shards[1]
    from w2s_pipe.pipeline.sources.shards import iter_samples

    joined = list(join(iter_samples(shard["url"])))
    rows = [m.shard_rows(1) for m in members]
    j = 7
    votes = np.zeros(10)
    for r in rows:
        votes[r.arrays["logits"][j].astype(np.float32).argmax()] += 1
    expected = np.log(np.maximum(votes / 3, 1e-6))
    np.testing.assert_allclose(joined[j]["weak"], expected, rtol=1e-5)
    assert joined[j]["trust"] == pytest.approx(np.exp(expected).max() / np.exp(expected).sum(), rel=1e-5)
    index = ensemble_index(members, "vote")
    assert index.column_names[-1] == "agreement" and index.num_rows == members[0].num_samples
    preds = np.stack([m.index()["pred"].to_numpy() for m in members])
    assert np.array_equal(index["agreement"].to_numpy(), (preds == index["pred"].to_numpy()).sum(0))
    assert set(index["agreement"].to_numpy().tolist()) - {0} <= {1, 2, 3}

    done = run_train(TrainConfig.tiny(labels=",".join(three_stores), ensemble="mean-prob", select="agreement >= 2",
                                      run="ens", device="cpu", no_eval=True, epochs=1, workspace=str(tmp_path)))
    source = json.load(open(os.path.join(done.run_dir, "config.json")))["data_source"]
    assert source["ensemble"]["how"] == "mean-prob" and len(source["ensemble"]["members"]) == 3
    agreeing = int((ensemble_index(members, "mean-prob")["agreement"].to_numpy() >= 2).sum())
    assert source["selection"]["kept"] == agreeing and done.step == agreeing // 32


def test_an_ensemble_of_other_shards_is_refused_naming_the_shard(three_stores, digits_data, tmp_path, weak_ckpt):
    from w2s_pipe.stages.label import LabelConfig, run_label

    other = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", split="val",
                                  labels=str(tmp_path / "val"), workers=0, precision="fp32", progress=False)).store
    with pytest.raises(W2SError, match=r"--labels: stores .* labelled other shards: shard digits-transfer-000000.tar"):
        run_train(TrainConfig.tiny(labels=f"{three_stores[0]},{other}", run="bad", device="cpu", no_eval=True,
                                   workspace=str(tmp_path)))
    with pytest.raises(W2SError, match="--ensemble vote combines several stores: give --labels A,B"):
        TrainConfig.tiny(labels=three_stores[0], ensemble="vote")
    with pytest.raises(W2SError, match="a store is named twice"):
        TrainConfig.tiny(labels=f"{three_stores[0]},{three_stores[0]}")


# seeing it before training ---------------------------------------------------------------------
def test_inspect_gives_the_coverage_accuracy_curve_of_what_keep_frac_keeps(workspace_store, tmp_path):
    from w2s_pipe.stages.inspect import InspectConfig, format_text, run_inspect

    stats = run_inspect(InspectConfig(stores=(workspace_store,), out=str(tmp_path / "fig")))
    index = open_store(workspace_store).index()
    pred, label, margin = index["pred"].to_numpy(), index["label"].to_numpy(), index["margin"].to_numpy()
    curve = stats["coverage"]
    assert curve["coverage"][0] == 0.1 and curve["coverage"][-1] == 1.0
    for i, f in enumerate(curve["coverage"]):
        order = sorted(range(len(pred)), key=lambda r: (-float(margin[r]), r))[:math.ceil(f * len(pred) - 1e-9)]
        assert curve["overall"]["margin"][i] == pytest.approx((pred[order] == label[order]).mean(), abs=1e-6)
    assert curve["overall"]["entropy"][-1] == pytest.approx((pred == label).mean(), abs=1e-6)
    assert any(p.endswith("coverage-accuracy.png") and os.path.getsize(p) > 1000 for p in stats["files"])
    assert "weak-label accuracy on the kept samples" in format_text(stats)


def test_inspect_of_several_stores_compares_the_ensemble_with_each_member(three_stores, tmp_path):
    from w2s_pipe.pipeline.weak.ensemble import combine
    from w2s_pipe.stages.inspect import InspectConfig, format_text, run_inspect

    stats = run_inspect(InspectConfig(stores=tuple(three_stores), out=str(tmp_path / "ens")))
    members = [open_store(s) for s in three_stores]
    label = members[0].index()["label"].to_numpy()
    for m, record in zip(members, stats["members"]):
        assert record["accuracy"] == pytest.approx((m.index()["pred"].to_numpy() == label).mean())
    logits = [np.concatenate([m.shard_rows(i).arrays["logits"].astype(np.float32) for i in range(len(m.shards))])
              for m in members]
    for how in ("mean-prob", "mean-logit", "vote"):
        by_hand = (combine(logits, how).argmax(1) == label).mean()
        assert stats["ensembles"][how]["accuracy"] == pytest.approx(by_hand)
        assert sum(stats["ensembles"][how]["agreement"].values()) == pytest.approx(1.0, abs=1e-5)
    assert "agreement" in stats["coverage"]["overall"]
    assert "mean-prob: accuracy" in format_text(stats)


def test_report_shows_selection_and_ensemble_runs_as_their_own_rows(digits_data, workspace_store, tmp_path):
    """Plain, selected and ensemble runs from the same store: three rows; the ensemble's PGR is not
    taken from its first member's accuracy (another teacher)."""
    from conftest import make_checkpoint

    from w2s_pipe.stages.label import LabelConfig, run_label
    from w2s_pipe.stages.report import ReportConfig, run_report

    other = run_label(LabelConfig(weak=None, weak_checkpoint=make_checkpoint(tmp_path / "w1.pt", seed=1), data="digits",
                                  labels=str(tmp_path / "other"), workers=0, precision="fp32", progress=False)).store
    common = dict(strong="test_resnet", epochs=1, device="cpu", loss="hard")  # steps per epoch: the samples'
    run_train(TrainConfig.tiny(run="plain", labels=workspace_store, **common))
    run_train(TrainConfig.tiny(run="kept", labels=workspace_store, keep_frac=0.5, **common))
    run_train(TrainConfig.tiny(run="ens", labels=f"{workspace_store},{other}", **common))
    run_train(TrainConfig.tiny(run="ceiling", data="digits", **{**common, "loss": "gt"}))
    report = run_report(ReportConfig(plots=False))
    rows = [r for r in report["rows"] if r["role"] == "w2s"]
    assert len(rows) == 3 and len({r["label"] for r in rows}) == 3
    assert any("(50% by margin)" in r["label"] for r in rows), [r["label"] for r in rows]
    assert sorted(len(r["runs"]) for r in rows) == [1, 1, 1]
    runs = {r["name"]: r for r in report["runs"]}
    assert runs["ens"]["weak_top1"] is None and "an ensemble of 2 stores" in runs["ens"]["weak_top1_from"]
    assert runs["ens"]["weak_model"].startswith("mean-prob of ")
    assert runs["kept"]["weak_top1"] == runs["plain"]["weak_top1"]  # one teacher, fewer of its labels
    # fewer samples, fewer steps per epoch: still the ceiling of the same recipe on all the data
    assert runs["kept"]["ceiling_runs"] == runs["plain"]["ceiling_runs"] == ["ceiling"]
    assert "70% by margin" not in runs["plain"].get("label", "")


def test_a_top_k_member_joins_an_ensemble_rebuilt_dense(digits_data, workspace_store, weak_ckpt, tmp_path):
    from w2s_pipe.pipeline.loaders.join import StoreJoin
    from w2s_pipe.pipeline.sources.shards import iter_samples
    from w2s_pipe.pipeline.weak.ensemble import combine
    from w2s_pipe.stages.label import LabelConfig, run_label

    topk = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=str(tmp_path / "top3"),
                                 topk=3, workers=0, precision="fp32", progress=False)).store
    full, top = open_store(workspace_store), open_store(topk)
    joined = list(StoreJoin(workspace_store, members=(workspace_store, topk), ensemble="mean-logit")(
        iter_samples(full.shards[0]["url"])))
    expected = combine([full.shard_rows(0).dense_logits(10), top.shard_rows(0).dense_logits(10)], "mean-logit")
    np.testing.assert_allclose(np.stack([s["weak"] for s in joined]), expected, rtol=1e-6)
    with pytest.raises(W2SError, match="--store-view replay: an ensemble combines the members' centre views"):
        run_train(TrainConfig.tiny(labels=f"{workspace_store},{topk}", store_view="replay", run="r", device="cpu"))


def test_an_ensemble_selection_under_torchrun_is_ranked_once_and_ends_with_equal_weights(three_stores, tmp_path):
    """Two ranks (gloo on the CPU): the main process ranks the ensemble and shares what it keeps,
    which is what one process keeps; both ranks end with the same weights."""

    from w2s_pipe.pipeline.weak.ensemble import ensemble_index

    cmd = ["train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "1",
           "--steps-per-epoch", "2", "--workers", "0", "--precision", "fp32", "--quiet", "--device", "cpu",
           "--labels", ",".join(three_stores), "--ensemble", "mean-prob", "--keep-frac", "0.5", "--rank-by", "agreement",
           "--run-name", "ens"]
    out = torchrun(cmd, env={"W2S_HOME": str(tmp_path / "ws")})
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "ws" / "runs" / "ens"
    end = read_metrics(run, "end")[0]
    assert len(end["weights_sha256"]) == 2 and end["weights_sha256"][0] == end["weights_sha256"][1]
    recorded = json.load(open(run / "config.json"))["data_source"]["selection"]
    alone = choose(ensemble_index([open_store(s) for s in three_stores], "mean-prob"), None, 0.5, "agreement", False)
    assert recorded == json.loads(json.dumps(alone.record()))
