"""Where stores, runs and prepared data live: `$W2S_HOME` (default ./w2s-work), and `$W2S_DATA`."""

from __future__ import annotations

import os
import re
from pathlib import Path


def workspace_dir(workspace: str | os.PathLike | None = None) -> Path:
    """The workspace: an explicit argument, else `$W2S_HOME`, else `./w2s-work`."""
    if workspace:
        return Path(workspace)
    return Path(os.environ.get("W2S_HOME") or "w2s-work")


def data_root(workspace: str | os.PathLike | None = None) -> str:
    """Where built-in datasets are looked for: `$W2S_DATA`, else `<workspace>/data`."""
    return os.environ.get("W2S_DATA") or str(workspace_dir(workspace) / "data")


def slug(text: str) -> str:
    """A file-name-safe version of a model or dataset name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def default_store_path(workspace, data_name: str, split: str, weak: str, topk: int | None, views: int = 0, *,
                       features: bool = False) -> str:
    """<workspace>/stores/<data>-<split>-<weak>[-topK][-viewsK], or a feature store's
    <workspace>/features/<data>-<split>-<model>."""
    name = f"{slug(data_name)}-{slug(split)}-{slug(weak)}" + (f"-top{topk}" if topk else "") + \
        (f"-views{views}" if views else "")
    return str(workspace_dir(workspace) / ("features" if features else "stores") / name)
