"""`train`'s options as one frozen, validated config: its own options, and the groups of options it
shares (pipeline/config/groups.py: the objective, the selection of weak labels, the view recipe, the
optimizer, the schedule, the loading, the watchdog). Every value is checked where the config is
built, with an error naming the option, the bad value and what would be valid. The cheap checks come
first, so a typo is answered before timm is imported (for the optimizer's name).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import W2SError
from ..pipeline.config import options
from ..pipeline.config.choices import STORE_VIEWS
from ..pipeline.config.groups import (
    Ensemble,
    Loading,
    Objective,
    Optimisation,
    Schedule,
    ViewRecipe,
    Watched,
    WhichSamples,
)
from ..pipeline.config.options import bad, field_of, like, option, parse_classes
from ..pipeline.ensembles.registry import STEP_WISE, combination
from ..pipeline.losses.registry import build_loss, find_loss, option_pairs


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Objective, Ensemble, WhichSamples, ViewRecipe, Optimisation, Schedule, Loading, Watched):
    config: str | None = option(None, "A recipe: a shipped name (`w2s-pipe recipes`: cifar_v0, demo, ...) or a YAML "
                                      "file of train options. Options given on the command line win; the resolved "
                                      "settings are saved in the run's config.json.", recipe=False)
    strong: str = option(help="Strong timm model name or alias (vit_b16, resnet50, ...).")
    labels: str | None = option(None, "Label store path or URL [default: the workspace's most recent complete store]; "
                                      "several, comma-separated (A,B,C: stores of the same shards, e.g. weak models of "
                                      "other seeds), train from their ensemble (--ensemble).")
    teacher: str | None = option(None, "Online teacher, instead of a store: a weak checkpoint (from `w2s-pipe train`, "
                                       "or a timm state dict with --teacher-model) run on every batch's exact views, "
                                       "after the crop, flip, --aa, erasing and mixing, resized to its own input size "
                                       "and normalised with its own mean and std, as the paper's official code runs it. "
                                       "Needs --data (shards without a manifest take the teacher's classes); costs a "
                                       "teacher forward per step.")
    teacher_model: str | None = option(None, "The timm name of a --teacher state dict (a checkpoint from train names "
                                             "its own).")
    store_view: str = option("auto", "Which of a store's outputs to learn from. auto: a per-view store's views "
                                     "replayed (pass p trains on stored view p mod K, cropped from the box the weak "
                                     "model saw; --seed, --crop-scale, --hflip, --aa, --color-jitter, --reprob and the "
                                     "mixing options must be the store's (its mixed views replayed sample by sample, "
                                     "each with the partner and λ it was labelled with)), else the centre view; center: "
                                     "the centre view of any store; replay: the views, or an error for a centre store.",
                             choices=STORE_VIEWS)
    data: str | None = option(None, "Data set or shard pattern; needed with --loss gt and no store, and with --teacher; "
                                    "else it must match the store.")
    split: str | None = option(None, "Split of --data [default: the data set's labelling split].")
    val_data: str | None = option(None, "Validation data set or shard pattern [default: the data set's validation "
                                        "split].")
    val_split: str | None = option(None, "Validation split of the data set [default: its val split].")
    no_eval: bool = option(False, "Skip validation (no best.pt).")
    img_size: int | None = option(None, "Input size in pixels [default: the model's data config].", at_least=8,
                                  unit="pixels")
    crop_pct: float | None = option(None, "Evaluation's centre crop: resize to size / crop-pct, crop the centre "
                                          "[default: the model's data config]; saved with the checkpoints, so `eval` "
                                          "and `label` use it too.", above=0, at_most=1)
    pretrained: bool = option(False, "Start from timm's pretrained weights (needs the model hub or its cache).")
    strong_checkpoint: str | None = option(None, "Start from a local checkpoint or state dict (e.g. an MAE ViT-B, or a "
                                                 "run of `train`, whose input size it takes unless --img-size is "
                                                 "given). Its classifier is dropped, as timm's --pretrained one is: "
                                                 "the head starts fresh (nn.Linear's default, drawn from --seed).")
    keep_head: bool = option(False, "With --strong-checkpoint: start from its classifier too (to continue a run's "
                                    "head), instead of a fresh one. A backbone trained on this task's ground truth "
                                    "then hands its labels to the student.")
    linear_probe: bool = option(False, "Freeze the backbone and train only the classifier head.")
    features: str | None = option(None, "A probe from stores alone: the feature store (`w2s-pipe features`) of --strong "
                                        "on the training split; the classifier head trains on its stored features "
                                        "joined with the label store(s) by shard and key, and no image is decoded. "
                                        "Every loss, selection, weighting and ensemble option works; the view and "
                                        "mixing options and --teacher do not apply. The checkpoints hold the whole "
                                        "model (the store's backbone: give --pretrained or the --strong-checkpoint it "
                                        "was embedded with).")
    val_features: str | None = option(None, "The validation split's feature store of a --features run [default: "
                                            "<workspace>/features/<data>-<val split>-<model>].")
    drop_path: float | None = option(None, "Stochastic depth rate (timm's drop_path_rate), for models that have it.",
                                     at_least=0, below=1)
    head_hidden: int | None = option(None, "Replace the classifier with a small MLP, Linear(D, N), GELU, Linear(N, "
                                           "classes): a probe's MLP head (--features, --linear-probe), or any run's. "
                                           "The checkpoints record it; eval and label rebuild it.", at_least=1)
    head_init_std: float | None = option(None, "Re-initialise the classifier: truncated-normal weights with this std, "
                                               "zero biases (MAE fine-tuning: 2e-5).", above=0)
    classes: str | None = option(None, "Train only on the samples whose ground truth is one of these classes (0-4, or "
                                       "0,2,7-9), with --loss gt: a specialist weak teacher for co-supervision. The "
                                       "head keeps every class; the checkpoints record the classes, and a store "
                                       "`label` makes with one records them (train --ensemble specialist reads them). "
                                       "An epoch is the kept samples (their labels read once, at the start).")
    skip_missing: bool = option(False, "Train without samples that have no row in the store instead of stopping; each "
                                       "epoch's count is logged.")
    skip_shard_check: bool = option(False, "Train even on shards whose size or contents (first and last 64 KiB) changed "
                                           "since they were labelled; by default such a shard stops the run, since its "
                                           "stored labels belong to other images.")
    batch_size: int = like(field_of(Loading, "batch_size"), 128)
    deterministic: bool = option(False, "Deterministic GPU kernels only, so that the same command gives the same weights "
                                        "on a GPU too (slower). On the CPU a run is reproducible without it, for a "
                                        "fixed thread count.")
    compile: bool = option(False, "torch.compile the student for training (the first steps compile).")
    channels_last: bool | None = option(None, "Channels-last memory layout for the student [default: on CUDA].",
                                        secondary="--no-channels-last")
    model_ema: bool = option(False, "Keep an exponential moving average of the weights (timm's ModelEmaV3): evaluated "
                                    "each epoch beside the model (val_top1_ema) and saved as ema.pt.")
    model_ema_decay: float = option(0.9998, "Decay of --model-ema per step.", at_least=0, below=1)
    shuffle_buffer: int = option(1000, "Encoded samples in the shuffle buffer of each loading process (decoded only as "
                                       "they leave it).", at_least=1)
    run: str | None = option(None, "Run name under <workspace>/runs, or a path [default: <model>-<loss>-<time>]. (Not "
                                   "--run: torchrun would read that as its own --run-path.)", flag="--run-name")
    resume: bool = option(False, "Continue the run named by --run-name from its last.pt, exactly where it stopped (same "
                                 "samples, views and generators; on the CPU, the uninterrupted run's weights). Any "
                                 "setting other than --max-steps, --log-every and --quiet must be the same; a "
                                 "difference is refused by name.")
    max_steps: int | None = option(None, "Stop after this many steps in this invocation; --resume continues.",
                                   at_least=1)
    log_every: int = option(20, "Steps per metrics.jsonl record.", at_least=1)
    workspace: str | None = None

    def __post_init__(self):
        options.check(self)
        self.built_loss()  # an unknown --loss or --loss-options is one line here
        self.check_recipe()
        self.check_schedule(self.lr)
        self.check_ensemble(stores=len(self.label_stores))
        self.check_samples(reads_store="--teacher" if self.teacher else (
            None if self.loss_class.reads_weak else f"--loss {self.loss}"))
        if len(self.label_stores) > 1 and len(set(self.label_stores)) < len(self.label_stores):
            raise W2SError(f"--labels {self.labels}: a store is named twice", option="--labels")
        if self.mixes and self.batch_size % 2:
            raise bad("--batch-size", self.batch_size, "must be even with --mixup or --cutmix (each image is mixed with "
                      "another of its batch)")
        self._check_sources()
        # Lazy, and last: it imports timm (seconds), and a config is built (and --help read) without it.
        from ..pipeline.train.optim import check_optimizer

        check_optimizer(self.opt)

    def _check_sources(self) -> None:
        """Where the weak labels and the weights come from: one source each."""
        def refuse(message, option):
            raise W2SError(message, option=option)

        if self.teacher and self.labels:
            refuse("give --labels STORE or --teacher CHECKPOINT, not both: the weak labels come from one", "--teacher")
        if self.teacher and not self.loss_class.reads_weak:
            refuse(f"--teacher gives weak labels, which --loss {self.loss} does not read; drop --teacher", "--teacher")
        if self.teacher and not self.data:
            refuse("--teacher needs --data: the data to train on (a store would have named it)", "--teacher")
        if self.teacher and self.skip_missing:
            refuse("--skip-missing is about a store's rows; with --teacher every sample has its teacher's output",
                   "--skip-missing")
        if self.teacher and self.store_view != "auto":
            refuse(f"--store-view {self.store_view} chooses among a store's outputs; with --teacher there is no store",
                   "--store-view")
        if self.teacher_model and not self.teacher:
            refuse("--teacher-model names the model of a --teacher checkpoint: give --teacher too", "--teacher-model")
        self._check_members()
        if self.features:
            image_only = [(self.teacher, "--teacher"), (self.mixes, "--mixup/--cutmix"), (self.aa, "--aa"),
                          (self.color_jitter, "--color-jitter"), (self.reprob, "--reprob"),
                          (self.store_view == "replay", "--store-view replay")]
            for given, name in image_only:
                if given:
                    refuse(f"{name} acts on images; a --features probe reads stored features of the centre view",
                           name.split("/")[0].split(" ")[0])
        if self.val_features and not self.features:
            refuse("--val-features is the validation of a --features probe: give --features too", "--val-features")
        if self.pretrained and self.strong_checkpoint:
            refuse("give --pretrained or --strong-checkpoint, not both", "--pretrained")
        if self.keep_head and not self.strong_checkpoint:
            refuse("--keep-head keeps a --strong-checkpoint's classifier: give --strong-checkpoint too", "--keep-head")
        if self.resume and not self.run:
            refuse("--resume needs --run-name NAME: the run to continue", "--resume")

    def _check_members(self) -> None:
        """The methods that read each member of an ensemble, and --classes."""
        if self.ensemble and self.ensemble not in STEP_WISE:
            combination(self.ensemble)  # a built-in, package.module:Name, or an entry point's; else one line
        if self.loss_class.reads_members and self.ensemble:
            raise W2SError(f"--loss {self.loss} reads each --labels store on its own; drop --ensemble {self.ensemble}",
                           option="--ensemble")
        if self.stacked and self.mixes:
            raise W2SError("--mixup/--cutmix mix one weak output per sample; --ensemble learned/specialist, "
                           "--easy-epochs and --loss evidential read every member's", option="--mixup")
        if self.classes is not None:
            if self.loss != "gt":
                raise W2SError("--classes trains a specialist weak teacher on the ground truth of those classes: "
                               f"give --loss gt (not {self.loss})", option="--classes")
            if self.features:
                raise W2SError("--classes filters the shards' samples by their labels; a --features probe reads stores",
                               option="--classes")
            self.class_subset  # parsed now: a bad list is refused before any work

    @property
    def loss_class(self):
        """The class of --loss (pipeline/losses/): a built-in, package.module:Name, or an entry point's."""
        return find_loss(self.loss)

    def built_loss(self):
        """--loss built with its knobs' values and --loss-options."""
        return build_loss(self.loss, {**asdict(self), "loss_options": option_pairs(self.loss_options)})

    @property
    def class_subset(self) -> tuple[int, ...] | None:
        """--classes as sorted class indices, or None."""
        return None if self.classes is None else parse_classes(self.classes)

    @property
    def stacked(self) -> bool:
        """Whether the batches carry every --labels member's logits (B, M, C), for a method that combines
        them with the student at each step or reads them one by one."""
        return len(self.label_stores) > 1 and (self.ensemble in STEP_WISE or self.easy_epochs > 0
                                               or self.loss_class.reads_members)

    @property
    def label_stores(self) -> list[str]:
        """The --labels stores: one, or the members of an ensemble (comma-separated)."""
        return [s.strip() for s in (self.labels or "").split(",") if s.strip()]

    @property
    def head_only(self) -> bool:
        """Whether only the classifier trains: --linear-probe, or a probe from stored --features."""
        return self.linear_probe or bool(self.features)

    @property
    def needs_labels(self) -> bool:
        """Whether the run reads the ground truth: its loss does (the table says), or --gt-weight adds it."""
        return self.loss_class.reads_gt or self.gt_weight > 0

    @property
    def weak_from(self) -> str | None:
        """Where the weak labels come from: "online" (--teacher), "store", or None (--loss gt)."""
        if not self.loss_class.reads_weak:
            return None
        return "online" if self.teacher else "store"

    @classmethod
    def tiny(cls, **overrides) -> "TrainConfig":
        """A seconds-long preset for tests and smoke runs: 32 px, small batches, two epochs."""
        base = dict(strong="test_resnet", img_size=32, batch_size=32, epochs=2, workers=0, log_every=2,
                    precision="fp32", shuffle_buffer=64, hflip=0.0, progress=False)
        return cls(**{**base, **overrides})


def recipe_options() -> dict[str, str]:
    """The options a recipe (`train --config`) may set, each with its field's type annotation."""
    return {f.name: str(f.type) for f, spec in options.options_of(TrainConfig) if spec.recipe}


def option_defaults() -> dict:
    """Each train option's default: what a run did about an option its config.json predates."""
    return options.defaults(TrainConfig)
