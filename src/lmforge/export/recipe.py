"""The export recipe, top to bottom: set up -> compress (distil, prune, recover) -> write -> verify
-> gate.

``lmforge export RUN --format hf|onnx [--quantize int8] [--distill N] [--prune ...] --output DIR``

1. **Set up.** The source model (a run, its model/ or adapter/, or any model directory),
   the evaluation rows (``--data``, ``--split``, or by default the run's test split, else
   its validation split) and every option are checked before any work is done.
2. **Compress**, each stage in ``DIR/stages/`` so that an interrupted export picks up
   where it stopped when run again:
   - ``--distill N``: a student with N of the teacher's layers (initialized from them),
     trained on the run's own data with soft targets plus the labels (a full run directory,
     ``stages/distill``, resumable like any run);
   - ``--prune``: heads / FFN neurons (scored on training batches) and/or single weights
     (``stages/prune/model``); ``--recover-epochs N`` fine-tunes it after, on the run's
     data, with the pruned weights held at zero (``stages/recover``).
3. **Write** the artifact in ``DIR``: a plain Hugging Face directory (adapters merged), the
   same with int8 torchao weights, or ``model.onnx`` (fp32 or int8) with a logit parity check.
4. **Verify** it against the original (``export/verify.py``): ``DIR/export_report.md`` and
   ``.json``, and ``verification`` in ``DIR/lmforge.json``.
5. **Gate**: an export that loses more than ``tolerance`` points fails (exit code 1)
   unless ``accept_degradation``; it stays in DIR, marked as failed, for inspection.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import RunConfig, load_config
from lmforge.errors import LmforgeError
from lmforge.export.onnx import export_onnx, plain_model
from lmforge.export.pruning import (
    parse_prune,
    prune_ffn,
    prune_heads,
    prune_unstructured,
    sparsity_of,
    unit_importance,
)
from lmforge.export.quantize import save_int8
from lmforge.export.verify import Verification, render_markdown, verify
from lmforge.inference.predictor import Predictor
from lmforge.methods.registry import get_method
from lmforge.models.surgery import bert_blocks, head_size
from lmforge.runs import (
    METADATA_FILE,
    find_model_dir,
    read_metadata,
    read_table_for,
    run_dir_for,
    write_metadata,
)
from lmforge.tasks.registry import get_task

log = logging.getLogger(__name__)
REPORT = "export_report"
STAGES = "stages"

TrainRun = Callable[[RunConfig, Path], object]
"""Trains a run config into a run directory (resuming it): :func:`lmforge.run`."""
# training examples that score heads/neurons: enough for a stable ranking, ~10 s on 2 cores
SCORING_EXAMPLES = 1024


class VerificationFailed(LmforgeError):
    """The export was written but loses more than the tolerance (exit code 1, not 2)."""

    def __init__(self, message: str, verification: Verification):
        super().__init__(message)
        self.verification = verification


@dataclass
class ExportOptions:
    """What ``lmforge export`` builds and how it checks it (the CLI flags)."""

    format: str = "hf"  # hf | onnx
    quantize: str = "none"  # none | int8
    distill: str | None = None  # "3" (layers) or "1,3,5" (indices)
    distill_epochs: int | None = None  # default: the run's own epochs
    prune: str | None = None  # "unstructured:0.5", "heads:0.25,ffn:0.25"
    recover_epochs: int = 0
    overrides: list[str] = field(default_factory=list)  # --set for the stages' training runs
    data: str | None = None
    split: str | None = None
    reader_overrides: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    tolerance: float = 1.0
    accept_degradation: bool = False
    rounds: int = 3
    latency_texts: int = 100
    batch_size: int = 32


def run_export(
    source: str | Path, output: str | Path, options: ExportOptions, train: TrainRun
) -> Verification:
    """Build, write and verify an export of ``source`` in ``output``; return the verification.

    ``train`` runs the distillation and recovery stages (each a fine-tuning run): the entry
    point passes :func:`lmforge.run`, so that this recipe does not import another.

    Raises:
        VerificationFailed: The export loses more than ``options.tolerance`` points (it is
            kept in ``output``, marked as failed) and ``accept_degradation`` is off.
    """
    # --- set up: everything checked before the first expensive step --------------------------
    check_options(options)
    source_dir = find_model_dir(source)
    run_dir = run_dir_for(source_dir)
    meta = read_metadata(source_dir)
    task = get_task(meta.get("task", "sequence_classification"))
    if not task.scores_texts:
        raise LmforgeError(
            f"lmforge export verifies text classifiers and regressors so far; {source} is a "
            f"{task.name.replace('_', ' ')} model"
        )
    if meta.get("format") == "onnx":
        raise LmforgeError(
            f"{source} is already an export (ONNX); export the run it came from: "
            f"{meta.get('exported_from', 'its run directory')}"
        )
    training = (
        options.distill
        or options.recover_epochs
        or any(s.structured for s in _prune_steps(options))
    )
    if training and run_dir is None:
        raise LmforgeError(
            f"--distill, --recover-epochs and structured --prune learn from a run's own data, and "
            f"{source} is no run directory (no config.yaml); give the run"
        )
    out = Path(output)
    check_output_dir(out)
    rows = evaluation_rows(
        source_dir, run_dir, options
    )  # labels the model never saw fail here, not after training
    labels = rows.labels
    stages: list[dict[str, Any]] = []

    # --- compress ----------------------------------------------------------------------------
    current = source_dir
    if options.distill:
        current = distill_stage(run_dir, source_dir, out / STAGES / "distill", options, train)
        stages.append(
            {
                "stage": "distill",
                "layers": options.distill,
                "model": str(current),
                "validation": _validation_metrics(current.parent),
            }
        )
    if options.prune:
        current, info = prune_stage(
            run_dir, current, out / STAGES / "prune", _prune_steps(options), labels
        )
        stages.append({"stage": "prune", **info, "model": str(current)})
        if options.recover_epochs:
            current = recover_stage(
                run_dir,
                current,
                out / STAGES / "recover",
                options,
                train,
                unstructured=any(not s.structured for s in _prune_steps(options)),
            )
            stages.append(
                {
                    "stage": "recover",
                    "epochs": options.recover_epochs,
                    "model": str(current),
                    "validation": _validation_metrics(current.parent),
                    **_sparsity_after(current, info),
                }
            )

    # --- write the artifact ------------------------------------------------------------------
    export_meta = {**meta, "exported_from": str(source_dir), "stages": stages}
    parity = write_artifact(current, out, options, export_meta)

    # --- verify and gate ---------------------------------------------------------------------
    name = (
        f"export ({options.format}{', int8' if options.quantize == 'int8' else ''}"
        f"{', ' + ', '.join(s['stage'] for s in stages) if stages else ''})"
    )
    verification = measure(source_dir, out, rows, options, name)
    verification.notes += notes_for(verification, options, stages)
    details = {
        "format": options.format,
        "quantize": options.quantize,
        "stages": stages,
        "parity": parity,
        "source": str(source_dir),
    }
    write_report(out, verification, details)
    record_verification(out, verification)
    if not verification.passed and not options.accept_degradation:
        raise VerificationFailed(
            f"the export {verification.summary}; it is kept in {out} marked as failed "
            f"(see {out / (REPORT + '.md')}); pass --accept-degradation to accept it",
            verification,
        )
    return verification


def run_verification(
    exported: str | Path, options: ExportOptions, original: str | Path | None = None
) -> Verification:
    """``lmforge verify``: measure an existing export against its original again (on this machine,
    on this data); the export directory is left as it is.

    Raises:
        VerificationFailed: The export loses more than ``options.tolerance`` points.
    """
    export_dir = find_model_dir(exported)
    meta = read_metadata(export_dir)
    source = original or meta.get("exported_from")
    if not source:
        raise LmforgeError(
            f"{exported} names no original (exported_from in {METADATA_FILE}); give --original RUN"
        )
    source_dir = find_model_dir(source)
    rows = evaluation_rows(source_dir, run_dir_for(source_dir), options)
    verification = measure(source_dir, export_dir, rows, options, f"export ({export_dir.name})")
    if not verification.passed and not options.accept_degradation:
        raise VerificationFailed(f"{exported} {verification.summary}", verification)
    return verification


@dataclass
class EvaluationRows:
    """The rows an export is verified on, with their label ids."""

    texts: list[str]
    pairs: list[str] | None
    label_ids: Any
    labels: list[str]
    name: str


def evaluation_rows(
    source_dir: Path, run_dir: Path | None, options: ExportOptions
) -> EvaluationRows:
    """``--data``, ``--split``, or the run's test split (else validation); labels checked against
    the model's."""
    meta = read_metadata(source_dir)
    task = get_task(meta.get("task", "sequence_classification"))
    task.configure(meta)
    split = options.split or (None if options.data else default_split(run_dir, source_dir))
    frame, _ = read_table_for(source_dir, options.data, options.reader_overrides, split=split)
    name = options.data or f"the {split} split of {run_dir}"
    labels = _label_names(source_dir)
    label_ids = task.encode_labels(frame["label"].tolist(), labels, name)
    pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
    return EvaluationRows(frame["text"].tolist(), pairs, label_ids, labels, name)


def measure(
    source_dir: Path, export_dir: Path, rows: EvaluationRows, options: ExportOptions, name: str
) -> Verification:
    return verify(
        source_dir,
        export_dir,
        rows.texts,
        rows.label_ids,
        rows.pairs,
        metric=options.metric,
        tolerance=options.tolerance,
        rounds=options.rounds,
        batch_size=options.batch_size,
        latency_texts=options.latency_texts,
        data_name=rows.name,
        export_name=name,
    )


def check_options(options: ExportOptions) -> None:
    """Every flag checked before any work: a typo must not cost a distillation run first."""
    if options.format not in ("hf", "onnx"):
        raise LmforgeError(f"--format {options.format}: use hf (a Hugging Face directory) or onnx")
    if options.quantize not in ("none", "int8"):
        raise LmforgeError(f"--quantize {options.quantize}: use none or int8")
    if options.recover_epochs and not options.prune:
        raise LmforgeError("--recover-epochs fine-tunes a pruned model: give --prune too")
    if options.recover_epochs < 0 or (
        options.distill_epochs is not None and options.distill_epochs < 1
    ):
        raise LmforgeError("--recover-epochs must be 0 or more, --distill-epochs 1 or more")
    if options.distill_epochs is not None and not options.distill:
        raise LmforgeError(
            "--distill-epochs sets the length of a distillation: give --distill LAYERS too"
        )
    if options.tolerance < 0:
        raise LmforgeError(f"--tolerance {options.tolerance}: give a number of points >= 0")
    if options.rounds < 1 or options.latency_texts < 1 or options.batch_size < 1:
        raise LmforgeError("--rounds, --latency-texts and --batch-size must be at least 1")
    _prune_steps(options)
    if options.distill:
        _layers(options.distill)


def _prune_steps(options: ExportOptions) -> list[Any]:
    return parse_prune(options.prune) if options.prune else []


def _layers(text: str) -> int | list[int]:
    """``--distill 3`` (a layer count) or ``--distill 1,3,5`` (layer indices)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LmforgeError(
            f"--distill {text!r}: give a number of layers (3) or layer indices (1,3,5)"
        ) from None
    if not values:
        raise LmforgeError(
            f"--distill {text!r}: give a number of layers (3) or layer indices (1,3,5)"
        )
    return values[0] if len(values) == 1 and "," not in text else values


def check_output_dir(out: Path) -> None:
    """A new or empty directory, or one holding only the stages of an interrupted export."""
    if out.exists() and not out.is_dir():
        raise LmforgeError(f"--output {out} is a file; give a directory")
    if out.exists() and any(p.name != STAGES for p in out.iterdir()):
        raise LmforgeError(f"--output {out} is not empty; choose another directory or remove it")


def default_split(run_dir: Path | None, source: Any) -> str:
    """The run's test split if it has one, else its validation split."""
    if run_dir is None:
        raise LmforgeError(
            f"{source} is no run directory: give the evaluation data with --data FILE"
        )
    metrics_file = run_dir / "metrics.json"
    rows = (
        json.loads(metrics_file.read_text(encoding="utf-8")).get("data", {}).get("rows", {})
        if metrics_file.is_file()
        else {}
    )
    if rows.get("test"):
        return "test"
    if rows.get("validation"):
        log.warning("%s has no test split: the export is verified on its validation split", run_dir)
        return "validation"
    raise LmforgeError(
        f"{run_dir} has no validation or test split; give the evaluation data with --data FILE"
    )


def _label_names(model_dir: Path) -> list[str]:
    from transformers import AutoConfig

    config = (
        AutoConfig.from_pretrained(str(model_dir))
        if (model_dir / "config.json").is_file()
        else None
    )
    if config is None:  # an adapter directory: lmforge's metadata names the labels
        return list(read_metadata(model_dir).get("labels") or [])
    return [config.id2label[i] for i in range(config.num_labels)]


def stage_config(
    run_dir: Path, start: Path, options: ExportOptions, epochs: int | None, name: str
) -> RunConfig:
    """The run's own config (same data, split and seed), retargeted: full fine-tuning of ``start``,
    then ``--set``. ``name`` says what the stage is for (a recovery names its pruning): a finished
    stage is reused only when it matches, and ``start`` alone (a path) would not tell."""
    cfg = load_config(run_dir / "config.yaml")
    cfg.name = name
    if not get_method(cfg.method.name).trains_base_weights:
        # an adapter's learning rate is far too high for all weights
        cfg.training.learning_rate = RunConfig().training.learning_rate
    cfg.model.name_or_path = str(start)
    cfg.training.epochs = epochs or cfg.training.epochs
    cfg.continue_from, cfg.output_dir, cfg.resume = None, None, "auto"
    overrides = ["method=full", *options.overrides]
    return load_config(cfg.model_dump(mode="json"), overrides)


def train_stage(cfg: RunConfig, stage_dir: Path, train: TrainRun) -> Path:
    """Train ``cfg`` into ``stage_dir`` (resuming an interrupted stage), or reuse a finished one
    with the same settings; return its model directory."""
    from lmforge.runs import check_same_run

    if (stage_dir / "metrics.json").is_file():
        try:
            check_same_run(stage_dir, cfg)
        except LmforgeError as err:
            raise LmforgeError(
                f"{stage_dir} holds a finished stage with other settings; remove it or choose "
                f"another --output ({str(err).split('(', 1)[-1].split(')')[0]})"
            ) from None
        log.info("%s is finished: reusing it", stage_dir)
    else:
        train(cfg, stage_dir)
        shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)  # only a resume needs them
    return stage_dir / "model"


def distill_stage(
    run_dir: Path, teacher: Path, stage_dir: Path, options: ExportOptions, train: TrainRun
) -> Path:
    """A student with ``options.distill`` of the teacher's layers, trained on the run's data."""
    cfg = stage_config(
        run_dir, teacher, options, options.distill_epochs, f"distill {options.distill}"
    )
    cfg.model.keep_layers = _layers(options.distill)
    cfg.distillation.teacher = str(teacher)
    log.info("distillation: a %s-layer student of %s", options.distill, teacher)
    return train_stage(cfg, stage_dir, train)


def prune_stage(
    run_dir: Path | None, start: Path, stage_dir: Path, steps: list[Any], labels: list[str]
) -> tuple[Path, dict[str, Any]]:
    """Prune the model in ``start`` (deterministic: done again on every run of the export)."""
    predictor = Predictor.load(start, device="cpu", precision="fp32")
    model = plain_model(predictor.model, start)
    before = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {"steps": [f"{s.kind}:{s.amount:g}" for s in steps]}
    if any(s.structured for s in steps):
        heads, neurons = unit_importance(model, scoring_batches(run_dir, predictor, labels))
        for step in (s for s in steps if s.structured):
            if step.kind == "heads":
                info["removed_heads"] = prune_heads(model, step.amount, heads)
                info["heads_left"] = sum(
                    b.query.out_features for b in bert_blocks(model)
                ) // head_size(model)
            else:
                info["intermediate_size"] = prune_ffn(model, step.amount, neurons)
    for step in (s for s in steps if not s.structured):
        info["sparsity"] = prune_unstructured(model, step.amount)
    info["parameters_before"], info["parameters_after"] = (
        before,
        sum(p.numel() for p in model.parameters()),
    )
    target = stage_dir / "model"
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target, safe_serialization=True)
    predictor.tokenizer.save_pretrained(target)
    write_metadata(
        target, {**read_metadata(find_model_dir(start)), "method": "full", "pruning": info}
    )
    log.info("pruned: %s parameters -> %s", f"{before:,}", f"{info['parameters_after']:,}")
    return target, info


def recover_stage(
    run_dir: Path,
    start: Path,
    stage_dir: Path,
    options: ExportOptions,
    train: TrainRun,
    unstructured: bool,
) -> Path:
    """Fine-tune the pruned model on the run's data; zeros stay zero after unstructured pruning."""
    cfg = stage_config(
        run_dir,
        start,
        options,
        options.recover_epochs,
        f"recover {options.prune}"
        + (f" after distill {options.distill}" if options.distill else ""),
    )
    if unstructured:
        cfg.training.keep_sparsity = True
    return train_stage(cfg, stage_dir, train)


def scoring_batches(run_dir: Path, predictor: Predictor, labels: list[str]) -> list[dict[str, Any]]:
    """Labelled batches of the run's training split (a seeded sample), to score heads and
    neurons."""
    from lmforge.data.batching import length_sorted_batches
    from lmforge.data.loading import load_splits
    from lmforge.runs import task_options

    cfg = load_config(run_dir / "config.yaml")
    task = get_task(cfg.task)
    task.configure(task_options(cfg))
    train = load_splits(cfg.data, cfg.training.seed, strata=task.strata).frames["train"]
    train = train.sample(n=min(len(train), SCORING_EXAMPLES), random_state=cfg.training.seed)
    dataset = task.encode(train, "train", predictor.tokenizer, labels, cfg.data.max_length)
    collate = dataset.collator(predictor.tokenizer.pad_token_id or 0, None)
    return [
        collate([dataset[i] for i in batch]) for batch in length_sorted_batches(dataset.lengths, 32)
    ]


def write_artifact(
    model_dir: Path, out: Path, options: ExportOptions, meta: dict[str, Any]
) -> dict[str, Any] | None:
    """The exported model in ``out``; for ONNX, the parity of its logits on sample texts."""
    out.mkdir(parents=True, exist_ok=True)
    if options.format == "onnx":
        result = export_onnx(model_dir, out, quantize=options.quantize, metadata=meta)
        log.info(
            "ONNX parity on sample texts: max |logit diff| %.3g, same prediction %.0f%%",
            result.max_abs_logit_diff,
            100 * result.same_prediction,
        )
        return {
            "max_abs_logit_diff": result.max_abs_logit_diff,
            "same_prediction": result.same_prediction,
        }
    predictor = Predictor.load(model_dir, device="cpu", precision="fp32")
    if options.quantize == "int8":
        plain = plain_model(predictor.model, model_dir)  # an adapter must merge before quantizing
        if plain is not predictor.model:
            merged = out / STAGES / "merged"
            plain.save_pretrained(merged, safe_serialization=True)
            model_dir = merged
        save_int8(model_dir, out, predictor.task, predictor.tokenizer, {**meta, "method": "full"})
        shutil.rmtree(out / STAGES / "merged", ignore_errors=True)
        return None
    model = plain_model(predictor.model, model_dir)  # adapters merged into the weights
    model.save_pretrained(out, safe_serialization=True)
    predictor.tokenizer.save_pretrained(out)
    write_metadata(out, {**meta, "method": "full", "format": "hf", "quantize": "none"})
    return None


def notes_for(v: Verification, options: ExportOptions, stages: list[dict[str, Any]]) -> list[str]:
    """What the numbers mean where they are easy to misread."""
    notes = []
    prune = next((s for s in stages if s["stage"] == "prune"), None)
    if (
        prune
        and "sparsity" in prune
        and not any(k in prune for k in ("removed_heads", "intermediate_size"))
    ):
        ref, exported = v.rows[0], v.rows[-1]
        change = ref["latency_p50_ms"] / exported["latency_p50_ms"]
        notes.append(
            f"Unstructured sparsity {100 * prune['sparsity']['sparsity']:.1f}%: the weights are "
            "still stored "
            f"and multiplied densely, so latency changed by {change:.2f}x and the size not at "
            "all; on this "
            "CPU it brings no speed-up by itself (it pays off with sparse kernels or compression)."
        )
    if options.format == "onnx" and options.quantize == "int8":
        notes.append(
            "ONNX int8: dynamic quantization (int8 weights including the embedding tables; "
            "activations quantized per batch)."
        )
    return notes


def write_report(out: Path, v: Verification, details: dict[str, Any]) -> None:
    (out / f"{REPORT}.json").write_text(
        json.dumps({**v.as_dict(), "export": details}, indent=2), encoding="utf-8"
    )
    steps = "; ".join(f"{s['stage']} -> {s['model']}" for s in details["stages"]) or "none"
    extra = {"Source": details["source"], "Stages": steps}
    if details.get("parity"):
        extra["ONNX parity on sample texts"] = (
            f"max |logit diff| {details['parity']['max_abs_logit_diff']:.3g}, "
            f"same prediction {100 * details['parity']['same_prediction']:.0f}%"
        )
    (out / f"{REPORT}.md").write_text(
        render_markdown(v, f"Export report: {out.name}", extra), encoding="utf-8"
    )


def record_verification(out: Path, v: Verification) -> None:
    """The verdict in the artifact's own lmforge.json: loaders warn about a failed one."""
    verdict = {
        "passed": v.passed,
        "summary": v.summary,
        "metric": v.metric,
        "original": v.original,
        "exported": v.exported,
        "tolerance_points": v.tolerance_points,
        "data": v.data,
    }
    write_metadata(out, {**read_metadata(out), "verification": verdict})


def _validation_metrics(run_dir: Path) -> dict[str, float]:
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        return {}
    validation = json.loads(metrics_file.read_text(encoding="utf-8")).get("validation", {})
    return {k: v for k, v in validation.items() if isinstance(v, float)}


def _sparsity_after(model_dir: Path, pruning: dict[str, Any]) -> dict[str, float]:
    """The sparsity a recovered model still has, where pruning made one (keep_sparsity held it)."""
    if "sparsity" not in pruning:
        return {}
    predictor = Predictor.load(model_dir, device="cpu", precision="fp32")
    return {"sparsity_after": sparsity_of(predictor.model)["sparsity"]}
