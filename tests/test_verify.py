"""verify: a clean store passes; each kind of damage is found and named with its shard and key."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from click.testing import CliRunner

from w2s_pipe.cli import cli
from w2s_pipe.pipeline.sources.shards import iter_samples, write_shard
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.stages.verify import VerifyConfig, run_verify


@pytest.fixture
def store(tmp_path, digits_data, weak_ckpt):
    ckpt = str(tmp_path / "weak.pt")
    shutil.copy(weak_ckpt, ckpt)
    data = tmp_path / "shards"
    shutil.copytree(digits_data, data)  # the tests damage the data too
    cfg = LabelConfig(weak=None, weak_checkpoint=ckpt, data=str(data / "digits-transfer-*.tar"),
                      labels=str(tmp_path / "store"), workers=0, precision="fp32", progress=False)
    return run_label(cfg).store


def failed(report):
    return {check for check, n in report.checks if n}


def test_clean_store_passes_with_recompute(store):
    report = run_verify(VerifyConfig(store=store, recompute=12))
    assert report.ok, report.problems
    assert len(report.checks) == 8
    result = CliRunner().invoke(cli, ["verify", store])
    assert result.exit_code == 0 and "no problems found" in result.output


def test_changed_logits_are_found_by_digest_and_by_recompute(store):
    group = zarr.open_group(store, mode="r+")
    logits = group["logits"][:]
    logits[300:303] += 1.0  # a shift: softmax nearly unchanged (float16 re-rounding aside), the rows are not
    group["logits"][:] = logits
    report = run_verify(VerifyConfig(store=store, recompute=897))
    assert {"markers match rows", "recomputed 897 samples with the weak model"} <= failed(report)
    assert "one row per sample of the data" not in failed(report)
    assert any("digits-transfer-000001.tar: rows differ" in p for p in report.problems)
    assert sum("stored logits differ from a fresh forward" in p for p in report.problems) == 3


def test_statistics_that_disagree_and_non_finite_values(store):
    group = zarr.open_group(store, mode="r+")
    conf = group["confidence"][:]
    conf[5] = 0.123
    group["confidence"][:] = conf
    logits = group["logits"][:]
    logits[260, 3] = np.inf
    group["logits"][:] = logits
    report = run_verify(VerifyConfig(store=store))
    text = "\n".join(report.problems)
    key5 = pq.read_table(os.path.join(store, "index.parquet")).column("key")[5].as_py()
    assert f"key {key5!r}: confidence 0.123 disagrees" in text
    assert "non-finite logits" in text and "digits-transfer-000001.tar" in text
    assert "index.parquet column confidence differs" in text
    result = CliRunner().invoke(cli, ["verify", store, "--no-data"])
    assert result.exit_code == 1 and "FAIL  values finite and consistent" in result.output


def test_missing_marker_and_changed_data(store, tmp_path):
    os.remove(os.path.join(store, "done", "000002.json"))
    shard = tmp_path / "shards" / "digits-transfer-000003.tar"
    samples = [{k: v for k, v in s.items() if k != "__url__"} for s in iter_samples(str(shard))]
    extra = dict(samples[0], __key__="newcomer")
    write_shard(str(shard), samples + [extra])
    report = run_verify(VerifyConfig(store=store))
    text = "\n".join(report.problems)
    assert "shard digits-transfer-000002.tar: not labelled" in text
    assert "digits-transfer-000003.tar: " in text and "changed since it was labelled" in text
    assert "key 'newcomer': in the data, no row in the store" in text


def test_recompute_refuses_a_changed_checkpoint(store, tmp_path):
    from conftest import make_checkpoint

    make_checkpoint(tmp_path / "weak.pt", seed=5)  # same path, other weights
    report = run_verify(VerifyConfig(store=store, recompute=5, check_data=False))
    assert any("changed since labelling" in p for p in report.problems)


@pytest.mark.parametrize("recorded", ["gpu", None])
def test_recompute_uses_the_recorded_decoder(store, recorded):
    """A store labelled on a GPU machine (decode gpu) is verified here through the same batched
    decoder on the CPU, and one from before `decode` was recorded through PIL: both run clean on
    intact rows and both still find shifted ones."""
    group = zarr.open_group(store, mode="r+")
    attrs = dict(group.attrs)
    preprocessing = {k: v for k, v in attrs["preprocessing"].items() if k != "decode"}
    if recorded:
        preprocessing["decode"] = recorded
    group.attrs.update({"preprocessing": preprocessing})
    report = run_verify(VerifyConfig(store=store, recompute=40))
    assert report.ok, report.problems
    logits = group["logits"][:]
    logits[:, 0] += 0.5  # beyond both tolerances: a recompute that looked at nothing would still pass
    group["logits"][:] = logits
    assert "recomputed 40 samples with the weak model" in failed(run_verify(VerifyConfig(store=store, recompute=40)))
