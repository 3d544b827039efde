"""A training run's directory: finding it, its metrics log, and a digest of its weights."""

from __future__ import annotations

import hashlib
import json
import os

from ..errors import W2SError
from .workspace import workspace_dir


def find_run(run: str, workspace=None) -> str:
    path = run if os.path.sep in run or os.path.isdir(run) else str(workspace_dir(workspace) / "runs" / run)
    if not os.path.isdir(path):
        raise W2SError(f"no run {run!r} (looked for {path})")
    return path



class MetricsLog:
    """metrics.jsonl: one JSON object per line, each written with one append, so a crash can cut
    at most the last line, which `truncate_after` drops on resume with any later records."""

    def __init__(self, path: str, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # a line cut by a crash, and nothing after it counts
                if record.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
