"""Export a trained text classifier to ONNX, optionally int8, and check it against the original.

The first step of the export issue (#9): the artifact and its parity check. The CLI
(`lmforge export`), the verification report (latency, throughput, task metric, tolerance
gate) and the ONNX Runtime backend of predict/eval build on this module.

- The graph is exported by ``torch.onnx.export(dynamo=True)`` with dynamic batch and
  sequence axes, so one file serves any batch and length up to the model's positions.
- The exporter annotates intermediate shapes (``value_info``) that ONNX's own shape
  inference contradicts for the classification head, which makes ONNX Runtime's quantizer
  fail; the annotations are dropped (ONNX Runtime infers them again at load).
- int8 is ONNX Runtime's dynamic quantization (int8 weights of every MatMul, activations
  quantized per batch at run time): no calibration data, the usual choice for encoders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError

ONNX_FILE = "model.onnx"
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
    max_abs_logit_diff: float  # over SAMPLE_TEXTS (or the caller's), batched with padding
    same_prediction: float  # share of sample texts whose arg-max class is unchanged
    inputs: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(model_dir: str | Path, out_dir: str | Path, quantize: str = "none",
                sample_texts: tuple[str, ...] | list[str] = SAMPLE_TEXTS) -> OnnxExport:
    """Write ``out_dir/model.onnx`` (plus tokenizer, config and lmforge.json) for the
    sequence classifier in ``model_dir`` (a run or model directory), and measure its logits
    against the PyTorch model's on ``sample_texts``."""
    from lmforge.inference.predictor import METADATA_FILE, Predictor, find_model_dir, read_metadata

    if quantize not in ("none", "int8"):
        raise LmforgeError(f"unknown quantization '{quantize}' for ONNX; use none or int8")
    predictor = Predictor.load(model_dir, device="cpu", precision="fp32")
    if predictor.task.name != "sequence_classification":
        raise LmforgeError(f"ONNX export covers sequence classifiers so far; {model_dir} is a "
                           f"{predictor.task.name.replace('_', ' ')} model")
    model = _plain(predictor.model, model_dir)
    tokenizer = predictor.tokenizer
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoded = tokenizer(list(sample_texts), padding=True, truncation=True, max_length=predictor.max_length,
                        return_tensors="pt")
    names = [n for n in tokenizer.model_input_names if n in encoded]
    inputs = {n: encoded[n] for n in names}  # by name: forward's positional order is not the tokenizer's
    raw = out / ".raw.onnx"
    _export_graph(model, inputs, raw)
    target = out / ONNX_FILE
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(raw), str(target), weight_type=QuantType.QInt8)
        raw.unlink()
    else:
        raw.replace(target)
    tokenizer.save_pretrained(out)
    model.config.save_pretrained(out)
    source = find_model_dir(model_dir)
    meta = read_metadata(source)
    meta.update(format="onnx", quantize=quantize, onnx_inputs=names, exported_from=str(source))
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    with torch.inference_mode():
        expected = model(**inputs).logits.float().numpy()
    got = run_onnx(target, {n: encoded[n].numpy() for n in names})
    return OnnxExport(directory=str(out), quantize=quantize, size_bytes=target.stat().st_size,
                      max_abs_logit_diff=float(np.abs(got - expected).max()),
                      same_prediction=float((got.argmax(-1) == expected.argmax(-1)).mean()), inputs=names)


def run_onnx(path: str | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Logits of an exported model for int64 input arrays (name -> (B, T))."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for corrupt files
        raise LmforgeError(f"cannot load the ONNX model {path}: {str(err).splitlines()[0]}") from None
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.astype(np.int64) for k, v in feeds.items() if k in wanted})[0]


def _plain(model: torch.nn.Module, model_dir: str | Path) -> torch.nn.Module:
    """The model as plain transformers modules: a PEFT model is merged where it can be."""
    if hasattr(model, "merge_and_unload"):
        try:
            return model.merge_and_unload()
        except (ValueError, AttributeError, NotImplementedError):
            raise LmforgeError(f"{model_dir} is an adapter that cannot be merged (prompt or prefix tuning); "
                               "ONNX export needs a plain model") from None
    if any(".adapters." in name for name, _ in model.named_parameters()):
        raise LmforgeError(f"{model_dir} carries bottleneck adapters; ONNX export of them is not supported yet")
    return model


def _export_graph(model: torch.nn.Module, inputs: dict[str, torch.Tensor], path: Path) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("sequence", min=2, max=int(model.config.max_position_embeddings))
    program = torch.onnx.export(model, (), kwargs=inputs, input_names=list(inputs), output_names=["logits"],
                                dynamo=True, dynamic_shapes={n: {0: batch, 1: length} for n in inputs},
                                verbose=False)
    program.save(str(path))
    graph = onnx.load(str(path))
    graph.graph.ClearField("value_info")  # see the module docstring
    onnx.save(graph, str(path))

