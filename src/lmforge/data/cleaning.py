"""Clean examples and account for every row that is dropped."""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

_WHITESPACE = re.compile(r"\s+")


@dataclass
class CleaningReport:
    """How many rows were read, dropped (and why) and kept."""

    rows_read: int = 0
    empty_text: int = 0
    missing_pair: int = 0
    missing_label: int = 0
    exact_duplicates: int = 0
    conflicting_labels: int = 0
    rows_kept: int = 0
    repaired_tags: int = 0  # token files: invalid tag transitions repaired (rows kept)

    @property
    def dropped(self) -> int:
        return self.rows_read - self.rows_kept

    def summary(self, name: str) -> str:
        reasons = [f"{n} {k.replace('_', ' ')}" for k, n in self.drops().items() if n]
        why = f" ({', '.join(reasons)})" if reasons else ""
        repaired = (
            f"; {self.repaired_tags} invalid tag transitions repaired" if self.repaired_tags else ""
        )
        return (
            f"{name}: read {self.rows_read} rows, kept {self.rows_kept}, "
            f"dropped {self.dropped}{why}{repaired}"
        )

    def drops(self) -> dict[str, int]:
        """Rows dropped, by reason."""
        return {
            k: n
            for k, n in asdict(self).items()
            if k not in ("rows_read", "rows_kept", "repaired_tags")
        }

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _as_str(value: object) -> str:
    """A cell as text; None and NaN (missing) become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def normalize_text(text: str) -> str:
    """NFC-normalize, strip and collapse runs of whitespace to one space."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def clean_examples(
    frame: pd.DataFrame,
    normalize_whitespace: bool = True,
    drop_duplicates: bool = True,
    has_label: bool = True,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Drop empty texts, missing labels, exact duplicates and texts with conflicting labels.

    Args:
        frame: ``text`` (and ``label``, and for pairs ``text_pair``, and ``negative``) columns of
            strings or None; a pair with an empty side is dropped and counted.
        normalize_whitespace: Normalize texts with :func:`normalize_text` first.
        drop_duplicates: Keep one copy of exact duplicates; drop every copy of a text that
            appears with different labels (there is no way to know which one is right).
        has_label: Whether a ``label`` column takes part.
    """
    report = CleaningReport(rows_read=len(frame))
    # Plain lists, not Series.map: pandas may turn None into NaN, which must count as missing.
    texts = [_as_str(t) for t in frame["text"]]
    texts = [normalize_text(t) for t in texts] if normalize_whitespace else texts
    columns = {"text": texts}
    paired = "text_pair" in frame
    sides = [
        side for side in ("text_pair", "negative") if side in frame
    ]  # second texts, hard negatives
    for side in sides:
        values = [_as_str(t) for t in frame[side]]
        columns[side] = [normalize_text(t) for t in values] if normalize_whitespace else values
    if has_label:
        columns["label"] = [_as_str(v).strip() for v in frame["label"]]
    frame = pd.DataFrame(columns, dtype=object)
    keep = np.array([t.strip() != "" for t in texts], dtype=bool)
    report.empty_text = int((~keep).sum())
    frame = frame.loc[keep]
    if sides:
        present = np.array(
            [
                all(t.strip() != "" for t in row)
                for row in zip(*(frame[s] for s in sides), strict=True)
            ],
            dtype=bool,
        )
        report.missing_pair = int((~present).sum())
        frame = frame.loc[present]
    if has_label:
        present = np.array([label != "" for label in frame["label"]], dtype=bool)
        report.missing_label = int((~present).sum())
        frame = frame.loc[present]
    if drop_duplicates:
        before = len(frame)
        frame = frame.drop_duplicates()
        report.exact_duplicates = before - len(frame)
        if has_label:
            inputs = ["text", "text_pair"] if paired else ["text"]
            conflicted = frame.duplicated(subset=inputs, keep=False).to_numpy(dtype=bool)
            report.conflicting_labels = int(conflicted.sum())
            frame = frame.loc[~conflicted]
    frame = frame.reset_index(drop=True)
    report.rows_kept = len(frame)
    return frame, report
