"""A real two-process torchrun (gloo on CPU) labels the same store as one process; two node agents
meeting through the c10d rendezvous on loopback label one store and train to the weights of one
node's two ranks."""

from __future__ import annotations

import os

import numpy as np
from launch import torchrun, two_nodes

from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.storage import open_store


def test_two_ranks_equal_one_process(tmp_path, digits_data, weak_ckpt):
    # gloo on the CPU, on a GPU machine too (one GPU cannot hold two ranks)
    base = ["label", "--weak-checkpoint", weak_ckpt, "--quiet", "--workers", "1", "--batch-size", "64", "--device", "cpu"]
    from w2s_pipe.stages.label import LabelConfig, run_label

    run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, labels=str(tmp_path / "one"), batch_size=64, workers=1,
                          device="cpu", progress=False))  # one process (what torchrun --nproc-per-node 1 runs)
    two = torchrun([*base, "--labels", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    # Rank 0 labelled only shards 0 and 2 (256 + 256 samples); rank 1 the rest; one summary printed.
    assert "labelled 512 samples in 2 shards" in two.stdout and two.stdout.count("store ") == 1
    a, b = open_store(str(tmp_path / "one")), open_store(str(tmp_path / "two"))
    assert b.complete and a.index().equals(b.index())
    for name, values in a.dask_arrays().items():
        np.testing.assert_array_equal(b.dask_arrays()[name].compute(), values.compute())


def test_two_nodes_work_like_one(tmp_path, digits_data, weak_ckpt):
    """`torchrun --nnodes 2 --rdzv-backend c10d` twice (two machines, here two agents on loopback):
    label claims shards across the nodes into one store, the very store of one process; train ends
    with the weights of one node's two ranks with the same global batch."""
    from w2s_pipe.stages.label import LabelConfig, run_label

    label = ["label", "--weak-checkpoint", weak_ckpt, "--quiet", "--workers", "1", "--batch-size", "64", "--device", "cpu"]
    nodes = two_nodes([*label, "--labels", str(tmp_path / "nodes")])
    assert all(n.returncode == 0 for n in nodes), [n.stderr[-2000:] for n in nodes]
    assert sum(n.stdout.count("store ") for n in nodes) == 1  # the global rank 0 says it, once
    one = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, labels=str(tmp_path / "one"), batch_size=64,
                                workers=1, device="cpu", progress=False))
    a, b = open_store(one.store), open_store(str(tmp_path / "nodes"))
    assert b.complete and a.index().equals(b.index())
    for name, values in a.dask_arrays().items():
        np.testing.assert_array_equal(b.dask_arrays()[name].compute(), values.compute())

    train = ["train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "1",
             "--steps-per-epoch", "8", "--workers", "0", "--precision", "fp32", "--quiet", "--device", "cpu",
             "--labels", str(tmp_path / "nodes"), "--no-eval"]
    nodes = two_nodes([*train, "--run-name", "nodes"])
    assert all(n.returncode == 0 for n in nodes), [n.stderr[-2000:] for n in nodes]
    node = torchrun([*train, "--run-name", "node"], nproc=2)
    assert node.returncode == 0, node.stderr[-2000:]
    ends = [read_metrics(os.path.join(os.environ["W2S_HOME"], "runs", r))[-1]
            for r in ("nodes", "node")]
    assert ends[0]["kind"] == "end" and ends[0]["step"] == 8
    assert ends[0]["weights_sha256"] == ends[1]["weights_sha256"] and len(set(ends[0]["weights_sha256"])) == 1
