"""Speed features, for correctness only (nothing here is timed): grouped batching, bf16 vs fp32,
gradient checkpointing, the planner and ``batch_size: auto``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config
from hypothesis import given
from hypothesis import strategies as st

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.planning.memory import format_size, parse_size
from lmforge.planning.planner import (
    Candidate,
    candidate_batch_sizes,
    fit_step_time,
    recommend,
)
from lmforge.training.sampler import EpochBatchSampler

pytestmark = pytest.mark.unit

# --- grouped batching ---------------------------------------------------------------------------


@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=400),
    batch_size=st.integers(1, 40),
    seed=st.integers(0, 1000),
    epoch=st.integers(0, 5),
)
def test_grouped_batches_cover_every_example_once(lengths, batch_size, seed, epoch):
    sampler = EpochBatchSampler(len(lengths), batch_size, seed, lengths=lengths)
    batches = sampler.batches(epoch)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert len(batches) == len(sampler)
    assert sum(len(b) < batch_size for b in batches) <= 1  # at most one short batch


def test_grouped_batches_are_resumable_and_seeded():
    lengths = np.random.default_rng(0).integers(5, 120, size=1000).tolist()
    sampler = EpochBatchSampler(len(lengths), 16, seed=3, lengths=lengths)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(0)
    list(sampler)
    sampler.set_epoch(1, start_batch=7)
    assert list(sampler) == full[7:]
    sampler.set_epoch(2)
    assert list(sampler) != full


def test_grouping_pads_far_less_and_keeps_batches_shuffled():
    rng = np.random.default_rng(1)
    lengths = rng.integers(8, 128, size=3200)
    padded = {}
    for name, lens in (("random", None), ("grouped", lengths)):
        batches = EpochBatchSampler(len(lengths), 32, seed=0, lengths=lens).batches(0)
        padded[name] = sum(len(b) * lengths[b].max() for b in batches)
        if name == "grouped":
            maxima = [lengths[b].max() for b in batches]
    assert padded["grouped"] < 0.7 * padded["random"]
    assert padded["grouped"] < 1.15 * lengths.sum()
    # Batches are not in length order: the model does not see all short batches in a row.
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    assert abs(np.corrcoef(np.arange(len(maxima)), maxima)[0, 1]) < 0.2


def test_group_by_length_false_gives_the_plain_shuffle():
    plain = EpochBatchSampler(100, 8, seed=1).batches(0)
    flat = [i for b in plain for i in b]
    assert sorted(flat) == list(range(100)) and flat != list(range(100))


@pytest.mark.parametrize("multiple, widths", [(8, {8, 16}), (1, {5, 7, 9, 13})])
def test_training_batches_are_padded_to_a_multiple_of_8_by_default(tmp_path, multiple, widths):
    from lmforge.data.batching import EncodedDataset
    from lmforge.training.setup import make_train_loader

    class Tokenizer:
        pad_token_id = 0

    # Rows of 5, 7, 9 and 13 tokens, one per batch: each batch is as wide as its row, rounded up.
    rows = [np.arange(1, n + 1) for n in (5, 7, 9, 13)]
    dataset = EncodedDataset(rows, labels=np.zeros(4, dtype=np.int64))
    model = tmp_path / "model"
    overrides = {"batch_size": 1, "group_by_length": False, "pad_to_multiple_of": multiple}
    cfg = load_config(tiny_config(model, tmp_path / "train.csv", **overrides))
    _, loader = make_train_loader(cfg, dataset, Tokenizer(), "cpu")
    assert {batch["input_ids"].shape[1] for batch in loader} == widths


def test_pad_to_multiple_of_must_be_positive(tmp_path):
    with pytest.raises(LmforgeError, match="pad_to_multiple_of"):
        load_config(tiny_config(tmp_path, tmp_path / "t.csv", pad_to_multiple_of=0))


# --- precision ----------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.recipe
def test_bf16_and_fp32_predict_the_same(tmp_path, tiny_model_dir, sentiment_csv, sentiment_rows):
    from lmforge.inference.predictor import Predictor
    from lmforge.training.recipe import run_training

    cfg = load_config(tiny_config(tiny_model_dir, sentiment_csv))
    run = run_training(cfg, tmp_path / "run")
    texts = [t for t, _ in sentiment_rows]
    fp32 = softmax(Predictor.load(run, precision="fp32").logits(texts))
    bf16 = softmax(Predictor.load(run, precision="bf16").logits(texts))
    assert np.abs(fp32 - bf16).max() < 0.03
    margin = np.abs(fp32[:, 0] - fp32[:, 1])
    clear = margin > 0.06  # rows not on the decision boundary must get the same label
    assert clear.sum() >= len(texts) // 2
    assert (fp32.argmax(1)[clear] == bf16.argmax(1)[clear]).all()


@pytest.mark.recipe
def test_gradient_checkpointing_gives_the_same_weights(tmp_path, tiny_model_dir, sentiment_csv):
    from safetensors.torch import load_file

    from lmforge.training.recipe import run_training

    weights = {}
    for flag in (False, True):
        cfg = load_config(
            tiny_config(tiny_model_dir, sentiment_csv, epochs=2, gradient_checkpointing=flag)
        )
        run = run_training(cfg, tmp_path / f"run-{flag}")
        weights[flag] = load_file(run / "model" / "model.safetensors")
    for name, value in weights[False].items():
        assert np.allclose(value.numpy(), weights[True][name].numpy(), atol=1e-5), name


def test_unknown_quantization_is_refused(tmp_path, tiny_model_dir):
    from lmforge.inference.predictor import Predictor

    with pytest.raises(LmforgeError, match="unknown quantization"):
        Predictor.load(tiny_model_dir, quantize="int4")


@pytest.mark.slow
def test_int8_predictions_match_fp32(tmp_path, tiny_model_dir, sentiment_csv, sentiment_rows):
    pytest.importorskip("torchao")
    from lmforge.inference.predictor import Predictor
    from lmforge.training.recipe import run_training

    run = run_training(load_config(tiny_config(tiny_model_dir, sentiment_csv)), tmp_path / "run")
    texts = [t for t, _ in sentiment_rows]
    fp32 = softmax(Predictor.load(run, precision="fp32").logits(texts))
    int8 = softmax(Predictor.load(run, quantize="int8").logits(texts))
    assert np.abs(fp32 - int8).max() < 0.05


# --- planner ------------------------------------------------------------------------------------


def test_memory_sizes():
    assert parse_size("8GB") == 8 * 10**9
    assert parse_size("1.5 GiB") == int(1.5 * 2**30)
    assert parse_size("512mb") == 512 * 10**6
    assert parse_size(1024) == 1024
    for bad in ("eight", "8XB", "-1GB", "0", ""):
        with pytest.raises(ValueError, match="not a memory size"):
            parse_size(bad)
    assert format_size(1.5e9) == "1.50 GB"


def test_candidate_batch_sizes_keep_the_effective_batch():
    assert candidate_batch_sizes(32) == [32, 16, 8, 4]
    assert candidate_batch_sizes(24) == [24, 12, 6, 3]
    assert candidate_batch_sizes(5) == [5]
    for size in candidate_batch_sizes(48, limit=10):
        assert 48 % size == 0


def test_step_time_fit_recovers_a_line():
    a, b = fit_step_time(
        [(100, 0.2 + 0.001 * 100), (400, 0.2 + 0.001 * 400), (900, 0.2 + 0.001 * 900)]
    )
    assert a == pytest.approx(0.2) and b == pytest.approx(0.001)
    assert fit_step_time([(64, 0.5), (64, 0.7)]) == (pytest.approx(0.6), 0.0)


def _candidate(size, peak, speed):
    return Candidate(
        size,
        32 // size,
        peak_memory_bytes=peak,
        examples_per_second=speed,
        train_seconds=1.0,
        total_seconds=2.0,
    )


def test_recommendation_is_the_fastest_that_fits():
    cands = [_candidate(32, 9e9, 100.0), _candidate(16, 5e9, 90.0), _candidate(8, 3e9, 70.0)]
    assert recommend(cands, budget=20e9)["batch_size"] == 32
    rec = recommend(cands, budget=6e9)
    assert rec["batch_size"] == 16 and rec["gradient_accumulation_steps"] == 2
    assert rec["peak_memory_bytes"] <= 6e9
    with pytest.raises(LmforgeError, match="needs 3.00 GB"):
        recommend(cands, budget=2e9)


@pytest.mark.recipe
def test_plan_measures_a_tiny_model_and_fits_the_budget(
    tmp_path, tiny_model_dir, sentiment_csv, capsys
):
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps(tiny_config(tiny_model_dir, sentiment_csv, epochs=2, batch_size=4))
    )
    assert main(["plan", str(config), "--steps", "3", "--json", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert "recommended: batch_size" in capsys.readouterr().out
    assert [c["batch_size"] for c in plan["candidates"]] == [4, 2, 1]
    for c in plan["candidates"]:
        assert c["error"] is None
        assert c["peak_memory_bytes"] > 50e6  # a Python process with torch loaded
        assert c["examples_per_second"] > 0 and c["total_seconds"] >= c["train_seconds"] > 0
        assert len(c["measured"]["micro_steps"]) == 3
    # A budget between the smallest and largest measured peak: the choice must fit it.
    peaks = sorted(c["peak_memory_bytes"] for c in plan["candidates"])
    budget = int(peaks[0] / 0.9) + 1
    cands = [Candidate(**{k: v for k, v in c.items() if k != "fits"}) for c in plan["candidates"]]
    assert recommend(cands, budget)["peak_memory_bytes"] <= budget


@pytest.mark.recipe
def test_plan_refuses_a_budget_nothing_fits(tmp_path, tiny_model_dir, sentiment_csv, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(tiny_config(tiny_model_dir, sentiment_csv, batch_size=2)))
    assert main(["plan", str(config), "--steps", "2", "--memory", "10MB"]) == 2
    assert "no batch size fits the memory budget of 10.00 MB" in capsys.readouterr().err
    assert main(["plan", str(config), "--memory", "lots"]) == 2
    assert "not a memory size" in capsys.readouterr().err


@pytest.mark.recipe
def test_auto_batch_size_trains_with_the_planned_batch(tmp_path, tiny_model_dir, sentiment_csv):
    from lmforge.training.recipe import run_training

    cfg = load_config(
        tiny_config(
            tiny_model_dir, sentiment_csv, epochs=2, batch_size="auto", effective_batch_size=4
        )
    )
    run = run_training(cfg, tmp_path / "run")
    plan = json.loads((run / "plan.json").read_text())
    train = json.loads((run / "metrics.json").read_text())["train"]
    rec = plan["recommendation"]
    assert (train["batch_size"], train["gradient_accumulation_steps"]) == (
        rec["batch_size"],
        rec["gradient_accumulation_steps"],
    )
    assert rec["batch_size"] * rec["gradient_accumulation_steps"] == 4
    assert load_config(run / "config.yaml").training.batch_size == "auto"  # saved as asked
    assert train["peak_memory_bytes"] > 0


# --- fast dropout -------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fast_dropout_keeps_the_right_share_and_the_mean(p):
    import torch

    from lmforge.training.dropout import fast_dropout

    torch.manual_seed(0)
    y = fast_dropout(torch.ones(400_000), p)
    kept = (y > 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01  # scaled by 1/(1-p), as nn.Dropout
    values = torch.unique(y).tolist()
    assert (
        len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p), rel=1e-3)
    )


def test_fast_dropout_is_seeded_and_its_gradient_is_the_mask():
    import torch

    from lmforge.training.dropout import FastDropout, fast_dropout, use_fast_dropout

    x = torch.randn(8, 16, 32, requires_grad=True)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.2)
    torch.manual_seed(3)
    b = fast_dropout(x, 0.2)
    assert torch.equal(a, b)
    a.sum().backward()
    assert torch.allclose(x.grad, (a != 0).float() / 0.8, rtol=1e-3)  # p is rounded to 1/32768
    assert torch.equal(fast_dropout(x, 0.0), x) and not fast_dropout(x, 1.0).any()

    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.Dropout(0.1), torch.nn.Sequential(torch.nn.Dropout(0.3))
    )
    assert use_fast_dropout(model) == 2
    assert isinstance(model[1], FastDropout) and model[2][0].p == 0.3
    model.eval()
    z = torch.randn(5, 4)
    assert torch.equal(model[1](z), z)  # evaluation: identity


@pytest.mark.slow
def test_compiled_training_saves_a_plain_model(
    tmp_path, tiny_model_dir, sentiment_csv, sentiment_rows
):
    from transformers import AutoModelForSequenceClassification

    from lmforge.training.recipe import run_training

    cfg = load_config(tiny_config(tiny_model_dir, sentiment_csv, epochs=2, compile=True))
    run = run_training(cfg, tmp_path / "run")
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.num_labels == 2
