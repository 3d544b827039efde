"""The online teacher (`train --teacher`): the weak model on each batch's exact pixels, checked
against a separate forward pass; end to end it trains, resumes exactly, runs under DDP and reports.

Device: the CPU, fp32 unless a test says otherwise (stated: equalities are exact there)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import make_checkpoint, resume_against_whole, same_weights
from launch import torchrun

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.models.build import load_model
from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.pipeline.weak.teacher import OnlineTeacher
from w2s_pipe.stages.train import TrainConfig, run_train

CPU = torch.device("cpu")
STUDENT = {"input_size": [3, 24, 24], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic"}


def records(run_dir, kind):
    return read_metrics(run_dir, kind)


def test_the_teacher_sees_the_students_pixels_in_its_own_size_and_normalisation(weak_ckpt):
    loaded = load_model(None, checkpoint=weak_ckpt, num_classes=10)
    teacher = OnlineTeacher(loaded, STUDENT, CPU)
    pixels = torch.rand(4, 3, 24, 24)  # 0..1
    student_batch = (pixels - torch.tensor(STUDENT["mean"]).view(1, 3, 1, 1)) / torch.tensor(STUDENT["std"]).view(1, 3, 1, 1)
    mean = torch.tensor(loaded.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(loaded.data_config["std"]).view(1, 3, 1, 1)
    size = loaded.data_config["input_size"][1:]
    expected_input = F.interpolate((pixels - mean) / std, size=size, mode=loaded.data_config["interpolation"],
                                   align_corners=False, antialias=True)
    torch.testing.assert_close(teacher.inputs(student_batch), expected_input, rtol=0, atol=1e-5)
    with torch.no_grad():
        expected = loaded.model.eval()(expected_input)
    got = teacher(student_batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert got.dtype == torch.float32 and not got.is_inference() and not got.requires_grad
    # the same normalisation and size: the batch goes in untouched
    same = OnlineTeacher(loaded, loaded.data_config, CPU)
    assert same.identity and torch.equal(same.inputs(expected_input), expected_input)


def test_an_online_batch_carries_the_teachers_output_on_its_final_mixed_pixels(weak_ckpt):
    """StepInputs with erasing and mixing: the weak logits are the teacher's forward on the very
    images the student gets, not the stored kind mixed linearly."""
    from w2s_pipe.pipeline.train.batch import StepInputs
    from w2s_pipe.pipeline.views.mixing import BatchMix
    from w2s_pipe.pipeline.views.params import View

    loaded = load_model(None, checkpoint=weak_ckpt, num_classes=10)
    teacher = OnlineTeacher(loaded, STUDENT, CPU)
    mixer = BatchMix(mixup=0.8, cutmix=1.0, prob=1.0, switch_prob=0.5, smoothing=0.0, num_classes=10, seed=0)
    prepare = StepInputs(STUDENT, CPU, decoder="cpu", rank=0, need_labels=True, reprob=1.0, mixer=mixer,
                         teacher=teacher)
    torch.manual_seed(0)
    view = View(0, 0, 24, 24, False, 24, 24, erase_top=2, erase_left=3, erase_height=10, erase_width=8).as_row()
    image = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)

    def batch():  # a loader batch (StepInputs takes its parts)
        return {"image": image, "view": torch.tensor([view] * 4), "label": torch.tensor([0, 1, 2, 3]),
                "dropped": torch.tensor(0), "key": [("s", str(i), 0) for i in range(4)]}

    out = prepare(batch(), step=3, micro=0)
    assert out["target"].shape == (4, 10)  # mixed soft targets
    torch.testing.assert_close(out["weak"], teacher(out["image"]), rtol=0, atol=0)
    plain = StepInputs(STUDENT, CPU, decoder="cpu", rank=0, need_labels=True)(batch(), step=3, micro=0)
    assert not torch.equal(plain["image"], out["image"])  # erased and mixed: the teacher saw those pixels


@pytest.mark.parametrize("options,match", [
    (dict(labels="s", teacher="t.pt"), "give --labels STORE or --teacher CHECKPOINT, not both"),
    (dict(loss="gt", teacher="t.pt"), "--loss gt does not read; drop --teacher"),
    (dict(teacher="t.pt"), "--teacher needs --data"),
    (dict(teacher="t.pt", data="digits", skip_missing=True), "--skip-missing is about a store's rows"),
    (dict(teacher_model="resnet18"), "--teacher-model names the model of a --teacher checkpoint"),
])
def test_teacher_options_are_checked_at_once(options, match):
    with pytest.raises(W2SError, match=match):
        TrainConfig.tiny(**options)


def test_a_teacher_for_other_classes_is_refused(digits_data, tmp_path):
    ckpt = make_checkpoint(tmp_path / "t7.pt", num_classes=7)
    with pytest.raises(W2SError, match="t7.pt has 7 classes but the dataset has 10"):
        run_train(TrainConfig.tiny(teacher=ckpt, data="digits", run="t7", device="cpu"))


def test_shards_without_a_manifest_take_the_teachers_classes(digits_dir, weak_ckpt, tmp_path):
    """A raw shard pattern says no number of classes; with --teacher the teacher's head does (and
    without one the run is refused by name)."""
    import shutil

    for name in ("digits-transfer-000000.tar", "digits-transfer-000001.tar"):
        shutil.copy(digits_dir / name, tmp_path / name)
    pattern = str(tmp_path / "digits-transfer-{000000..000001}.tar")
    done = run_train(TrainConfig.tiny(teacher=weak_ckpt, data=pattern, run="raw", device="cpu", no_eval=True,
                                      strong="test_resnet", steps_per_epoch=2, workspace=str(tmp_path)))
    config = json.load(open(os.path.join(done.run_dir, "config.json")))
    assert done.finished and config["num_classes"] == 10
    with pytest.raises(W2SError, match="cannot tell the number of classes of .*digits-transfer"):
        run_train(TrainConfig.tiny(loss="gt", data=pattern, run="raw-gt", device="cpu", no_eval=True,
                                   workspace=str(tmp_path)))


ONLINE = dict(strong="test_resnet", data="digits", epochs=2, steps_per_epoch=3, hflip=0.5, reprob=0.5, mixup=0.8,
              cutmix=1.0, log_every=1, device="cpu", loss="adaptconf")


def test_an_online_run_trains_records_its_teacher_and_resumes_exactly(digits_data, weak_ckpt, tmp_path):
    import shutil

    teacher_file = str(shutil.copy(weak_ckpt, tmp_path / "teacher.pt"))
    whole, split = resume_against_whole(2, teacher=teacher_file, **ONLINE)
    assert whole.finished and split.finished and whole.step == 6 and same_weights(whole.run_dir, split.run_dir)
    assert records(whole.run_dir, "end")[0]["weights_sha256"] == records(split.run_dir, "end")[0]["weights_sha256"]
    config = json.load(open(os.path.join(whole.run_dir, "config.json")))
    teacher = config["data_source"]["teacher"]
    assert teacher["model"] == "test_resnet" and len(teacher["checkpoint_sha256"]) == 64
    assert teacher["data_config"]["input_size"] == [3, 32, 32] and config["data_source"]["store"] is None
    assert all(0 <= e["train_agree"] <= 1 for e in records(whole.run_dir, "epoch"))
    # the teacher's file replaced by other weights (same path) is refused by --resume, by its sha256
    make_checkpoint(teacher_file, seed=5)
    with pytest.raises(W2SError, match="cannot continue with other settings: data_source .*checkpoint_sha256"):
        run_train(TrainConfig.tiny(run="split", teacher=teacher_file, resume=True, **ONLINE))


def test_an_online_run_under_torchrun_ends_with_equal_weights(digits_data, weak_ckpt, tmp_path):
    cmd = ["train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "1",
           "--steps-per-epoch", "3", "--workers", "1", "--precision", "fp32", "--quiet", "--device", "cpu",
           "--teacher", weak_ckpt, "--data", "digits", "--mixup", "0.8", "--run-name", "ddp"]
    out = torchrun(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    end = records(str(tmp_path / "ws" / "runs" / "ddp"), "end")[0]
    assert len(end["weights_sha256"]) == 2 and end["weights_sha256"][0] == end["weights_sha256"][1]


def test_report_shows_online_runs_as_their_own_rows_with_the_teachers_accuracy(digits_data, workspace_store,
                                                                                 weak_ckpt):
    """A store run and an online run from the same weak checkpoint, and a ceiling: two weak-to-strong
    rows, each with a PGR whose weak figure is the checkpoint's own validation accuracy."""
    from w2s_pipe.stages.report import ReportConfig, run_report

    common = dict(strong="test_resnet", epochs=1, steps_per_epoch=3, device="cpu", loss="hard")
    run_train(TrainConfig.tiny(run="from-store", **common))
    run_train(TrainConfig.tiny(run="online", teacher=weak_ckpt, data="digits", **common))
    run_train(TrainConfig.tiny(run="ceiling", **{**common, "loss": "gt"}, data="digits"))
    report = run_report(ReportConfig(plots=False))
    w2s = {r["label"]: r for r in report["rows"] if r["role"] == "w2s"}
    assert set(w2s) == {"test_resnet from test_resnet: hard", "test_resnet from test_resnet (online teacher): hard"}
    runs = {r["name"]: r for r in report["runs"]}
    assert runs["online"]["weak_top1"] == runs["from-store"]["weak_top1"] is not None  # one checkpoint, one figure
    assert runs["online"]["ceiling_runs"] == ["ceiling"]
    assert runs["online"].get("pgr") is not None or "does not beat" in runs["online"].get("pgr_missing", "")
