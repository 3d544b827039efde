"""Labelling's parts without the stage: the step (`weak_outputs`) against its formula on a real tiny
timm model, the one-batch-late host copy, and a shard's rows written into a real store.

Device: the CPU, fp32 (stated: the step's float16 rounding is what is compared, exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.runtime import distributed
from w2s_pipe.pipeline.weak.labelling import Gathered, HostCopy, ShardWrites, weak_outputs
from w2s_pipe.storage import open_store, schema
from w2s_pipe.storage.claims import ShardClaims
from w2s_pipe.storage.writer import StoreWriter

CPU = torch.device("cpu")


def tiny_model(seed=0, classes=7):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=classes).eval()


def test_the_step_is_the_models_float16_logits_and_their_softmax_statistics():
    model, x = tiny_model(), torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        out = weak_outputs(model, x)
        logits = model(x).half()
    assert set(out) == {"bad", "logits", "pred", "confidence", "margin", "entropy"}
    assert out["logits"].dtype == torch.float16 and torch.equal(out["logits"], logits)
    p = torch.softmax(logits.double(), dim=1)
    top2 = p.topk(2, dim=1).values
    assert out["pred"].tolist() == logits.float().argmax(1).tolist()
    torch.testing.assert_close(out["confidence"], top2[:, 0].float(), rtol=0, atol=1e-7)
    torch.testing.assert_close(out["margin"], (top2[:, 0] - top2[:, 1]).float(), rtol=0, atol=1e-7)
    torch.testing.assert_close(out["entropy"], (-(p * p.log()).sum(1)).float(), rtol=0, atol=1e-6)
    assert not out["bad"].any()
    with torch.inference_mode():
        top = weak_outputs(model, x, topk=3)
    assert "logits" not in top and torch.equal(top["topk_values"], logits.float().topk(3, dim=1).values.half())
    assert torch.equal(top["pred"], out["pred"])  # the statistics never depend on what is kept


def test_the_step_runs_under_the_autocast_it_is_given():
    model, x = tiny_model(), torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        fp32 = weak_outputs(model, x, autocast=distributed.autocast("fp32", CPU))["logits"]
        bf16 = weak_outputs(model, x, autocast=distributed.autocast("bf16", CPU))["logits"]
    assert torch.equal(fp32, weak_outputs(model, x)["logits"])  # fp32 autocast is no autocast
    assert not torch.equal(fp32, bf16) and torch.allclose(fp32.float(), bf16.float(), atol=0.1)


def test_a_row_that_cannot_be_stored_stops_at_its_landing_naming_shard_and_key():
    model, x = tiny_model(), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        model.get_classifier().bias[2] = 1e6  # beyond float16's range
        out = weak_outputs(model, x)
    assert out["bad"].all()
    copy = HostCopy(CPU, ["s-000000.tar"])
    assert copy.push(0, ["a", "b", "c"], None, out) is None  # lands one batch late...
    with pytest.raises(W2SError, match=r"^shard s-000000.tar, key 'a': the weak model's logits are not finite"):
        copy.drain()  # ...and is checked when it does


def test_the_host_copy_returns_each_batch_one_push_late_in_order():
    model, copy, gathered = tiny_model(), HostCopy(CPU, ["a", "b"]), Gathered()
    batches = [(0, ["k0", "k1"]), (0, ["k2"]), (1, ["m0", "m1", "m2"])]
    landed = []
    with torch.inference_mode():
        for shard, keys in batches:
            out = weak_outputs(model, torch.randn(len(keys), 3, 32, 32))
            got = copy.push(shard, keys, torch.arange(len(keys), dtype=torch.int32), out)
            landed.append(got)
            gathered.add(got)
    assert landed[0] is None and [b.keys for b in landed[1:]] == [["k0", "k1"], ["k2"]]
    last = copy.drain()
    assert last.keys == ["m0", "m1", "m2"] and copy.drain() is None
    assert gathered.add(last) == 3 and gathered.rows == 6
    rows = gathered.pop(0)
    labels, arrays = rows.arrays({})
    assert rows.keys == ["k0", "k1", "k2"] and labels.tolist() == [0, 1, 0] and arrays["logits"].shape == (3, 7)
    assert gathered.pop(0).keys == []  # taken: an ended shard's rows are gone


def test_shard_writes_put_a_shards_rows_where_the_store_reads_them(tmp_path):
    attrs = schema.store_attrs(
        weak={"model": "test_resnet"}, num_classes=7, class_names=None, preprocessing={"decode": "cpu"},
        precision="fp32", data={"name": "t", "split": "x", "pattern": "p", "image_field": "png", "label_field": "cls"},
        shards=[{"name": "s0.tar", "url": "s0.tar", "count": 3}, {"name": "s1.tar", "url": "s1.tar", "count": 1}],
        fingerprint="f", topk=None, tool_version="test", config={})
    assert attrs["layout"] == {"capacity": 3, "rows": 6, "topk": None}
    writer = StoreWriter.create(str(tmp_path / "store"), attrs)
    claims = ShardClaims(writer.url, 1)
    model, copy, gathered = tiny_model(), HostCopy(CPU, ["s0.tar", "s1.tar"]), Gathered()
    with torch.inference_mode():
        out = weak_outputs(model, torch.randn(3, 3, 32, 32))
        gathered.add(copy.push(0, ["a", "b", "c"], torch.tensor([1, 2, 3], dtype=torch.int32), out))
    gathered.add(copy.drain())
    with ShardWrites(writer, claims) as writes:
        assert claims.claim(0) and claims.claim(1)
        writes.submit(0, gathered.pop(0), 3, [])
        writes.record_unreadable(1, "empty shard")
        writes.wait()
        short = Gathered()
        with torch.inference_mode():
            short.add(copy.push(0, ["a", "b"], None, weak_outputs(model, torch.randn(2, 3, 32, 32))))
        short.add(copy.drain())
        with pytest.raises(RuntimeError, match="2 rows landed, 3 read"):  # a count that disagrees is never written
            writes.submit(0, short.pop(0), 3, [])
            writes.wait()
    assert writer.finalize()
    store = open_store(writer.url)
    rows = store.checked_rows("s0.tar")  # the marker's sha256 matches the rows written
    assert rows.keys == ["a", "b", "c"] and rows.labels.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(rows.arrays["logits"], out["logits"].numpy())
    assert store.skipped().to_pylist() == [{"key": None, "shard": "s1.tar", "reason": "empty shard"}]
