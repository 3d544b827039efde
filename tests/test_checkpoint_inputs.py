"""Every file a user can name as a checkpoint, given to every command that reads one: `label
--weak-checkpoint`, `train --strong-checkpoint`, `train --resume` (as the run's last.pt) and `eval
--checkpoint`. Each kind of wrong file is one line, naming the file and saying what to do, with a
non-zero exit; never a traceback. At 436ca2b, 7 of these 11 kinds ended in a traceback in at least
one command (--resume read last.pt unchecked; label and eval met a w2s checkpoint without its keys
with a KeyError), an empty last.pt in click's bare "Aborted!", and a folder in click's three-line
usage error."""

from __future__ import annotations

import gzip
import os
import shutil

import pytest
import timm
import torch
from click.testing import CliRunner

from w2s_pipe.cli import cli
from w2s_pipe.pipeline.models.checkpoint import FORMAT


def bad_file(kind: str, d) -> str:
    """A file of `kind` in directory `d`, as a user would come by it."""
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=10)
    path = str(d / f"{kind}.pt")
    if kind == "missing":
        return str(d / "nope.pt")
    if kind == "directory":
        os.makedirs(path)
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "text":
        open(path, "w").write("weights: see the wiki\n")
    elif kind in ("truncated", "gzip"):
        torch.save(net.state_dict(), path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2] if kind == "truncated" else gzip.compress(data))
    elif kind == "whole-model":
        torch.save(net, path)  # the model object itself: loading it would run pickled code
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "mapping":
        torch.save({"epoch": 3, "arch": "resnet"}, path)
    elif kind == "other-model":
        torch.save(timm.create_model("test_vit", num_classes=10).state_dict(), path)
    elif kind == "damaged-w2s":
        torch.save({"format": FORMAT, "state_dict": net.state_dict()}, path)
    return path


# kind -> a fragment every command's error holds, and per command where it differs
EXPECT = {
    "missing": {"*": "does not exist", "resume": "has no last.pt to continue from"},
    "directory": {"*": "is a directory"},
    "empty": {"*": "is an empty file"},
    "text": {"*": "is not a PyTorch checkpoint", "resume": "start a new run"},
    "truncated": {"*": "is cut short or damaged", "resume": "start a new run"},
    "gzip": {"*": "gunzip"},
    "whole-model": {"*": "without running its code", "resume": "start a new run"},
    "list": {"*": "expected a state dict of tensors, found a list", "resume": "is not a checkpoint `w2s-pipe train` wrote"},
    "mapping": {"*": "found a mapping with keys epoch, arch", "resume": "is not a checkpoint `w2s-pipe train` wrote"},
    "other-model": {"label": "does not fit ResNet", "strong": "does not fit test_resnet",
                    "resume": "is not a checkpoint `w2s-pipe train` wrote", "eval": "is a plain state dict, not a checkpoint from"},
    "damaged-w2s": {"*": "is damaged: written by w2s-pipe but without model_name", "resume": "lacks model_name"},
}


@pytest.fixture(scope="module")
def store(digits_dir, weak_ckpt, tmp_path_factory):
    from w2s_pipe.stages.label import LabelConfig, run_label

    out = tmp_path_factory.mktemp("stores") / "digits"
    return run_label(LabelConfig.tiny(weak_checkpoint=weak_ckpt, data=str(digits_dir / "digits-transfer-*.tar"),
                                      labels=str(out))).store


@pytest.mark.parametrize("kind", list(EXPECT))
def test_a_wrong_checkpoint_file_is_one_line_in_every_command(kind, store, digits_data, tmp_path):
    path = bad_file(kind, tmp_path)
    train = ["train", "--strong", "test_resnet", "--labels", store, "--epochs", "1", "--steps-per-epoch", "1",
             "--batch-size", "8", "--workers", "0", "--no-eval", "--quiet", "--device", "cpu"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if os.path.isdir(path):
        shutil.copytree(path, run_dir / "last.pt")
    elif os.path.exists(path):
        shutil.copy(path, run_dir / "last.pt")
    commands = {
        "label": ["label", "--weak", "test_resnet", "--weak-checkpoint", path, "--labels", str(tmp_path / "s"),
                  "--workers", "0", "--quiet"],
        "strong": [*train, "--strong-checkpoint", path, "--run-name", str(tmp_path / "fresh")],
        "resume": [*train, "--run-name", str(run_dir), "--resume"],
        "eval": ["eval", "--checkpoint", path, "--data", "digits", "--workers", "0"],
    }
    for command, args in commands.items():
        result = CliRunner().invoke(cli, args)
        assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (command, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "Traceback" not in result.output, (command, result.output)
        named = str(run_dir) if command == "resume" else path  # the run, whose last.pt it is
        assert named in errors[0], (command, errors[0])
        assert EXPECT[kind].get(command, EXPECT[kind].get("*")) in errors[0], (command, errors[0])


def test_a_safetensors_state_dict_is_read_like_a_pt_file(weak_ckpt, tmp_path):
    """timm and the hub ship weights as .safetensors: a plain state dict in one works where a saved
    state_dict() does."""
    from safetensors.torch import save_file

    from w2s_pipe.pipeline.models.build import load_model
    from w2s_pipe.pipeline.models.checkpoint import load_checkpoint

    state = load_checkpoint(weak_ckpt)["state_dict"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    loaded = load_model("test_resnet", checkpoint=str(tmp_path / "w.safetensors"), num_classes=10)
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[name]), name
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:100])
    from w2s_pipe.errors import W2SError

    with pytest.raises(W2SError, match="cut.safetensors is not a readable safetensors file"):
        load_checkpoint(str(tmp_path / "cut.safetensors"))
