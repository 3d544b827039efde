"""`eval`'s options as one frozen, validated config: its own, and the loading options it shares
(pipeline/config/groups.py), two of them with eval's own default (the checkpoint's precision and
decoder)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import W2SError
from ..pipeline.config import options
from ..pipeline.config.choices import DECODERS, EVAL_PICKS
from ..pipeline.config.groups import Loading
from ..pipeline.config.options import field_of, like, option


@dataclass(frozen=True, kw_only=True)
class EvalConfig(Loading):
    run: str | None = option(None, "Run name or directory; evaluates its final weights (last.pt).")
    pick: str = option("last", "With --run: last.pt (the final weights), best.pt (the epoch with the best val top-1; "
                               "picked on the validation split, so its figure there is optimistic) or ema.pt (the "
                               "moving average of a --model-ema run).", choices=EVAL_PICKS)
    checkpoint: str | None = option(None, "A checkpoint written by `train`.")
    data: str | None = option(None, "Data set or shard pattern [default: what the run trained on].")
    split: str | None = option(None, "Split [default: the data set's validation split; with --episodes its novel split "
                                     "where it has one (digits-fewshot's novel; a folder prepared from train/val/test "
                                     "of disjoint classes: test), which the output names].")
    precision: str | None = like(field_of(Loading, "precision"), None,
                                 help="Autocast precision [default: the one the checkpoint was trained in, as "
                                      "training's own evaluation used; fp32 for a checkpoint that does not say].")
    decode: str | None = like(field_of(Loading, "decode"), None, choices=DECODERS,
                              help="Image decoder, as `label --decode` [default: the one the run trained with where "
                                   "this device can use it, else cpu].")
    episodes: int | None = option(None, "Few-shot instead (the paper's few-shot scenario, as Meta-Baseline): this many "
                                        "episodes on the split, each --ways classes with --shots support and --queries "
                                        "query samples per class, a query classified by cosine similarity of the "
                                        "model's pooled pre-logit features to each class's mean support feature; mean "
                                        "accuracy and its 95% interval per shot count.", at_least=1)
    ways: int = option(5, "--episodes: classes per episode.", at_least=2)
    shots: tuple[int, ...] = option((1, 5), "--episodes: support samples per class, comma-separated.", metavar="K,K,...")
    queries: int = option(15, "--episodes: query samples per class.", at_least=1)
    episode_seed: int = option(0, "--episodes: the episodes' seed (two models compared on the same episodes).")
    workspace: str | None = None

    def __post_init__(self):
        if bool(self.run) == bool(self.checkpoint):
            raise W2SError("give exactly one of --run RUN or --checkpoint PATH", option="--run")
        options.check(self)
        if self.pick != "last" and not self.run:
            raise W2SError("--pick chooses among a run's checkpoints: give --run RUN", option="--pick")
        if not self.shots or min(self.shots) < 1:
            raise W2SError(f"--shots {','.join(map(str, self.shots))} is invalid: give shot counts of 1 or more, "
                           "comma-separated", option="--shots")
