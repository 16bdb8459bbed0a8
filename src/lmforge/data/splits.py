"""Deterministic, stratified train / validation / test splits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd


def stratified_split(
    frame: pd.DataFrame,
    fractions: dict[str, float],
    seed: int,
    label_column: str = "label",
    strata: Callable[[list[str]], list[str]] | None = None,
) -> dict[str, pd.DataFrame]:
    """Carve named fractions off ``frame``, keeping each label's share in every part.

    Each label's rows are shuffled with ``seed`` and cut proportionally (rounded, and at
    least one row per part when the label has enough rows), so the same inputs always
    give the same split whatever the row order of other labels. A label with a single
    row stays in train. ``strata`` maps the labels to the groups to stratify by (score
    bins for regression). Returns ``{"train": ..., **{name: ...}}``.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], **{name: [] for name in fractions}}
    labels = frame[label_column].tolist()
    keys = pd.Series(strata(labels) if strata else labels, index=frame.index)
    for _, group in sorted(keys.groupby(keys, sort=True).groups.items()):
        index = np.array(sorted(group))
        rng.shuffle(index)
        n, start = len(index), 0
        for name, share in fractions.items():
            take = int(round(n * share))
            if share > 0 and take == 0 and n - start > 1:
                take = 1
            take = min(take, n - start - 1)  # train keeps at least one row of every label
            parts[name].extend(index[start : start + take].tolist())
            start += max(take, 0)
        parts["train"].extend(index[start:].tolist())
    return {name: frame.loc[sorted(rows)].reset_index(drop=True) for name, rows in parts.items()}
