"""The run directory: its layout, the metadata saved with its model, the data settings it was
trained with, its parent, and the atomic save of its model. Every recipe reads and writes runs
through this module only.

A run directory, as ``lmforge train`` writes it::

    RUN/
      config.yaml     the config as asked ('auto' stays 'auto'); resume checks it unchanged
      plan.json       the planner's choice for ``batch_size: auto``
      model/          a Hugging Face directory (weights, tokenizer) plus lmforge.json; for a
                      method whose update cannot be merged, the adapter that names its base
      adapter/        the PEFT or bottleneck adapter alone (methods that can merge)
      checkpoints/    step-N/ directories, newest intact one resumed
      logs/           TensorBoard events and metrics.jsonl
      metrics.json    the finished run's numbers (its presence marks the run finished)
      report.md       the same, for people

``lmforge.json`` beside the weights holds what Hugging Face's files do not: the task, the
labels, the data settings the task reads (``task_options``), tuned settings (thresholds), the
base model and method.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lmforge
from lmforge.config import RunConfig, load_config
from lmforge.data.cleaning import CleaningReport, clean_examples
from lmforge.data.loading import fingerprint, load_splits, reader_options
from lmforge.data.readers import ReaderOptions, file_kind, read_examples
from lmforge.errors import LmforgeError
from lmforge.models.loading import metadata_path, resolve_model_path
from lmforge.tasks.registry import get_task

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from transformers import PreTrainedTokenizerBase

    from lmforge.config.schema import DataConfig
    from lmforge.methods.base import Method

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHECKPOINTS_DIR = "checkpoints"


METADATA_FILE = "lmforge.json"


def find_model_dir(path: str | Path) -> Path:
    """The model directory of a run directory or a model directory; 'default' and hub ids resolve
    too (a path that looks local but does not exist is a one-line error)."""
    return Path(resolve_model_path(str(path)))


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """lmforge's own notes saved beside the model (task, max_length, base model)."""
    file = metadata_path(model_dir)
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LmforgeError(f"{file} is corrupt; delete it to fall back to defaults") from None


def write_metadata(model_dir: Path, meta: dict[str, Any]) -> None:
    """Write lmforge's notes beside a model (the counterpart of :func:`read_metadata`)."""
    (Path(model_dir) / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def update_metadata(model_dir: Path, **values: Any) -> None:
    """Add ``values`` to the model's lmforge.json."""
    write_metadata(model_dir, {**read_metadata(model_dir), **values})


def run_dir_for(model: str | Path) -> Path | None:
    """The run directory of a run (or its model/) directory; None for a bare model directory."""
    path = Path(model)
    return next((d for d in (path, path.parent) if (d / CONFIG_FILE).is_file()), None)


def run_config_for(model: str | Path) -> RunConfig:
    """The run's config when ``model`` is a run (or its model/) directory, else the defaults."""
    run_dir = run_dir_for(model)
    return load_config(run_dir / CONFIG_FILE) if run_dir else RunConfig()


def task_options(cfg: RunConfig) -> dict[str, Any]:
    """The data settings a task reads (and that are saved with its model)."""
    return {
        "label_delimiter": cfg.data.label_delimiter,
        "tag_scheme": cfg.data.tag_scheme,
        "label_all_tokens": cfg.data.label_all_tokens,
        "max_length": cfg.data.max_length,
        "packing": cfg.data.packing,
        "isolate_documents": cfg.data.isolate_documents,
        "mlm_probability": cfg.data.mlm_probability,
        "whole_word_masking": cfg.data.whole_word_masking,
        "chat_template": cfg.data.chat_template,
        "seed": cfg.training.seed,
    }


def reader_options_for(
    model: str | Path, overrides: dict[str, Any], path: str | Path | None = None
) -> ReaderOptions:
    """How to read ``path`` for ``model``: the run's own data settings for a file of the kind the
    run trained on (same extension, no other ``format`` given), else the file is read as its
    extension or content says, header detected, with the run's column names; then
    ``overrides`` (the flags). A run trained on latin-1 'text@label' lines thus reads a
    held-out UTF-8 CSV, JSONL or Parquet file without flags."""
    data = run_config_for(model).data
    fields = asdict(reader_options(data))  # the defaults equal ReaderOptions' own
    given = {k: v for k, v in overrides.items() if v is not None}
    if path is not None and not _same_kind(Path(path), data, given.get("format")):
        columns = ("text_column", "label_column", "text_pair_column", "negative_column")
        fields = {**asdict(ReaderOptions(header=None)), **{k: fields[k] for k in columns}}
    fields.update(given)
    unknown = set(fields) - set(ReaderOptions.__dataclass_fields__)
    if unknown:
        raise LmforgeError(
            f"unknown reader option(s) {sorted(unknown)}; "
            f"valid: {', '.join(ReaderOptions.__dataclass_fields__)}"
        )
    return ReaderOptions(**fields)


def _same_kind(path: Path, data: DataConfig, format_given: str | None) -> bool:
    """Whether ``path`` is a file like the run's training file (read with the run's options)."""
    if data.train_file is None or file_kind(path) != file_kind(data.train_file):
        return False
    return format_given in (None, "auto", data.format)


def read_table_for(
    model: str | Path,
    data: str | Path | None,
    overrides: dict[str, Any],
    labeled: bool = True,
    split: str | None = None,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Rows of a file read the way ``model``'s run read its data: (clean frame, cleaning report).

    Rows with empty text (or, when ``labeled``, no label) are dropped and counted;
    duplicates are kept (an evaluation set is measured as given). With ``split`` instead of
    ``data``, the run's own validation/test rows (see :func:`read_run_split`).
    """
    if split is not None:
        if data is not None:
            raise LmforgeError("give either --input FILE or --split, not both")
        return read_run_split(model, split), CleaningReport()
    if data is None:
        raise LmforgeError(
            "no evaluation data: give --input FILE (or --split validation for a run's own split)"
        )
    opts = reader_options_for(model, {"from_flags": True, **overrides}, data)
    frame, report = clean_examples(
        read_examples(data, opts, require_label=labeled), drop_duplicates=False, has_label=labeled
    )
    if report.dropped:
        log.warning(report.summary(str(data)))
    if frame.empty:
        raise LmforgeError(f"{data} has no usable rows ({report.summary(str(data))})")
    return frame, report


def read_run_split(model: str | Path, split: str) -> pd.DataFrame:
    """A run's own ``split`` rows, derived again from its config.yaml: the same files,
    cleaning and seeded stratified split as in training (augmentation only ever touches
    train). An error when ``model`` is no run, or when the rows differ from those the run
    recorded (``data.fingerprints`` in its metrics.json): the files changed since training."""
    run_dir = run_dir_for(model)
    if run_dir is None:
        raise LmforgeError(
            f"--split {split} re-reads a run's data, and {model} is no run directory "
            "(it has no config.yaml); give --input FILE"
        )
    cfg = load_config(run_dir / CONFIG_FILE)
    task = get_task(cfg.task)
    if not task.scores_texts:
        raise LmforgeError(
            f"--split works for text classifiers and regressors; {run_dir} is a "
            f"{cfg.task.replace('_', ' ')} run: give --input FILE"
        )
    frames = load_splits(cfg.data, cfg.training.seed, strata=task.strata).frames
    if split not in frames:
        raise LmforgeError(
            f"{run_dir} has no {split} split (its data.{split}_file and data.{split}_size "
            "are unset); give --input FILE"
        )
    metrics_file = run_dir / METRICS_FILE
    recorded = (
        json.loads(metrics_file.read_text(encoding="utf-8")).get("data", {})
        if metrics_file.is_file()
        else {}
    )
    expected = recorded.get("fingerprints", {}).get(split)
    if expected is not None and expected != fingerprint(frames[split]):
        raise LmforgeError(
            f"the {split} split of {run_dir} is not the one it was trained with "
            f"({len(frames[split])} rows now, {recorded.get('rows', {}).get(split)} then): its "
            "data files changed; give --input FILE"
        )
    return frames[split]


def plan_run_dir(
    requested: str | Path | None, cfg: RunConfig, resume: bool | None
) -> tuple[Path, bool]:
    """The run directory, and whether this is a resume of the run already in it.

    A directory with this run's checkpoints is resumed (``resume: auto`` or ``--resume``);
    a finished run, another config's run, or unrelated files are never mixed into.
    """
    if requested is None:
        if resume:
            raise LmforgeError("--resume needs the run directory to resume")
        requested = default_run_dir(cfg)
    run_dir = Path(requested)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        if resume:
            raise LmforgeError(f"{run_dir} holds no run to resume")
        return run_dir, False
    if (run_dir / METRICS_FILE).exists():
        raise LmforgeError(
            f"{run_dir} holds a finished run; to train it further start a new run with "
            f"--continue-from {run_dir}, or choose another --output"
        )
    from lmforge.training.checkpoint import list_checkpoints  # (torch: only when training)

    has_checkpoints = bool(list_checkpoints(run_dir / CHECKPOINTS_DIR))
    started_here = (run_dir / CONFIG_FILE).is_file()
    if resume or (started_here and cfg.resume == "auto" and resume is None):
        check_same_run(run_dir, cfg)
        if has_checkpoints:
            return run_dir, True
        if not (run_dir / "model").exists():  # stopped before its first checkpoint: nothing to lose
            log.warning("%s has no checkpoint yet; starting this run from the beginning", run_dir)
            return run_dir, False
        raise LmforgeError(
            f"{run_dir} has no intact checkpoint to resume from; start a new run with "
            "another --output"
        )
    raise LmforgeError(
        f"output directory {run_dir} is not empty; choose another --output or remove it"
    )


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.name or cfg.task}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_same_run(run_dir: Path, cfg: RunConfig) -> None:
    """Resuming with changed settings would not be the same run: refuse and name the change."""
    saved_file = run_dir / CONFIG_FILE
    if not saved_file.is_file():
        raise LmforgeError(
            f"{run_dir} has checkpoints but no config.yaml; it cannot be resumed safely"
        )
    ignore = {"resume", "output_dir"}
    saved = _flatten(
        {
            k: v
            for k, v in load_config(saved_file).model_dump(mode="json").items()
            if k not in ignore
        }
    )
    current = _flatten({k: v for k, v in cfg.model_dump(mode="json").items() if k not in ignore})
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
        raise LmforgeError(
            f"{run_dir} holds a run with other settings ({diffs}); resume it unchanged with "
            f"--resume {run_dir}, or train with new settings as a new run: "
            f"--continue-from {run_dir} --output NEW_DIR"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def find_parent_run(path: str) -> dict[str, Any]:
    """A finished run to continue from: its directory, labels and method."""
    parent = Path(path)
    model_dir = parent / "model"
    if not (model_dir / "config.json").is_file():
        raise LmforgeError(
            f"continue_from: {parent} is not a finished run (no model/config.json); "
            "to pick up an interrupted run use --resume instead"
        )
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    labels = [config["id2label"][str(i)] for i in range(len(config.get("id2label", {})))] or None
    meta_file = model_dir / METADATA_FILE
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    return {
        "dir": parent,
        "labels": labels,
        "method": meta.get("method", "full"),
        "base_model": meta.get("base_model"),
    }


def save_model(
    model: torch.nn.Module,
    method: Method,
    run_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    cfg: RunConfig,
    label_names: list[str],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save through the method, plus lmforge's metadata beside the HF files.

    ``state_dict``: the full weights when ``model`` holds only a shard of them (FSDP).

    The method writes into a staging directory that is then swapped in by rename, so a
    crash during the save never leaves a half-written ``model/`` behind.
    """
    for stale in [*run_dir.glob(".staging-*"), *run_dir.glob(".old-*")]:  # left by a killed process
        shutil.rmtree(stale, ignore_errors=True)
    staging = run_dir / f".staging-{os.getpid()}"
    staging.mkdir()
    out = method.save(model, staging, tokenizer, state_dict=state_dict)
    meta = {
        "task": cfg.task,
        "labels": label_names,
        # whether the model scores a pair of texts (a bi-encoder embeds one text at a time)
        "text_pairs": cfg.data.text_pair_column is not None and get_task(cfg.task).scores_pairs,
        **task_options(cfg),
        "base_model": (
            f"from_scratch:{cfg.model.from_scratch.arch}"
            if cfg.model.from_scratch
            else cfg.model.name_or_path
        ),
        "method": cfg.method.name,
        "lmforge_version": lmforge.__version__,
    }
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    for part in sorted(staging.iterdir()):
        target = run_dir / part.name
        old = run_dir / f".old-{part.name}-{os.getpid()}"
        if target.exists():
            os.rename(target, old)
        os.rename(part, target)
        shutil.rmtree(old, ignore_errors=True)
    staging.rmdir()
    return run_dir / out.name
