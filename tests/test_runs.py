"""A run's metrics: summed where they are computed, copied to the host once per record."""

from __future__ import annotations

import pytest
import torch

from w2s_pipe.pipeline.train.runs import MetricWindow, NonFiniteLoss


def parts(loss, kd):
    return {"loss": torch.tensor(loss), "kd": torch.tensor(kd)}


def test_a_window_averages_its_steps_and_resets():
    w = MetricWindow()
    for step, (loss, kd) in enumerate([(1.0, 0.5), (2.0, 0.5), (3.0, 2.0)], start=11):
        w.add(step, parts(loss, kd), images=8, dropped=step == 12)
    out = w.flush()
    assert out["means"] == pytest.approx({"loss": 2.0, "kd": 1.0}) and out["sums"]["kd"] == pytest.approx(3.0)
    assert (out["steps"], out["images"], out["dropped"]) == (3, 24, 1)
    w.add(14, parts(5.0, 1.0), images=8)
    assert w.flush()["means"]["loss"] == pytest.approx(5.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_the_first_non_finite_step_is_named(bad):
    w = MetricWindow()
    w.add(21, parts(1.0, 0.0), images=1)
    w.add(22, parts(bad, 7.5), images=1)
    w.add(23, parts(bad, 0.0), images=1)
    with pytest.raises(NonFiniteLoss, match=rf"the loss is {bad} at step 22 \(kd 7.5\)") as raised:
        w.flush()
    assert raised.value.parts == {"kd": 7.5}  # that step's other parts, to tell which term went first


def test_a_decision_made_once_returns_or_raises_as_the_main_process_did():
    """distributed.on_main: in one process, fn's result, or its error as the one-line error (under
    torchrun the main's, on every rank: test_train's torchrun tests)."""
    import pytest

    from w2s_pipe.errors import W2SError
    from w2s_pipe.pipeline.runtime.distributed import on_main

    assert on_main(lambda: ("run", 3)) == ("run", 3)

    def refuse():
        raise W2SError("run r exists; pass --resume to continue it")

    with pytest.raises(W2SError, match="^run r exists"):
        on_main(refuse)
