"""ONNX Runtime as a backend of :class:`~lmforge.inference.predictor.Predictor`.

An exported directory (``lmforge export --format onnx``) holds ``model.onnx``, the tokenizer,
config.json and lmforge.json with ``format: onnx``. :class:`OnnxRuntimeModel` answers the
call that the PyTorch path makes (``model(input_ids=..., attention_mask=...)`` returning an
object with ``.logits``), so batching, decoding, metrics, predict, eval and serve run
unchanged on top of it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError

ONNX_FILE = "model.onnx"


class OnnxRuntimeModel(torch.nn.Module):
    """An ONNX Runtime session behind the forward signature of a Hugging Face model.

    A module (with no parameters) so that ``Predictor`` treats it like any model: ``.to``,
    ``.eval`` and ``.config`` work; the forward runs the session on the inputs' numpy views.
    """

    def __init__(self, session: Any, config: Any, path: Path):
        super().__init__()
        self.session = session
        self.config = config
        self.path = path
        self.input_names = [i.name for i in session.get_inputs()]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **unused: Any,
    ) -> SimpleNamespace:
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        if given["attention_mask"] is None:
            given["attention_mask"] = torch.ones_like(input_ids)
        if given["token_type_ids"] is None:  # a single text: every token is of type 0
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feeds = {}
        for name in self.input_names:
            if name not in given:
                raise LmforgeError(
                    f"{self.path} takes an input '{name}' that lmforge does not provide; "
                    "export the model again with lmforge export"
                )
            feeds[name] = given[name].detach().cpu().numpy().astype(np.int64)
        (logits,) = self.session.run(["logits"], feeds)
        return SimpleNamespace(logits=torch.from_numpy(logits), loss=None)  # (B, C) or (B, T, C)


def load_onnx_model(
    model_dir: Path, device: str = "cpu", threads: int | None = None
) -> OnnxRuntimeModel:
    """The ONNX Runtime model of an exported directory; a missing or corrupt file is a one-line
    error.

    Args:
        device: 'cuda' uses ONNX Runtime's CUDA provider where the installed onnxruntime has it.
        threads: Intra-op threads (default: ONNX Runtime's choice, the physical cores).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise LmforgeError(
            f"{model_dir} is an ONNX export: pip install 'lmforge[onnx]' to run it"
        ) from None
    from transformers import AutoConfig

    path = model_dir / ONNX_FILE
    if not path.is_file():
        raise LmforgeError(
            f"{model_dir} is an ONNX export without {ONNX_FILE}: the directory is incomplete; "
            "export the model again"
        )
    options = ort.SessionOptions()
    options.log_severity_level = (
        3  # errors only: the quantized graphs' shape notices are not the user's concern
    )
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = open_session(path, options, providers)
    if "logits" not in [o.name for o in session.get_outputs()]:
        raise LmforgeError(
            f"{path} has no 'logits' output: it is not an lmforge export; export the model again"
        )
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError) as err:
        raise LmforgeError(
            f"cannot read {model_dir / 'config.json'}: {str(err).splitlines()[0]}"
        ) from None
    return OnnxRuntimeModel(session, config, path)


def open_session(path: Path, options: Any = None, providers: list[str] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession``; a file ONNX Runtime cannot read is a one-line error."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
        )
    except (
        Exception
    ) as err:  # onnxruntime raises its own exception types for corrupt or truncated files
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LmforgeError(
            f"cannot load the ONNX model {path}: {message}; export the model again"
        ) from None
