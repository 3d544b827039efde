"""A study's plan: its file (study_config.py) as steps, each identified by its resolved settings
and those of the steps it needs (a sha256): prepare -> each seed's weak models -> their stores (and
the feature stores of a `features:` section) -> the ceilings and the grid's runs (and probes) -> the
evaluations that choose and score (`select:`) and the few-shot ones. A step's marker
(<out>/study/steps/<id>.json) is written when it ends (study_run.py)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from ..errors import W2SError
from ..pipeline.config.groups import RECIPE_KEYS
from ..pipeline.losses.registry import loss_class
from ..pipeline.sources.datasets import load_registry
from .study_config import CELL_KEYS, LABEL_OWN, StudyConfig
from .study_steps import KINDS
from .train_config import TrainConfig, option_defaults

STEPS_DIR = os.path.join("study", "steps")
LAYERS = ("prepare", "weak", "label", "train", "eval")  # each layer needs only those before it


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


def named_steps(ws: str) -> dict:
    """{name: step id} of the steps earlier plans named, but those that left nothing (no marker, no
    run or store directory: a step never started, or whose dependency failed), whose names are free."""
    path = os.path.join(ws, "study", "names.json")
    names = json.load(open(path)) if os.path.exists(path) else {}
    return {name: step_id for name, step_id in names.items() if os.path.exists(marker_path(ws, step_id))
            or any(os.path.exists(os.path.join(ws, d, name)) for d in ("runs", "stores"))}


def plan(cfg: StudyConfig, ws: str) -> list[Step]:
    """Every step of the study, in layer order (see the module's docstring)."""
    steps, runs, stores, names = [], os.path.join(ws, "runs"), os.path.join(ws, "stores"), named_steps(ws)
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
        usual = {**option_defaults(), **strong, "store": next(iter(cfg.stores)) if len(cfg.stores) == 1 else None}
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
            KINDS[step.kind].config(step, ws)
        except W2SError as exc:
            raise W2SError(f"{cfg.path}: step {step.name}: {exc}", option=exc.option) from None
    entry = load_registry(ws).get(cfg.data)  # a shard pattern has no splits to check
    for key in ("choose_on", "score_on") if cfg.select and entry else ():
        if cfg.select[key] not in entry.splits:
            raise W2SError(f"{cfg.path}: key 'select.{key}' {cfg.select[key]!r} is not a split of {cfg.data} "
                           f"({', '.join(entry.splits)})", option="--select")
