"""An exponential moving average of the weights (`--model-ema`), timm's ModelEmaV3: after every
optimizer step, ema = decay * ema + (1 - decay) * weights, for parameters and floating buffers
(BatchNorm statistics) alike. It is evaluated at each epoch's end beside the model, saved in
last.pt for --resume, and written as its own checkpoint, ema.pt, that `eval`, `label` and
`--strong-checkpoint` read like any other.
"""

from __future__ import annotations

from timm.utils import ModelEmaV3

from ...errors import W2SError


def build_ema(model, decay: float):
    """The average, starting from the model's weights, on the model's device."""
    if not 0 < decay < 1:
        raise W2SError(f"--model-ema-decay {decay} must be between 0 and 1", option="--model-ema-decay")
    return ModelEmaV3(model, decay=decay)

