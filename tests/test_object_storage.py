"""Shards and stores on an S3-compatible server (moto's, on loopback): label, verify, inspect, train.

The endpoint reaches s3fs through the usual AWS environment variables, as it would for a user.
"""

from __future__ import annotations

import socket

import fsspec
import pytest
from launch import torchrun

from w2s_pipe.stages.inspect import InspectConfig, run_inspect
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.stages.train import TrainConfig, run_train
from w2s_pipe.stages.verify import VerifyConfig, run_verify
from w2s_pipe.storage import open_store


@pytest.fixture(scope="module")
def s3_server():
    from moto import server as moto_server  # the test extra installs moto[server]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, digits_dir):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    fsspec.config.conf.pop("s3", None)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for bucket in ("data", "stores"):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    for path in digits_dir.iterdir():
        fs.put_file(str(path), f"data/digits/{path.name}")
    fs.invalidate_cache()
    return fs


def test_label_verify_inspect_train_on_s3(s3, tmp_path, weak_ckpt):
    store_url = "s3://stores/digits-transfer"
    result = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt,
                                   data="s3://data/digits/digits-transfer-{000000..000003}.tar",
                                   labels=store_url, workers=1, precision="fp32", progress=False))
    assert result.complete and result.store == store_url and result.samples == 897
    assert s3.exists("stores/digits-transfer/index.parquet")
    store = open_store(store_url)
    assert store.num_classes == 10 and store.index().num_rows == 897  # classes from the manifest on S3

    # The same job with the store on local disk gives the same labels.
    local = open_store(run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt,
                                             data="s3://data/digits/digits-transfer-*.tar",
                                             labels=str(tmp_path / "local"), workers=0, precision="fp32",
                                             progress=False)).store)
    assert local.index().equals(store.index())

    report = run_verify(VerifyConfig(store=store_url, recompute=5))
    assert report.ok, report.problems
    stats = run_inspect(InspectConfig(stores=(store_url,), plots=False))
    assert stats["samples"] == 897 and stats["has_labels"] and 0 <= stats["ece"] <= 1

    run = run_train(TrainConfig.tiny(labels=store_url, val_data="s3://data/digits/digits-val-*.tar", run="s3",
                                     epochs=1, workers=1))
    assert run.finished and run.val_top1 is not None


def test_torchrun_ranks_label_into_one_s3_store(s3, tmp_path, weak_ckpt):
    """Each rank sees the others' markers despite s3fs's listing cache, so the store completes."""
    cmd = ["label", "--weak-checkpoint", weak_ckpt, "--data", "s3://data/digits/digits-transfer-*.tar",
           "--labels", "s3://stores/ranks", "--quiet", "--workers", "1", "--precision", "fp32", "--device", "cpu"]
    out = torchrun(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "complete, 897 samples" in out.stdout
    assert open_store("s3://stores/ranks").complete
