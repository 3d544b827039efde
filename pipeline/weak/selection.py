"""Which weak labels to trust: the samples a run trains on, chosen from a store's index once, before
training (`train --select EXPR`, `--keep-frac F --rank-by STAT [--per-class]`).

The index holds every sample's weak prediction and its confidence, margin and entropy (and its
ground-truth label where the shards carry one), so a choice costs one pass over a Parquet table and
nothing per step. `--select` is a boolean expression over those columns, in the SQL-like grammar
below, evaluated by pyarrow; `--keep-frac` then keeps the most trusted fraction of what is left,
overall or within each predicted class. The result is one boolean mask per shard, aligned with the
store's rows of that shard (by position), that the training join reads: a left-out sample is dropped before it is decoded.

    expr    := and ("OR" and)*
    and     := not ("AND" not)*
    not     := "NOT" not | "(" expr ")" | operand [op operand]
    operand := column | number | 'string'
    op      := = | == | != | <> | < | <= | > | >=

Keywords are case-insensitive; a column compared with a column is allowed (`pred = label`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import W2SError

# Which way each statistic trusts: a higher confidence or margin, a lower entropy; of an ensemble,
# more members agreeing with it.
TRUSTED_HIGH = {"confidence": True, "margin": True, "entropy": False, "agreement": True}

_TOKEN = re.compile(r"\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|-?\.\d+(?:[eE][-+]?\d+)?)"
                    r"|(?P<str>'[^']*')|(?P<op><>|!=|==|<=|>=|=|<|>)|(?P<paren>[()])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))")
_OPS = {"=": "equal", "==": "equal", "!=": "not_equal", "<>": "not_equal", "<": "less", "<=": "less_equal",
        ">": "greater", ">=": "greater_equal"}


def parse_select(text: str, columns: list[str]):
    """The pyarrow compute expression of a --select string; a one-line error for bad syntax or an
    unknown column (listing the columns)."""
    tokens, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        m = _TOKEN.match(text, at)
        if not m:
            raise W2SError(f"--select {text!r}: cannot read it from {text[at:].strip()!r} on", option="--select")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        at = m.end()
    pos = 0

    def peek(word=None):
        if pos < len(tokens) and (word is None or (tokens[pos][0] == "word" and tokens[pos][1].upper() == word)):
            return tokens[pos]
        return None

    def take():
        nonlocal pos
        if pos >= len(tokens):
            raise W2SError(f"--select {text!r}: it ends too soon", option="--select")
        pos += 1
        return tokens[pos - 1]

    def operand():
        kind, value = take()
        if kind == "num":
            return pc.scalar(float(value) if re.search(r"[.eE]", value) else int(value))
        if kind == "str":
            return pc.scalar(value[1:-1])
        if kind == "word" and value.upper() not in ("AND", "OR", "NOT"):
            if value not in columns:
                raise W2SError(f"--select {text!r}: no column {value!r}; the columns are {', '.join(columns)}",
                               option="--select")
            return pc.field(value)
        raise W2SError(f"--select {text!r}: expected a column, number or 'string', found {value!r}", option="--select")

    def negation():
        if peek("NOT"):
            take()
            return ~negation()
        if peek() and tokens[pos] == ("paren", "("):
            take()
            inner = disjunction()
            if take() != ("paren", ")"):
                raise W2SError(f"--select {text!r}: a '(' is not closed", option="--select")
            return inner
        left = operand()
        if peek() and tokens[pos][0] == "op":
            return getattr(pc, _OPS[take()[1]])(left, operand())
        return left

    def conjunction():
        out = negation()
        while peek("AND"):
            take()
            out = out & negation()
        return out

    def disjunction():
        out = conjunction()
        while peek("OR"):
            take()
            out = out | conjunction()
        return out

    if not tokens:
        raise W2SError("--select is empty", option="--select")
    expression = disjunction()
    if pos != len(tokens):
        raise W2SError(f"--select {text!r}: unexpected {tokens[pos][1]!r}", option="--select")
    return expression


def selected(table, text: str) -> np.ndarray:
    """Boolean (rows,) mask of the index rows for which --select is true (null counts as false)."""
    expression = parse_select(text, table.column_names)
    numbered = table.append_column("__row__", pa.array(np.arange(table.num_rows)))
    try:
        kept = numbered.filter(expression).column("__row__").to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError) as exc:
        raise W2SError(f"--select {text!r}: {str(exc).splitlines()[0]}", option="--select") from None
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[kept] = True
    return mask


def most_trusted(table, candidates: np.ndarray, keep_frac: float, rank_by: str, per_class: bool) -> np.ndarray:
    """Of the `candidates` (a boolean mask), the ceil(keep_frac x n) most trusted by `rank_by`, of
    all n candidates or of each predicted class's n; ties go to the earlier row (shard order, then
    row), so the choice is the same on every machine."""
    return Ranking(table, candidates, rank_by, per_class).keep(keep_frac)


class Ranking:
    """The candidates ranked once, most trusted first within each group (all of them, or each
    predicted class), so that any number of fractions are kept without sorting again (`inspect`'s
    coverage curve keeps ten)."""

    def __init__(self, table, candidates: np.ndarray, rank_by: str, per_class: bool):
        score = table.column(rank_by).to_numpy(zero_copy_only=False).astype(np.float64)
        score = -score if TRUSTED_HIGH[rank_by] else score  # ascending: most trusted first
        groups = table.column("pred").to_numpy(zero_copy_only=False) if per_class else None
        rows = np.flatnonzero(candidates)
        order = rows[np.argsort(score[rows], kind="stable")]  # by score; a tie keeps row order
        if groups is not None:
            order = order[np.argsort(groups[order], kind="stable")]  # by group, each still by score
        edges = np.flatnonzero(np.diff(groups[order])) + 1 if groups is not None and len(order) else np.array([], int)
        starts = np.r_[0, edges] if len(order) else np.array([], int)
        self.order, self.rows = order, table.num_rows
        self.sizes = np.diff(np.r_[starts, len(order)])
        self.rank = np.arange(len(order)) - np.repeat(starts, self.sizes)  # place within its group

    def keep(self, keep_frac: float) -> np.ndarray:
        """The boolean mask of each group's ceil(keep_frac x its size) most trusted."""
        mask = np.zeros(self.rows, dtype=bool)
        mask[self.order[self.rank < np.repeat(np.ceil(keep_frac * self.sizes - 1e-9), self.sizes)]] = True
        return mask


@dataclass(frozen=True)
class Kept:
    """The samples a run trains on: per shard name, a boolean mask over that shard's store rows."""

    masks: dict[str, np.ndarray]
    count: int
    total: int
    per_class: dict[int, float]  # kept fraction of each predicted class
    weak_accuracy: float | None  # the weak labels' top-1 on the kept samples, where the shards carry labels

    def record(self) -> dict:
        return {"kept": self.count, "of": self.total, "kept_fraction_per_class": self.per_class,
                "weak_top1_on_kept": self.weak_accuracy}


def choose(index, select: str | None, keep_frac: float | None, rank_by: str, per_class: bool) -> Kept | None:
    """Apply --select, then --keep-frac, to a store's index (None: neither given, every sample
    kept). Keeping nothing is an error naming the options."""
    if not select and keep_frac is None:
        return None
    mask = selected(index, select) if select else np.ones(index.num_rows, dtype=bool)
    if keep_frac is not None and rank_by not in index.column_names:
        raise W2SError(f"--rank-by {rank_by}: the index has no such column (agreement is an ensemble's: "
                       "--labels A,B,...)", option="--rank-by")
    if keep_frac is not None:
        mask = most_trusted(index, mask, keep_frac, rank_by, per_class)
    if not mask.any():
        said = " and ".join(x for x in (f"--select {select!r}" if select else "",
                                         f"--keep-frac {keep_frac}" if keep_frac is not None else "") if x)
        raise W2SError(f"{said} keeps none of the store's {index.num_rows} samples")
    # The index is in shard order, each shard's rows one run (the store's layout): split at the runs'
    # starts, not by comparing every row's shard name with every shard's.
    codes = index.column("shard").combine_chunks().dictionary_encode()
    names, code = codes.dictionary.to_pylist(), codes.indices.to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(code[1:] != code[:-1]) + 1, [len(code)]])
    rows = index.column("row").to_numpy(zero_copy_only=False)
    masks = {}
    for a, b in zip(starts[:-1], starts[1:]):
        local = rows[a:b] - rows[a:b].min()
        shard_mask = np.zeros(int(local.max()) + 1, dtype=bool)
        shard_mask[local] = mask[a:b]
        masks[str(names[code[a]])] = shard_mask
    pred = index.column("pred").to_numpy(zero_copy_only=False).astype(np.int64)
    total, kept = np.bincount(pred), np.bincount(pred, weights=mask)
    fractions = {int(c): round(float(kept[c] / total[c]), 6) for c in np.flatnonzero(total)}
    accuracy = None
    if "label" in index.column_names:
        label = index.column("label").to_numpy(zero_copy_only=False)
        accuracy = round(float((pred[mask] == label[mask]).mean()), 6)
    return Kept(masks, int(mask.sum()), index.num_rows, fractions, accuracy)
