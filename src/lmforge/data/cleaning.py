"""Clean examples and account for every row that is dropped."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass

import pandas as pd

_WHITESPACE = re.compile(r"\s+")


@dataclass
class CleaningReport:
    """How many rows were read, dropped (and why) and kept."""

    rows_read: int = 0
    empty_text: int = 0
    missing_label: int = 0
    exact_duplicates: int = 0
    conflicting_labels: int = 0
    rows_kept: int = 0

    @property
    def dropped(self) -> int:
        return self.rows_read - self.rows_kept

    def summary(self, name: str) -> str:
        reasons = [f"{n} {k.replace('_', ' ')}" for k, n in asdict(self).items()
                   if k not in ("rows_read", "rows_kept") and n]
        why = f" ({', '.join(reasons)})" if reasons else ""
        return f"{name}: read {self.rows_read} rows, kept {self.rows_kept}, dropped {self.dropped}{why}"

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def normalize_text(text: str) -> str:
    """NFC-normalize, strip and collapse runs of whitespace to one space."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def clean_examples(frame: pd.DataFrame, normalize_whitespace: bool = True,
                   drop_duplicates: bool = True, has_label: bool = True) -> tuple[pd.DataFrame, CleaningReport]:
    """Drop empty texts, missing labels, exact duplicates and texts with conflicting labels.

    Args:
        frame: ``text`` (and ``label``) columns of strings or None.
        normalize_whitespace: Normalize texts with :func:`normalize_text` first.
        drop_duplicates: Keep one copy of exact duplicates; drop every copy of a text that
            appears with different labels (there is no way to know which one is right).
        has_label: Whether a ``label`` column takes part.
    """
    report = CleaningReport(rows_read=len(frame))
    text = frame["text"].map(lambda t: "" if t is None else str(t))
    text = text.map(normalize_text) if normalize_whitespace else text
    frame = frame.assign(text=text)
    keep = frame["text"].str.strip() != ""
    report.empty_text = int((~keep).sum())
    frame = frame[keep]
    if has_label:
        label = frame["label"].map(lambda v: None if v is None else str(v).strip())
        present = label.map(lambda v: v is not None and v != "")
        report.missing_label = int((~present).sum())
        frame = frame.assign(label=label)[present]
    if drop_duplicates:
        before = len(frame)
        frame = frame.drop_duplicates()
        report.exact_duplicates = before - len(frame)
        if has_label:
            conflicted = frame["text"].duplicated(keep=False)
            report.conflicting_labels = int(conflicted.sum())
            frame = frame[~conflicted]
    frame = frame.reset_index(drop=True)
    report.rows_kept = len(frame)
    return frame, report
