"""demo --quick end to end, report's numbers read back from the runs, inspect on known contents."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from w2s_pipe.cli import cli
from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.report.measures import pgr
from w2s_pipe.stages.demo import DemoConfig, run_demo
from w2s_pipe.stages.inspect import InspectConfig, run_inspect
from w2s_pipe.stages.report import ReportConfig, run_report
from w2s_pipe.storage.writer import StoreWriter


def final_top1(run_dir):
    """Read independently of the report code: the last epoch record's val_top1."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        epochs = [r for r in map(json.loads, f) if r["kind"] == "epoch"]
    return epochs[-1]["val_top1"]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "ws")
    lines = []
    report = run_demo(DemoConfig.quick_demo(out), echo=lines.append)
    return out, report, lines


def test_demo_quick_runs_everything(quick_demo):
    out, report, lines = quick_demo
    runs = sorted(os.listdir(os.path.join(out, "runs")))
    assert len(runs) == 2 * (2 + 8 + 1) and len(os.listdir(os.path.join(out, "stores"))) == 2  # + hard on 70% kept
    assert lines[-1].startswith("[25/25]")  # data, 2 x (weak, store, ceiling, 9 runs)
    roles = {r["name"]: r["role"] for r in report["runs"]}
    assert roles["s0-weak"] == "weak" and roles["s1-ceiling"] == "ceiling" and roles["s0-adaptconf-gt1.0"] == "w2s"
    labels = [row["label"] for row in report["rows"]]
    assert labels[:2] == ["weak test_vit", "ceiling test_resnet (ground truth)"]
    assert len(labels) == 11 and all(row["n"] == 2 for row in report["rows"])
    kept = [row for row in report["rows"] if "70% by margin per class" in row["label"]]
    assert len(kept) == 1 and kept[0]["runs"] == ["s0-hard-keep0.7-per_class", "s1-hard-keep0.7-per_class"], labels
    for f in ("report.md", "report.json", "accuracy.png", "curves.png", "beta-alpha.png"):
        assert os.path.exists(os.path.join(out, "report", f)), f


def test_report_numbers_are_the_runs_numbers(quick_demo):
    out, report, _ = quick_demo
    top1 = {name: final_top1(os.path.join(out, "runs", name)) for name in os.listdir(os.path.join(out, "runs"))}
    rows = {row["label"]: row for row in report["rows"]}
    weak = [top1["s0-weak"], top1["s1-weak"]]
    assert rows["weak test_vit"]["top1_mean"] == pytest.approx(np.mean(weak))
    assert rows["weak test_vit"]["top1_std"] == pytest.approx(np.std(weak, ddof=1))
    row = rows["test_resnet from test_vit: adaptconf"]
    assert row["top1_mean"] == pytest.approx(np.mean([top1["s0-adaptconf"], top1["s1-adaptconf"]]))
    # PGR paired by seed: each seed's run against that seed's weak model and ceiling.
    per_seed = [pgr(top1[f"s{s}-weak"], top1[f"s{s}-ceiling"], top1[f"s{s}-adaptconf"]) for s in (0, 1)]
    defined = [p for p in per_seed if p is not None]
    assert row.get("pgr_n", 0) == len(defined)
    if defined:
        assert row["pgr_mean"] == pytest.approx(np.mean(defined))
    # the weak accuracy in PGR is that of the checkpoint that labelled each store, evaluated (here last.pt:
    # its run's last epoch figure, exactly, on the CPU) and cached beside the report
    for store in report["stores"]:
        run = os.path.basename(os.path.dirname(store["weak_checkpoint"]))
        assert store["weak_top1"] == top1[run], store["name"]
    cached = sorted(os.listdir(os.path.join(out, "report", "weak-accuracy")))
    assert sorted(os.path.splitext(n)[1] for n in cached) == [".json", ".json", ".parquet", ".parquet"]  # + predictions
    gt_row = rows["test_resnet from test_vit: kd + gt"]
    deltas = [top1[f"s{s}-kd-gt1.0"] - top1[f"s{s}-ceiling"] for s in (0, 1)]
    assert gt_row["delta_mean"] == pytest.approx(np.mean(deltas))


def test_report_cli_json_and_demo_never_deletes_other_data(quick_demo):
    out, _, _ = quick_demo
    result = CliRunner().invoke(cli, ["report", out, "--format", "json", "--no-plots"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert {row["setting"] for row in data["rows"]} == {"weak model", "strong ceiling", "weak-to-strong", "distillation (+gt)"}
    other = os.path.join(os.path.dirname(out), "precious")
    os.makedirs(other)
    open(os.path.join(other, "notes.txt"), "w").close()
    with pytest.raises(W2SError, match="precious exists and is not a demo workspace"):
        run_demo(DemoConfig.quick_demo(other))
    assert os.path.exists(os.path.join(other, "notes.txt"))


def test_a_demo_run_again_continues_and_fresh_starts_over(quick_demo, monkeypatch):
    """The same demo in its workspace: a finished one prints its report again, training nothing; one cut
    short (a step's marker and run gone, as after a kill before the step finished) redoes that step only;
    --fresh deletes the runs first."""
    out, report, _ = quick_demo
    steps = os.path.join(out, "study", "steps")
    markers = {name: json.load(open(os.path.join(steps, name)))["name"] for name in os.listdir(steps)}
    marker = next(n for n, step in markers.items() if step == "s1-kd")
    os.remove(os.path.join(steps, marker))
    shutil.rmtree(os.path.join(out, "runs", "s1-kd"))
    before = {n: os.path.getmtime(os.path.join(out, "runs", n, "last.pt")) for n in os.listdir(os.path.join(out, "runs"))}
    lines = []
    again = run_demo(DemoConfig.quick_demo(out), echo=lines.append)
    assert lines[0].startswith(f"continuing the demo in {out}")
    redone = [line for line in lines if line.startswith("[")]
    assert len(redone) == 1 and "s1-kd:" in redone[0], lines  # the one step cut short, nothing else
    assert {n: os.path.getmtime(os.path.join(out, "runs", n, "last.pt")) for n in before} == before
    assert os.path.exists(os.path.join(steps, marker))
    assert [row["top1_mean"] for row in again["rows"]] == pytest.approx([row["top1_mean"] for row in report["rows"]])
    kept = open(os.path.join(out, "demo.json")).read()  # the workspace stays the fixture's for the other tests
    removed = []
    monkeypatch.setattr("w2s_pipe.stages.demo.shutil.rmtree", removed.append)
    monkeypatch.setattr("w2s_pipe.stages.demo.run_study", lambda *a, **k: {"report": {}, "time": {"wall_s": 0},
                                                                           "failed": []})
    lines = []
    run_demo(DemoConfig.quick_demo(out, fresh=True), echo=lines.append)
    assert removed == [out] and lines[0] == f"starting the demo over in {out}"
    run_demo(DemoConfig.quick_demo(out, seeds=1), echo=lines.append)
    assert lines[-1] == f"starting the demo over in {out} (an earlier demo there had other options)"
    open(os.path.join(out, "demo.json"), "w").write(kept)


def test_report_on_an_empty_workspace(tmp_path):
    with pytest.raises(W2SError, match="nothing to report"):
        run_report(ReportConfig(workspace=str(tmp_path / "empty")))


def known_store(path, confidences, correct, labels=True):
    """A store whose index has exactly these confidences, with pred right where `correct`."""
    n = len(confidences)
    counts = [n // 2, n - n // 2]
    attrs = {
        "weak": {"model": "m", "checkpoint": None, "checkpoint_sha256": "x"}, "num_classes": 4, "class_names": None,
        "preprocessing": {}, "precision": "fp32",
        "data": {"name": "t", "split": "s", "pattern": "p", "image_field": "png", "label_field": "cls", "fingerprint": "f",
                 "shards": [{"name": f"s{i}.tar", "url": f"/x/s{i}.tar", "count": c, "bytes": 1} for i, c in enumerate(counts)]},
        "layout": {"capacity": max(counts), "rows": 2 * max(counts), "topk": None}, "tool_version": "t",
    }
    w = StoreWriter.create(str(path), attrs)
    label = np.arange(n) % 4
    pred = np.where(correct, label, (label + 1) % 4).astype(np.int32)
    start = 0
    for i, c in enumerate(counts):
        sl = slice(start, start + c)
        w.write_shard(i, [f"k{j}" for j in range(start, start + c)], label[sl] if labels else None, {
            "logits": np.zeros((c, 4), np.float16), "pred": pred[sl],
            "confidence": np.asarray(confidences[sl], np.float32), "margin": np.full(c, 0.5, np.float32),
            "entropy": np.full(c, 0.25, np.float32)})
        start += c
    w.finalize()
    return str(path), pred, label


def test_inspect_known_contents(tmp_path):
    # 0.9-confident samples right 9 times in 10, 0.6-confident right 6 in 10: perfectly calibrated.
    conf = np.array([0.9] * 10 + [0.6] * 10)
    correct = np.array([True] * 9 + [False] + [True] * 6 + [False] * 4)
    url, pred, label = known_store(tmp_path / "a", conf, correct)
    stats = run_inspect(InspectConfig(stores=(url,), out=str(tmp_path / "figs")))
    assert stats["samples"] == 20 and stats["classes"] == 4 and stats["shards"] == 2
    assert stats["accuracy"] == pytest.approx(0.75) and stats["ece"] == pytest.approx(0.0, abs=1e-6)
    assert stats["pred_counts"] == np.bincount(pred, minlength=4).tolist()
    assert stats["label_counts"] == np.bincount(label, minlength=4).tolist()
    assert stats["confidence"]["mean"] == pytest.approx(0.75) and stats["margin"]["mean"] == pytest.approx(0.5)
    assert stats["entropy_mean"] == pytest.approx(0.25)
    assert os.path.exists(tmp_path / "figs" / "calibration.png")
    # Over-confident: 0.95 everywhere, half right -> ECE 0.45.
    url, _, _ = known_store(tmp_path / "b", np.full(20, 0.95), np.arange(20) % 2 == 0)
    assert run_inspect(InspectConfig(stores=(url,), plots=False))["ece"] == pytest.approx(0.45, abs=1e-6)
    url, _, _ = known_store(tmp_path / "c", conf, correct, labels=False)
    stats = run_inspect(InspectConfig(stores=(url,), plots=False))
    assert not stats["has_labels"] and "accuracy" not in stats


def copy_run(ws, src, dst, config=None, top1=None, finished=True):
    """A run directory made from a real one of the demo, with its settings or final figure changed."""
    import shutil

    shutil.copytree(os.path.join(ws, "runs", src), os.path.join(ws, "runs", dst))
    path = os.path.join(ws, "runs", dst)
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg.update(config or {})
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    records = [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]
    if top1 is not None:
        for r in records:
            if r["kind"] == "epoch":
                r["val_top1"] = top1
    if not finished:
        records = [r for r in records if r["kind"] != "end"]
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_report_compares_only_what_is_comparable(quick_demo, tmp_path, monkeypatch):
    """Runs that differ in a setting get their own rows, named by it; a seed run twice is counted once
    and flagged; an unfinished ceiling is listed and never used; an unreadable store is listed with
    why; `report` without an argument finds the demo under the workspace."""
    import shutil

    out, _, _ = quick_demo
    ws = tmp_path / "ws"
    shutil.copytree(out, ws / "demo")
    demo = str(ws / "demo")
    copy_run(demo, "s0-adaptconf", "s0-adaptconf-tau4", {"threshold": 4.0}, top1=0.5)
    copy_run(demo, "s1-adaptconf", "s1-adaptconf-tau4", {"threshold": 4.0}, top1=0.7)
    copy_run(demo, "s0-adaptconf", "s0-adaptconf-again")
    copy_run(demo, "s0-ceiling", "s0-a-ceiling-stopped", top1=0.11, finished=False)  # sorts before s0-ceiling
    copy_run(demo, "s0-kd", "s0-kd-lr", {"lr": 0.5})  # a recipe no ceiling ran
    os.makedirs(os.path.join(demo, "stores", "broken"))
    open(os.path.join(demo, "stores", "broken", "zarr.json"), "w").write("{garbage")
    monkeypatch.setenv("W2S_HOME", str(ws))
    result = CliRunner().invoke(cli, ["report", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"workspace {demo}")
    report = json.load(open(os.path.join(demo, "report", "report.json")))
    rows = {row["label"]: row for row in report["rows"]}
    tau4 = rows["test_resnet from test_vit: adaptconf (threshold=4.0)"]
    tau05 = rows["test_resnet from test_vit: adaptconf (threshold=0.5)"]
    assert sorted(tau4["runs"]) == ["s0-adaptconf-tau4", "s1-adaptconf-tau4"] and tau4["top1_mean"] == pytest.approx(0.6)
    assert tau05["n"] == 2 and tau05["repeated_seeds"] == [0] and len(tau05["runs"]) == 3
    assert "seed 0 was run more than once" in result.output
    # the unfinished ceiling is listed, and seed 0's PGR uses the finished one
    assert "run s0-a-ceiling-stopped: unfinished or crashed" in result.output
    runs = {r["name"]: r for r in report["runs"]}
    assert "s0-a-ceiling-stopped" not in runs
    assert runs["s0-adaptconf"]["ceiling_runs"] == ["s0-ceiling"]
    assert runs["s0-adaptconf"]["ceiling_top1"] == final_top1(os.path.join(demo, "runs", "s0-ceiling"))
    assert "store broken: could not be read, left out: store " in result.output and "zarr.json" in result.output
    lr_row = rows["test_resnet from test_vit: kd (lr=0.5)"]
    assert lr_row["no_ceiling"] and lr_row["runs"] == ["s0-kd-lr"] and "pgr_mean" in lr_row and lr_row["pgr_n"] == 0
    assert "- test_resnet from test_vit: kd (lr=0.5): no ceiling matches" in result.output


def test_pgr_uses_the_checkpoint_that_labelled_the_store(quick_demo, tmp_path, weak_ckpt):
    """A store labelled from a checkpoint that is no run's last epoch (here one made outside the
    workspace) gets that checkpoint's own validation accuracy, not a run's figure or nothing."""
    import shutil

    from w2s_pipe.stages.evaluate import EvalConfig, run_eval
    from w2s_pipe.stages.label import LabelConfig, run_label

    out, _, _ = quick_demo
    ws = str(tmp_path / "ws")
    shutil.copytree(out, ws)
    shutil.rmtree(os.path.join(ws, "report"))
    store = os.path.join(ws, "stores", "outside")
    run_label(LabelConfig(weak=None, weak_checkpoint=str(weak_ckpt), data="digits", labels=store, workers=0,
                          precision="fp32", workspace=ws, progress=False))
    report = run_report(ReportConfig(workspace=ws, plots=False))
    got = {s["name"]: s for s in report["stores"]}["outside"]
    expected = run_eval(EvalConfig(checkpoint=str(weak_ckpt), data="digits", workers=0, workspace=ws))["top1"]
    assert got["weak_top1"] == expected and "weak.pt evaluated on digits val" in got["weak_top1_from"]


def test_identical_curves_are_one_line():
    from w2s_pipe.pipeline.report.plots import merge_identical

    alpha = [(1, 0.0), (2, 0.5)]
    merged = merge_identical({"augconf (alpha)": alpha, "augconf + gt (alpha)": list(alpha), "adaptconf (beta)": [(1, 0.3)],
                              "empty": []})
    assert merged == {"augconf (alpha) = augconf + gt (alpha)": alpha, "adaptconf (beta)": [(1, 0.3)]}


def test_a_run_from_before_an_option_existed_shares_the_row_of_its_default(quick_demo, tmp_path):
    """A config.json written before --teacher, --teacher-model and --store-view existed reads as
    those options' defaults (what the run did), so old and new runs of one setting share a row."""
    import shutil

    out, _, _ = quick_demo
    ws = str(tmp_path / "demo")
    shutil.copytree(out, ws)
    copy_run(ws, "s1-kd", "s1-kd-old")
    path = os.path.join(ws, "runs", "s1-kd-old", "config.json")
    cfg = json.load(open(path))
    assert {"teacher", "teacher_model", "store_view"} <= set(cfg)
    for key in ("teacher", "teacher_model", "store_view"):
        del cfg[key]
    json.dump(cfg, open(path, "w"))
    rows = [row for row in run_report(ReportConfig(workspace=ws, plots=False))["rows"]
            if row["label"].startswith("test_resnet from test_vit: kd") and not row["gt_weight"]]
    assert len(rows) == 1 and "s1-kd-old" in rows[0]["runs"] and rows[0]["repeated_seeds"] == [1]


def test_rows_are_paired_by_seed_against_hard_labels(quick_demo):
    """Each row's difference to hard labels, seed by seed on the same store, and Student's t interval over
    the seeds, from the runs' own figures; hard's 70%-kept row against hard on all labels."""
    from scipy import stats

    out, report, _ = quick_demo
    top1 = {name: final_top1(os.path.join(out, "runs", name)) for name in os.listdir(os.path.join(out, "runs"))}
    rows = {row["label"]: row for row in report["rows"]}
    hard = "test_resnet from test_vit: hard"
    assert rows[hard]["vs"] == {"reference": "itself", "loss": "hard"}
    vs = rows["test_resnet from test_vit: adaptconf"]["vs"]
    d = [top1[f"s{s}-adaptconf"] - top1[f"s{s}-hard"] for s in (0, 1)]
    assert vs["reference"] == hard and vs["diffs"] == {0: pytest.approx(d[0]), 1: pytest.approx(d[1])}
    assert vs["mean"] == pytest.approx(np.mean(d))
    if np.std(d) > 0:
        half = stats.t.ppf(0.975, 1) * np.std(d, ddof=1) / np.sqrt(2)
        assert (vs["lo"], vs["hi"]) == (pytest.approx(np.mean(d) - half), pytest.approx(np.mean(d) + half))
    kept = next(r for label, r in rows.items() if "70% by margin" in label)
    assert kept["vs"]["reference"] == hard
    assert rows["test_resnet from test_vit: kd + gt"]["vs"]["reference"] == "test_resnet from test_vit: hard + gt"
    table = report.summary()
    assert any("| vs hard: paired Δ, 95% interval (points) |" in line for line in table)
    with pytest.raises(W2SError, match=r"--reference evidential: no weak-to-strong row trained with --loss evidential; "
                                       r"the rows' losses: adaptconf, augconf, hard, kd"):
        run_report(ReportConfig(workspace=out, plots=False, reference="evidential"))


def test_misfit_per_class_and_pairs_come_from_the_kept_predictions(quick_demo, tmp_path):
    """Each run kept its final predictions on val; the misfit to its weak model (here the store's checkpoint is
    the weak run's last.pt, so the weak run's own kept predictions are the weak model's), per-class top-1 and
    McNemar's counts, all recomputed here from the Parquet files with numpy alone."""
    import shutil

    import pyarrow.parquet as pq

    out, _, _ = quick_demo
    report = run_report(ReportConfig(workspace=out, plots=True, per_class=True, pair=("s0-hard", "s0-kd")))

    def read(run):
        t = pq.read_table(os.path.join(out, "runs", run, "predictions-val.parquet")).to_pydict()
        return np.array(t["label"]), np.array(t["pred"]), np.array(t["logits"], np.float64), t["key"]

    y, student, s_logits, keys = read("s0-kd")
    _, weak, w_logits, weak_keys = read("s0-weak")
    assert keys == weak_keys and len(keys) == 300
    p = np.exp(s_logits - s_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(w_logits - w_logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    run = next(r for r in report["runs"] if r["name"] == "s0-kd")
    assert run["misfit"]["disagree"] == pytest.approx(np.mean(student != weak))
    assert run["misfit"]["kl"] == pytest.approx(np.mean(np.sum(p * np.log(p / q), 1)), rel=1e-4)
    rows_ = np.arange(300)
    gain = np.mean(-np.log(q[rows_, y])) - np.mean(-np.log(p[rows_, y]))
    assert run["misfit"]["gain_ce"] == pytest.approx(gain, rel=1e-4)
    assert run["misfit"]["gain_top1"] == pytest.approx(np.mean(student == y) - np.mean(weak == y))
    assert os.path.exists(os.path.join(out, "report", "gain-vs-misfit.png"))
    assert any(section.startswith("What predicts the gain") for section in report.sections())
    # per class: the kd row's class 3, the mean over its two runs
    kd_row = next(r for r in report["per_class"]["rows"] if r["label"] == "test_resnet from test_vit: kd")
    per_run = []
    for s in (0, 1):
        y_s, pred_s, _, _ = read(f"s{s}-kd")
        per_run.append(np.mean(pred_s[y_s == 3] == 3))
    assert kd_row["top1"][3] == pytest.approx(np.mean(per_run)) and kd_row["runs"] == 2
    # a pair: the samples only one of them gets right
    _, hard, _, _ = read("s0-hard")
    pair = report["pair"]
    assert (pair["a_only"], pair["b_only"]) == (int(np.sum((hard == y) & (student != y))),
                                                int(np.sum((hard != y) & (student == y))))
    with pytest.raises(W2SError, match=r"--pair s0-hard s1-kd: a paired check compares runs that share the seed and "
                                       r"the store\(s\); these differ in seed 0 against 1; stores"):
        run_report(ReportConfig(workspace=out, plots=False, pair=("s0-hard", "s1-kd")))
    with pytest.raises(W2SError, match=r"--pair: no finished run 'nope'"):
        run_report(ReportConfig(workspace=out, plots=False, pair=("s0-hard", "nope")))
    # runs from before predictions were kept: --per-class says how to get them
    old = tmp_path / "old"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("predictions-*.parquet"))
    with pytest.raises(W2SError, match=r"--per-class: no run of this workspace kept its predictions .*"
                                       r"`w2s-pipe eval --run RUN` keeps a run's"):
        run_report(ReportConfig(workspace=str(old), plots=False, per_class=True))
    # a run that kept several splits' predictions (eval --run scored test too): --split says whose
    from w2s_pipe.stages.evaluate import EvalConfig, run_eval

    evaluated = run_eval(EvalConfig(run=os.path.join(out, "runs", "s0-kd"), split="test", workers=0, device="cpu",
                                    workspace=out))
    assert evaluated["predictions"].endswith(os.path.join("s0-kd", "predictions-test.parquet"))
    with pytest.raises(W2SError, match=r"run s0-kd kept predictions of several splits \(test, val\): give report --split"):
        run_report(ReportConfig(workspace=out, plots=False, per_class=True))
    on_test = run_report(ReportConfig(workspace=out, plots=False, per_class=True, split="test"))["per_class"]
    assert [r["runs"] for r in on_test["rows"]] == [1]  # only s0-kd was scored on test
    os.remove(evaluated["predictions"])  # the module's other tests see the demo as it was
