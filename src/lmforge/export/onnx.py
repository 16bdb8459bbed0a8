"""Export a trained classifier, regressor or tagger to ONNX, optionally int8, and check it
against the original.

- The graph is exported by ``torch.onnx.export(dynamo=True)`` with dynamic batch and
  sequence axes, so one file serves any batch and length up to the model's positions.
- Inputs are passed by name: the tokenizer's order (input_ids, token_type_ids,
  attention_mask) is not ``forward``'s, and a positional export silently fed token types
  into the attention mask.
- The exporter annotates intermediate shapes (``value_info``) that ONNX's own shape
  inference contradicts for the classification head, which makes ONNX Runtime's quantizer
  fail; the annotations are dropped (ONNX Runtime infers them again at load).
- int8 is ONNX Runtime's dynamic quantization (int8 weights of every MatMul and of the
  embedding tables, activations quantized per batch at run time): no calibration data,
  the usual choice for encoders.

The directory runs through :class:`lmforge.inference.onnx_runtime.OnnxRuntimeModel`, so
``lmforge predict``, ``eval`` and ``serve`` take it like any model directory.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.inference.onnx_runtime import ONNX_FILE, open_session

SAMPLE_TEXTS = (
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
    "The company said that sales fell.",
    "ok",
)


@dataclass
class OnnxExport:
    """What an export wrote and how closely it reproduces the original on sample inputs."""

    directory: str
    quantize: str
    size_bytes: int
    max_abs_logit_diff: float  # over the sample texts, batched with padding
    same_prediction: float  # share of sample rows (tokens, for a tagger) whose arg-max is unchanged
    inputs: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(
    model_dir: str | Path,
    out_dir: str | Path,
    quantize: str = "none",
    sample_texts: tuple[str, ...] | list[str] = SAMPLE_TEXTS,
    metadata: dict[str, Any] | None = None,
) -> OnnxExport:
    """Write ``out_dir/model.onnx`` (plus tokenizer, config and lmforge.json) for the model in
    ``model_dir`` (a run or model directory), and measure its logits against the PyTorch
    model's on ``sample_texts``.

    Args:
        metadata: lmforge.json's base (default: the source model's own), to which the ONNX
            format, quantization and input names are added.
    """
    from lmforge.inference.predictor import Predictor
    from lmforge.runs import find_model_dir, read_metadata, write_metadata

    if quantize not in ("none", "int8"):
        raise LmforgeError(f"unknown quantization '{quantize}' for ONNX; use none or int8")
    predictor = Predictor.load(model_dir, device="cpu", precision="fp32")
    if not predictor.task.onnx_exportable:
        raise LmforgeError(
            f"ONNX export covers classifiers, regressors and taggers; {model_dir} is a "
            f"{predictor.task.name.replace('_', ' ')} model: export it with --format hf"
        )
    model = plain_model(predictor.model, model_dir)
    tokenizer = predictor.tokenizer
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoded = tokenizer(
        list(sample_texts),
        padding=True,
        truncation=True,
        max_length=predictor.max_length,
        return_tensors="pt",
    )
    names = [n for n in tokenizer.model_input_names if n in encoded]
    inputs = {n: encoded[n] for n in names}  # by name: see the module docstring
    raw = out / ".raw.onnx"
    try:
        with quiet_exporter():
            _export_graph(model, inputs, raw)
    except LmforgeError:
        raise
    except Exception as err:  # the exporter's own errors: an architecture it cannot trace
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LmforgeError(
            f"cannot export {type(model).__name__} to ONNX ({first[:200]}); "
            "export it with --format hf instead"
        ) from None
    target = out / ONNX_FILE
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with quiet_exporter():
            quantize_dynamic(str(raw), str(target), weight_type=QuantType.QInt8)
        raw.unlink()
    else:
        raw.replace(target)
    tokenizer.save_pretrained(out)
    model.config.save_pretrained(out)
    source = find_model_dir(model_dir)
    base = (
        metadata
        if metadata is not None
        else {**read_metadata(source), "exported_from": str(source)}
    )
    write_metadata(out, {**base, "format": "onnx", "quantize": quantize, "onnx_inputs": names})

    with torch.inference_mode():
        expected = model(**inputs).logits.float().numpy()
    got = run_onnx(target, {n: encoded[n].numpy() for n in names})
    if expected.ndim == 3:  # (B, T, C): compare real tokens only
        real = encoded["attention_mask"].numpy().astype(bool)
        expected, got = expected[real], got[real]
    return OnnxExport(
        directory=str(out),
        quantize=quantize,
        size_bytes=target.stat().st_size,
        max_abs_logit_diff=float(np.abs(got - expected).max()),
        same_prediction=float((got.argmax(-1) == expected.argmax(-1)).mean()),
        inputs=names,
    )


def run_onnx(path: str | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Logits of an exported model for int64 input arrays (name -> (B, T))."""
    session = open_session(Path(path))
    wanted = {i.name for i in session.get_inputs()}
    return session.run(
        ["logits"], {k: v.astype(np.int64) for k, v in feeds.items() if k in wanted}
    )[0]


def plain_model(model: torch.nn.Module, model_dir: str | Path) -> torch.nn.Module:
    """The model as plain transformers modules: a PEFT model is merged where it can be."""
    if hasattr(model, "merge_and_unload"):
        try:
            return model.merge_and_unload()
        except (ValueError, AttributeError, NotImplementedError):
            raise LmforgeError(
                f"{model_dir} is an adapter that cannot be merged (prompt or prefix tuning); "
                "export needs a plain model: train with method lora or full"
            ) from None
    if any(".adapters." in name for name, _ in model.named_parameters()):
        raise LmforgeError(
            f"{model_dir} carries bottleneck adapters, which do not merge into the weights; "
            "export needs a plain model: train with method lora or full"
        )
    return model


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Hide the exporter's and quantizer's notes (optional torchvision ops, axis renaming, a
    pre-processing hint ONNX Runtime logs on the root logger): lmforge reports the parity itself."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_graph(model: torch.nn.Module, inputs: dict[str, torch.Tensor], path: Path) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("sequence", min=2, max=int(model.config.max_position_embeddings))
    program = torch.onnx.export(
        model,
        (),
        kwargs=inputs,
        input_names=list(inputs),
        output_names=["logits"],
        dynamo=True,
        dynamic_shapes={n: {0: batch, 1: length} for n in inputs},
        verbose=False,
    )
    program.save(str(path))
    graph = onnx.load(str(path))
    graph.graph.ClearField("value_info")  # see the module docstring
    onnx.save(graph, str(path))
