"""`w2s-pipe study FILE`: a grid of runs from one file (stages/study_config.py), every artefact
made once, on one machine or a cluster.

    w2s-pipe study demo                  # the shipped demo study, in <workspace>/studies/demo
    w2s-pipe study mine.yaml --jobs 2    # two runs side by side, each in its own process
    w2s-pipe study mine.yaml --cluster slurm    # each step a SLURM job, through submitit
    w2s-pipe study mine.yaml --dry-run   # what would run, and what is already done

The file becomes steps (`plan`), each identified by its resolved settings and those of the steps
it needs (a sha256): prepare -> each seed's weak models -> their stores (and the feature stores of
a `features:` section) -> the ceilings and the grid's runs (and probes) -> the evaluations that
choose and score (`select:`) and the few-shot ones. A step's marker (<out>/study/steps/<id>.json)
is written when it ends: a finished step is skipped, a run killed mid-way resumes from its last.pt,
a changed cell is a new step. The steps of a layer run in
parallel (`--jobs N`: a process pool, one process per step; `--cluster`: submitit's executor, its
local one in the tests); a failed step is reported and its dependents skipped, never the others.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import graphlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field

from ..errors import W2SError
from ..pipeline.config.groups import RECIPE_KEYS
from ..pipeline.losses.registry import loss_class
from ..pipeline.report import selection
from ..pipeline.report.paired import cell as paired_cell
from ..pipeline.runtime.workspace import workspace_dir
from ..pipeline.sources.datasets import load_registry
from ..pipeline.sources.shards import read_manifest
from ..storage.claims import pid_alive, read_holder, take
from ..storage.fsutil import check_writable, write_whole
from .eval_config import EvalConfig
from .evaluate import run_eval
from .label import run_label
from .label_config import LabelConfig
from .prepare import run_prepare
from .prepare_config import PrepareDigitsConfig, PrepareFashionConfig
from .report import ReportConfig, markdown_table, notes, run_report
from .study_config import CELL_KEYS, LABEL_OWN, StudyConfig
from .train import run_train
from .train_config import TrainConfig, option_defaults

STEPS_DIR = os.path.join("study", "steps")
LAYERS = ("prepare", "weak", "label", "train", "eval")  # each layer needs only those before it
POLL_S = 0.5  # how often steps another process holds (or submitit's jobs) are looked at


@dataclass(frozen=True)
class Step:
    kind: str  # prepare, train, label, eval, fewshot
    layer: str  # one of LAYERS
    name: str  # the run's, store's or evaluation's name
    options: dict  # the stage's config, as keyword arguments
    deps: tuple[str, ...] = ()  # the ids of the steps it needs
    meta: dict = field(default_factory=dict)  # what the study's report reads: role, seed, cell, store, ...
    id: str = ""

    def done_in(self, ws: str) -> bool:
        return os.path.exists(marker_path(ws, self.id))


def marker_path(ws: str, step_id: str) -> str:
    return os.path.join(ws, STEPS_DIR, f"{step_id}.json")


def _identity(kind: str, options: dict, deps) -> str:
    text = json.dumps({"kind": kind, "options": options, "deps": sorted(deps)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _step(kind: str, layer: str, label: str, options: dict, deps=(), where: str | None = None, *, names: dict,
          **meta) -> Step:
    """A step named `label`, or `label`-<its id's first 6 digits> where another step of the study
    (now or in an earlier plan: `names`, kept in study/names.json) holds that name; `where` (a
    directory) gets the name appended as the option `meta["option"]` (the run's or store's path),
    after the identity is taken."""
    deps = tuple(d for d in deps if d)
    step_id = _identity(kind, options, deps)
    name = label if names.get(label, step_id) == step_id else f"{label}-{step_id[:6]}"
    names[name] = step_id
    if where:
        options = {**options, meta.pop("option"): os.path.join(where, name)}
    return Step(kind, layer, name, options, deps, meta, step_id)


def _names(ws: str) -> dict:
    """{name: step id} of the steps earlier plans named, but those that left nothing (no marker, no
    run or store directory: a step never started, or whose dependency failed), whose names are free."""
    path = os.path.join(ws, "study", "names.json")
    names = json.load(open(path)) if os.path.exists(path) else {}
    return {name: step_id for name, step_id in names.items() if os.path.exists(marker_path(ws, step_id))
            or any(os.path.exists(os.path.join(ws, d, name)) for d in ("runs", "stores"))}


def plan(cfg: StudyConfig, ws: str) -> list[Step]:
    """Every step of the study, in layer order (see the module's docstring)."""
    steps, runs, stores, names = [], os.path.join(ws, "runs"), os.path.join(ws, "stores"), _names(ws)
    prepare = None
    if cfg.prepare:
        options = {k: v for k, v in cfg.prepare.items() if k != "kind"}
        made = cfg.prepare["kind"] + ("-fewshot" if options.get("few_shot") else "")
        prepare = _step("prepare", "prepare", f"prepare-{cfg.prepare['kind']}",
                        {**options, "out": os.path.join(ws, "data", made)}, names=names, prepares=cfg.prepare["kind"])
        steps.append(prepare)
    base = {"data": cfg.data}
    for seed in cfg.seeds:
        weak, store_paths = {}, {}
        waiting_weak, waiting_stores = dict(cfg.weak), dict(cfg.stores)
        while waiting_weak or waiting_stores:  # a weak model may learn from a store (bootstrapping): in order
            before = len(waiting_weak) + len(waiting_stores)
            for name, spec in list(waiting_weak.items()):
                if spec.get("store") in (None, *store_paths):
                    weak[name] = _weak_step(name, spec, cfg, seed, base, prepare, store_paths.get(spec.get("store")),
                                            runs, names)
                    steps += [weak[name][0]] if weak[name][0] else []
                    del waiting_weak[name]
            for name, spec in list(waiting_stores.items()):
                if spec["weak"] in weak:
                    store_paths[name] = _store_step(name, spec, cfg, seed, base, prepare, weak[spec["weak"]], stores,
                                                    names)
                    steps.append(store_paths[name])
                    del waiting_stores[name]
            if len(waiting_weak) + len(waiting_stores) == before:
                raise W2SError(f"{cfg.path}: weak models and stores learn from each other in a circle: "
                               f"{', '.join([*waiting_weak, *waiting_stores])}")
        strong = {**base, **cfg.train, **cfg.strong, "seed": seed}
        start = weak[cfg.start_from] if cfg.start_from else (None, None)  # a backbone to fine-tune from: its step
        if cfg.start_from:
            strong["strong_checkpoint"] = start[1]
        probe = _probes(cfg, seed, weak, stores, runs, prepare, names) if cfg.features else None
        if probe:
            steps += probe["steps"]
        if cfg.ceiling is not None and not all(cell.get("probe") for cell in cfg.grid):  # fine-tuned runs' ceiling
            split = next(iter(cfg.stores.values())).get("split")
            steps.append(_step("train", "train", f"s{seed}-ceiling", {**strong, **cfg.ceiling, "loss": "gt", "split": split},
                               [prepare and prepare.id, start[0] and start[0].id], runs, names=names, option="run",
                               role="ceiling", seed=seed))
        usual = {**read_defaults(), **strong, "store": next(iter(cfg.stores)) if len(cfg.stores) == 1 else None}
        for cell in cfg.grid:
            steps.append(_grid_step(cell, probe["options"] if cell.get("probe") else strong, store_paths, weak,
                                    prepare, runs, seed, usual, names,
                                    probe["deps"] if cell.get("probe") else [start[0] and start[0].id]))
    steps += _evaluations(cfg, steps, names)
    once = {}  # a `once` weak model and its feature stores are planned at every seed: kept at the first
    return [once.setdefault((s.id, s.name), s) for s in steps if (s.id, s.name) not in once]


def _weak_step(name: str, spec: dict, cfg: StudyConfig, seed: int, base: dict, prepare, store, runs: str,
               names: dict) -> tuple:
    """(the step that trains weak model `name` for `seed`, or None for a given checkpoint; its
    checkpoint's path): on a split's ground truth, or from `store`'s weak labels (an intermediate
    student, bootstrapping)."""
    if "checkpoint" in spec:
        paths = spec["checkpoint"]
        return None, paths if isinstance(paths, str) else paths[cfg.seeds.index(seed)]
    once = spec.get("once", False)  # one model for every seed: the same step (and id) each time
    label = ("weak" if once else f"s{seed}-weak") + (f"-{name}" if len(cfg.weak) > 1 else "")
    options = {**base, **cfg.train, **{k: v for k, v in spec.items() if k not in ("seed_offset", "store", "once")},
               "seed": (0 if once else seed) + spec.get("seed_offset", 0),
               **({"labels": store.options["labels"]} if store else {})}
    step = _step("train", "weak", label, options, [prepare and prepare.id, store and store.id], runs, names=names,
                 option="run", role="weak", seed=None if once else seed, weak=name)  # None: every seed's
    return step, os.path.join(step.options["run"], "last.pt")


def _store_step(name: str, spec: dict, cfg: StudyConfig, seed: int, base: dict, prepare, weak: tuple, stores: str,
                names: dict) -> Step:
    """The step that labels store `name` for `seed` with its weak model (`weak`: its step, its
    checkpoint); a per-view store draws the strong runs' views unless it says otherwise."""
    made_by, checkpoint = weak
    views = {}
    if spec.get("views"):
        drawn = {**cfg.train, **cfg.strong}
        views = {"seed": seed, **{k: drawn[k] for k in RECIPE_KEYS if k in drawn}}
    options = {**base, **views, **{k: v for k, v in spec.items() if k != "weak"}, "weak": None,
               "weak_checkpoint": checkpoint}
    once = cfg.weak[spec["weak"]].get("once") and not views  # the same store for every seed
    return _step("label", "label", name if once else f"{name}-s{seed}", options, [made_by and made_by.id, prepare and prepare.id],
                 stores, names=names, option="labels", role="store", seed=seed, store=name)


def _probes(cfg: StudyConfig, seed: int, weak: dict, stores: str, runs: str, prepare, names: dict) -> dict:
    """The feature stores of `seed`'s backbone (the stores' split and the validation split), the
    train options of its probes, and its probe ceiling where the study has a ceiling:
    {"steps", "options", "deps"}."""
    name = cfg.features["backbone"]
    made_by, checkpoint = weak[name]
    first = next(iter(cfg.stores.values()))
    label = {k: first[k] for k in LABEL_OWN if k in first and k not in ("weak", "split", "views")}
    made = {}
    for role, split in (("train", first.get("split")), ("val", cfg.features["val_split"])):
        options = {"data": cfg.data, **label, "features": True, "weak": None, "weak_checkpoint": checkpoint,
                   **({"split": split} if split else {})}
        at = "" if cfg.weak[name].get("once") else f"-s{seed}"  # a backbone for every seed: its features once
        made[role] = _step("label", "label", f"features-{name}-{split or 'train'}{at}", options,
                           [made_by and made_by.id, prepare and prepare.id], stores, names=names, option="labels",
                           role="features", seed=seed, store=f"features-{name}")
    spec = cfg.weak[name]
    options = {"data": cfg.data, **cfg.features["probe"], "strong": spec["strong"], "seed": seed,
               **({"img_size": spec["img_size"]} if spec.get("img_size") else {}), "strong_checkpoint": checkpoint,
               "features": made["train"].options["labels"], "val_features": made["val"].options["labels"]}
    deps = [made["train"].id, made["val"].id]
    steps = [made["train"], made["val"]]
    if cfg.ceiling is not None:
        steps.append(_step("train", "train", f"s{seed}-probe-ceiling", {**options, **cfg.ceiling, "loss": "gt"},
                           deps, runs, names=names, option="run",
                           role="ceiling", seed=seed))
    return {"steps": steps, "options": options, "deps": deps}


def _grid_step(cell: dict, strong: dict, stores: dict, weak: dict, prepare, runs: str, seed: int, usual: dict,
               names: dict, deps_too=()) -> Step:
    """A grid cell's run for `seed`, named by the values it sets other than `usual` ones; `strong`
    its run's options (a probe's, for a cell with probe: true, whose feature stores are `deps_too`)."""
    options = {k: v for k, v in cell.items() if k not in CELL_KEYS}
    loss = options.get("loss", strong.get("loss", TrainConfig.__dataclass_fields__["loss"].default))
    if not loss_class(loss).reads_weak:  # a ceiling in the grid: the ground truth, no weak labels
        cell = {k: v for k, v in cell.items() if k not in ("store", "online")}
        source, deps = {}, []
    elif cell.get("online"):
        made_by, checkpoint = weak[cell["online"]]
        source, deps = {"teacher": checkpoint}, [made_by and made_by.id]
    else:
        members = [stores[m] for m in str(cell["store"]).split("+")]
        source, deps = {"labels": ",".join(m.options["labels"] for m in members)}, [m.id for m in members]
        if len(members) > 1:
            source.setdefault("ensemble", options.pop("ensemble", None))
    if options.get("specialist_by"):  # a store of the study by name (an earlier student's labels)
        by = stores[options["specialist_by"]]
        options["specialist_by"], deps = by.options["labels"], [*deps, by.id]
    own = {k: options.pop(k) for k in loss_class(loss).options if k in options}  # a plug-in's own: --loss-options
    if own:
        options["loss_options"] = tuple(f"{k}={v}" for k, v in sorted(own.items()))
    options = {**strong, **options, **source}
    label = f"s{seed}-" + "-".join([loss, *(_short(k, v) for k, v in cell.items()
                                            if k != "loss" and v is not None and v != usual.get(k))])
    return _step("train", "train", label, options, [*deps, *deps_too, prepare and prepare.id], runs, names=names,
                 option="run", role="grid", seed=seed, cell=cell)


ABBREVIATED = {"gt_weight": "gt", "keep_frac": "keep", "rank_by": "by", "threshold": "thr", "store": "", "easy_epochs": "easy",
               "specialist_by": "by-",
               "online": "online-"}


def _short(key: str, value) -> str:
    key = ABBREVIATED.get(key, key)
    return key if value is True else f"{key}{value}".replace("/", "_").replace(" ", "")


def _evaluations(cfg: StudyConfig, steps: list[Step], names: dict) -> list[Step]:
    """The evaluations every trained model gets: on `select:`'s two splits, and few-shot."""
    out = []
    trained = [s for s in steps if s.kind == "train"]
    splits = [cfg.select["choose_on"], cfg.select["score_on"]] if cfg.select else []
    for step in trained:
        for split in splits:
            out.append(_step("eval", "eval", f"{step.name}-{split}", {"run": step.options["run"], "split": split,
                             "data": cfg.data, "workers": 0}, [step.id], names=names, split=split, of=step.id))
        if cfg.few_shot:
            options = {"run": step.options["run"], "data": cfg.data, "workers": 0, "split": cfg.few_shot.get("split"),
                       "episodes": int(cfg.few_shot.get("episodes", 600))}
            out.append(_step("fewshot", "eval", f"{step.name}-fewshot", options, [step.id], names=names, of=step.id))
    return out


def check_plan(cfg: StudyConfig, steps: list[Step], ws: str) -> None:
    """Every step's config built before anything runs (a bad value is one line, naming the step), no
    two steps the same run under two names, and `select:`'s splits in the data set."""
    seen = {}
    for step in steps:
        if step.id in seen and seen[step.id] != step.name:
            raise W2SError(f"{cfg.path}: steps {seen[step.id]} and {step.name} are the same run (the same options and "
                           "inputs); make them differ (a weak model's seed_offset, say) or keep one")
        seen[step.id] = step.name
    for step in steps:
        try:
            _config(step, ws)
        except W2SError as exc:
            raise W2SError(f"{cfg.path}: step {step.name}: {exc}", option=exc.option) from None
    entry = load_registry(ws).get(cfg.data)  # a shard pattern has no splits to check
    for key in ("choose_on", "score_on") if cfg.select and entry else ():
        if cfg.select[key] not in entry.splits:
            raise W2SError(f"{cfg.path}: key 'select.{key}' {cfg.select[key]!r} is not a split of {cfg.data} "
                           f"({', '.join(entry.splits)})", option="--select")


def _config(step: Step, ws: str):
    """The stage config of `step` (its own checks run here)."""
    common = {"workspace": ws}
    if step.kind == "prepare":
        made = PrepareFashionConfig if step.meta.get("prepares") == "fashion-mnist" else PrepareDigitsConfig
        return made(**step.options, **common)
    if step.kind == "label":
        return LabelConfig(**step.options, progress=False, **common)
    if step.kind == "train":
        return TrainConfig(**step.options, progress=False, **common)
    return EvalConfig(**step.options, **common)


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


# -- running the steps --------------------------------------------------------------------------
def execute(step: Step, ws: str) -> dict:
    """Run one step (in this process, or a worker's) and write its marker; returns the marker."""
    started = time.perf_counter()
    _cluster_ranks()
    if step.kind == "prepare":
        out = run_prepare(_config(step, ws)).out
        result = {"out": out, "label_noise": read_manifest(out).get("label_noise")}
    elif step.kind == "label":
        label = run_label(_config(step, ws))
        result = {"store": label.store, "samples": label.samples_total, "complete": label.complete}
    elif step.kind == "train":
        result = _train(step, ws, run_train)
    else:
        figures = run_eval(_config(step, ws))
        result = {"split": figures["split"], "samples": figures["samples"]}
        result.update({"few_shot": figures["few_shot"]} if "few_shot" in figures else {"top1": figures["top1"]})
    marker = {"id": step.id, "kind": step.kind, "name": step.name, "meta": step.meta, "options": step.options,
              "result": result, "seconds": time.perf_counter() - started}
    write_whole(marker_path(ws, step.id), json.dumps(marker, indent=1, default=str))  # whole or absent
    return marker


def _cluster_ranks() -> None:
    """In a submitit job of several tasks (the study's cluster: tasks_per_node, nodes), each task
    is a rank: submitit's TorchDistributedEnvironment exports what torchrun would (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT), as the MAE, DINO and DeiT codebases do."""
    if "SUBMITIT_FOLDER" not in os.environ:
        return
    import submitit  # lazy: only in a submitit job, where it is installed

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export()


def _train(step: Step, ws: str, run_train) -> dict:
    """A training step: started, or resumed from its last.pt where a killed study left one (a run
    killed before its first checkpoint starts again)."""
    run_dir = step.options["run"]
    resume = os.path.exists(os.path.join(run_dir, "last.pt"))
    if not resume and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    cfg = _config(step, ws)
    if resume:
        cfg = TrainConfig(**{**asdict(cfg), "resume": True})
    result = run_train(cfg)
    if not result.finished:
        raise W2SError(f"run {run_dir} stopped at step {result.step} before its end")
    return {"run_dir": run_dir, "top1": result.val_top1, "best_top1": result.best_top1, "resumed": resume}


class _InProcess:
    """`--jobs 1`: each step in this process, one after the other (the demo's way)."""

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # reported with the step, as a pool's would be
            future.set_exception(exc)
        return future


def _threads(count: int) -> None:
    """A pool worker's torch threads: the cores shared between the jobs."""
    import torch  # lazy: the worker's first act, before its step imports the rest

    torch.set_num_threads(count)


def engine(jobs: int, cluster: str | None, folder: str, parameters: dict):
    """Where a layer's steps run: this process (jobs 1), a pool of `jobs` processes (each step its
    own process), or submitit's executor for `cluster` ("slurm", or "local": its local executor)."""
    if cluster:
        try:
            import submitit  # lazy: an optional dependency, for clusters (pip install w2s-pipe[cluster])
        except ImportError:
            raise W2SError("--cluster needs submitit: pip install 'w2s-pipe[cluster]'", option="--cluster") from None
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        if parameters:
            executor.update_parameters(**parameters)
        return executor
    if jobs <= 1:
        return _InProcess()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_threads, initargs=(threads,), max_tasks_per_child=1)


@dataclass
class Progress:
    """Runs done / running / left, and the time so far, said as each step ends."""

    total: int
    echo: object
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def ended(self, step: Step, marker: dict | None, error: str | None, running: int, by=None) -> None:
        """Say that `step` ended: with its marker, or failed (`error`); `by` the process that ran it,
        where that was another study's."""
        self.done += 1
        what = error or said(marker) + (f" (run by {by} on this workspace)" if by else "")
        self.echo(f"[{self.done}/{self.total}] {step.name}: {what} ({(marker or {}).get('seconds', 0):.0f} s; "
                  f"{running} running, {self.total - self.done - running} left, "
                  f"{(time.perf_counter() - self.started) / 60:.1f} min so far)")


def said(marker: dict) -> str:
    """What a finished step made, from its marker: the progress line's words."""
    r = marker["result"]
    if "top1" in r:
        if r["top1"] is None:  # a run with no_eval (a pretext backbone's): nothing to score
            return "trained, not evaluated (no_eval)" + (" (resumed)" if r.get("resumed") else "")
        return f"top-1 {r['top1']:.4f}" + (f" on {r['split']}" if "split" in r else "") + (" (resumed)" if r.get("resumed") else "")
    if "few_shot" in r:
        return ", ".join(f"{k}-shot {f['accuracy']:.4f}" for k, f in r["few_shot"].items())
    if "store" in r:
        return f"labelled {r['samples']} samples"
    noise = r.get("label_noise")
    return "prepared" + (f"; noisy labels: {noise['kind']} {noise['rate']} (seed {noise['seed']}) on the "
                         f"{' and '.join(noise['splits'])} splits, {noise['flip_rate']:.1%} flipped; the other splits "
                         "stay clean, so every top-1 is against clean labels" if noise else "")


class StepClaims:
    """Which process runs which step, when two studies (or one started twice) share a workspace:
    <ws>/study/claims/<step id>.json, created atomically (storage/claims.py's, as a labeller's
    shard claims and a run's owner.json) just before the step starts and removed when it ends. A
    step another live process holds is waited for: its marker is then this study's too, and its
    dependents go on; a holder that dies leaves the step to be taken over. The step claims are
    this module's rather than a library's (filelock's) because a waiter must know *who* holds a
    step, to say so, and whether that process is alive: a claim names its host and pid."""

    def __init__(self, ws: str):
        self.dir = os.path.join(ws, "study", "claims")
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held: set[str] = set()

    def path(self, step: Step) -> str:
        return os.path.join(self.dir, f"{step.id}.json")

    def take(self, step: Step) -> dict | None:
        """None once this process holds `step`, else its live holder."""
        holder = take(self.path(step), self.me)
        if holder is None:
            self.held.add(step.id)
        return holder

    def free(self, step: Step) -> bool:
        """Whether no live process holds `step` any more."""
        holder = read_holder(self.path(step))
        return holder is None or (holder.get("host") == self.me["host"] and not pid_alive(holder.get("pid")))

    def release(self, step_id: str) -> None:
        self.held.discard(step_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, f"{step_id}.json"))

    def release_all(self) -> None:
        for step_id in list(self.held):
            self.release(step_id)


def run_steps(steps: list[Step], ws: str, pool, echo, capacity: int = 1) -> dict:
    """Every step not done yet, each as soon as every step it needs has ended (graphlib's order;
    among the ready ones, earlier layers first), at most `capacity` at once in `pool`; a step that
    another process holds (StepClaims) is waited for, not run twice. {step id: error} of the steps
    that failed or were skipped because a step they need did, and how many steps another process ran."""
    todo = {s.id: s for s in steps if not s.done_in(ws)}
    graph = graphlib.TopologicalSorter({i: [d for d in s.deps if d in todo] for i, s in todo.items()})
    try:
        graph.prepare()
    except graphlib.CycleError as exc:
        raise W2SError(f"study steps wait on each other: {', '.join(todo[i].name for i in exc.args[1][:3])}") from None
    failed: dict[str, str] = {}
    ready: list[Step] = []
    running: dict[str, tuple] = {}  # step id: (step, future), in this study's pool
    elsewhere: dict[str, tuple] = {}  # step id: (step, its holder), held by another process
    claims, progress, others = StepClaims(ws), Progress(len(todo), echo), 0
    try:
        while graph.is_active():
            ready += sorted((todo[i] for i in graph.get_ready()), key=lambda s: LAYERS.index(s.layer))
            for step in list(ready):
                if len(running) >= capacity:
                    break
                ready.remove(step)
                lost = next((d for d in step.deps if d in failed), None)
                if lost:
                    failed[step.id] = f"skipped: a step it needs failed ({lost[:6]})"
                    _ended(step, None, failed[step.id], graph, progress, running)
                    continue
                holder = claims.take(step)
                if holder is not None:
                    echo(f"{step.name}: held by process {holder.get('pid')} on {holder.get('host')}; waiting for it "
                         f"(if that process is gone, delete {claims.path(step)})")
                    elsewhere[step.id] = (step, holder)
                elif step.done_in(ws):  # ended in another process since this study planned
                    claims.release(step.id)
                    others += 1
                    _ended(step, _read_marker(ws, step), None, graph, progress, running, by="another process")
                else:
                    running[step.id] = (step, pool.submit(execute, step, ws))
            _wait(running, elsewhere)
            for step_id, (step, future) in list(running.items()):
                if future.done():
                    del running[step_id]
                    try:
                        marker, error = future.result(), None
                    except Exception as exc:  # a failed step: reported, its dependents skipped, the others go on
                        marker, error = None, "failed: " + _reason(exc)
                        failed[step_id] = error
                    claims.release(step_id)
                    _ended(step, marker, error, graph, progress, running)
            for step_id, (step, holder) in list(elsewhere.items()):
                if step.done_in(ws):
                    del elsewhere[step_id]
                    others += 1
                    _ended(step, _read_marker(ws, step), None, graph, progress, running, by=f"process {holder.get('pid')}")
                elif claims.free(step):  # its holder ended without a marker, or died: this study tries it
                    del elsewhere[step_id]
                    ready.insert(0, step)
    finally:
        claims.release_all()
    return failed, others


def _ended(step: Step, marker: dict | None, error: str | None, graph, progress: Progress, running: dict,
           by=None) -> None:
    graph.done(step.id)
    progress.ended(step, marker, error, len(running), by)


def _read_marker(ws: str, step: Step) -> dict:
    with open(marker_path(ws, step.id)) as f:
        return json.load(f)


def _wait(running: dict, elsewhere: dict) -> None:
    """Until a step of this pool ends (or, while steps of another process are awaited, POLL_S)."""
    futures = [future for _, future in running.values()]
    if futures and all(isinstance(f, concurrent.futures.Future) for f in futures):
        concurrent.futures.wait(futures, timeout=POLL_S if elsewhere else None,
                                return_when=concurrent.futures.FIRST_COMPLETED)
    elif futures or elsewhere:  # submitit's jobs are polled
        time.sleep(POLL_S)


def _reason(exc: Exception) -> str:
    """A failed step's error on one line: a job's traceback (submitit's) reduced to its last line."""
    text = str(exc)
    if "Traceback (most recent call last)" in text:
        raised = [line for line in text.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b[^ ]*: ", line)]
        text = raised[-1].split(": ", 1)[1] if raised else text.strip().splitlines()[-1]
    return " ".join(text.split())[:300]


# -- the study, and its report ------------------------------------------------------------------
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
        names = {**_names(ws), **{s.name: s.id for s in steps}}  # a changed step later gets another name
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
        defaults = {**read_defaults(), **cfg.train, **cfg.strong}
        reference = next(iter(cfg.stores.values()))["weak"]  # every PGR's weak model: the first store's
        result["selection"] = selection.choose(markers, cfg.select["values"], cfg.select["choose_on"],
                                               cfg.select["score_on"], defaults, reference)
        result["baselines"] = selection.baselines(markers, cfg.select["score_on"], reference)
        with open(report["markdown"], "a") as f:
            f.write("\n" + "\n".join(selection_markdown(result["selection"], result["baselines"])) + "\n")
    if plots:
        result["sweeps"] = sweep_plots(markers, cfg, os.path.join(ws, "report"))
    return result


def read_defaults() -> dict:
    return option_defaults()


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
