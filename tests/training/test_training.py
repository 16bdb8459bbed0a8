"""The engine on a tiny random BERT: it learns, it is reproducible, and what it saves reloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_csv

from lmforge.config import load_config
from lmforge.inference.predictor import Predictor
from lmforge.training.recipe import run_training

pytestmark = pytest.mark.recipe


def _train(tmp_path, tiny_model_dir, train_file, name="run", method="full", **training):
    cfg = tiny_config(tiny_model_dir, train_file, **training)
    cfg["method"] = method
    return run_training(load_config(cfg), output_dir=tmp_path / name)


def _history(run_dir, split="train"):
    lines = (run_dir / "logs" / "history.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_tiny_bert_overfits_16_examples(tmp_path, tiny_model_dir, sentiment_csv, sentiment_rows):
    run_dir = _train(tmp_path, tiny_model_dir, sentiment_csv)
    losses = [r["loss"] for r in _history(run_dir)]
    assert losses[-1] < 0.5 * losses[0], losses
    predictor = Predictor.load(run_dir, precision="fp32")
    predicted = [p["label"] for p in predictor.predict([t for t, _ in sentiment_rows])]
    assert predicted == [label for _, label in sentiment_rows]  # train accuracy 1.0


def test_run_directory_layout(tmp_path, tiny_model_dir, sentiment_csv):
    run_dir = _train(
        tmp_path, tiny_model_dir, sentiment_csv, epochs=2, eval_strategy="epoch", logging_steps=1
    )
    for name in (
        "config.yaml",
        "metrics.json",
        "report.md",
        "loss_curve.png",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "model/lmforge.json",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "logs").glob("events.out.tfevents.*")), "no TensorBoard event file"
    # the config in the run dir is complete and reloads to the same run
    assert load_config(run_dir / "config.yaml").training.epochs == 2


def test_validation_carved_and_reported(tmp_path, tiny_model_dir, sentiment_csv):
    run_dir = _train(tmp_path, tiny_model_dir, sentiment_csv, epochs=2, eval_strategy="epoch")
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.data.validation_size == 0.0  # our tiny config: no validation
    cfg = tiny_config(tiny_model_dir, sentiment_csv, epochs=2, eval_strategy="epoch")
    cfg["data"]["validation_size"] = 0.25
    run_dir = run_training(load_config(cfg), output_dir=tmp_path / "with-val")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["validation"]["n"] == 4  # 25% of 8 per class
    assert metrics["data"]["rows"] == {"train": 12, "validation": 4}
    assert set(metrics["validation"]) >= {"accuracy", "macro_f1", "weighted_f1", "per_class", "n"}
    assert (run_dir / "confusion_matrix_validation.png").is_file()
    assert len(_history(run_dir, "validation")) == 2


def test_same_seed_same_weights(tmp_path, tiny_model_dir, sentiment_csv):
    a = _train(tmp_path, tiny_model_dir, sentiment_csv, name="a", epochs=2)
    b = _train(tmp_path, tiny_model_dir, sentiment_csv, name="b", epochs=2)
    c = _train(tmp_path, tiny_model_dir, sentiment_csv, name="c", epochs=2, seed=7)
    from safetensors.torch import load_file

    wa, wb, wc = (load_file(d / "model" / "model.safetensors") for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_saved_full_model_loads_with_plain_transformers(
    tmp_path, tiny_model_dir, sentiment_csv, sentiment_rows
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = _train(tmp_path, tiny_model_dir, sentiment_csv, epochs=3)
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    texts = [t for t, _ in sentiment_rows]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    ours = Predictor.load(run_dir, precision="fp32").logits(texts)
    np.testing.assert_allclose(ours, logits, atol=1e-4)
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_lora_run_loads_with_plain_peft_and_merges(
    tmp_path, tiny_model_dir, sentiment_csv, sentiment_rows
):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = _train(tmp_path, tiny_model_dir, sentiment_csv, method="lora", epochs=3)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 < metrics["train"]["trainable_share"] < 0.2
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    adapter_bytes = (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < (run_dir / "model" / "model.safetensors").stat().st_size / 5

    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=2, id2label={0: "negative", 1: "positive"}
    )
    peft_model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    texts = [t for t, _ in sentiment_rows]
    with torch.no_grad():
        peft_logits = peft_model(
            **tokenizer(texts, padding=True, return_tensors="pt")
        ).logits.numpy()
    merged_logits = Predictor.load(run_dir, precision="fp32").logits(
        texts
    )  # model/ is the merged copy
    np.testing.assert_allclose(merged_logits, peft_logits, atol=1e-4)
    # the adapter really changed the model: the base with its random head disagrees
    with torch.no_grad():
        base_fresh = AutoModelForSequenceClassification.from_pretrained(
            tiny_model_dir, num_labels=2
        ).eval()
        base_logits = base_fresh(
            **tokenizer(texts, padding=True, return_tensors="pt")
        ).logits.numpy()
    assert not np.allclose(base_logits, peft_logits, atol=1e-3)


def test_early_stopping_and_best_model(tmp_path, tiny_model_dir, sentiment_csv):
    cfg = tiny_config(
        tiny_model_dir,
        sentiment_csv,
        epochs=40,
        eval_strategy="steps",
        eval_steps=2,
        early_stopping_patience=2,
        metric="loss",
        learning_rate=1e-1,
    )
    cfg["data"]["validation_size"] = 0.25
    run_dir = run_training(load_config(cfg), output_dir=tmp_path / "es")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluations = _history(run_dir, "validation")
    assert metrics["train"]["stopped_early"] is True
    assert metrics["train"]["steps"] < 40 * 2
    best = min(evaluations, key=lambda r: r["loss"])
    assert metrics["train"]["best_step"] == best["step"]
    # the saved model is the best evaluation's weights, not the last ones
    assert metrics["validation"]["accuracy"] == pytest.approx(best["accuracy"])
    assert metrics["validation"]["macro_f1"] == pytest.approx(best["macro_f1"])


def test_gradient_accumulation_matches_large_batch(tmp_path, tiny_model_dir, sentiment_csv):
    """4 micro-batches of 4 accumulate to the same update as one batch of 16 (no dropout)."""
    from safetensors.torch import load_file

    common = {"epochs": 1, "warmup_ratio": 0.0, "max_grad_norm": 0.0, "learning_rate": 1e-3}
    big = tiny_config(tiny_model_dir, sentiment_csv, batch_size=16, **common)
    small = tiny_config(
        tiny_model_dir, sentiment_csv, batch_size=4, gradient_accumulation_steps=4, **common
    )
    for cfg in (big, small):
        cfg["model"] = str(tiny_model_dir)
    dropout_free = tmp_path / "nodrop"
    from transformers import AutoConfig, BertModel

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    BertModel.from_pretrained(tiny_model_dir, config=config).save_pretrained(dropout_free)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(dropout_free)
    big["model"] = small["model"] = str(dropout_free)
    a = run_training(load_config(big), output_dir=tmp_path / "big")
    b = run_training(load_config(small), output_dir=tmp_path / "small")
    wa, wb = (load_file(d / "model" / "model.safetensors") for d in (a, b))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("precision", ["bf16"])
def test_bf16_training_runs_on_cpu(tmp_path, tiny_model_dir, sentiment_csv, precision):
    from lmforge.devices import cpu_supports_bf16

    run_dir = _train(tmp_path, tiny_model_dir, sentiment_csv, epochs=2, precision=precision)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["precision"] == "bf16"
    assert np.isfinite(metrics["train"]["final_loss"])
    assert cpu_supports_bf16() in (True, False)


def test_duplicate_rows_are_reported(tmp_path, tiny_model_dir, sentiment_rows):
    rows = (
        sentiment_rows
        + sentiment_rows[:3]
        + [("profit rose sharply", "negative"), ("  ", "positive")]
    )
    train = write_csv(tmp_path / "dups.csv", rows)
    run_dir = _train(tmp_path, tiny_model_dir, train, epochs=1)
    cleaning = json.loads((run_dir / "metrics.json").read_text())["data"]["cleaning"]["train"]
    assert cleaning == {
        "rows_read": 21,
        "empty_text": 1,
        "missing_pair": 0,
        "missing_label": 0,
        "exact_duplicates": 3,
        "conflicting_labels": 2,
        "rows_kept": 15,
        "repaired_tags": 0,
    }


def test_host_memory_is_released_between_phases_and_every_n_steps(
    tmp_path, tiny_model_dir, sentiment_csv, monkeypatch
):
    """After each evaluation, at each epoch's end and every ``release_memory_steps`` steps."""
    calls = []
    monkeypatch.setattr(
        "lmforge.training.loop.release_host_memory", lambda: calls.append("released")
    )
    cfg = tiny_config(
        tiny_model_dir, sentiment_csv, epochs=2, eval_strategy="epoch", release_memory_steps=1
    )
    cfg["data"]["validation_size"] = 0.25  # 12 train rows, batch 8: 2 steps an epoch
    run_training(load_config(cfg), output_dir=tmp_path / "run")
    assert len(calls) == 2 * (2 + 1 + 1)  # per epoch: 2 steps, its end, its evaluation
