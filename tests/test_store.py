"""storage/: the writer and reader on real Zarr and Parquet files, without torch."""

from __future__ import annotations

import numpy as np
import pytest

from w2s_pipe.errors import W2SError
from w2s_pipe.storage import schema
from w2s_pipe.storage.reader import open_store
from w2s_pipe.storage.writer import StoreWriter

COUNTS = [5, 3, 4]  # uneven shards: padding rows must never leak out
C = 6


def attrs(counts=COUNTS, topk=None, model="m", fp="fp"):
    cap = max(counts)
    return {
        "weak": {"model": model, "checkpoint": None, "checkpoint_sha256": "x"},
        "num_classes": C,
        "class_names": None,
        "preprocessing": {"input_size": [3, 8, 8]},
        "precision": "fp32",
        "data": {"name": "t", "split": "s", "pattern": "p", "image_field": "png", "label_field": "cls",
                 "fingerprint": fp, "shards": [{"name": f"s{i}.tar", "url": f"/x/s{i}.tar", "count": n, "bytes": 1}
                                                for i, n in enumerate(counts)]},
        "layout": {"capacity": cap, "rows": cap * len(counts), "topk": topk},
        "tool_version": "test",
    }


def shard_payload(i, n, rng, topk=None):
    logits = rng.normal(size=(n, C)).astype(np.float16)
    out = {"pred": logits.argmax(1).astype(np.int32), "confidence": rng.random(n).astype(np.float32),
           "margin": rng.random(n).astype(np.float32), "entropy": rng.random(n).astype(np.float32)}
    if topk:
        idx = np.argsort(-logits.astype(np.float32), axis=1)[:, :topk]
        out["topk_values"] = np.take_along_axis(logits, idx, 1)
        out["topk_indices"] = idx.astype(np.int16)
    else:
        out["logits"] = logits
    keys = [f"k{i}_{j}" for j in range(n)]
    labels = rng.integers(0, C, n).astype(np.int32)
    return keys, labels, out


def test_round_trip_in_any_write_order(tmp_path):
    url = str(tmp_path / "store")
    w = StoreWriter.create(url, attrs())
    rng = np.random.default_rng(0)
    written = {i: shard_payload(i, n, rng) for i, n in enumerate(COUNTS)}
    for i in (2, 0):
        w.write_shard(i, *written[i])
        assert not w.finalize()
    with pytest.raises(W2SError, match="s1.tar"):
        open_store(url).require_complete()
    w.write_shard(1, *written[1])
    assert w.finalize()

    store = open_store(url)
    assert store.complete and store.num_samples == sum(COUNTS)
    index = store.index()
    assert index.column("key").to_pylist() == [k for i in range(3) for k in written[i][0]]
    assert index.column("shard").to_pylist() == [f"s{i}.tar" for i, n in enumerate(COUNTS) for _ in range(n)]
    cap = max(COUNTS)
    assert index.column("row").to_pylist() == [i * cap + j for i, n in enumerate(COUNTS) for j in range(n)]
    for i in range(3):
        rows = store.shard_rows(f"s{i}.tar")
        keys, labels, out = written[i]
        assert rows.keys == keys
        np.testing.assert_array_equal(rows.labels, labels)
        for name, values in out.items():
            np.testing.assert_array_equal(rows.arrays[name], values)
    # Arrays and index agree row by row; padding rows are excluded from the dask view.
    dask = store.dask_arrays()
    np.testing.assert_array_equal(dask["pred"].compute(), index.column("pred").to_numpy())
    np.testing.assert_array_equal(dask["logits"].compute(), np.concatenate([written[i][2]["logits"] for i in range(3)]))
    raw_pred = store.group["pred"][:]
    assert (raw_pred[1 * cap + COUNTS[1]: 2 * cap] == -1).all()


def test_topk_layout_and_index_dtype(tmp_path):
    url = str(tmp_path / "store")
    w = StoreWriter.create(url, attrs(topk=2))
    rng = np.random.default_rng(1)
    for i, n in enumerate(COUNTS):
        w.write_shard(i, *shard_payload(i, n, rng, topk=2))
    w.finalize()
    store = open_store(url)
    assert "logits" not in store.group and store.group["topk_indices"].dtype == np.int16
    assert schema.topk_index_dtype(32767) == "int16" and schema.topk_index_dtype(32768) == "int32"


def test_same_job_reuses_other_job_refused_overwrite_replaces(tmp_path):
    url = str(tmp_path / "store")
    w = StoreWriter.create(url, attrs())
    w.write_shard(0, *shard_payload(0, COUNTS[0], np.random.default_rng(0)))
    assert StoreWriter.create(url, attrs()).done_shards() == {0}
    with pytest.raises(W2SError, match="weak.model"):
        StoreWriter.create(url, attrs(model="other"))
    with pytest.raises(W2SError, match="data source differs"):
        StoreWriter.create(url, attrs(fp="changed"))
    assert StoreWriter.create(url, attrs(model="other"), overwrite=True).done_shards() == set()


def test_write_checks_count_and_duplicate_keys(tmp_path):
    w = StoreWriter.create(str(tmp_path / "store"), attrs())
    keys, labels, out = shard_payload(0, COUNTS[0], np.random.default_rng(0))
    with pytest.raises(W2SError, match="read 4 samples but the data source lists 5"):
        w.write_shard(0, keys[:4], labels[:4], {k: v[:4] for k, v in out.items()})
    keys[3] = keys[1]
    with pytest.raises(W2SError, match="'k0_1' appears more than once"):
        w.write_shard(0, keys, labels, out)
    assert w.done_shards() == set()


def test_reader_names_bad_attributes(tmp_path):
    url = str(tmp_path / "store")
    w = StoreWriter.create(url, attrs())
    w.group.attrs["schema_version"] = 99
    with pytest.raises(W2SError, match="schema_version"):
        open_store(url)
    w.group.attrs["schema_version"] = schema.SCHEMA_VERSION
    del w.group.attrs["precision"]
    with pytest.raises(W2SError, match="'precision' is missing"):
        open_store(url)
    with pytest.raises(W2SError, match="no pseudo-label store"):
        open_store(str(tmp_path / "nothing"))


def test_refuses_a_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "precious.txt").write_text("x")
    with pytest.raises(W2SError, match="not a w2s-pipe store"):
        StoreWriter.create(str(tmp_path / "d"), attrs())


def test_stores_from_before_decode_was_recorded_count_as_pil():
    from w2s_pipe.storage.writer import identity_mismatch

    old = attrs()
    assert "decode" not in old["preprocessing"]
    assert identity_mismatch(old, {**old, "preprocessing": {**old["preprocessing"], "decode": "pil"}}) is None
    cpu = {**old, "preprocessing": {**old["preprocessing"], "decode": "cpu"}}
    assert '"decode": "cpu"' in identity_mismatch(old, cpu)
