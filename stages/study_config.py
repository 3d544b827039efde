"""A study file: one YAML file declaring a grid of runs and everything they need, read into a
validated `StudyConfig` (stages/study.py plans and runs it).

    prepare: digits                      # what `prepare` makes in the study's workspace (optional): digits,
                                         # fashion-mnist (from Debian's dataset-fashion-mnist, or {fashion-mnist: {src: DIR}}),
                                         # cifar10 or cifar100 ({cifar10: {archive: FILE, weak_split: N}})
    data: digits                         # the data set (registry name or shard pattern)
    seeds: 3                             # 0, 1, 2 (or a list)
    train: {config: demo}                # train options every run shares (a recipe, options)
    weak:                                # weak models, each trained once per seed on a split's ground truth
      test_vit: {strong: test_vit, img_size: 32, epochs: 10, split: weak}   # seed_offset: 3 -> seed s + 3
      medium: {strong: resnet10t, store: centre, loss: hard}   # or from a store's weak labels (bootstrapping)
      base: {strong: resnet10t, split: rotation, once: true}  # once: one model for every seed (a backbone)
    stores:                              # stores, each labelled once per seed by a weak model
      centre: {weak: test_vit, workers: 0}
    features:                            # probes from stores alone (optional): a weak-section model's pooled
      backbone: base                     # features stored per seed (the stores' split and val_split), and
      probe: {config: openai_probe}      # the train options of grid cells with `probe: true`
      val_split: val
    strong: {strong: resnet10t, img_size: 24, epochs: 8}   # the strong runs' options (ceiling and grid);
                                         # start_from: NAME, a weak-section model's weights, its head dropped
    ceiling: {}                          # the strong model on the stores' split's ground truth ({} : defaults)
    grid:                                # cells of train options; a list sweeps (the product of a cell's lists)
      - {loss: [hard, kd, augconf, adaptconf], gt_weight: [0.0, 1.0]}
      - {loss: hard, keep_frac: 0.7, rank_by: margin, per_class: true}
    select:                              # chosen per loss on one split, reported on another
      threshold: [0.25, 0.5, 1, 2, 4]    # every loss that reads it; or each loss its own:
      #  adaptconf: {threshold: [0.5, 2]}, kd: {kd_temperature: [1, 4]}
      choose_on: select
      score_on: test
    few_shot: {episodes: 600, split: novel}   # every run also evaluated few-shot (optional)
    quick: {seeds: 2, strong: {epochs: 1}}    # `--quick`: a smoke-sized version, merged over the rest
    cluster: {slurm_partition: gpu, timeout_min: 600}   # submitit's parameters for `--cluster slurm`

A grid cell's keys are `train`'s options (the same names as the command line and the recipes),
plus `store: NAME` (the store it learns from; `specialist_by: NAME` names a study's store too; a list sweeps stores; "A+B+C" trains from their
ensemble) or `online: NAME` (the study's weak model NAME as the online teacher), and `probe: true`
(the run is a probe of the features' backbone; [false, true] sweeps both, trained from the feature store: `features`'s
probe options instead of `strong`'s; with a ceiling, each seed has a probe ceiling too). Each option of a
loss's own (the loss table's knobs: adaptconf's threshold, ...) is swept by `select:` only for the
losses that read it. Every mistake is one line naming the key and the file.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import W2SError
from ..pipeline.config.options import ordered
from ..pipeline.losses.registry import BUILT_IN, is_loss, loss_class, loss_names
from ..pipeline.train.recipes import convert, load_recipe, read_yaml
from .label_config import LabelConfig
from .prepare_config import PrepareCifarConfig, PrepareDigitsConfig, PrepareFashionConfig
from .train_config import option_defaults, recipe_options

SHIPPED = Path(__file__).with_name("studies")
SECTIONS = ("about", "prepare", "data", "seeds", "train", "weak", "stores", "features", "strong", "ceiling", "grid",
            "select", "few_shot", "quick", "cluster")
CELL_KEYS = ("store", "online", "probe")  # a grid cell's keys that are the study's, not train's
LABEL_OWN = ("weak", "split", "views", "topk", "batch_size", "workers", "precision", "device", "decode")


@dataclass(frozen=True)
class StudyConfig:
    path: str  # the file
    name: str
    data: str
    seeds: tuple[int, ...]
    weak: dict  # name -> {train options} or {"checkpoint": path or [path per seed]}
    stores: dict  # name -> {"weak": name, label options}
    strong: dict  # train options of the strong runs
    grid: tuple  # cells: {train options, "store" or "online"}, every value single
    train: dict = field(default_factory=dict)  # train options every run shares
    prepare: dict | None = None  # {"kind": "digits", options}
    ceiling: dict | None = None  # train options of the ceiling (None: no ceiling)
    start_from: str | None = None  # a weak-section model whose weights every fine-tuned strong run starts from
    select: dict | None = None  # {"values": {option: [values]}, "by_loss": {loss: {option: [values]}} (where
    #                             the file gives each loss its own), "choose_on": split, "score_on": split}
    few_shot: dict | None = None  # {"episodes": N, "split": split}
    features: dict | None = None  # {"backbone": weak model name, "probe": {train options}, "val_split": split}
    cluster: dict = field(default_factory=dict)  # submitit's parameters
    about: str = ""


def study_path(name: str) -> Path:
    """A shipped study's name (`w2s-pipe study demo`), or the path of a study file."""
    for candidate in (SHIPPED / f"{name}.yaml", Path(name).expanduser()):
        if candidate.is_file():
            return candidate
    names = ", ".join(p.stem for p in sorted(SHIPPED.glob("*.yaml")))
    raise W2SError(f"no study {name!r}: not a shipped one ({names}) nor a file")


def describe_studies() -> list[str]:
    """`w2s-pipe studies`: each shipped study's name, the command that runs it, and what it asks."""
    lines = []
    for path in sorted(SHIPPED.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        lines += [path.stem, "  " + path.read_text().splitlines()[0].lstrip("# "), f"  {doc.get('about', '')}", ""]
    return lines


def load_study(name: str, *, quick: bool = False, overrides: dict | None = None) -> StudyConfig:
    """The study `name` (shipped, or a file), with its `quick` section merged over it where asked and
    `overrides` (section -> value) last; every key and value checked."""
    path = study_path(name)
    doc = read_yaml(path, "study")
    if not isinstance(doc, dict):
        raise W2SError(f"{path}: a study is a mapping of sections ({', '.join(SECTIONS)})")
    for key in doc:
        if key not in SECTIONS:
            raise W2SError(f"{path}: unknown key {key!r}; a study's sections are {', '.join(SECTIONS)}")
    if quick:
        doc = _merged(doc, _mapping(doc.get("quick") or {}, f"{path}: key 'quick'"))
    doc = _merged(doc, overrides or {})
    return _study(path, doc)


def _merged(doc: dict, over: dict) -> dict:
    """`over`'s sections over `doc`'s: mappings merged a level down (weak: {test_vit: {epochs: 1}}),
    anything else replaced."""
    out = dict(doc)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **{k: ({**out[key][k], **v} if isinstance(v, dict) and isinstance(out[key].get(k), dict)
                                           else v) for k, v in value.items()}}
        else:
            out[key] = value
    return out


def _study(path: Path, doc: dict) -> StudyConfig:
    where = f"{path}: key"
    options = recipe_options()
    train = _options(doc.get("train") or {}, options, f"{where} 'train'")
    weak = {name: _weak(spec, options, f"{where} 'weak.{name}'") for name, spec in
            _mapping(doc.get("weak"), f"{where} 'weak'", required=True).items()}
    stores = {name: _store(spec, weak, f"{where} 'stores.{name}'") for name, spec in
              _mapping(doc.get("stores"), f"{where} 'stores'", required=True).items()}
    for name, spec in weak.items():
        if "store" in spec and spec["store"] not in stores:
            raise W2SError(f"{where} 'weak.{name}'.store {spec['store']!r} is not one of the study's stores "
                           f"({', '.join(stores)})")
    strong = dict(_mapping(doc.get("strong") or {}, f"{where} 'strong'"))
    start_from = strong.pop("start_from", None)
    if start_from is not None and (start_from not in weak or "store" in weak[start_from]):
        raise W2SError(f"{where} 'strong'.start_from {start_from!r} is not one of the study's weak models trained on "
                       f"a split ({', '.join(n for n, w in weak.items() if 'store' not in w)})")
    strong = _options(strong, options, f"{where} 'strong'")
    features = _features(doc.get("features"), weak, options, f"{where} 'features'")
    ceiling = None if doc.get("ceiling") is False else _options(doc.get("ceiling") or {}, options, f"{where} 'ceiling'")
    select = _select(doc.get("select"), options, f"{where} 'select'")
    loss = {**option_defaults(), **train, **strong}["loss"]  # a cell's loss where it names none
    grid = tuple(cell for i, spec in enumerate(_cells(doc.get("grid"), f"{where} 'grid'"))
                 for cell in _expand(spec, options, stores, weak, select, loss, f"{where} 'grid[{i}]'"))
    if not grid:
        raise W2SError(f"{where} 'grid' holds no run: give at least one cell of train options")
    if features is None and any(cell.get("probe") for cell in grid):
        raise W2SError(f"{where} 'grid': a cell with probe: true needs the section features (the backbone whose "
                       "features the probes read)")
    few_shot = doc.get("few_shot")
    if few_shot is not None:
        few_shot = _mapping(few_shot, f"{where} 'few_shot'")
        unknown = set(few_shot) - {"episodes", "split"}
        if unknown:
            raise W2SError(f"{where} 'few_shot.{sorted(unknown)[0]}' is unknown: give episodes and split")
    prepare = _prepare(doc.get("prepare"), f"{where} 'prepare'")
    data = doc.get("data")
    if not isinstance(data, str) or not data:
        raise W2SError(f"{where} 'data' is missing: the data set (a registry name or a shard pattern)")
    return StudyConfig(path=str(path), name=path.stem, data=data, seeds=_seeds(doc.get("seeds", 1), f"{where} 'seeds'"),
                       weak=weak, stores=stores, strong=strong, grid=grid, train=train, prepare=prepare,
                       ceiling=ceiling, select=select, few_shot=few_shot, about=str(doc.get("about") or ""),
                       features=features, start_from=start_from,
                       cluster=_mapping(doc.get("cluster") or {}, f"{where} 'cluster'"))


def _mapping(value, where: str, required: bool = False) -> dict:
    if value is None and required:
        raise W2SError(f"{where} is missing")
    if not isinstance(value, dict):
        raise W2SError(f"{where} must be a mapping, not {_kind(value)}")
    return value


def _kind(value) -> str:
    return {list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(type(value), type(value).__name__)


def _options(spec, options: dict, where: str, *, lists: bool = False) -> dict:
    """A mapping of train options, each value converted as the command line converts it; a list is
    a sweep where `lists`, else an error."""
    spec, out = dict(_mapping(spec, where)), {}
    if "config" in spec:  # a recipe: its options beneath the section's own, its name kept for the record
        name = spec.pop("config")
        if not isinstance(name, str):
            raise W2SError(f"{where}.config must be a recipe's name or file, not {_kind(name)}")
        out.update(load_recipe(name, options), config=name)
    for key, value in spec.items():
        option = str(key).replace("-", "_")
        if option not in options:
            raise W2SError(f"{where}.{key}: unknown option; a study's keys are train's options (w2s-pipe train --help)")
        if isinstance(value, list):
            if not lists:
                raise W2SError(f"{where}.{key} is a list; a single value is needed here (a list sweeps in grid cells)")
            if not value:
                raise W2SError(f"{where}.{key} is an empty list: nothing to sweep")
            out[option] = [convert(v, options[option], f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        else:
            out[option] = convert(value, options[option], f"{where}.{key}")
    return out


def _weak(spec, options: dict, where: str) -> dict:
    spec = _mapping(spec, where)
    if "checkpoint" in spec:
        if set(spec) != {"checkpoint"}:
            raise W2SError(f"{where}: a weak model given as a checkpoint takes nothing else")
        paths = spec["checkpoint"]
        if not (isinstance(paths, str) or (isinstance(paths, list) and all(isinstance(p, str) for p in paths))):
            raise W2SError(f"{where}.checkpoint must be a path, or a list of paths (one per seed)")
        return {"checkpoint": paths}
    spec = dict(spec)
    offset = spec.pop("seed_offset", 0)
    store = spec.pop("store", None)
    once = spec.pop("once", False)
    if not isinstance(once, bool) or (once and store is not None):
        raise W2SError(f"{where}.once must be true or false (true: one model for every seed, trained at seed "
                       "seed_offset), and a model learning from a seed's store is trained per seed")
    if store is not None:  # an intermediate student (bootstrapping): it learns from a store's weak labels
        out = _options({"loss": "hard", **spec}, options, where)
        if not loss_class(out["loss"]).reads_weak:
            raise W2SError(f"{where}.loss {out['loss']} reads no weak labels; a weak model learning from store "
                           f"{store!r} needs a loss that does (hard, kd, adaptconf, ...)")
        return {**out, "store": store, **({"seed_offset": offset} if offset else {})}
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise W2SError(f"{where}.seed_offset must be a whole number (the weak model of seed s trains with s + it)")
    out = _options(spec, options, where)
    if "split" not in out:
        raise W2SError(f"{where}.split is missing: the split whose ground truth the weak model learns")
    return {"loss": "gt", **out, **({"seed_offset": offset} if offset else {}), **({"once": True} if once else {})}


def _store(spec, weak: dict, where: str) -> dict:
    spec = _mapping(spec, where)
    fields = set(LabelConfig.__dataclass_fields__)
    for key in spec:
        if key not in fields and key != "weak":
            raise W2SError(f"{where}.{key}: unknown; a store's keys are label's options ({', '.join(LABEL_OWN)}, "
                           "the view recipe's ...) and weak")
        if isinstance(spec[key], (list, dict)):
            raise W2SError(f"{where}.{key} is {_kind(spec[key])}; a single value is needed")
    if spec.get("weak") not in weak:
        raise W2SError(f"{where}.weak {spec.get('weak')!r} is not one of the study's weak models ({', '.join(weak)})")
    return dict(spec)


def _features(spec, weak: dict, options: dict, where: str) -> dict | None:
    if spec is None:
        return None
    spec = dict(_mapping(spec, where))
    unknown = set(spec) - {"backbone", "probe", "val_split"}
    if unknown:
        raise W2SError(f"{where}.{sorted(unknown)[0]}: unknown; give backbone, probe and val_split")
    if spec.get("backbone") not in weak:
        raise W2SError(f"{where}.backbone {spec.get('backbone')!r} is not one of the study's weak models "
                       f"({', '.join(weak)}): the model whose pooled features the probes read")
    if "checkpoint" in weak[spec["backbone"]]:
        raise W2SError(f"{where}.backbone: a model given as a checkpoint has no model name here; train it in the study")
    val_split = spec.get("val_split", "val")
    if not isinstance(val_split, str):
        raise W2SError(f"{where}.val_split must be a split's name, not {_kind(val_split)}")
    return {"backbone": spec["backbone"], "probe": _options(spec.get("probe") or {}, options, f"{where}.probe"),
            "val_split": val_split}


def _cells(spec, where: str) -> list:
    if spec is None:
        raise W2SError(f"{where} is missing: the runs of the study")
    if isinstance(spec, dict):
        spec = [spec]
    if not isinstance(spec, list):
        raise W2SError(f"{where} must be a list of cells (mappings of train options), not {_kind(spec)}")
    return spec


def _expand(spec, options: dict, stores: dict, weak: dict, select: dict | None, loss: str, where: str) -> list[dict]:
    """A cell's runs: the product of its lists, each with its store (or online teacher), and the
    selected options swept for the losses that read them."""
    spec = _mapping(spec, where)
    own = {k: spec[k] for k in CELL_KEYS if k in spec}
    train = _options({k: v for k, v in spec.items() if k not in CELL_KEYS}, options, where, lists=True)
    if "store" in own and "online" in own:
        raise W2SError(f"{where}: give store or online, not both")
    probes = own.get("probe", False)
    probes = probes if isinstance(probes, list) else [probes]
    if not probes or any(not isinstance(p, bool) for p in probes) or (any(probes) and "online" in own):
        raise W2SError(f"{where}.probe: give true, false or [false, true] (a probe reads stores, never an online "
                       "teacher)")
    for name in (own.get("online"),) if "online" in own else ():
        if name not in weak:
            raise W2SError(f"{where}.online {name!r} is not one of the study's weak models ({', '.join(weak)})")
    sweep_stores = own.get("store", next(iter(stores)) if "online" not in own else None)
    for store in (sweep_stores if isinstance(sweep_stores, list) else [sweep_stores]):
        for member in ([] if store is None else str(store).split("+")):
            if member not in stores:
                raise W2SError(f"{where}.store {member!r} is not one of the study's stores ({', '.join(stores)})")
    for name in (train["specialist_by"] if isinstance(train.get("specialist_by"), list) else [train.get("specialist_by")]):
        if name is not None and name not in stores:
            raise W2SError(f"{where}.specialist_by {name!r} is not one of the study's stores ({', '.join(stores)})")
    lists = {k: v for k, v in train.items() if isinstance(v, list)}
    if "store" in own and isinstance(own["store"], list):
        lists["store"] = own["store"]
    if len(probes) > 1:
        lists["probe"] = probes
    cells = []
    for values in itertools.product(*lists.values()) if lists else [()]:
        cell = {**train, **dict(zip(lists, values))}
        cell.setdefault("store", None if "online" in own else own.get("store", next(iter(stores))))
        if "online" in own:
            cell["online"] = own["online"]
        if cell.pop("probe", probes[0]):
            cell["probe"] = True
        cells += _selected(cell, select, cell.get("loss", loss), where)
    return cells


def _selected(cell: dict, select: dict | None, loss: str, where: str) -> list[dict]:
    """The cell once per combination of the selected options its loss reads (its own list where
    `select:` names the loss)."""
    if not select:
        return [cell]
    if not is_loss(loss):
        raise W2SError(f"{where}.loss {loss!r} is invalid: choose one of {', '.join(loss_names())}, or name a class as "
                       "package.module:Name")
    knobs = loss_class(loss).tunable()
    offered = select["by_loss"].get(loss, {}) if select.get("by_loss") else select["values"]
    swept = {k: v for k, v in offered.items() if k in knobs}
    for option in swept:
        if option in cell:
            raise W2SError(f"{where}.{option}: also under select; a selected option is swept by select alone")
    return [{**cell, **dict(zip(swept, values))} for values in itertools.product(*swept.values())] if swept else [cell]


def _select(spec, options: dict, where: str) -> dict | None:
    """`select:`'s options to choose, each a list read by every loss with that knob, or per loss
    ({adaptconf: {threshold: [...]}, kd: {kd_temperature: [...]}}: each loss its own), and its splits."""
    if spec is None:
        return None
    spec = dict(_mapping(spec, where))
    splits = {k: spec.pop(k, None) for k in ("choose_on", "score_on")}
    for key, split in splits.items():
        if not isinstance(split, str):
            raise W2SError(f"{where}.{key} is missing: the split that {'chooses' if key == 'choose_on' else 'scores'}")
    if splits["choose_on"] == splits["score_on"]:
        raise W2SError(f"{where}: choose_on and score_on are both {splits['choose_on']!r}; a value chosen on a split "
                       "and scored on it flatters itself")
    per_loss = {k: spec.pop(k) for k in list(spec) if is_loss(k)}
    if per_loss and spec:
        raise W2SError(f"{where}: give every option under its loss ({', '.join(per_loss)}: {{option: [...]}}) or none; "
                       f"{next(iter(spec))} is not under one")
    by_loss = {loss: _choices(values, options, f"{where}.{loss}", loss_class(loss).tunable(), loss_class(loss).options)
               for loss, values in per_loss.items()}
    values = _choices(spec, options, where, None) if not per_loss else {}
    for chosen in by_loss.values():  # the options' values in order, for the report
        for key, value in chosen.items():
            values.setdefault(key, []).extend(v for v in value if v not in values[key])
    return {"values": values, **({"by_loss": by_loss} if by_loss else {}), **splits}


def _choices(spec, options: dict, where: str, knobs, own: dict | None = None) -> dict:
    """{option: [values]} to choose from, each an option of a loss (of `knobs` where given; `own`: a
    plug-in loss's own options, whose values its class casts)."""
    own = own or {}
    values = _options({k: v for k, v in _mapping(spec, where).items() if k not in own}, options, where, lists=True)
    values.update({k: v for k, v in spec.items() if k in own})
    if not values:
        raise W2SError(f"{where}: no option to choose (e.g. threshold: [0.25, 0.5, 1, 2, 4])")
    every = sorted({k for loss in BUILT_IN.values() for k in loss.knobs})
    for key, value in values.items():
        if not isinstance(value, list) or len(value) < 2:
            raise W2SError(f"{where}.{key} needs a list of at least two values to choose from")
        if key not in (knobs if knobs is not None else every):
            raise W2SError(f"{where}.{key}: not read by " + (f"this loss (it reads {', '.join(knobs) or 'none'})"
                           if knobs is not None else f"any loss (select chooses a loss's own options: {', '.join(every)})"))
    return values


# What a study may prepare in its own workspace: each registry data set `w2s-pipe prepare NAME` makes under
# its own name (a folder or Hugging Face set has no registry name: prepare it, and give its shards as data).
PREPARES = {"digits": PrepareDigitsConfig, "fashion-mnist": PrepareFashionConfig, "cifar10": PrepareCifarConfig,
            "cifar100": PrepareCifarConfig}


def prepare_options(kind: str) -> tuple[str, ...]:
    """The options `prepare: {KIND: {...}}` takes: the command's own, but where it writes (the study's)."""
    return tuple(f.name for f, _ in ordered(PREPARES[kind]) if f.name != "out")


def _prepare(spec, where: str) -> dict | None:
    """`prepare: digits` (any of PREPARES), or {kind: {its options}}: {"kind": ..., options}."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec in PREPARES:
        return {"kind": spec}
    spec = _mapping(spec, where)
    if len(spec) != 1 or next(iter(spec)) not in PREPARES:
        raise W2SError(f"{where}: the study prepares one of {', '.join(PREPARES)} (prepare: digits, or prepare: "
                       "{digits: {label_noise: ...}}); prepare other data with `w2s-pipe prepare` and give data")
    kind = next(iter(spec))
    options = _mapping(spec[kind] or {}, f"{where}.{kind}")
    unknown = set(options) - set(prepare_options(kind))
    if unknown:
        raise W2SError(f"{where}.{kind}.{sorted(unknown)[0]}: unknown; give {', '.join(prepare_options(kind))}")
    return {"kind": kind, **options}


def _seeds(value, where: str) -> tuple[int, ...]:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, list) and value and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value))):
        raise W2SError(f"{where} must be a count (3: seeds 0, 1, 2) or a list of seeds, not {value!r}")
    seeds = tuple(range(value)) if isinstance(value, int) else tuple(value)
    if not seeds or len(set(seeds)) < len(seeds):
        raise W2SError(f"{where} {value!r}: give at least one seed, each once")
    return seeds
