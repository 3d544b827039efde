"""The groups of options the stages' configs are made of, each option defined once (options.py):
a stage's config inherits the groups it takes (`LabelConfig(Loading, ViewRecipe)`, `TrainConfig(
Loading, ViewRecipe, Objective, Ensemble, WhichSamples, Optimisation, Schedule, ...)`), and the command line,
the recipes and the store's recorded view recipe are made from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ...errors import W2SError
from ..ensembles.registry import BUILT_IN as ENSEMBLE_BUILT_IN
from ..ensembles.registry import STEP_WISE
from ..losses.registry import BUILT_IN
from .choices import COSINE_FLOORS, DECODE_OPTIONS, PRECISION_OPTIONS, RAMPS, RANK_BY, SCHEDULES, WEIGHT_BY
from .options import bad, option

KW = dict(frozen=True, kw_only=True)


@dataclass(**KW)
class Loading:
    """How a stage reads its data and computes: the loading processes, the decoder, the device and
    the precision."""

    batch_size: int = option(256, "Images per forward pass (train: per step and rank).", at_least=1)
    workers: int | None = option(None, "Data-loading processes [default: this rank's share of the CPU cores, less "
                                       "one]; 0 loads in the main process.", at_least=0)
    decode: str = option("auto", "Where images are decoded and resized. gpu: the loading processes only read bytes; "
                                 "each batch's JPEGs are decoded in one nvJPEG call and cropped in a few batched "
                                 "launches on the device. cpu: libjpeg-turbo/libpng and uint8 tensor resizing in the "
                                 "loading processes (2.7x less CPU than pil). pil: PIL, timm's reference transforms to "
                                 "the pixel. All three draw the same view of a sample. auto: gpu where there is a CUDA "
                                 "device and nothing needs the loading processes (--aa, --color-jitter, label --views), "
                                 "else cpu; label: the decoder an existing store began with, which it finishes with.",
                         choices=DECODE_OPTIONS)
    max_image_pixels: int | None = option(
        None, "The most pixels (width x height) an image's header may declare: a sample over it (a decompression "
              "bomb) is refused by the same rule as an undecodable one, naming shard and key, before any decoder "
              "allocates it; on every decode path. At most PIL's own refusal point, 178,956,970, the default, which "
              "ImageNet's and LAION's largest photographs pass.", at_least=1, at_most=178_956_970,
        default_text="178,956,970", recipe=False)
    device: str = option("auto", "auto, cpu, cuda or cuda:N; under torchrun each process takes the GPU of its local "
                                 "rank.")
    precision: str = option("auto", "Autocast precision; auto is bf16 on GPU and on CPUs with native bf16, else fp32 "
                                    "(a store's statistics are computed in float64).", choices=PRECISION_OPTIONS)


@dataclass(**KW)
class Watched:
    """A long stage's watchdog and progress bar (runtime/watchdog.py)."""

    stall_timeout: float = option(600.0, "Seconds a rank may wait for a batch, a step or the other ranks before it ends "
                                         "the run with one line naming the rank, where it was and what it waited for, "
                                         "then every thread's stack (exit 124); also the process group's collective "
                                         "timeout under torchrun. 0: wait for ever.", at_least=0)
    progress: bool = option(True, "No progress bar.", flag="--quiet", negate=True, recipe=False)


@dataclass(**KW)
class ViewRecipe:
    """What a training view is drawn with, as a function of (seed, shard, key, pass): `train` draws
    its views so, and `label --views K` stores the weak model's output on the very same views (the
    store records these values, and `train` replays a store only with the same)."""

    seed: int = option(0, "Seed of initialisation, data order and augmentation: a sample's view is a function of "
                          "(seed, shard, key, pass), the same whatever the ranks, workers or batch size.")
    crop_scale: float = option(0.08, "Smallest area fraction of the random resized crop.", above=0, at_most=1)
    hflip: float = option(0.5, "Horizontal flip probability.", at_least=0, at_most=1)
    aa: str | None = option(None, "timm's auto-augment policy after the crop and flip: rand-m9-mstd0.5-inc1 "
                                  "(RandAugment), original-mstd0.5 (AutoAugment), augmix-m5-w4-d2, ... Runs in the "
                                  "loading processes (--decode cpu or pil), drawn per sample from (seed, shard, key, "
                                  "pass).")
    color_jitter: float = option(0.0, "Colour jitter strength (brightness, contrast, saturation; in the loading "
                                      "processes, --decode cpu or pil).", at_least=0)
    reprob: float = option(0.0, "Random erasing probability (timm's, pixel mode: one box of 2-33%% of the image filled "
                                "with normal noise after normalisation); the box and the noise are part of each "
                                "sample's view (drawn from seed, shard, key and pass), applied on the device.",
                           at_least=0, at_most=1)
    mixup: float = option(0.0, "Mixup alpha (0: off). From a centre store, timm's per-batch mixup with the weak labels "
                               "mixed linearly, as probabilities with the same lambda and pairing; replaying a per-view "
                               "store (label --views K --mixup), each sample with another of its shard, lambda ~ "
                               "Beta(alpha, alpha) drawn per sample and pass, the weak model's output on the mixed image "
                               "stored; an online --teacher sees the mixed image itself.", at_least=0)
    cutmix: float = option(0.0, "Cutmix alpha (0: off); the weak labels are mixed with the pasted area's lambda.",
                           at_least=0)
    mixup_prob: float = option(1.0, "Chance that a batch (per-view: a view) is mixed at all.", at_least=0, at_most=1)
    mixup_switch_prob: float = option(0.5, "Chance of cutmix rather than mixup when both are on.", at_least=0,
                                      at_most=1)

    def check_recipe(self) -> None:
        if self.aa and self.color_jitter:
            raise W2SError("give --aa or --color-jitter, not both (timm turns colour jitter off under auto-augment)",
                           option="--aa")

    @property
    def mixes(self) -> bool:
        return bool(self.mixup or self.cutmix) and self.mixup_prob > 0

    @property
    def loading_only(self) -> tuple[str, ...]:
        """The options set that only the loading processes apply (so --decode gpu cannot)."""
        return tuple(o for o, v in (("--aa", self.aa), ("--color-jitter", self.color_jitter)) if v)

    def recipe(self, ratio) -> dict:
        """The view recipe a store records (`views.recipe`): every option here but the seed, which the
        store keeps beside it, and the crop's aspect ratios (`ratio`, the tool's, not an option)."""
        out = {f.name: getattr(self, f.name) for f in fields(ViewRecipe) if f.name != "seed"}
        return {"crop_scale": out.pop("crop_scale"), "ratio": list(ratio), **out}


# A store's recorded view recipe: its keys (but the crop's aspect ratios, the tool's) and defaults,
# the values of options a store predates (storage.schema.views_meta).
RECIPE_KEYS = tuple(f.name for f in fields(ViewRecipe) if f.name != "seed")
RECIPE_DEFAULTS = {f.name: f.default for f in fields(ViewRecipe) if f.name != "seed"}


@dataclass(**KW)
class Objective:
    """What a run minimises: the loss on the weak labels (train/losses.py), its schedule, and the
    optional ground-truth term."""

    loss: str = option("adaptconf", "; ".join(f"{name}: {loss.summary}" for name, loss in BUILT_IN.items()) + "; "
                       "or a loss of your own: package.module:Name (a subclass of w2s_pipe.pipeline.losses.base."
                       "WeakLoss), or a name a package registers (entry points, group w2s_pipe.losses).",
                       choices=tuple(BUILT_IN), open_choices=True, metavar="LOSS")
    loss_options: tuple[str, ...] = option((), "A loss's own options, as comma-separated NAME=VALUE pairs (a plug-in "
                                               "loss's `options`; each value is cast to its default's type).",
                                           metavar="NAME=VALUE,...")
    threshold: float = option(0.5, "adaptconf's tau (0.5 in the paper's CIFAR runs, 4.0 in its ImageNet transfer); "
                                   "augconf's final alpha.", above=0)
    kd_temperature: float = option(1.0, "Temperature T of the KD term.", above=0)
    warmup_frac: float = option(0.3, "augconf: fraction of training over which alpha ramps up from 0 (the official "
                                     "superalignment_rate).", at_least=0, at_most=1)
    ramp: str = option("epoch", "augconf: alpha steps up once per epoch, as the official code (epoch / (epochs x "
                                "--warmup-frac)), or at every step.", choices=RAMPS)
    beta_warmup_frac: float = option(0.0, "adaptconf: fraction of training over which beta is scaled up from 0 "
                                          "(0: off).", at_least=0, at_most=1)
    evidential_gamma: float = option(0.5, "evidential: the weight of the student's own term, (1-gamma) on the "
                                          "teachers' (RAVEN's default 0.5).", at_least=0, at_most=1)
    kd_weight: float = option(1.0, "Weight of the weak-label loss, whichever --loss (not of --gt-weight's term; the "
                                   "official kd_loss_weight). --kd-weight is its older name.", at_least=0,
                              flag="--weak-weight", aliases=("--kd-weight",))
    gt_weight: float = option(0.0, "Add this weight times the ground-truth criterion to any loss (the official "
                                   "gt_loss_weight, 1.0 in every official run; 0 is the paper's weak-to-strong "
                                   "setting).", at_least=0)
    smoothing: float = option(0.0, "Label smoothing of the ground-truth criterion (timm's; with --mixup/--cutmix, of the "
                                   "mixed targets). It touches only --loss gt and the --gt-weight term, never the weak "
                                   "labels.", at_least=0, below=1)


@dataclass(**KW)
class Ensemble:
    """Several --labels stores as one weak teacher: combined once (pipeline/ensembles/), or with the
    student at each step (weak/members.py: learned weights, specialists, the easy start)."""

    ensemble: str | None = option(None, "How several --labels stores combine, per sample [default: mean-prob]: "
                                        "mean-prob, the log of the members' mean softmax; mean-logit, their mean "
                                        "logits; vote, the log of the share of members whose argmax is each class "
                                        "(ties to the lower class); learned, weights on the members' probabilities "
                                        "learned with the student (RAVEN: each step a projected gradient step on the "
                                        "student's cross-entropy under the combination, --ensemble-lr); learned-sample, "
                                        "such weights per sample; specialist, co-supervision: members trained on "
                                        "disjoint classes (train --classes), the one holding the student's argmax "
                                        "labels the sample, kept where its argmax is in the student's top "
                                        "--specialist-topk. --select can use the column agreement: how many members' "
                                        "argmax is the (mean-prob, for the learned and specialist ones) ensemble's.",
                                  choices=(*ENSEMBLE_BUILT_IN, *STEP_WISE), open_choices=True, metavar="HOW")
    ensemble_lr: float = option(0.1, "--ensemble learned / learned-sample: the weights' step size (global: on the "
                                     "batch's mean cross-entropy of each member; per sample: on the sample's own).",
                                above=0)
    easy_epochs: int = option(0, "The easy-sample start (RAVEN): for the first N epochs a sample counts only where "
                                 "every --labels member's argmax is the same, and learned ensemble weights stay at "
                                 "their start. 0: off.", at_least=0)
    specialist_by: str | None = option(None, "--ensemble specialist: a label store of an earlier student on the same "
                                             "shards (label --weak-checkpoint its last.pt), whose argmax picks each "
                                             "sample's specialist and whose top --specialist-topk it must agree with, as "
                                             "CSL assigns by the previous student [default: the current student].")
    specialist_topk: int = option(3, "--ensemble specialist: a sample counts only where its specialist's argmax is "
                                     "among the student's top K (CSL's teacher-student agreement; 3 as CSL).",
                                  at_least=1)
    def check_ensemble(self, *, stores: int) -> None:
        """`stores`: how many --labels."""
        if self.ensemble is not None and stores < 2:
            raise W2SError(f"--ensemble {self.ensemble} combines several stores: give --labels A,B,...",
                           option="--ensemble")
        if self.easy_epochs and stores < 2:
            raise W2SError("--easy-epochs trains first on the samples several teachers agree on: give --labels A,B,...",
                           option="--easy-epochs")
        if self.ensemble_lr != 0.1 and self.ensemble not in ("learned", "learned-sample"):
            raise W2SError("--ensemble-lr is the step size of learned ensemble weights: give --ensemble learned or "
                           "learned-sample", option="--ensemble-lr")
        if (self.specialist_topk != 3 or self.specialist_by) and self.ensemble != "specialist":
            raise W2SError("--specialist-topk and --specialist-by are co-supervision's: give --ensemble specialist",
                           option="--specialist-topk")


@dataclass(**KW)
class WhichSamples:
    """Which of the weak labels a run trusts: the samples it keeps and how much each weighs
    (weak/selection.py); chosen once, before training. (Not a study's `select:` section, which
    chooses hyperparameters.)"""

    select: str | None = option(None, "Train only on the store's samples for which this is true: an expression over "
                                      "its index columns (key, shard, row, pred, confidence, margin, entropy, and "
                                      "label where the shards carry one), e.g. \"confidence >= 0.6\" or \"margin > "
                                      "0.2 AND pred != 3\" (=, !=, <, <=, >, >=, AND, OR, NOT, parentheses, numbers, "
                                      "'strings'; a column against a column too). Chosen once, before training; "
                                      "left-out samples are never decoded, and an epoch is the kept samples.")
    keep_frac: float | None = option(None, "Keep the most trusted fraction (after --select): ceil(F x n) samples by "
                                           "--rank-by, ties to the earlier shard and row.", above=0, at_most=1)
    rank_by: str = option("margin", "--keep-frac's ranking: a higher margin (top-1 minus top-2 probability) or "
                                    "confidence, or a lower entropy, is more trusted; of an ensemble, also more members "
                                    "agreeing with it (agreement).", choices=RANK_BY)
    per_class: bool = option(False, "--keep-frac within each weak predicted class, so that no class is emptied.")
    weight_by: str | None = option(None, "Weigh each sample's weak-label loss by its stored statistic s (the replayed "
                                         "view's with a per-view store; under mixup/cutmix λ·s + (1-λ)·s of the "
                                         "partner): w = s / mean(s) over the batch, so the mean weight is 1 (all-zero: "
                                         "even), loss = mean(w · weak-label loss) + the unweighted --gt-weight term.",
                                   choices=WEIGHT_BY)

    def check_samples(self, *, reads_store: str | None) -> None:
        """`reads_store`: None, or why no store is read (the option)."""
        if (self.per_class or self.rank_by != "margin") and self.keep_frac is None:
            raise W2SError("--rank-by and --per-class say how --keep-frac ranks: give --keep-frac F with them",
                           option="--rank-by")
        if (self.select or self.keep_frac is not None or self.weight_by) and reads_store:
            raise W2SError("--select, --keep-frac and --weight-by read a store's statistics of its weak labels: "
                           f"{reads_store} reads no store", option="--select")


@dataclass(**KW)
class Optimisation:
    """The optimizer of a run (timm's), its step and its regularisation of the weights."""

    opt: str = option("adamw", "Any timm optimizer (timm.optim.list_optimizers()): adamw, sgd (with Nesterov "
                               "momentum), momentum (without), lamb, lion, ...")
    lr: float = option(1e-3, "Peak learning rate.", above=0)
    momentum: float = option(0.9, "Momentum of sgd, momentum and the like.", at_least=0, at_most=1)
    weight_decay: float = option(0.05, "Weight decay; not on biases, norms or other 1-d parameters, nor on a ViT's "
                                       "position embedding and class token (timm's groups).", at_least=0)
    layer_decay: float | None = option(None, "Layer-wise rate decay (timm's): layer group d of L trains at lr x "
                                             "decay^(L - d), the head at lr.", at_least=0, at_most=1)
    clip_grad: float | None = option(None, "Clip the gradient norm to this value.", above=0)
    grad_accum: int = option(1, "Batches per optimizer step (gradient accumulation): a step sees --batch-size x this "
                                "many images per rank, and an epoch has that many fewer steps.", at_least=1)


@dataclass(**KW)
class Schedule:
    """How long a run trains and how its learning rate moves."""

    epochs: int = option(10, "Epochs (an epoch is samples / (ranks x batch) steps).", at_least=1)
    steps_per_epoch: int | None = option(None, "Override the steps in an epoch.", at_least=1)
    sched: str = option("cosine", "Learning-rate schedule: cosine (per step, to --min-lr), step (x --decay-rate "
                                  "every --decay-epochs) or const.", choices=SCHEDULES)
    min_lr: float = option(0.0, "cosine: the rate it decays to (see --cosine-floor).", at_least=0)
    cosine_floor: str = option("last", "cosine: where the rate reaches --min-lr. last: at the run's last step. after: "
                                       "one step past the end, as PyTorch's CosineAnnealingLR (T_max = the run's "
                                       "steps) and timm's train.py decay, and as OpenAI's probe (train_logreg).",
                               choices=COSINE_FLOORS)
    warmup_epochs: int = option(0, "Epochs of linear warm-up from --warmup-lr to --lr, counted inside --epochs.",
                                at_least=0)
    warmup_lr: float = option(1e-5, "The rate of the first warm-up step.", at_least=0)
    decay_epochs: int | None = option(None, "step: epochs between decays [default: a third of --epochs].", at_least=1)
    decay_rate: float = option(0.1, "step: the factor of each decay.", at_least=0, at_most=1)

    def check_schedule(self, lr: float) -> None:
        if self.min_lr > lr:
            raise bad("--min-lr", self.min_lr, f"must not exceed --lr {lr}")
        if self.warmup_epochs >= self.epochs:
            raise bad("--warmup-epochs", self.warmup_epochs,
                      f"must be less than --epochs {self.epochs} (warm-up counts inside them)")


@dataclass(**KW)
class Shards:
    """Where `prepare` writes its shards, and how big they are."""

    out: str | None = option(None, "Output directory [default: $W2S_DATA/<name>, else <workspace>/data/<name>].",
                             path="dir")
    shard_size: int = option(1000, "Samples per shard.", at_least=1)


NOISE_HELP = ("Corrupt the training splits' labels once (the paper's noisy-label scenario): symmetric:R gives "
              "int(R·N) samples a class drawn uniformly from all classes (the true one included); asymmetric:R moves "
              "each sample of a mapped class to its confusable class with chance R (digits: 1↔7, 3↔8, 4↔9; CIFAR-10: "
              "truck→automobile, bird→airplane, cat↔dog, deer→horse; CIFAR-100: the next class of its superclass; a "
              "folder: --noise-map). The shards' cls is the noisy label, clean.cls the clean one; evaluation splits "
              "stay clean; the manifest records the rule, the seed and the realised flip rate per class.")


@dataclass(**KW)
class Noise:
    """Noisy ground truth for the paper's noisy-label scenario (sources/noise.py)."""

    label_noise: str | None = option(None, NOISE_HELP, metavar="KIND:RATE")
    noise_seed: int = option(42, "Seed of --label-noise (the official 42).")
