"""How long a two-rank run takes to end once one rank is lost.

    python bench/lost_rank.py [--trials 3]

A two-rank `train` (torchrun, gloo on the CPU; test_resnet on digits, 32 px) is started; once it
has logged step 12 of 40, rank 1 is killed with SIGKILL. Prints, per trial, the seconds from the
kill to torchrun's exit and rank 0's one-line error (gloo's broken connection, or torchrun's SIGTERM
when it saw rank 1 fail first), then the median.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import _util


def logged_step(run_dir: str) -> int:
    from w2s_pipe.pipeline.train.runs import read_metrics  # lazy: torch, after the launcher's own start

    return max([r["step"] for r in read_metrics(run_dir, "step")], default=0)


def rank_1(launcher: int) -> int:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if parent == launcher and b"RANK=1" in environ:
            return int(name)
    raise RuntimeError("no rank 1")


def trial(work: str, n: int) -> tuple[float, str]:
    env = {**os.environ, "W2S_HOME": work, "W2S_DATA": os.path.join(work, "data"), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "w2s_pipe.cli",
           "train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "2",
           "--steps-per-epoch", "20", "--workers", "1", "--precision", "fp32", "--quiet", "--device", "cpu",
           "--log-every", "1", "--data", "digits", "--split", "weak", "--loss", "gt", "--run-name", f"t{n}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = os.path.join(work, "runs", f"t{n}")
    while logged_step(run_dir) < 12:
        if proc.poll() is not None:
            raise RuntimeError(proc.communicate()[1][-2000:])
        time.sleep(0.02)
    os.kill(rank_1(proc.pid), signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=120)
    seconds = time.monotonic() - killed
    line = next((line for line in err.splitlines() if line.startswith("Error: rank 0")), "(no line from rank 0)")
    return seconds, line


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    from w2s_pipe.stages.prepare import prepare_digits

    work = tempfile.mkdtemp(prefix="w2s-lost-rank-")
    prepare_digits(os.path.join(work, "data", "digits"), shard_size=256)
    taken = []
    for n in range(args.trials):
        seconds, line = trial(work, n)
        taken.append(seconds)
        print(f"  trial {n + 1}: the run ended {seconds:.2f} s after rank 1 was killed; rank 0 said: {line[:160]}",
              flush=True)
    print(f"median {statistics.median(taken):.2f} s (min {min(taken):.2f}, max {max(taken):.2f}) over {len(taken)} trials")
    print("results:", _util.save("lost_rank", {"seconds": taken}))


if __name__ == "__main__":
    main()
