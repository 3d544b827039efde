"""vote: the log of the share of members whose argmax is each class; a class no member predicts
gets log(VOTE_FLOOR), so every loss stays finite; ties in an argmax go to the lower class."""

from __future__ import annotations

from .base import Combination

VOTE_FLOOR = 1e-6


class Vote(Combination):
    name = "vote"
    summary = "the log of the share of members whose argmax is each class (ties to the lower class)"

    def combine(self, x):
        votes = x.new_zeros(x.shape).scatter_(-1, x.argmax(dim=-1, keepdim=True), 1.0).mean(dim=0)
        return votes.clamp(min=VOTE_FLOOR).log()
