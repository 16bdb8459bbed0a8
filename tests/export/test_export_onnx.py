"""ONNX export: dynamic axes, parity with the PyTorch model, int8 size and agreement."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.recipe  # each test exports a model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lmforge.errors import LmforgeError  # noqa: E402


@pytest.fixture
def classifier_dir(tmp_path, tiny_model_dir):
    """The tiny BERT with a saved (random) 3-class head, so every load gives the same model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
    model.save_pretrained(tmp_path / "classifier")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "classifier")
    return tmp_path / "classifier"


def test_onnx_export_matches_the_model_on_any_batch_and_length(tmp_path, classifier_dir):
    from lmforge.export.onnx import export_onnx, run_onnx
    from lmforge.inference.predictor import Predictor

    fp32 = export_onnx(classifier_dir, tmp_path / "fp32")
    assert (
        fp32.max_abs_logit_diff < 1e-3 and fp32.same_prediction == 1.0
    )  # two runtimes' fp32 kernels
    texts = [
        "a",
        "a much longer sentence than any the export was traced with, to check the axis",
    ] * 3
    predictor = Predictor.load(classifier_dir, device="cpu", precision="fp32")
    enc = predictor.tokenizer(texts, padding=True, return_tensors="np")
    got = run_onnx(tmp_path / "fp32" / "model.onnx", dict(enc))
    np.testing.assert_allclose(got, predictor.logits(texts), atol=1e-3)

    int8 = export_onnx(classifier_dir, tmp_path / "int8", quantize="int8")
    assert int8.size_bytes < fp32.size_bytes
    assert int8.max_abs_logit_diff < 0.5  # int8 weights: close, not equal


@pytest.mark.unit
def test_onnx_export_says_what_it_cannot_do(tmp_path, tiny_model_dir):
    from lmforge.export.onnx import export_onnx, run_onnx

    with pytest.raises(LmforgeError, match="unknown quantization"):
        export_onnx(tiny_model_dir, tmp_path / "x", quantize="int4")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(LmforgeError, match="cannot load the ONNX model"):
        run_onnx(tmp_path / "bad.onnx", {})


def test_onnx_export_of_a_pair_model_reads_token_types(tmp_path, classifier_dir):
    """Text pairs: the second segment's token types reach the graph (zeros would give other
    logits)."""
    import json

    from lmforge.export.onnx import export_onnx
    from lmforge.inference.predictor import Predictor

    (classifier_dir / "lmforge.json").write_text(
        json.dumps({"task": "sequence_classification", "text_pairs": True})
    )
    export_onnx(classifier_dir, tmp_path / "pairs")
    texts, pairs = (
        ["is the card lost", "the rate went up"],
        ["my card is gone", "interest rates rose sharply today"],
    )
    onnx = Predictor.load(tmp_path / "pairs", device="cpu")
    torch_model = Predictor.load(classifier_dir, device="cpu", precision="fp32")
    assert onnx.pairs
    expected = torch_model.logits(texts, pairs=pairs)
    np.testing.assert_allclose(onnx.logits(texts, pairs=pairs), expected, atol=1e-4)
    import torch

    enc = torch_model.tokenizer(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():  # with token types of zero this model answers otherwise: so ONNX got them
        untyped = torch_model.model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        ).logits
    assert np.abs(untyped.numpy() - expected).max() > 1e-4
