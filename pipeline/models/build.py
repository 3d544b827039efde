"""timm models by name or alias, with weights from a checkpoint or timm's pretrained weights."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass

import timm
import torch

from ...errors import W2SError
from ..image.preprocess import data_config_for
from . import cifar  # noqa: F401  (registers the paper's CIFAR networks with timm: cifar_resnet20, ...)
from .checkpoint import FORMAT, file_sha256, load_checkpoint

# Short names users type; every value is a timm model name.
ALIASES = {
    "r18": "resnet18",
    "r50": "resnet50",
    "vit_t16": "vit_tiny_patch16_224",
    "vit_s16": "vit_small_patch16_224",
    "vit_b16": "vit_base_patch16_224",
    "vit_l16": "vit_large_patch16_224",
    "convnext_t": "convnext_tiny",
    "convnext_b": "convnext_base",
    "deit_s": "deit_small_patch16_224",
    "deit_b": "deit_base_patch16_224",
}


def resolve_model_name(name: str) -> str:
    resolved = ALIASES.get(name, name)
    if timm.is_model(resolved):
        return resolved
    candidates = list(ALIASES) + timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise W2SError(f"unknown model {name!r}; {hint}give a timm model name (timm.list_models()) or an alias ({', '.join(ALIASES)})")


def create_model(name: str, num_classes: int, img_size: int | None = None, pretrained: bool = False,
                 drop_path: float | None = None):
    """A timm model; `img_size` is passed to models that take it (ViTs), others are size-agnostic;
    `drop_path` is timm's stochastic depth rate (`drop_path_rate`), for models that have it.

    An explicit `img_size` is checked with a one-image forward pass, so that a size the
    architecture cannot take (not a multiple of a ViT's patch, too small for a CNN's strides)
    is a one-line error here rather than a traceback mid-run.
    """
    kwargs = {"num_classes": num_classes, **({"drop_path_rate": drop_path} if drop_path else {})}
    model = None
    if img_size:
        try:
            model = timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
        except TypeError:  # CNNs take no img_size argument and need none
            pass
        except (AssertionError, ValueError, RuntimeError) as exc:
            if pretrained:  # hub errors (some are ValueErrors) are the caller's to explain
                raise
            raise W2SError(f"{name} cannot be built for --img-size {img_size}: {_first_line(exc)}") from None
    if model is None:
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as exc:
            if drop_path and "drop_path_rate" in str(exc):
                raise W2SError(f"--drop-path: {name} has no stochastic depth (timm's drop_path_rate)",
                               option="--drop-path") from None
            raise
    if img_size:
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, 3, img_size, img_size))
        except (AssertionError, ValueError, RuntimeError) as exc:
            raise W2SError(f"{name} cannot take --img-size {img_size}: {_first_line(exc)}") from None
        model.train(was_training)
    return model


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def head_classes(model_name: str, state_dict: dict) -> int | None:
    """Number of classes of a state dict's classifier, found through the model's default config."""
    classifier = timm.models.get_pretrained_cfg(model_name)
    classifier = getattr(classifier, "classifier", None) or "head"
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    for n in names:
        weight = state_dict.get(f"{n}.weight")
        if weight is not None and weight.ndim >= 1:
            return int(weight.shape[0])
    return None


@dataclass
class LoadedModel:
    model: object  # torch.nn.Module
    name: str
    num_classes: int
    data_config: dict
    checkpoint: str | None
    checkpoint_sha256: str  # of the checkpoint file, or "timm-pretrained:<hub id>"
    class_names: list[str] | None = None
    trained: dict | None = None  # a `train` checkpoint's step, epoch, precision, settings and config


def load_model(
    name: str | None,
    *,
    checkpoint: str | None,
    num_classes: int | None,
    img_size: int | None = None,
    option: str | None = "--weak",
) -> LoadedModel:
    """Build a model from a checkpoint this tool wrote, a plain state dict, or timm's pretrained weights.

    `num_classes` is the dataset's (None when unknown): a checkpoint with another head is an error.
    `option` is the command's model option (--weak), which names the model of a plain state dict;
    None where the command has none (`eval`), which then takes only checkpoints from `train`.
    """
    user_img_size = img_size
    if checkpoint:
        checkpoint = os.path.abspath(checkpoint)
        ckpt = load_checkpoint(checkpoint)
        tool = ckpt.get("format") == FORMAT
        if tool:
            ckpt_name = ckpt["model_name"]
            if name and resolve_model_name(name) != ckpt_name:
                raise W2SError(f"{option} {name} does not match checkpoint {checkpoint}, which holds a {ckpt_name}")
            name = ckpt_name
            ckpt_classes = int(ckpt["num_classes"])
            img_size = img_size or (ckpt.get("data_config") or {}).get("input_size", [None, None])[-1]
        else:
            if not name and option is None:
                raise W2SError(f"checkpoint {checkpoint} is a plain state dict, not a checkpoint from `w2s-pipe train`, "
                               "which records the model and its preprocessing that evaluation needs")
            if not name:
                raise W2SError(f"checkpoint {checkpoint} is a plain state dict: name its model with {option}")
            name = resolve_model_name(name)
            ckpt_classes = head_classes(name, ckpt["state_dict"])
        if num_classes is not None and ckpt_classes is not None and ckpt_classes != num_classes:
            raise W2SError(f"checkpoint {checkpoint} has {ckpt_classes} classes but the dataset has {num_classes}")
        classes = num_classes or ckpt_classes
        if classes is None:
            raise W2SError(f"cannot tell the number of classes of checkpoint {checkpoint}; pass --num-classes")
        model = create_model(name, classes, img_size)
        hidden = ((ckpt.get("config") or {}).get("head_hidden") if tool else None)
        if hidden:  # trained with an MLP head (train --head-hidden)
            mlp_head(model, int(hidden), name)
        _load_state(model, ckpt["state_dict"], checkpoint)
        if tool and ckpt.get("data_config"):
            # The preprocessing the model was trained with, unless the user resizes it.
            config = dict(ckpt["data_config"])
            if user_img_size:
                config["input_size"] = [3, int(user_img_size), int(user_img_size)]
        else:
            config = data_config_for(model, img_size)
        trained = {k: ckpt.get(k) for k in ("step", "epoch", "precision", "settings", "config")} if tool else None
        return LoadedModel(model, name, classes, config, checkpoint, file_sha256(checkpoint),
                           ckpt.get("class_names") if tool else None, trained)

    name = resolve_model_name(name)
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    pretrained_classes = int(getattr(pretrained_cfg, "num_classes", 0) or 0)
    if num_classes is not None and pretrained_classes and pretrained_classes != num_classes:
        raise W2SError(
            f"timm's pretrained {name} predicts {pretrained_classes} classes but the dataset has {num_classes}; "
            f"pass {option}-checkpoint PATH with a model trained on it (e.g. from `w2s-pipe train --loss gt`)"
        )
    try:
        model = create_model(name, pretrained_classes or num_classes or 1000, img_size, pretrained=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise W2SError(
            f"cannot fetch timm's pretrained weights for {name} ({reason[:200]}); pass {option}-checkpoint PATH "
            "with a local checkpoint or state dict"
        ) from None
    hub = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("url") or name
    return LoadedModel(model, name, int(model.num_classes), data_config_for(model, img_size), None, f"timm-pretrained:{hub}")


def _load_state(model, state_dict: dict, checkpoint: str) -> None:
    own = model.state_dict()
    for key, value in state_dict.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise W2SError(f"checkpoint {checkpoint}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}")
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") if missing else ""
        what += ("; " if what else "") + (f"unexpected {unexpected[0]}" if unexpected else "")
        raise W2SError(f"checkpoint {checkpoint} does not fit {type(model).__name__}: {what}")
    model.load_state_dict(state_dict, strict=True)


def build_strong(name: str, num_classes: int, *, img_size: int | None = None, pretrained: bool = False,
                 checkpoint: str | None = None, drop_path: float | None = None, head_init_std: float | None = None,
                 head_hidden: int | None = None, keep_head: bool = False, head_seed: int = 0):
    """The strong model, its head sized for the data set: from scratch, timm pretrained weights, or a
    local checkpoint (a backbone such as an MAE ViT, or a run of this tool). Returns (model, eval
    data config).

    Starting from weights, the classifier is never theirs (`keep_head`: a checkpoint's own head, to
    continue it): a backbone trained on the task's ground truth would otherwise hand its labels to a
    "weak-to-strong" student. The fresh head is `nn.Linear`'s default initialisation (PyTorch's:
    weights and biases uniform in +-1/sqrt(fan_in)), as OpenAI's probe (`train_logreg`) starts,
    drawn from `torch.manual_seed(head_seed)`: `torch.manual_seed(s); nn.Linear(D, C)` gives the same
    head. A checkpoint of this tool's `train` also gives the input size it was trained at, unless
    `img_size` says otherwise (a ViT's position embedding needs it; a CNN's features change with it).
    `head_init_std` re-initialises the classifier: weights truncated-normal with that std, biases
    zero (MAE's fine-tuning: 2e-5)."""
    name = resolve_model_name(name)
    recorded = None  # the data config a checkpoint of `train` was trained with
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        if ckpt.get("format") == FORMAT and ckpt.get("data_config") and not img_size:
            recorded = dict(ckpt["data_config"])
            img_size = int(recorded["input_size"][-1])
        model = create_model(name, num_classes, img_size, drop_path=drop_path)
        _load_backbone(model, ckpt["state_dict"], checkpoint, name, keep_head)
    elif pretrained:
        try:
            model = create_model(name, num_classes, img_size, pretrained=True, drop_path=drop_path)
        except W2SError:
            raise
        except Exception as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise W2SError(f"cannot fetch timm's pretrained weights for {name} ({reason[:200]}); "
                           "pass --strong-checkpoint PATH, or drop --pretrained to train from scratch") from None
    else:
        model = create_model(name, num_classes, img_size, drop_path=drop_path)
    if (checkpoint or pretrained) and not keep_head:
        fresh_head(model, head_seed)  # timm keeps a pretrained head whose classes happen to match the data's
    if head_hidden:  # after the backbone's weights: the MLP replaces whatever head they brought
        mlp_head(model, head_hidden, name)
    if head_init_std is not None:
        _init_head(model, head_init_std)
    config = data_config_for(model, img_size)
    return model, ({**config, **recorded} if recorded else config)


def _load_backbone(model, state: dict, checkpoint: str, name: str, keep_head: bool) -> None:
    """A checkpoint's weights into `model`: every tensor of its backbone (each must be there, shaped as
    the model's), and its classifier only with `keep_head` (then it must fit too)."""
    own = model.state_dict()
    prefixes = tuple(f"{c}." for c in _classifiers(model))
    head = {k for k in own if k.startswith(prefixes)}
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)
               and (keep_head or k not in head)}
    missing = [k for k in own if k not in fitting and (keep_head or k not in head)]
    if missing:
        if keep_head and set(missing) <= head:
            stored = state.get(missing[0])
            raise W2SError(f"--keep-head: the classifier of --strong-checkpoint {checkpoint} does not fit {name} for "
                           f"the data's classes ({missing[0]} is {'absent' if stored is None else tuple(stored.shape)} "
                           f"there, the model's is {tuple(own[missing[0]].shape)})", option="--keep-head")
        raise W2SError(f"--strong-checkpoint {checkpoint} does not fit {name}: no weights for {missing[0]}"
                       + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""), option="--strong-checkpoint")
    model.load_state_dict(fitting, strict=False)


def fresh_head(model, seed: int = 0) -> None:
    """Re-draw the classifier's layers with PyTorch's default initialisation (`reset_parameters`),
    from `torch.manual_seed(seed)`, leaving the global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.get_classifier().modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()


# timm's weight tags that say which data set's labels trained them, by the registry's data set names
LABELS_IN_TAG = {"imagenet": re.compile(r"(^|_)in1k($|_)")}  # a1_in1k, augreg_in21k_ft_in1k, fb_in22k_ft_in1k


def seen_labels(model, data: str | None) -> str | None:
    """Why `model`'s timm pretrained weights have seen the ground truth of `data` (their tag says they
    were trained with its labels: in1k, in21k_ft_in1k, ... on imagenet), or None. A self-supervised
    tag (dino, mae) names no labels."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    tag, pattern = cfg.get("tag") or "", LABELS_IN_TAG.get((data or "").lower())
    if pattern is None or not pattern.search(tag):
        return None
    return (f"timm's pretrained {cfg.get('architecture') or type(model).__name__}.{tag} was trained with {data}'s "
            "labels: the student has seen the ground truth that weak-to-strong training withholds from it (its "
            "PGR is not a weak-to-strong result)")


def _init_head(model, std: float) -> None:
    with torch.no_grad():
        for module in model.get_classifier().modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                torch.nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    module.bias.zero_()


def mlp_head(model, hidden: int, name: str = "") -> None:
    """Replace the model's classifier by Linear(D, hidden), GELU, Linear(hidden, classes): a probe's
    small MLP head (`train --head-hidden`), rebuilt the same way wherever its checkpoint is loaded."""
    old, paths = model.get_classifier(), _classifiers(model)
    if len(paths) != 1 or not isinstance(old, torch.nn.Linear):
        raise W2SError(f"--head-hidden: {name or type(model).__name__}'s classifier is not one linear layer "
                       f"({', '.join(paths)}); it keeps its own head", option="--head-hidden")
    new = torch.nn.Sequential(torch.nn.Linear(old.in_features, hidden), torch.nn.GELU(),
                              torch.nn.Linear(hidden, old.out_features))
    parent, _, attr = paths[0].rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    if model.get_classifier() is not new:
        raise W2SError(f"--head-hidden: {name or type(model).__name__}'s classifier could not be replaced",
                       option="--head-hidden")


def _classifiers(model) -> list[str]:
    classifier = model.pretrained_cfg.get("classifier") or "head"
    return list(classifier) if isinstance(classifier, (list, tuple)) else [classifier]


def head_parameters(model):
    """The classifier's parameters, the only ones a linear probe trains."""
    return list(model.get_classifier().parameters())
