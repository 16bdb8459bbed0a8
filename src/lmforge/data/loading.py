"""From the data section of a config to clean train / validation / test frames."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from lmforge.config.schema import DataConfig
from lmforge.data.cleaning import CleaningReport, clean_examples
from lmforge.data.readers import ReaderOptions, read_examples, read_hf_dataset
from lmforge.data.splits import stratified_split
from lmforge.data.token_files import load_token_frame
from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Clean example frames by split name, and what cleaning and splitting did."""

    frames: dict[str, pd.DataFrame]
    cleaning: dict[str, CleaningReport] = field(default_factory=dict)
    carved: dict[str, float] = field(default_factory=dict)
    augmented: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # what augmentation added to train

    def summary(self) -> dict[str, object]:
        return {
            "rows": {name: len(f) for name, f in self.frames.items()},
            "cleaning": {name: r.as_dict() for name, r in self.cleaning.items()},
            "carved_from_train": self.carved,
            # a run's evaluation rows, so that `eval --split` can tell when its files changed since
            "fingerprints": {
                name: fingerprint(f) for name, f in self.frames.items() if name != "train"
            },
            **({"augmented": self.augmented} if self.augmented else {}),
        }


def fingerprint(frame: pd.DataFrame) -> str:
    """A short hash of a split's rows (texts and labels, in order)."""
    import hashlib

    digest = hashlib.sha256()
    for column in sorted(frame.columns):
        digest.update(column.encode())
        for value in frame[column]:
            digest.update(repr(value).encode("utf-8", "surrogatepass") + b"\x00")
    return digest.hexdigest()[:16]


def reader_options(cfg: DataConfig) -> ReaderOptions:
    return ReaderOptions(
        format=cfg.format,
        delimiter=cfg.delimiter,
        header=cfg.header,
        encoding=cfg.encoding,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
        text_pair_column=cfg.text_pair_column,
        negative_column=cfg.negative_column,
    )


def load_splits(
    cfg: DataConfig,
    seed: int,
    strata: Callable[[list[str]], list[str]] | None = None,
    tokens: bool = False,
    labeled: bool = True,
) -> Splits:
    """Read, clean and (when needed) split the configured data.

    A validation (and test) split is carved from train, stratified by label (or by
    ``strata(labels)``, e.g. score quantiles for regression), when no file or hub split
    gives one. Every dropped row is counted and logged.

    Args:
        tokens: Read CoNLL/JSONL token files (token classification) instead of tables.
        labeled: Whether rows have a label (False for embedding pairs).
    """
    if tokens:
        if cfg.hf_dataset:
            raise LmforgeError(
                "token_classification reads CoNLL or token JSONL files: set data.train_file "
                "instead of data.hf_dataset"
            )
        files = {"train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file}
        loaded = {
            name: load_token_frame(path, cfg.tag_scheme, cfg.repair_tags, cfg.encoding)
            for name, path in files.items()
            if path
        }
    else:
        loaded = {
            name: clean_examples(
                frame, cfg.normalize_whitespace, cfg.drop_duplicates, has_label=labeled
            )
            for name, frame in _read_sources(cfg, reader_options(cfg), labeled).items()
        }
    if "train" not in loaded:
        raise LmforgeError(
            "no training data: set data.train_file (a CSV/TSV/JSONL/Parquet/text file) "
            "or data.hf_dataset"
        )
    frames, reports = {}, {}
    for name, (frame, report) in loaded.items():
        frames[name], reports[name] = frame, report
        log.info(report.summary(name))
        if frames[name].empty:
            raise LmforgeError(
                f"{name} data has no usable rows after cleaning "
                f"({reports[name].summary(name)}); check data.text_column / data.label_column"
            )
    fractions = {
        name: share
        for name, share in (("validation", cfg.validation_size), ("test", cfg.test_size))
        if name not in frames and share > 0
    }
    if fractions:
        frames.update(
            stratified_split(
                frames.pop("train"),
                fractions,
                seed,
                strata=strata,
                label_column="label" if labeled else "text",
            )
        )
        for need, (name, share) in enumerate(fractions.items(), start=2):
            if frames[name].empty:  # each label keeps a row for train first
                raise LmforgeError(
                    f"the {name} split carved from train is empty: "
                    f"{sum(len(f) for f in frames.values())} usable row(s), and a label needs at "
                    f"least {need} to give one to {name} (data.{name}_size {share:g}); add rows, "
                    f"set data.{name}_file, or set data.{name}_size: 0 to train without it"
                )
    _warn_overlap(frames)
    return Splits(frames=frames, cleaning=reports, carved=fractions)


def _read_sources(
    cfg: DataConfig, opts: ReaderOptions, labeled: bool = True
) -> dict[str, pd.DataFrame]:
    if cfg.hf_dataset:
        splits = {
            "train": cfg.hf_train_split,
            "validation": cfg.hf_validation_split,
            "test": cfg.hf_test_split,
        }
        return {
            name: read_hf_dataset(cfg.hf_dataset, cfg.hf_config, split, opts, labeled)
            for name, split in splits.items()
            if split
        }
    files = {"train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file}
    return {
        name: read_examples(path, opts, require_label=labeled)
        for name, path in files.items()
        if path
    }


def _warn_overlap(frames: dict[str, pd.DataFrame]) -> None:
    """Texts shared between train and an evaluation split inflate its metrics: say so."""

    def inputs(
        frame: pd.DataFrame,
    ) -> pd.Series:  # a pair is one input: the same sentence may pair differently
        return (
            frame["text"] + "\x00" + frame["text_pair"] if "text_pair" in frame else frame["text"]
        )

    seen = set(inputs(frames["train"]))
    for name, frame in frames.items():
        if name == "train":
            continue
        shared = int(inputs(frame).isin(seen).sum())
        if shared:
            log.warning(
                "%d of %d %s texts also appear in train; their metrics will look better than "
                "they are",
                shared,
                len(frame),
                name,
            )
