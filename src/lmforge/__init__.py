"""lmforge: take a language model from raw text to a monitored, secured service.

The Python API mirrors the CLI verbs::

    import lmforge
    run_dir = lmforge.train("examples/demo.yaml", overrides=["training.epochs=1"])
    report = lmforge.evaluate(run_dir, data="test.csv")
    rows = lmforge.predict(run_dir, texts=["Profit rose 12%."])
    verified = lmforge.export(run_dir, "exports/onnx-int8", format="onnx", quantize="int8")

Heavy libraries (torch, transformers) are imported only when one of these is called,
so ``import lmforge`` and ``lmforge --help`` stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from lmforge.config import RunConfig


def train(
    config: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    output_dir: str | Path | None = None,
) -> Path:
    """Train a model from a YAML config (or dict); return the run directory."""
    from lmforge.config import load_config

    return run(load_config(config, overrides or []), output_dir=output_dir)


def run(cfg: RunConfig, output_dir: str | Path | None = None, resume: bool | None = None) -> Path:
    """Run a validated config with its recipe (what ``lmforge train`` does): the pretraining
    recipe for language-model tasks (raw text, conversations), the fine-tuning recipe else."""
    from lmforge.tasks.registry import get_task

    if get_task(cfg.task).language_modeling:
        from lmforge.pretraining.recipe import run_pretraining

        return run_pretraining(cfg, output_dir=output_dir, resume=resume)
    from lmforge.training.recipe import run_training

    return run_training(cfg, output_dir=output_dir, resume=resume)


def evaluate(model: str | Path, data: str | Path, **reader_options: Any) -> dict[str, Any]:
    """Evaluate a run or model directory on a labeled file; return the metrics dict."""
    from lmforge.evaluation.recipe import run_evaluation

    return run_evaluation(model, data, reader_options=reader_options)


def predict(
    model: str | Path, texts: list[str], batch_size: int = 64, pairs: list[str] | None = None
) -> list[dict[str, Any]]:
    """Predict with a run or model directory: labels and probabilities, a score (regression),
    or label sets (multi-label); ``pairs`` gives the second texts for a text-pair model."""
    from lmforge.inference.predictor import Predictor

    predictor = Predictor.load(model)
    if predictor.pairs and pairs is None:
        from lmforge.errors import LmforgeError

        raise LmforgeError("this model scores text pairs: pass pairs=[...] with the second texts")
    return predictor.predict(texts, batch_size=batch_size, pairs=pairs)


def export(model: str | Path, output: str | Path, **options: Any) -> dict[str, Any]:
    """Export a run (``format="hf"|"onnx"``, ``quantize``, ``distill``, ``prune``,
    ``recover_epochs``, ``data`` / ``split``, ``tolerance``, ...: the ``lmforge export`` flags) and
    verify it against the original; return the verification report. Raises ``LmforgeError`` when
    it fails the tolerance."""
    from lmforge.export.recipe import ExportOptions, run_export

    return run_export(model, output, ExportOptions(**options), train=run).as_dict()


export_run = export  # what ``lmforge.export`` calls once the package has replaced the name


__all__ = ["LmforgeError", "__version__", "evaluate", "export", "predict", "run", "train"]


def __getattr__(name: str) -> Any:
    if name == "LmforgeError":
        from lmforge.errors import LmforgeError

        return LmforgeError
    raise AttributeError(name)
