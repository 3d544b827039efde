"""`w2s-pipe study FILE`: a grid of runs from one file (stages/study_config.py), every artefact
made once, on one machine or a cluster.

    w2s-pipe study demo                  # the shipped demo study, in <workspace>/studies/demo
    w2s-pipe study mine.yaml --jobs 2    # two runs side by side, each in its own process
    w2s-pipe study mine.yaml --cluster slurm    # each step a SLURM job, through submitit
    w2s-pipe study mine.yaml --dry-run   # what would run, and what is already done

Three modules and the kinds: study_plan.py makes the file's steps (`plan`), each identified by its
resolved settings and those of the steps it needs; study_run.py runs each as soon as the steps it
needs have ended (graphlib's order; `--jobs N`: a process pool; `--cluster`: submitit's executor),
claiming it first so that no step runs twice when studies share a workspace; study_steps.py holds
what each kind of step (prepare, label, train, eval, fewshot) does and says. Here: the study from
end to end, and its report. A finished step's marker (<out>/study/steps/<id>.json) is kept: a
finished step is skipped, a run killed mid-way resumes from its last.pt, a changed cell is a new
step; a failed step is reported and its dependents skipped, never the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

from ..errors import W2SError
from ..pipeline.report import selection
from ..pipeline.report.paired import cell as paired_cell
from ..pipeline.runtime.workspace import workspace_dir
from ..storage.fsutil import check_writable, write_whole
from .report import ReportConfig, markdown_table, notes, run_report
from .study_config import StudyConfig
from .study_plan import STEPS_DIR, Step, check_plan, marker_path, named_steps, plan
from .study_run import engine, run_steps
from .train_config import option_defaults


@contextlib.contextmanager
def data_in(ws: str, cfg: StudyConfig):
    """W2S_DATA set to the study's data (where it prepares its own) for the block, then as it was."""
    if not cfg.prepare:
        yield
        return
    old = os.environ.get("W2S_DATA")
    os.environ["W2S_DATA"] = os.path.join(ws, "data")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("W2S_DATA", None)
        else:
            os.environ["W2S_DATA"] = old


class StudyResult(dict):
    """What a study did and found: the workspace's report (report.py's: the grid as rows, mean ± std
    over seeds, PGR), the chosen values (`select:`), the sweep plots, the time; with its summary."""

    def summary(self) -> list[str]:
        if self.get("dry_run"):
            return [f"{'done ' if s['done'] else 'to run'}  {s['kind']:<7} {s['name']}" for s in self["steps"]] + [
                f"{sum(s['done'] for s in self['steps'])} of {len(self['steps'])} steps done; study {self['workspace']}"]
        lines = ["", markdown_table(self["report"]), *notes(self["report"])]
        if self.get("selection"):
            lines += ["", *selection_markdown(self["selection"], self["baselines"])]
        lines += ["", *(f"failed: {name}: {why}" for name, why in self["failed"])]
        t = self["time"]
        others = f"{t['steps_by_others']} run by another process meanwhile, " if t.get("steps_by_others") else ""
        lines.append(f"study {self['workspace']}: {t['steps_run']} steps run, {t['steps_done_before']} done before, "
                     f"{others}{len(self['failed'])} failed or skipped, in {t['wall_s'] / 60:.1f} min ({t['jobs']} job{'s' * (t['jobs'] > 1)}; "
                     f"planning {t['plan_s']:.1f} s, report {t['report_s']:.1f} s); report {self['markdown']}")
        return lines


def run_study(cfg: StudyConfig, *, out: str | None = None, jobs: int = 1, cluster: str | None = None,
              dry_run: bool = False, workspace=None, echo=print, plots: bool = True) -> StudyResult:
    ws = os.path.abspath(out or str(workspace_dir(workspace) / "studies" / cfg.name))
    started = time.perf_counter()
    steps = plan(cfg, ws)
    check_plan(cfg, steps, ws)  # before anything is written
    if dry_run:
        return StudyResult(dry_run=True, workspace=ws,
                           steps=[{"name": s.name, "kind": s.kind, "done": s.done_in(ws)} for s in steps])
    if jobs < 1:
        raise W2SError(f"--jobs {jobs} is invalid: must be at least 1", option="--jobs")
    check_writable(ws, "study: the workspace")
    os.makedirs(os.path.join(ws, STEPS_DIR), exist_ok=True)
    with _planning(ws):  # one study at a time names its steps, so that two never take one name
        steps = plan(cfg, ws)  # again: another study may have named steps since
        names = {**named_steps(ws), **{s.name: s.id for s in steps}}  # a changed step later gets another name
        path = os.path.join(ws, "study", "names.json")
        write_whole(path, json.dumps(names, indent=1))
    before = sum(s.done_in(ws) for s in steps)
    planned = time.perf_counter() - started
    with data_in(ws, cfg):
        pool = engine(jobs, cluster, os.path.join(ws, "study", "submitit"), cfg.cluster)
        try:
            failed, others = run_steps(steps, ws, pool, echo, capacity=10**6 if cluster else jobs)
        finally:
            getattr(pool, "shutdown", lambda: None)()
        t = time.perf_counter()
        result = _report(cfg, steps, ws, plots)
    result["failed"] = [(s.name, failed[s.id]) for s in steps if s.id in failed]
    result["time"] = {"wall_s": time.perf_counter() - started, "plan_s": planned, "report_s": time.perf_counter() - t,
                      "jobs": jobs, "steps_run": len(steps) - before - len(failed) - others, "steps_done_before": before,
                      "steps_by_others": others}
    path = os.path.join(ws, "study", "study.json")
    write_whole(path, json.dumps(result, indent=1, default=str))
    return result


@contextlib.contextmanager
def _planning(ws: str):
    """The workspace's plan lock (<ws>/study/plan.lock, an flock: released by the kernel however
    its holder ends), held while a study reads and writes names.json."""
    with open(os.path.join(ws, "study", "plan.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _report(cfg: StudyConfig, steps: list[Step], ws: str, plots: bool) -> StudyResult:
    markers = [json.load(open(marker_path(ws, s.id))) for s in steps if s.done_in(ws)]
    report = run_report(ReportConfig(workspace=ws, out=os.path.join(ws, "report"), plots=plots))
    result = StudyResult(workspace=ws, report=report, markdown=report["markdown"], study=cfg.name, selection=[])
    if cfg.select:
        defaults = {**option_defaults(), **cfg.train, **cfg.strong}
        reference = next(iter(cfg.stores.values()))["weak"]  # every PGR's weak model: the first store's
        result["selection"] = selection.choose(markers, cfg.select["values"], cfg.select["choose_on"],
                                               cfg.select["score_on"], defaults, reference)
        result["baselines"] = selection.baselines(markers, cfg.select["score_on"], reference)
        with open(report["markdown"], "a") as f:
            f.write("\n" + "\n".join(selection_markdown(result["selection"], result["baselines"])) + "\n")
    if plots:
        result["sweeps"] = sweep_plots(markers, cfg, os.path.join(ws, "report"))
    return result


def selection_markdown(rows: list[dict], baselines: dict) -> list[str]:
    """The chosen values as a table: what chose, what scored, each loss's choice and its figures."""
    if not rows:
        return []
    on, scored = rows[0]["chosen_on"], rows[0]["scored_on"]
    fmt = (lambda m, s=None: "n/a" if m is None else f"{100 * m:.2f}" + (f" ± {100 * s:.2f}" if s is not None else ""))
    probe = f", probe ceiling {fmt(*baselines['probe ceiling'][:2])}" if "probe ceiling" in baselines else ""
    lines = [f"Chosen on the `{on}` split (best mean top-1 over seeds), scored on `{scored}`: weak model "
             f"{fmt(*baselines['weak'][:2])}, ceiling {fmt(*baselines['ceiling'][:2])}{probe}.", "",
             f"| run | chosen | top-1 on {scored} (%) | PGR on {scored} | vs hard on {scored}: paired Δ, 95% interval "
             "(points) | at the default | default's top-1 (%) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        cell = ", ".join(f"{k}={v}" for k, v in row["cell"].items() if v is not None)
        chosen = ", ".join(f"{k}={v}" for k, v in (row.get("selected") or {}).items()) or "n/a"
        gain = "n/a" if row.get("pgr_mean") is None else f"{row['pgr_mean']:.3f}" + (
            f" ± {row['pgr_std']:.3f}" if row.get("pgr_std") is not None else "")
        default = ", ".join(f"{k}={v}" for k, v in (row.get("default") or {}).items()) or "not swept"
        vs = row.get("vs") or {}
        vs = "reference" if vs.get("reference") == "itself" else paired_cell(vs) if vs else ""
        lines.append(f"| {cell} | {chosen} | {fmt(row.get('score_mean'), row.get('score_std'))} | {gain} | {vs} | "
                     f"{default} | {fmt(row.get('default_mean'), row.get('default_std'))} |")
    return lines


def sweep_plots(markers: list[dict], cfg: StudyConfig, out: str) -> list[str]:
    """One figure per numeric option the grid (or `select:`) sweeps: the runs' validation top-1
    (mean over seeds) against its value, a line per setting of the other options (the loss first)."""
    from ..pipeline.report import plots  # lazy: matplotlib, for a study that draws

    grid = [m for m in markers if m["kind"] == "train" and m["meta"]["role"] == "grid" and m["result"].get("top1")]
    options = sorted({k for m in grid for k, v in m["meta"]["cell"].items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)})
    files = []
    for option in options:
        series: dict[str, dict] = {}
        for m in grid:
            cell = m["meta"]["cell"]
            if option not in cell:
                continue
            name = ", ".join(f"{k}={v}" for k, v in cell.items() if k != option and v is not None)
            series.setdefault(name, {}).setdefault(cell[option], []).append(m["result"]["top1"])
        lines = {k: sorted((x, sum(ys) / len(ys)) for x, ys in v.items()) for k, v in series.items() if len(v) > 1}
        if lines:
            os.makedirs(out, exist_ok=True)
            files.append(plots.curves(lines, os.path.join(out, f"sweep-{option}.png"), xlabel=option,
                                      ylabel="validation top-1 (mean over seeds)", title=f"{cfg.name}: top-1 against {option}"))
    return files
