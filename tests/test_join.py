"""The join and the training stream: every sample gets exactly its stored row, under shuffling
and several workers; a key the store lacks is reported (or skipped when asked)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.loaders.join import StoreJoin
from w2s_pipe.pipeline.loaders.train_stream import TrainStream, train_loader
from w2s_pipe.pipeline.sources.shards import iter_samples, write_shard
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.storage import open_store


@pytest.fixture
def store(tmp_path, digits_data, weak_ckpt):
    cfg = LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=str(tmp_path / "store"),
                      workers=0, precision="fp32", progress=False)
    return open_store(run_label(cfg).store)


def stored_rows(store):
    rows = {}
    for s in store.shards:
        shard = store.shard_rows(s["name"])
        for key, logits in zip(shard.keys, shard.dense_logits(store.num_classes)):
            rows[(s["name"], key)] = logits
    return rows


# 2 workers split the 4 shards; 5 workers (more than shards) each read all and keep every 5th sample.
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 2, 5])
def test_every_sample_gets_its_own_row(store, workers):
    from w2s_pipe.pipeline.views.params import TrainViews
    from w2s_pipe.pipeline.views.pixels import TrainAugment

    augment = TrainAugment({"input_size": [3, 8, 8], "interpolation": "bilinear"}, TrainViews(1), "cpu")
    stream = TrainStream([s["url"] for s in store.shards], augment=augment,
                         image_fields=("png",), label_field="cls", need_labels=True, join=StoreJoin(store.url),
                         seed=1, shuffle_buffer=200, batch_size=64)
    rows = stored_rows(store)
    seen, order = set(), []
    for batch in itertools.islice(train_loader(stream, workers, False), 40):  # 2560 samples, ~3 passes
        for key, weak in zip(batch["key"], batch["weak"]):
            key = tuple(key)[:2]  # (shard, key, pass)
            np.testing.assert_array_equal(weak.numpy(), rows[key].astype(np.float32))
            seen.add(key)
            order.append(key)
    assert seen == set(rows)  # every sample reached
    first_pass = [k[1] for k in order[:200]]
    assert first_pass != sorted(first_pass)  # and shuffled


def test_missing_key_is_named_or_skipped(store, tmp_path):
    shard = store.shards[0]
    samples = list(iter_samples(shard["url"]))
    extra = {k: v for k, v in samples[5].items() if not k.startswith("__")}
    mixed = samples[:10] + [{"__key__": "stranger", **extra}] + samples[10:]
    (tmp_path / "copy").mkdir()
    copy = str(tmp_path / "copy" / shard["name"])  # same shard name, one sample the store never saw
    write_shard(copy, [{k: v for k, v in s.items() if k != "__url__"} for s in mixed])
    with pytest.raises(W2SError, match=f"shard {shard['name']}, key 'stranger' has no row in store"):
        list(StoreJoin(store.url)(iter_samples(copy)))
    join = StoreJoin(store.url, skip_missing=True)
    out = list(join(iter_samples(copy)))
    assert join.skipped == 1 and [s["__key__"] for s in out] == [s["__key__"] for s in samples]
    rows = stored_rows(store)
    for s in out:
        np.testing.assert_array_equal(s["weak"], rows[(shard["name"], s["__key__"])])


def test_shard_not_in_store(store, tmp_path):
    other = write_shard(str(tmp_path / "other-000000.tar"), [{"__key__": "a", "png": b"x", "cls": 1}])
    with pytest.raises(W2SError, match="shard other-000000.tar is not in store"):
        list(StoreJoin(store.url)(iter_samples(other.url)))


def test_topk_reconstruction_is_exact_on_the_top_k(tmp_path, digits_data, weak_ckpt):
    full = open_store(run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=str(tmp_path / "f"),
                                            workers=0, precision="fp32", progress=False)).store)
    top = open_store(run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=str(tmp_path / "t"),
                                           workers=0, precision="fp32", topk=3, progress=False)).store)
    logits = full.shard_rows(0).arrays["logits"].astype(np.float32)
    rebuilt = top.shard_rows(0).dense_logits(10)
    p_true = torch.softmax(torch.tensor(logits), 1).numpy()
    p_rebuilt = torch.softmax(torch.tensor(rebuilt), 1).numpy()
    idx = np.argsort(-logits, 1)[:, :3]
    np.testing.assert_allclose(np.take_along_axis(p_rebuilt, idx, 1), np.take_along_axis(p_true, idx, 1), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(p_rebuilt.sum(1), 1, rtol=1e-5)
    rest = np.ones_like(p_true, dtype=bool)
    np.put_along_axis(rest, idx, False, 1)
    # The other classes share the remaining mass equally.
    others = p_rebuilt[rest].reshape(len(p_rebuilt), 7)
    np.testing.assert_allclose(others, others[:, :1].repeat(7, 1), rtol=1e-4)
