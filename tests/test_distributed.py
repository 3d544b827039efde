"""A real two-process torchrun (gloo on CPU) labels the same store as one process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from w2s_pipe.storage import open_store


def torchrun(nproc, args, env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "w2s_pipe.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_equal_one_process(tmp_path, digits_data, weak_ckpt):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    # gloo on the CPU, on a GPU machine too (one GPU cannot hold two ranks)
    base = ["label", "--weak-checkpoint", weak_ckpt, "--quiet", "--workers", "1", "--batch-size", "64", "--device", "cpu"]
    one = torchrun(1, [*base, "--labels", str(tmp_path / "one")], env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(2, [*base, "--labels", str(tmp_path / "two")], env)
    assert two.returncode == 0, two.stderr[-3000:]
    # Rank 0 labelled only shards 0 and 2 (256 + 256 samples); rank 1 the rest; one summary printed.
    assert "labelled 512 samples in 2 shards" in two.stdout and two.stdout.count("store ") == 1
    a, b = open_store(str(tmp_path / "one")), open_store(str(tmp_path / "two"))
    assert b.complete and a.index().equals(b.index())
    for name, values in a.dask_arrays().items():
        np.testing.assert_array_equal(b.dask_arrays()[name].compute(), values.compute())
