"""`w2s-pipe study`: a grid of runs from one file, every artefact made once, the threshold chosen on
one split and scored on another, resumed after a kill, run side by side and through submitit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from w2s_pipe.cli import cli
from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.stages.study import run_study
from w2s_pipe.stages.study_config import load_study
from w2s_pipe.stages.study_plan import marker_path, plan

TINY = {  # digits as the session prepared it (the fixture digits_data), a tiny weak model trained once
    "data": "digits", "seeds": 1,
    "train": {"batch_size": 16, "steps_per_epoch": 2, "epochs": 1, "workers": 0, "precision": "fp32", "log_every": 1,
              "hflip": 0.0, "device": "cpu"},
    "weak": {"w": {"strong": "test_resnet", "img_size": 32, "split": "weak"}},
    "stores": {"s": {"weak": "w", "workers": 0, "precision": "fp32", "device": "cpu"}},
    "strong": {"strong": "test_resnet", "img_size": 32},
    "grid": [{"loss": ["hard", "adaptconf"]}],
}


def study_file(tmp_path, **changes) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text("# w2s-pipe study tiny.yaml\n" + yaml.safe_dump({**TINY, **changes}))
    return str(path)


@pytest.mark.parametrize("changes,message", [
    ({"grid": []}, "key 'grid' holds no run"),
    ({"gird": [{"loss": "hard"}]}, "unknown key 'gird'"),
    ({"grid": [{"los": "hard"}]}, "key 'grid[0]'.los: unknown option"),
    ({"grid": [{"lr": "fast"}]}, "key 'grid[0]'.lr is 'fast' (a string); it needs a number"),
    ({"strong": {"strong": "test_resnet", "lr": [0.1, 0.2]}}, "key 'strong'.lr is a list; a single value is needed"),
    ({"select": {"threshold": [0.5, 4], "choose_on": "val2", "score_on": "test"}},
     "key 'select.choose_on' 'val2' is not a split of digits (weak, transfer, val, select, test)"),
    ({"select": {"threshold": [0.5, 4], "choose_on": "test", "score_on": "test"}}, "flatters itself"),
    ({"select": {"lr": [0.1, 0.2], "choose_on": "select", "score_on": "test"}}, "select'.lr: not read by any loss"),
    ({"select": {"kd": {"threshold": [0.5, 4]}, "choose_on": "select", "score_on": "test"}},
     "select'.kd.threshold: not read by this loss (it reads kd_temperature)"),
    ({"select": {"kd": {"kd_temperature": [1, 4]}, "threshold": [0.5, 4], "choose_on": "select", "score_on": "test"}},
     "threshold is not under one"),
    ({"weak": {"w": {"strong": "test_resnet", "split": "weak", "once": "yes"}}}, "'weak.w'.once must be true or false"),
    ({"prepare": {"fashion-mnist": {"out": "x"}}}, "'prepare'.fashion-mnist.out: unknown; give src, shard_size"),
    ({"grid": [{"loss": "adaptconf", "threshold": 2}], "select": {"threshold": [0.5, 4], "choose_on": "select",
                                                                  "score_on": "test"}}, "also under select"),
    ({"grid": [{"loss": "hard", "store": "nope"}]}, "key 'grid[0]'.store 'nope' is not one of the study's stores"),
    ({"grid": [{"loss": "hard", "lr": -1}]}, "--lr -1.0 is invalid: must be positive"),
    ({"grid": [{"loss": "hard", "probe": True}]}, "a cell with probe: true needs the section features"),
    ({"features": {"backbone": "nope"}}, "'features'.backbone 'nope' is not one of the study's weak models"),
    ({"grid": [{"loss": "hard", "probe": "yes"}]}, "'grid[0]'.probe: give true, false or [false, true]"),
])
def test_bad_study_files_are_one_line_naming_the_key(tmp_path, changes, message, digits_data):
    path = study_file(tmp_path, **changes)
    with pytest.raises(W2SError) as caught:
        run_study(load_study(path), out=str(tmp_path / "ws"), dry_run=True)
    assert message in str(caught.value) and path in str(caught.value)
    result = CliRunner().invoke(cli, ["study", path, "--out", str(tmp_path / "ws"), "--dry-run"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output


def test_a_study_chooses_on_one_split_reports_another_and_skips_what_is_done(tmp_path, digits_data):
    select = {"threshold": [0.5, 4.0], "choose_on": "select", "score_on": "test"}
    path = study_file(tmp_path, select=select)
    ws = str(tmp_path / "ws")
    cfg = load_study(path)
    steps = plan(cfg, ws)
    # one weak model, its store, a ceiling; hard once (it reads no threshold), adaptconf at both values; each
    # trained model evaluated on both splits
    run_of = {0.5: "s0-adaptconf", 4.0: "s0-adaptconf-thr4.0"}  # a name says what differs from the train options
    assert [s.name for s in steps if s.kind == "train"] == ["s0-weak", "s0-ceiling", "s0-hard", *run_of.values()]
    assert sum(s.kind == "eval" for s in steps) == 10
    lines = []
    result = run_study(cfg, out=ws, echo=lines.append, plots=True)
    assert not result["failed"] and result["time"]["steps_run"] == len(steps) == 16
    assert lines[-1].startswith(f"[{len(steps)}/{len(steps)}]") and "0 left" in lines[-1]
    markers = {s.name: json.load(open(marker_path(ws, s.id))) for s in steps}
    on = {t: markers[f"{name}-select"]["result"]["top1"] for t, name in run_of.items()}
    best = max(on, key=lambda t: (on[t], -t))  # ties to the earlier value in the list
    (row,) = [r for r in result["selection"] if r["cell"]["loss"] == "adaptconf"]
    assert row["selected"] == {"threshold": best} and row["chosen_on"] == "select" and row["scored_on"] == "test"
    assert row["score_mean"] == markers[f"{run_of[best]}-test"]["result"]["top1"]
    assert row["default"] == {"threshold": 0.5}  # the train options' own value, for comparison
    (hard,) = [r for r in result["selection"] if r["cell"]["loss"] == "hard"]
    assert hard["selected"] == {} and hard["score_mean"] == markers["s0-hard-test"]["result"]["top1"]
    text = "\n".join(result.summary())
    assert "Chosen on the `select` split" in text and "scored on `test`" in text and "threshold=" in text
    assert os.path.exists(os.path.join(ws, "report", "sweep-threshold.png"))
    report = open(result["markdown"]).read()
    assert "Chosen on the `select` split" in report
    # run again: nothing to do; a changed cell is a new run, and only it (and its evaluations) runs
    again = run_study(load_study(path), out=ws, echo=lines.append, plots=False)
    assert again["time"]["steps_run"] == 0 and again["time"]["steps_done_before"] == 16
    changed = study_file(tmp_path, select=select, grid=[{"loss": ["hard", "adaptconf"]}, {"loss": "hard", "lr": 0.01}])
    third = run_study(load_study(changed), out=ws, echo=lines.append, plots=False)
    assert third["time"]["steps_run"] == 3 and third["time"]["steps_done_before"] == 16
    dry = CliRunner().invoke(cli, ["study", changed, "--out", ws, "--dry-run"])
    assert dry.exit_code == 0 and "19 of 19 steps done" in dry.output


def test_a_killed_study_redoes_only_the_run_it_cut_short(tmp_path, digits_data, weak_ckpt):
    path = study_file(tmp_path, grid=[{"loss": "hard", "epochs": 3, "steps_per_epoch": 12}], ceiling=False,
                      weak={"w": {"checkpoint": weak_ckpt}})
    ws = tmp_path / "ws"
    exe = os.path.join(os.path.dirname(sys.executable), "w2s-pipe")
    proc = subprocess.Popen([exe, "study", path, "--out", str(ws), "--no-plots"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(ws.glob("runs/s0-hard*/last.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # epochs 2 and 3 (24 steps) still to train: killed mid-run
    finally:
        proc.wait()
    result = run_study(load_study(path), out=str(ws), echo=lambda *_: None, plots=False)
    assert result["time"]["steps_run"] == 1 and result["time"]["steps_done_before"] == 1  # the store
    (step,) = [s for s in plan(load_study(path), str(ws)) if s.name.startswith("s0-hard")]
    marker = json.load(open(marker_path(str(ws), step.id)))
    assert marker["result"]["resumed"] is True
    ends = read_metrics(step.options["run"], "end")
    assert len(ends) == 1 and ends[0]["step"] == 36


@pytest.mark.parametrize("how", [{"jobs": 2}, {"cluster": "local"}], ids=["jobs2", "submitit-local"])
def test_steps_run_side_by_side_and_a_failed_step_stops_only_its_dependents(tmp_path, how, digits_data, weak_ckpt):
    """Each step in its own process (a pool, or submitit's local executor); a store of a split the
    data lacks fails when it runs: the run that needs it is skipped, the other store's run is not."""
    stores = {"s": TINY["stores"]["s"], "bad": {**TINY["stores"]["s"], "split": "nosuch"}}
    path = study_file(tmp_path, stores=stores, grid=[{"loss": "hard", "store": ["s", "bad"]}], ceiling=False,
                      weak={"w": {"checkpoint": weak_ckpt}})
    lines = []
    result = run_study(load_study(path), out=str(tmp_path / "ws"), echo=lines.append, plots=False, **how)
    failed = dict(result["failed"])
    assert set(failed) == {"bad-s0", "s0-hard-bad"}, failed
    assert "has no split 'nosuch'" in failed["bad-s0"] and failed["s0-hard-bad"].startswith("skipped")
    assert result["time"]["steps_run"] == 2  # the good store, and its run
    assert any("1 running" in line for line in lines)  # the two stores side by side
    if "cluster" in how:
        assert os.listdir(tmp_path / "ws" / "study" / "submitit")  # submitit's own logs of each job


def test_a_study_probes_from_feature_stores_beside_fine_tuning(tmp_path, digits_data):
    """`features:` stores the backbone's pooled features of the stores' split and of val once per seed;
    a cell with probe: [false, true] runs fine-tuned and as a probe, each against its own ceiling."""
    path = study_file(tmp_path, weak={**TINY["weak"], "base": {"strong": "test_resnet", "img_size": 32,
                                                               "split": "weak", "seed_offset": 1}},
                      features={"backbone": "base", "probe": {"epochs": 2, "opt": "adam", "lr": 0.01}},
                      ceiling={}, grid=[{"loss": "hard", "probe": [False, True]}])
    result = run_study(load_study(path), out=str(tmp_path / "ws"), plots=False)
    assert not result["failed"], result["failed"]
    names = set(os.listdir(tmp_path / "ws" / "runs")) | set(os.listdir(tmp_path / "ws" / "stores"))
    assert {"features-base-train-s0", "features-base-val-s0", "s0-probe-ceiling", "s0-hard-probe"} <= names
    probe = json.load(open(tmp_path / "ws" / "runs" / "s0-hard-probe" / "config.json"))
    assert probe["features"].endswith("features-base-train-s0") and probe["strong_checkpoint"].endswith("last.pt")
    rows = {r["name"]: r for r in result["report"]["runs"]}
    assert rows["s0-hard-probe"]["ceiling_runs"] == ["s0-probe-ceiling"]  # a probe's ceiling is a probe
    assert rows["s0-hard"]["ceiling_runs"] == ["s0-ceiling"]


def test_a_study_bootstraps_through_an_intermediate_student(tmp_path, digits_data):
    """A weak model learning from a store (weak -> medium) labels the split in turn (medium -> strong):
    planned and run in that order, every store and run kept."""
    same = study_file(tmp_path, weak={**TINY["weak"], "mid": {"strong": "test_resnet", "img_size": 32, "store": "s"}},
                      grid=[{"loss": "hard", "store": "s"}])
    with pytest.raises(W2SError, match="steps s0-weak-mid and s0-hard are the same run"):
        run_study(load_study(same), out=str(tmp_path / "same"), dry_run=True)
    path = study_file(tmp_path, weak={**TINY["weak"], "mid": {"strong": "test_resnet", "img_size": 32, "store": "s",
                                                              "seed_offset": 5}},
                      stores={**TINY["stores"], "via_mid": {"weak": "mid", "workers": 0, "precision": "fp32",
                                                            "device": "cpu"}},
                      grid=[{"loss": "hard", "store": ["s", "via_mid"]}])
    result = run_study(load_study(path), out=str(tmp_path / "ws"), plots=False)
    assert not result["failed"], result["failed"]
    mid = json.load(open(tmp_path / "ws" / "runs" / "s0-weak-mid" / "config.json"))
    assert mid["loss"] == "hard" and mid["labels"].endswith(os.path.join("stores", "s-s0"))
    from w2s_pipe.storage import open_store

    store = open_store(str(tmp_path / "ws" / "stores" / "via_mid-s0"))
    assert store.attrs["weak"]["checkpoint"].endswith(os.path.join("s0-weak-mid", "last.pt"))
    strong = json.load(open(tmp_path / "ws" / "runs" / "s0-hard-via_mid" / "config.json"))
    assert strong["labels"].endswith("via_mid-s0")
    circle = study_file(tmp_path, weak={"a": {"strong": "test_resnet", "store": "s"}},
                        stores={"s": {"weak": "a"}})
    with pytest.raises(W2SError, match="learn from each other in a circle: a, s"):
        run_study(load_study(circle), out=str(tmp_path / "ws2"), dry_run=True)


def test_a_weak_model_once_for_every_seed_and_each_loss_its_own_choices(tmp_path, digits_data):
    """`once: true` plans one weak model (and its store) for all seeds; `select:` per loss sweeps each
    loss's own list only, and a loss it does not name runs once."""
    weak = {"w": {**TINY["weak"]["w"], "once": True}}
    select = {"adaptconf": {"threshold": [0.5, 4]}, "kd": {"kd_temperature": [1, 4]}, "choose_on": "select",
              "score_on": "test"}
    path = study_file(tmp_path, seeds=2, weak=weak, select=select, grid=[{"loss": ["hard", "kd", "adaptconf", "augconf"]}])
    cfg = load_study(path)
    assert cfg.select["by_loss"] == {"adaptconf": {"threshold": [0.5, 4.0]}, "kd": {"kd_temperature": [1.0, 4.0]}}
    steps = plan(cfg, str(tmp_path / "ws"))
    trained = [s.name for s in steps if s.kind == "train"]
    assert trained[0] == "weak" and trained.count("weak") == 1 and [s.name for s in steps if s.kind == "label"] == ["s"]
    per_seed = ["hard", "kd", "kd-kd_temperature4.0", "adaptconf", "adaptconf-thr4.0", "augconf"]
    assert trained[1:] == [f"s{seed}-{n}" for seed in (0, 1) for n in ("ceiling", *per_seed)]
    weak_step = next(s for s in steps if s.name == "weak")
    assert weak_step.options["seed"] == 0 and weak_step.meta["seed"] is None
    assert all(weak_step.id in s.deps for s in steps if s.name == "s")
    result = run_study(cfg, out=str(tmp_path / "ws"), dry_run=True)
    assert len(result["steps"]) == len(steps)


def test_strong_runs_start_from_a_study_backbone_and_a_probe_only_study_has_no_fine_tuned_ceiling(tmp_path, digits_data):
    weak = {**TINY["weak"], "base": {"strong": "test_resnet", "img_size": 32, "split": "weak", "seed_offset": 7,
                                     "once": True}}
    cfg = load_study(study_file(tmp_path, weak=weak, strong={**TINY["strong"], "start_from": "base"}, ceiling={}))
    steps = {s.name: s for s in plan(cfg, str(tmp_path / "ws"))}
    base = steps["weak-base"]
    for name in ("s0-ceiling", "s0-hard", "s0-adaptconf"):  # the fine-tuned runs, the ceiling too
        assert steps[name].options["strong_checkpoint"] == os.path.join(base.options["run"], "last.pt")
        assert base.id in steps[name].deps
    assert "strong_checkpoint" not in steps["s0-weak-w"].options
    with pytest.raises(W2SError, match="'strong'.start_from 'nope' is not one of the study's weak models"):
        load_study(study_file(tmp_path, strong={**TINY["strong"], "start_from": "nope"}))
    probes = load_study(study_file(tmp_path, weak=weak, features={"backbone": "base"}, ceiling={},
                                   grid=[{"loss": "hard", "probe": True}]))
    names = [s.name for s in plan(probes, str(tmp_path / "ws2"))]
    assert "s0-probe-ceiling" in names and "s0-ceiling" not in names


def test_progress_says_what_each_step_made():
    from w2s_pipe.stages.study_run import said

    assert said({"kind": "eval", "result": {"top1": 0.5, "split": "test"}}) == "top-1 0.5000 on test"
    assert said({"kind": "train", "result": {"top1": None}}) == "trained, not evaluated (no_eval)"  # a pretext's backbone
    assert said({"kind": "train", "result": {"top1": 0.25, "resumed": True}}) == "top-1 0.2500 (resumed)"
    assert said({"kind": "label", "result": {"store": "s", "samples": 3}}) == "labelled 3 samples"
    assert said({"kind": "fewshot", "result": {"few_shot": {"1": {"accuracy": 0.5}}}}) == "1-shot 0.5000"


@pytest.mark.parametrize("name", ["demo", "demo-noisy", "demo-few-shot", "threshold", "selection", "teacher",
                                  "methods", "bootstrap", "fashion", "fashion-probe"])
def test_every_shipped_study_plans_whole_and_quick(name, tmp_path):
    """Each shipped study file is valid as a whole and in its quick form: every step's config builds."""
    for quick in (False, True):
        result = run_study(load_study(name, quick=quick), out=str(tmp_path / name), dry_run=True)
        assert result["steps"] and not any(s["done"] for s in result["steps"])
        assert result.summary()[-1].startswith(f"0 of {len(result['steps'])} steps done")


def test_selection_measures_each_run_against_the_reference_weak_model_and_its_own_protocols_ceiling():
    """Several weak models and a probe ceiling beside the fine-tuned one: a run's PGR uses the weak model
    named as the reference (the first store's) and the ceiling of its protocol."""
    from w2s_pipe.pipeline.report import selection

    def train(i, role, top1, *, weak=None, probe=False, cell=None):
        meta = {"role": role, "seed": 0, **({"weak": weak} if weak else {}), **({"cell": cell} if cell else {})}
        return [{"id": f"t{i}", "kind": "train", "meta": meta, "options": {"features": "f" if probe else None}},
                *({"id": f"e{i}{split}", "kind": "eval", "meta": {"of": f"t{i}", "split": split},
                   "result": {"top1": top1}} for split in ("select", "test"))]

    markers = [*train(0, "weak", 0.9, weak="other"), *train(1, "weak", 0.5, weak="ref"),
               *train(2, "ceiling", 0.9), *train(3, "ceiling", 0.8, probe=True),
               *train(4, "grid", 0.7, cell={"loss": "hard", "store": "s"}),
               *train(5, "grid", 0.7, probe=True, cell={"loss": "hard", "store": "s", "probe": True})]
    rows = selection.choose(markers, {"threshold": [0.5, 1.0]}, "select", "test", {"threshold": 0.5}, "ref")
    gains = {bool(r["cell"].get("probe")): r["pgr_mean"] for r in rows}
    assert gains[False] == pytest.approx((0.7 - 0.5) / (0.9 - 0.5)) and gains[True] == pytest.approx(0.2 / 0.3)
    base = selection.baselines(markers, "test", "ref")
    assert base["weak"][0] == 0.5 and base["ceiling"][0] == 0.9 and base["probe ceiling"][0] == 0.8


def test_a_name_whose_step_never_started_is_free_again(tmp_path, digits_data):
    """names.json keeps the names of steps that left something (a marker, a run or store directory), so a
    changed step takes another name; a name whose step left nothing is given again, unsuffixed."""
    ws = tmp_path / "ws"
    (ws / "study").mkdir(parents=True)
    (ws / "runs" / "s0-kd").mkdir(parents=True)  # a run that started: its name stays taken
    (ws / "study" / "names.json").write_text(json.dumps({"s0-hard": "0" * 12, "s0-kd": "1" * 12}))
    names = {s.name for s in plan(load_study(study_file(tmp_path, grid=[{"loss": ["hard", "kd"]}])), str(ws))}
    assert "s0-hard" in names and "s0-kd" not in names and any(n.startswith("s0-kd-") for n in names)


def _start(args: list[str], log) -> subprocess.Popen:
    exe = os.path.join(os.path.dirname(sys.executable), "w2s-pipe")
    return subprocess.Popen([exe, *args], stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _until(what, procs, deadline_s=180):
    deadline = time.monotonic() + deadline_s
    while not what():
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


@pytest.mark.parametrize("second", ["same", "sharing"])
def test_two_studies_on_one_workspace_run_each_step_once(tmp_path, second, digits_data, weak_ckpt):
    """The same study started twice at once (`same`), or two studies that share a store (`sharing`):
    the first (a process of its own) is frozen (SIGSTOP) while it holds a step, so that the second
    (in this process) meets the claim for certain; the second waits for it, says whose it is, and
    takes its marker; no step runs twice."""
    first = study_file(tmp_path, grid=[{"loss": ["hard", "adaptconf"]}], ceiling=False,
                       weak={"w": {"checkpoint": weak_ckpt}})
    other = first
    if second == "sharing":
        other = str(tmp_path / "other.yaml")
        os.rename(study_file(tmp_path, grid=[{"loss": "kd"}], ceiling=False, weak={"w": {"checkpoint": weak_ckpt}}),
                  other)
        first = study_file(tmp_path, grid=[{"loss": ["hard", "adaptconf"]}], ceiling=False,
                           weak={"w": {"checkpoint": weak_ckpt}})
    ws = tmp_path / "ws"
    a = _start(["study", first, "--out", str(ws), "--no-plots"], open(tmp_path / "a.log", "w+"))
    lines, ended = [], {}

    def second_study():  # in this process (a thread), to spare a second interpreter's start
        try:
            ended["result"] = run_study(load_study(other), out=str(ws), echo=lines.append, plots=False)
        except Exception as exc:  # said by the assertion below
            ended["error"] = exc

    b = threading.Thread(target=second_study)
    try:
        _until(lambda: list(ws.glob("study/claims/*.json")), [a])
        os.killpg(a.pid, signal.SIGSTOP)
        (held,) = [json.load(open(p)) for p in ws.glob("study/claims/*.json")]
        assert held["pid"] == a.pid
        b.start()
        _until(lambda: any("waiting for it" in line for line in lines), [a])
        os.killpg(a.pid, signal.SIGCONT)
        b.join(timeout=300)
        assert a.wait(timeout=300) == 0 and "error" not in ended, ended
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(a.pid, signal.SIGCONT)
            os.killpg(a.pid, signal.SIGKILL)
        a.wait()
        b.join(timeout=300)
    out = [(tmp_path / "a.log").read_text(), "\n".join(lines)]
    ran = [m.group(1) for text in out for m in re.finditer(r"^\[\d+/\d+\] (\S+): (?!.*run by )", text, re.M)]
    assert len(ran) == len(set(ran)), out  # no step ran in both
    assert f"held by process {a.pid}" in out[1] and f"(run by process {a.pid} on this workspace)" in out[1], out[1]
    assert ended["result"]["time"]["steps_by_others"] >= 1
    store = [line for line in out[1].splitlines() if re.match(r"^\[\d+/\d+\] s-s0: labelled", line)]
    assert store and "run by process" in store[0], out  # the shared store, labelled once, by the first
    expected = {"s-s0", "s0-hard", "s0-adaptconf"} | ({"s0-kd"} if second == "sharing" else set())
    assert set(ran) == expected, (ran, out)
    assert not list(ws.glob("study/claims/*.json"))  # every claim released


def test_a_study_prepares_any_registry_data_set_cifar10_here(tmp_path):
    """`prepare: {cifar10: {archive: ..., weak_split: N}}`: the study prepares the data set in its own
    workspace (a small archive in the downloaded format, made here) and runs on it by its registry name."""
    from test_cifar_archive import batch, make_archive

    rng = np.random.default_rng(0)
    archive = make_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10", {
        **{f"data_batch_{i}": batch(rng, 12, b"labels", 10) for i in range(1, 6)},
        "test_batch": batch(rng, 20, b"labels", 10),
        "batches.meta": {b"label_names": [f"class{i}".encode() for i in range(10)]}})
    path = study_file(tmp_path, data="cifar10", prepare={"cifar10": {"archive": archive, "weak_split": 20}},
                      ceiling=False, grid=[{"loss": "hard"}])
    result = run_study(load_study(path), out=str(tmp_path / "ws"), echo=lambda *_: None, plots=False)
    assert not result["failed"], result["failed"]
    manifest = json.load(open(tmp_path / "ws" / "data" / "cifar10" / "manifest.json"))
    assert {s: sum(x["count"] for x in v) for s, v in manifest["splits"].items()} == {"weak": 20, "train": 40,
                                                                                       "test": 20}
    assert "s0-hard" in os.listdir(tmp_path / "ws" / "runs")
    with pytest.raises(W2SError, match=r"'prepare'.cifar10.src: unknown; give .*archive.*weak_split"):
        load_study(study_file(tmp_path, data="cifar10", prepare={"cifar10": {"src": "x"}}))
