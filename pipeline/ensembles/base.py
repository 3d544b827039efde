"""What a fixed way of combining an ensemble's members is: a class with a name, a summary and
`combine`."""

from __future__ import annotations


class Combination:
    """A fixed combination of the members' weak outputs. `combine(x)`: the members' logits as one
    tensor (M, n, C), in any float dtype -> the ensemble's logits (n, C) in that dtype, the output
    every loss then reads (finite: a loss takes its softmax)."""

    name: str = ""
    summary: str = ""

    def combine(self, x):
        raise NotImplementedError(f"ensemble {self.name!r} defines no combine")
