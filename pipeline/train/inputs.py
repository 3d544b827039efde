"""What a training run reads: the label store, the training shards and the validation shards."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ...errors import W2SError
from ...storage.fsutil import absolute
from ...storage.reader import open_store, pick_store
from ...storage.schema import views_meta
from ..config.groups import RECIPE_KEYS
from ..ensembles.registry import is_fixed
from ..losses.registry import loss_class
from ..runtime import distributed
from ..runtime.workspace import workspace_dir
from ..sources.datasets import resolve_data
from ..sources.noise import noise_of, scored_on_clean
from ..sources.shards import changed_shards
from ..views.mixing import MixRecipe
from ..views.params import TrainViews
from ..weak.ensemble import check_members, ensemble_index
from ..weak.selection import choose
from ..weak.teacher import load_teacher


@dataclass
class Inputs:
    urls: list[str]
    image_fields: tuple[str, ...]
    label_field: str | None
    num_classes: int
    class_names: list | None
    store_url: str | None
    record: dict  # what config.json says about the data (and the teacher's identity, for an online run)
    val: object | None  # DataSource
    store_chosen: str = ""  # how the store was chosen: "--labels", or why it was the one
    teacher: object | None = None  # models.LoadedModel of --teacher: weak labels computed online
    view_passes: int = 0  # a per-view store's K views, replayed (pass p trains on view p mod K); 0: centre view
    mix: object | None = None  # mixing.MixRecipe of a replayed store whose views are mixed
    kept: object | None = None  # selection.Kept: the store's samples --select / --keep-frac keep (None: all)
    members: tuple = ()  # an ensemble's stores (the first is store_url); () for one store
    ensemble: str | None = None  # how the members combine (ensemble.py, members.py)
    member_classes: tuple = ()  # --ensemble specialist: each member's classes (its teacher's train --classes)
    assigner: str | None = None  # --specialist-by: the earlier student's store, read after the members


def resolve_inputs(cfg) -> Inputs:
    """The store (unless --loss gt without one, or --teacher), the training shards, the validation
    shards, and the online teacher (--teacher).

    `cfg` is a stages.train.TrainConfig.
    """
    from_store = loss_class(cfg.loss).reads_weak and not cfg.teacher
    if cfg.features and not from_store and not cfg.labels and not cfg.data:
        # a probe's ceiling (--loss gt) reads the ground truth the feature store keeps, of the data it embedded
        inputs, source_for_val = _from_data(cfg, *_embedded_data(cfg.features))
    else:
        store, chosen, members = _store(cfg, from_store)
        if from_store or (store is not None and not cfg.data):
            inputs, source_for_val = _from_store(cfg, store, members, from_store)
            inputs.store_chosen = chosen
        else:
            inputs, source_for_val = _from_data(cfg, cfg.data, cfg.split)
    if cfg.teacher:
        teacher = inputs.teacher = load_teacher(cfg.teacher, cfg.teacher_model, inputs.num_classes)
        inputs.num_classes = teacher.num_classes
        inputs.record.update(weak=teacher.name, teacher={"model": teacher.name, "checkpoint": teacher.checkpoint,
                                                         "checkpoint_sha256": teacher.checkpoint_sha256,
                                                         "data_config": teacher.data_config})
    inputs.val = None if cfg.no_eval else _validation(cfg, source_for_val, inputs.num_classes, inputs.record)
    noise = noise_of(inputs.urls, mixed=True)  # what the training labels carry, for report
    if noise:
        inputs.record["label_noise"] = {k: noise[k] for k in ("kind", "rate", "seed", "flip_rate", "noised_shards",
                                                              "shards") if k in noise}
    return inputs


def _store(cfg, from_store: bool) -> tuple:
    """(the store a run reads, opened and complete, or None; how it was chosen; an ensemble's other
    --labels, [] for one store)."""
    members = cfg.label_stores if len(cfg.label_stores) > 1 else []
    if members and not from_store:
        raise W2SError(f"--labels {cfg.labels}: an ensemble of weak labels, which --loss {cfg.loss} does not read",
                       option="--labels")
    store_url, chosen = (members[0] if members else cfg.labels), "--labels"
    if not store_url and (from_store or not cfg.data) and not cfg.teacher:
        store_url, chosen = pick_store(str(workspace_dir(cfg.workspace) / "stores"), cfg.data, cfg.split)
    if from_store and not store_url:
        raise W2SError(f"{chosen}; run `w2s-pipe label` first or pass --labels PATH")
    store = open_store(absolute(store_url)) if store_url else None
    if store is not None:
        store.require_complete()
        a = store.attrs["data"]
        if cfg.data and (cfg.data != a["name"] or (cfg.split and cfg.split != a["split"])) and from_store:
            raise W2SError(f"store {store.url} labelled {a['name']} split {a['split']}, not --data {cfg.data}"
                           + (f" --split {cfg.split}" if cfg.split else "") + "; label that data first or pick its store")
    return store, chosen, members


def _from_store(cfg, store, members: list, from_store: bool) -> tuple:
    """(the inputs of a run that reads `store`: its shards, classes, views, selection and ensemble;
    the data set its validation split comes from, or None)."""
    a, store_url = store.attrs["data"], store.url
    # Shards with no labelled row (unreadable or empty, skipped at labelling) are not read.
    read = [s for s, n in zip(a["shards"], store.labelled_counts) if n > 0]
    if not cfg.skip_shard_check and not cfg.features:  # a probe reads no shard: the stores' fingerprints are checked
        _check_unchanged(read, store_url)
    # Trust nothing unchecked: the index is its parts, and every shard this run reads holds the
    # rows its marker's sha256 describes, all finite (each rank checks its share).
    info = distributed.dist_info()
    store.check_rows([s["name"] for s in read][info.rank::info.world_size])
    store.check_index()
    members = _members(store, members, cfg, read, info)
    assigner = _assigner(cfg, members, read, info)
    label_field = a.get("label_field")
    if cfg.needs_labels and "label" not in store.index().column_names:
        raise W2SError(f"--{'loss gt' if cfg.loss == 'gt' else 'gt-weight'} needs ground-truth labels, but the "
                       f"shards of store {store_url} carry none (field {label_field!r})")
    view_passes = replayed_views(store, cfg) if from_store and not members and not cfg.features else 0
    mix = _store_mix(store) if view_passes and store.views_mixed else None
    how = (cfg.ensemble or "mean-prob") if members else None
    kept = _kept(store, cfg, mix, members, how if is_fixed(how) else "mean-prob")
    record = {"name": a["name"], "split": a["split"], "pattern": a["pattern"], "store": store_url,
              "store_id": store_identity(store.attrs), "weak": store.attrs["weak"]["model"],
              **({"views": view_passes} if view_passes else {}), **({"selection": kept.record()} if kept else {})}
    if members:
        record.update(weak=f"{how} of " + " + ".join(m.attrs["weak"]["model"] for m in members),
                      ensemble={"how": how, "members": [{"store": m.url, "store_id": store_identity(m.attrs),
                                                         "weak": m.attrs["weak"]["model"]} for m in members]})
    inputs = Inputs([s["url"] for s in read], tuple(a["image_field"].split(";")), label_field, store.num_classes,
                    store.attrs.get("class_names"), store_url, record, None, view_passes=view_passes, mix=mix,
                    kept=kept, members=tuple(m.url for m in members), ensemble=how,
                    member_classes=_specialists(members) if how == "specialist" else (),
                    assigner=assigner and assigner.url)
    if assigner is not None:
        record["ensemble"]["specialist_by"] = {"store": assigner.url, "store_id": store_identity(assigner.attrs),
                                               "weak": assigner.attrs["weak"]["model"]}
    source = resolve_data(a["name"], a["split"], workspace=cfg.workspace) if a["name"] != "shards" else None
    return inputs, source


def _embedded_data(url: str) -> tuple[str, str]:
    """(data set, split) that the feature store at `url` embedded."""
    a = open_store(absolute(url)).attrs["data"]
    if a["name"] == "shards":
        raise W2SError(f"--loss gt: feature store {url} embedded a shard pattern ({a['pattern']}), whose classes and "
                       "validation split are unknown; give --data and --split", option="--data")
    return a["name"], a["split"]


def _from_data(cfg, data: str | None, split: str | None) -> tuple:
    """(the inputs of a run that reads no store: --loss gt, or --teacher, on `data`; that data set)."""
    if not data:
        raise W2SError("--loss gt needs --data (and --split), or a label store whose shards carry labels",
                       option="--loss")
    source = resolve_data(data, split, workspace=cfg.workspace)
    if source.num_classes is None and not cfg.teacher:  # with a teacher, its head says
        raise W2SError(f"cannot tell the number of classes of {data}; use a registry dataset or a manifest")
    record = {"name": source.name, "split": source.split, "pattern": source.pattern, "store": None}
    return Inputs(list(source.urls), source.image_fields, source.label_field, source.num_classes,
                  list(source.class_names or []) or None, None, record, None), source


def _validation(cfg, source, num_classes: int, record: dict):
    """The validation data (a DataSource scored on its clean labels): --val-data, or the training data
    set's validation split."""
    if cfg.val_data:
        val = resolve_data(cfg.val_data, cfg.val_split, workspace=cfg.workspace)
        if val.num_classes is not None and val.num_classes != num_classes:
            raise W2SError(f"--val-data {cfg.val_data} has {val.num_classes} classes but the training data "
                           f"({record['name']} {record['split']}) has {num_classes}", option="--val-data")
    elif source is not None and (cfg.val_split or source.val_split):
        val = resolve_data(source.name, cfg.val_split or source.val_split, workspace=cfg.workspace)
    else:
        raise W2SError(f"no validation split known for {record['name']} {record['split']} ({record['pattern']}): "
                       "pass --val-data PATTERN or --no-eval")
    if val.label_field is None:
        raise W2SError(f"validation data {val.pattern} carries no labels")
    val = scored_on_clean(val)  # a noised split is validated against its clean labels
    if val.label_noise:
        record["val_labels"] = val.label_field
    return val


def _members(store, urls: list[str], cfg, read: list[dict], info) -> list:
    """An ensemble's stores, opened and checked as the first is (complete, the same shards, every
    row this rank reads under its sha256, the index its parts); [] for one store."""
    if not urls:
        return []

    if cfg.store_view == "replay":
        raise W2SError("--store-view replay: an ensemble combines the members' centre views; drop it",
                       option="--store-view")
    members = [store] + [open_store(absolute(url)) for url in urls[1:]]
    for member in members[1:]:
        member.require_complete()
    check_members(members)
    for member in members[1:]:
        member.check_rows([s["name"] for s in read][info.rank::info.world_size])
        member.check_index()
    return members


def _assigner(cfg, members: list, read: list[dict], info):
    """--specialist-by's store, opened and checked as a member is (complete, the members' shards, its
    rows and index), or None."""
    if not cfg.specialist_by:
        return None
    store = open_store(absolute(cfg.specialist_by))
    store.require_complete()
    try:
        check_members([members[0], store])
    except W2SError as exc:
        raise W2SError(str(exc).replace("--labels:", "--specialist-by:", 1), option="--specialist-by") from None
    store.check_rows([s["name"] for s in read][info.rank::info.world_size])
    store.check_index()
    return store


def _specialists(members: list) -> tuple:
    """Each member's classes, as its store records them (label with a `train --classes` checkpoint);
    a member without them is one line naming its store."""
    out = []
    for member in members:
        classes = member.attrs["weak"].get("classes")
        if not classes:
            raise W2SError(f"--ensemble specialist: store {member.url}'s teacher was trained on every class; label with "
                           "specialists (weak checkpoints of `train --loss gt --classes ...`)", option="--ensemble")
        out.append(tuple(int(c) for c in classes))
    return tuple(out)


def _kept(store, cfg, mix, members=(), how=None):
    """selection.Kept of --select / --keep-frac over the store's index (an ensemble's: its combined
    output's statistics and the members' agreement), or None."""
    if mix is not None and cfg.weight_by:
        raise W2SError(f"--weight-by: store {store.url}'s views are mixed with partners whose statistics this run "
                       "does not read; read the centre view (--store-view center)", option="--weight-by")
    if not cfg.select and cfg.keep_frac is None:
        return None
    if mix is not None:
        raise W2SError(f"--select / --keep-frac: store {store.url}'s views are mixed with partners found by their "
                       "position in the shard, which leaving samples out would move; read the centre view "
                       "(--store-view center)", option="--select")

    if members:  # ranking an ensemble reads every member's logits: the main process does it for all ranks

        return distributed.on_main(lambda: choose(ensemble_index(members, how), cfg.select, cfg.keep_frac, cfg.rank_by,
                                                  cfg.per_class))
    return choose(store.index(), cfg.select, cfg.keep_frac, cfg.rank_by, cfg.per_class)


def replayed_views(store, cfg) -> int:
    """How many of a store's views `train` replays (0: it reads the centre view). A per-view store
    is replayed (--store-view auto or replay) only with the very views its weak model saw: the
    run's --seed, --crop-scale, --hflip, --aa, --color-jitter, --reprob and mixing (--mixup,
    --cutmix, --mixup-prob, --mixup-switch-prob) must be the store's; each difference is refused by
    name."""
    if cfg.store_view == "center" or (cfg.store_view == "auto" and not store.views):
        return 0
    if not store.views:
        raise W2SError(f"--store-view replay: store {store.url} holds the centre view only; label it with --views K, "
                       "or drop --store-view replay", option="--store-view")

    meta = views_meta(store.attrs)  # recipe options a store predates at their defaults
    run = {"seed": cfg.seed, **{k: getattr(cfg, k) for k in RECIPE_KEYS}}
    if not cfg.mixes:
        run.update(mixup=0.0, cutmix=0.0)
    if not store.views_mixed:  # the mixing chances matter only where there is mixing
        run.pop("mixup_prob"), run.pop("mixup_switch_prob")
    stored = {"seed": meta["seed"], **{k: meta["recipe"][k] for k in run if k != "seed"}}
    for name in run:
        if not _same(run[name], stored[name]):
            raise W2SError(f"--{name.replace('_', '-')} {run[name]}: store {store.url} holds the weak model's output on "
                           f"views drawn with --{name.replace('_', '-')} {stored[name]}; train with that, label the views "
                           "again with this, or read its centre view (--store-view center)")

    if list(meta["recipe"]["ratio"]) != list(TrainViews(0).ratio):
        raise W2SError(f"store {store.url}'s views were drawn with aspect ratios {meta['recipe']['ratio']}, this tool "
                       f"draws {list(TrainViews(0).ratio)}; label the views again")
    if cfg.skip_missing and store.views_mixed:
        raise W2SError(f"--skip-missing: store {store.url}'s views are mixed with partners found by their position in "
                       "the shard, which a left-out sample would move; label the shards again, or read the centre view "
                       "(--store-view center)", option="--skip-missing")
    return int(store.views)


def _store_mix(store):
    return MixRecipe.from_recipe(views_meta(store.attrs)["recipe"])


def _same(a, b) -> bool:
    """Equal as numbers (2 and 2.0) or as anything else."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return float(a) == float(b) if numbers else a == b


def _check_unchanged(shards: list[dict], store_url: str) -> None:
    """Weak labels joined by key to other images are silently wrong labels: refuse shards that
    changed since the store was made (size and the first and last 64 KiB, as recorded)."""
    changed = changed_shards(shards)
    if changed:
        more = f" (and {len(changed) - 1} more shards)" if len(changed) > 1 else ""
        raise W2SError(f"{changed[0]}{more}: the store {store_url} labelled other data. Re-label the shards, or pass "
                       "--skip-shard-check to train on them anyway")


def store_identity(attrs: dict) -> str:
    keep = {k: attrs.get(k) for k in ("weak", "num_classes", "preprocessing", "precision", "layout", "created")}
    keep["data"] = attrs["data"]["fingerprint"]
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
