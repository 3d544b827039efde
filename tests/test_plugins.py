"""A researcher's own loss and ensemble without forking: a tiny package, installed by pip (a wheel
the test writes), registers a loss (entry-point group `w2s_pipe.losses`) and a way of combining an
ensemble (`w2s_pipe.ensembles`). The loss runs through `train` (by its name, and as `--loss
package.module:Name`), a study's grid and `select:`, and `report`; the ensemble through `train`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml
from conftest import make_checkpoint

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.losses.registry import loss_class
from w2s_pipe.pipeline.report.results import load_run
from w2s_pipe.pipeline.train.losses import objective
from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.pipeline.weak.ensemble import combine_tensor
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.stages.report import ReportConfig, run_report
from w2s_pipe.stages.study import run_study
from w2s_pipe.stages.study_config import load_study
from w2s_pipe.stages.train import TrainConfig, run_train

EXE = os.path.join(os.path.dirname(sys.executable), "w2s-pipe")
PLUGIN = '''
import torch.nn.functional as F

from w2s_pipe.pipeline.losses.base import WeakLoss


class Confident(WeakLoss):
    """Hard labels on the samples whose weak confidence reaches a floor; the others weigh nothing."""

    name = "confident"
    summary = "hard labels where the weak confidence reaches --loss-options floor=F"
    options = {"floor": 0.0}
    schedule = "kept"  # report plots it per step

    def term(self, student, weak, labels, step, weights):
        keep = (weak.float().softmax(1).max(1).values >= self.floor).float()
        per_sample = F.cross_entropy(student.float(), weak.argmax(1), reduction="none") * keep
        return per_sample.sum() / keep.sum().clamp(min=1), {"kept": keep.mean().detach()}
'''


ENSEMBLE = """
from w2s_pipe.pipeline.ensembles.base import Combination


class MaxProb(Combination):
    name = "max-prob"
    summary = "the log of the members' largest probability per class"

    def combine(self, x):
        return x.softmax(dim=-1).amax(dim=0).log()
"""


def _wheel(out) -> str:
    """w2s_loss_demo-0.1-py3-none-any.whl: the module, and a dist-info naming the entry point."""
    dist = "w2s_loss_demo-0.1.dist-info"
    files = {"w2s_loss_demo/__init__.py": "", "w2s_loss_demo/losses.py": PLUGIN,
             "w2s_loss_demo/ensembles.py": ENSEMBLE,
             f"{dist}/METADATA": "Metadata-Version: 2.1\nName: w2s-loss-demo\nVersion: 0.1\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: w2s-pipe-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{dist}/entry_points.txt": ("[w2s_pipe.losses]\nconfident = w2s_loss_demo.losses:Confident\n\n"
                                           "[w2s_pipe.ensembles]\nmax-prob = w2s_loss_demo.ensembles:MaxProb\n")}
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for name, text in files.items()] + [f"{dist}/RECORD,,"]
    path = str(out / "w2s_loss_demo-0.1-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in {**files, f"{dist}/RECORD": "\n".join(record) + "\n"}.items():
            wheel.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The package installed by pip into a folder of its own (never into this environment)."""
    out = tmp_path_factory.mktemp("plugin")
    site = out / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                    str(site), _wheel(out)], check=True)
    return str(site)


@pytest.fixture
def plugin(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(plugin_site)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [plugin_site, os.environ.get("PYTHONPATH")])))
    return plugin_site


def test_a_plugin_loss_is_found_by_entry_point_and_by_path_and_computes_its_term(plugin):
    by_entry, by_path = loss_class("confident"), loss_class("w2s_loss_demo.losses:Confident")
    assert by_entry is by_path and by_entry.tunable() == ("floor",)
    g = torch.Generator().manual_seed(0)
    student, weak = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    weak[0] = torch.tensor([9.0, 0, 0, 0])  # a confident weak row, kept at any floor below 0.99
    floor = 0.9
    loss, parts = objective("confident", loss_options={"floor": str(floor)})(student, weak, None, 0.5)
    keep = weak.softmax(1).max(1).values >= floor
    by_hand = torch.nn.functional.cross_entropy(student[keep], weak[keep].argmax(1))
    assert 0 < keep.sum() < 6 and torch.allclose(loss, by_hand) and parts["kept"].item() == pytest.approx(keep.float().mean().item())
    with pytest.raises(W2SError, match=r"--loss-options nope: loss 'confident' has no such option \(its options: floor\)"):
        TrainConfig.tiny(loss="confident", loss_options=("nope=1",))
    with pytest.raises(W2SError, match=r"--loss-options floor='high' is invalid: must be a float"):
        TrainConfig.tiny(loss="confident", loss_options=("floor=high",))
    with pytest.raises(W2SError, match=r"--loss 'w2s_loss_demo.losses:Nope' is invalid: w2s_loss_demo.losses has no Nope"):
        TrainConfig.tiny(loss="w2s_loss_demo.losses:Nope")
    with pytest.raises(W2SError, match=r"--loss 'nosuch' is invalid: no such loss; choose one of adaptconf, .*confident"):
        TrainConfig.tiny(loss="nosuch")


def test_a_plugin_loss_trains_and_is_reported(plugin, tmp_path, workspace_store):
    ws = str(tmp_path / "ws")
    run = run_train(TrainConfig.tiny(labels=workspace_store, loss="confident", loss_options=("floor=0.3",),
                                     run="mine", epochs=1, workspace=ws))
    assert run.finished and run.val_top1 is not None
    records = read_metrics(run.run_dir)
    kept = [r["kept"] for r in records if "kept" in r]
    assert kept and all(0 <= k <= 1 for k in kept)
    assert load_run(run.run_dir)["schedule"] == [(r["step"], r["kept"]) for r in records if r.get("kind") == "step"]
    done = subprocess.run([EXE, "--workspace", ws, "train", "--labels", workspace_store, "--loss",
                           "w2s_loss_demo.losses:Confident", "--loss-options", "floor=0.9", "--strong", "test_resnet",
                           "--img-size", "32", "--batch-size", "32", "--epochs", "1", "--workers", "0", "--precision",
                           "fp32", "--device", "cpu", "--quiet", "--run-name", "by-path"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = run_report(ReportConfig(workspace=ws, plots=False))
    rows = {(r["loss"], tuple(r["settings"].get("loss_options") or ())) for r in report["rows"]
            if r["role"] == "w2s"}
    assert ("confident", ("floor=0.3",)) in rows and ("w2s_loss_demo.losses:Confident", ("floor=0.9",)) in rows, rows
    assert "confident" in open(report["markdown"]).read()


def test_a_plugin_loss_in_a_study_grid_and_select(plugin, tmp_path, digits_data):
    study = {"data": "digits", "seeds": 1, "ceiling": False,
             "train": {"batch_size": 16, "steps_per_epoch": 2, "epochs": 1, "workers": 0, "precision": "fp32",
                       "hflip": 0.0, "device": "cpu"},
             "weak": {"w": {"strong": "test_resnet", "img_size": 32, "split": "weak"}},
             "stores": {"s": {"weak": "w", "workers": 0, "precision": "fp32", "device": "cpu"}},
             "strong": {"strong": "test_resnet", "img_size": 32},
             "grid": [{"loss": ["hard", "confident"]}],
             "select": {"confident": {"floor": [0.0, 0.9]}, "choose_on": "select", "score_on": "test"}}
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(study))
    result = run_study(load_study(str(path)), out=str(tmp_path / "ws"), echo=lambda *_: None, plots=False)
    assert not result["failed"], result["failed"]
    runs = sorted(os.listdir(tmp_path / "ws" / "runs"))
    assert {"s0-confident-floor0.0", "s0-confident-floor0.9", "s0-hard"} <= set(runs), runs
    config = json.load(open(tmp_path / "ws" / "runs" / "s0-confident-floor0.9" / "config.json"))
    assert config["loss"] == "confident" and config["loss_options"] == ["floor=0.9"]
    (chosen,) = [r for r in result["selection"] if r["cell"].get("loss") == "confident"]
    assert set(chosen["selected"]) == {"floor"} and [v["value"] for v in chosen["by_value"]] == [{"floor": 0.0},
                                                                                                  {"floor": 0.9}]
    assert chosen["vs"]["loss"] == "hard"  # paired with hard labels on the same store


def test_a_plugin_ensemble_combines_the_members_and_trains(plugin, tmp_path, workspace_store):
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # (members, n, C)
    by_hand = x.softmax(-1).max(dim=0).values.log()
    assert torch.allclose(combine_tensor(x, "max-prob"), by_hand)
    assert torch.allclose(combine_tensor(x, "w2s_loss_demo.ensembles:MaxProb"), by_hand)
    with pytest.raises(W2SError, match=r"--ensemble 'nosuch' is invalid: no such ensemble; choose one of mean-prob, "
                                       r".*max-prob"):
        combine_tensor(x, "nosuch")
    other = run_label(LabelConfig.tiny(weak_checkpoint=make_checkpoint(tmp_path / "weak2.pt", seed=3),
                                       labels=str(tmp_path / "second"))).store
    with pytest.raises(W2SError, match=r"--ensemble 'w2s_loss_demo.ensembles:Nope' is invalid: .* has no Nope"):
        TrainConfig.tiny(labels=f"{workspace_store},{other}", ensemble="w2s_loss_demo.ensembles:Nope")
    run = run_train(TrainConfig.tiny(labels=f"{workspace_store},{other}", ensemble="max-prob", loss="kd", run="ens",
                                     epochs=1, workspace=str(tmp_path / "ws")))
    assert run.finished and json.load(open(os.path.join(run.run_dir, "config.json")))["ensemble"] == "max-prob"
