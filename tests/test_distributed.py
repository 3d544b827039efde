"""A real two-process torchrun (gloo on CPU) labels the same store as one process."""

from __future__ import annotations

import numpy as np
from launch import torchrun

from w2s_pipe.storage import open_store


def test_two_ranks_equal_one_process(tmp_path, digits_data, weak_ckpt):
    # gloo on the CPU, on a GPU machine too (one GPU cannot hold two ranks)
    base = ["label", "--weak-checkpoint", weak_ckpt, "--quiet", "--workers", "1", "--batch-size", "64", "--device", "cpu"]
    one = torchrun([*base, "--labels", str(tmp_path / "one")], nproc=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun([*base, "--labels", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    # Rank 0 labelled only shards 0 and 2 (256 + 256 samples); rank 1 the rest; one summary printed.
    assert "labelled 512 samples in 2 shards" in two.stdout and two.stdout.count("store ") == 1
    a, b = open_store(str(tmp_path / "one")), open_store(str(tmp_path / "two"))
    assert b.complete and a.index().equals(b.index())
    for name, values in a.dask_arrays().items():
        np.testing.assert_array_equal(b.dask_arrays()[name].compute(), values.compute())
