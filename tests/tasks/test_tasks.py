"""Tasks beyond single-label classification: regression (scores) and text pairs."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import yaml
from conftest import tiny_config

from lmforge.cli import main
from lmforge.data.batching import EncodedDataset, PaddingCollator
from lmforge.data.cleaning import clean_examples
from lmforge.data.tokenization import tokenize
from lmforge.errors import LmforgeError
from lmforge.inference.predictor import Predictor
from lmforge.tasks.regression import Regression

pytestmark = pytest.mark.unit

UP = ["rose", "jumped", "soared", "climbed"]
DOWN = ["fell", "slumped", "dropped", "sank"]
NOUNS = ["profit", "sales", "shares", "revenue", "orders", "margins"]


def _scored_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences whose score is the share of 'up' verbs minus 'down' verbs: learnable from words."""
    rng = random.Random(seed)
    rows: dict[str, float] = {}  # distinct sentences: training drops duplicates, eval keeps them
    while len(rows) < n:
        ups, downs = rng.randint(0, 2), rng.randint(0, 2)
        words = [rng.choice(NOUNS)] + rng.sample(UP, ups) + rng.sample(DOWN, downs)
        rng.shuffle(words)
        rows[" ".join(words)] = (ups - downs) / 2
    return [{"text": text, "score": score} for text, score in rows.items()]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- regression --------------------------------------------------------------------------------


def test_regression_metrics_on_a_hand_made_example():
    task = Regression()
    logits = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    m = task.compute_metrics(logits, np.array([0.0, 1.0, 2.0, 5.0]), ["score"])
    assert m["mse"] == pytest.approx(1.0)  # errors 0, 0, 0, -2
    assert m["mae"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(1.0)
    assert m["spearman"] == pytest.approx(1.0)  # same order
    assert m["pearson"] == pytest.approx(np.corrcoef([0, 1, 2, 3], [0, 1, 2, 5])[0, 1])
    flat = task.compute_metrics(
        np.zeros((3, 1), dtype=np.float32), np.array([0.0, 1.0, 2.0]), ["score"]
    )
    assert (
        flat["pearson"] == 0.0 and flat["spearman"] == 0.0
    )  # constant predictions: no correlation


def test_regression_targets_must_be_numbers():
    task = Regression()
    assert task.encode_labels(["0.5", "-1", "2e-1"], ["score"], "x").tolist() == pytest.approx(
        [0.5, -1.0, 0.2]
    )
    with pytest.raises(
        LmforgeError, match=r"train.csv has 2 target\(s\) that are not numbers \(row 2: 'high'"
    ):
        task.encode_labels(["0.1", "high", "nan"], ["score"], "train.csv")


def test_regression_strata_are_score_quintiles():
    labels = [str(v) for v in np.linspace(-1, 1, 100)]
    strata = Regression().strata(labels)
    assert sorted(set(strata)) == ["q0", "q1", "q2", "q3", "q4"]
    assert all(strata.count(q) == 20 for q in set(strata))


@pytest.mark.recipe
def test_regression_trains_saves_and_predicts_the_same(tmp_path, tiny_model_dir, capsys):
    train = _write_jsonl(tmp_path / "train.jsonl", _scored_rows(48))
    cfg = tiny_config(tiny_model_dir, train, epochs=40, batch_size=8, eval_strategy="epoch")
    cfg["task"] = "regression"
    cfg["data"].update(label_column="score", validation_file=str(train), validation_size=0.0)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(config), "--output", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "Spearman" in printed and "accuracy" not in printed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "regression"
    assert metrics["validation"]["spearman"] > 0.9  # fits the handful of training sentences
    assert metrics["train"]["best_metric"] == {
        "spearman": pytest.approx(
            max(
                r["spearman"]
                for r in map(
                    json.loads,
                    (tmp_path / "run" / "logs" / "history.jsonl").read_text().splitlines(),
                )
                if r["split"] == "validation"
            )
        )
    }
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| spearman |" in report

    rows = _scored_rows(48)
    predictor = Predictor.load(tmp_path / "run")
    scores = [r["score"] for r in predictor.predict([r["text"] for r in rows])]
    assert np.corrcoef(scores, [r["score"] for r in rows])[0, 1] > 0.9
    # eval of the saved model reproduces the training run's validation numbers
    assert (
        main(
            [
                "eval",
                str(tmp_path / "run"),
                "--data",
                str(train),
                "--precision",
                "fp32",
                "--json",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["spearman"] == pytest.approx(metrics["validation"]["spearman"], abs=1e-6)


@pytest.mark.recipe
def test_regression_rejects_non_numeric_targets_in_one_line(tmp_path, tiny_model_dir, capsys):
    rows = _scored_rows(12)
    rows[3]["score"] = "very good"
    train = _write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = tiny_config(tiny_model_dir, train)
    cfg["task"] = "regression"
    cfg["data"]["label_column"] = "score"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lmforge: error: train data has 1 target(s) that are not numbers")
    assert not (tmp_path / "run").exists()


# --- text pairs --------------------------------------------------------------------------------


def _pair_rows(n: int, seed: int = 0) -> list[dict]:
    """(question, answer) pairs: 'match' when the answer talks about the question's noun."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        noun = rng.choice(NOUNS)
        other = noun if i % 2 == 0 else rng.choice([x for x in NOUNS if x != noun])
        rows.append(
            {
                "question": f"what happened to {noun}",
                "answer": f"{other} {rng.choice(UP + DOWN)}",
                "label": "match" if other == noun else "other",
            }
        )
    return rows


def test_pair_token_types_mark_the_second_text(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded = tokenize(
        ["profit rose", "sales"], tokenizer, 32, use_cache=False, pairs=["why", "sales fell today"]
    )
    reference = tokenizer(["profit rose", "sales"], ["why", "sales fell today"], padding=True)
    batch = PaddingCollator(tokenizer.pad_token_id, None)(
        [EncodedDataset(encoded.ids, None, encoded.pair_starts)[i] for i in range(2)]
    )
    assert batch["input_ids"].tolist() == reference["input_ids"]
    assert batch["token_type_ids"].tolist() == reference["token_type_ids"]


def test_pairs_with_a_missing_side_are_dropped_and_counted():
    import pandas as pd

    frame = pd.DataFrame(
        {"text": ["a b", "c d", "e f"], "text_pair": ["x", None, "  "], "label": ["1", "0", "1"]}
    )
    kept, report = clean_examples(frame)
    assert kept["text"].tolist() == ["a b"] and report.missing_pair == 2
    assert "2 missing pair" in report.summary("train")


@pytest.mark.recipe
def test_text_pair_classification_trains_and_predicts_pairs(tmp_path, tiny_model_dir):
    train = _write_jsonl(tmp_path / "train.jsonl", _pair_rows(40))
    cfg = tiny_config(tiny_model_dir, train, epochs=40, batch_size=8, eval_strategy="epoch")
    cfg["data"].update(
        text_column="question",
        text_pair_column="answer",
        validation_file=str(train),
        validation_size=0.0,
    )
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(config), "--output", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (
        metrics["validation"]["accuracy"] >= 0.8
    )  # chance is 0.5: only solvable by reading both texts

    queries = _write_jsonl(
        tmp_path / "pairs.jsonl",
        [{k: r[k] for k in ("question", "answer")} for r in _pair_rows(8, seed=1)],
    )
    assert (
        main(
            [
                "predict",
                str(tmp_path / "run"),
                "--input",
                str(queries),
                "--output",
                str(tmp_path / "out.jsonl"),
            ]
        )
        == 0
    )
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [set(r) >= {"text", "text_pair", "label"} for r in out] == [True] * 8
    import lmforge

    single = lmforge.predict(tmp_path / "run", [out[0]["text"]], pairs=[out[0]["text_pair"]])
    assert single[0]["label"] == out[0]["label"]
    with pytest.raises(LmforgeError, match="scores text pairs"):
        lmforge.predict(tmp_path / "run", [out[0]["text"]])


@pytest.mark.recipe
def test_pair_model_refuses_single_texts(tmp_path, tiny_model_dir, capsys):
    train = _write_jsonl(tmp_path / "train.jsonl", _pair_rows(12))
    cfg = tiny_config(tiny_model_dir, train, epochs=1)
    cfg["data"].update(text_column="question", text_pair_column="answer")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(config), "--output", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--input", "-"]) == 2
    assert "scores text pairs" in capsys.readouterr().err


# --- multi-label -------------------------------------------------------------------------------

from lmforge.tasks.multi_label import MultiLabelClassification  # noqa: E402

TOPICS = {
    "rates": "monetary",
    "inflation": "monetary",
    "jobs": "labor",
    "wages": "labor",
    "exports": "trade",
    "tariffs": "trade",
}


def test_multi_label_parses_lists_and_delimited_cells():
    task = MultiLabelClassification()
    assert task.parse('["trade", "labor", "trade"]') == ["labor", "trade"]
    assert task.parse("trade| labor") == ["labor", "trade"]
    assert task.parse("[]") == []
    task.configure({"label_delimiter": ";"})
    assert task.parse("a;b") == ["a", "b"]
    with pytest.raises(LmforgeError, match="starts like a JSON list"):
        task.parse("[a, b")


def test_multi_label_metrics_and_thresholds_on_a_constructed_case():
    task = MultiLabelClassification()
    names = ["a", "b"]
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.float32)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    # label a: positives at 0.35 and 0.4, negatives at 0.1 and 0.2 -> any threshold in
    # (0.2, 0.35] is perfect
    probs = np.array([[0.35, 0.1], [0.4, 0.9], [0.1, 0.8], [0.2, 0.3]])
    logits = logit(probs)
    at_half = task.compute_metrics(logits, truth, names)
    assert at_half["per_label"]["a"]["recall"] == 0.0 and at_half["per_label"]["b"]["f1"] == 1.0
    assert at_half["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 2))  # tp 2, fn 2, fp 0
    assert at_half["subset_accuracy"] == pytest.approx(2 / 4)  # rows 3 and 4 are fully right
    thresholds = task.tune_thresholds(logits, truth)
    assert (
        0.2 < thresholds[0] <= 0.35 and thresholds[1] == 0.5
    )  # b is perfect at 0.5 already: it stays
    task.configure({"thresholds": thresholds})
    tuned = task.compute_metrics(logits, truth, names)
    assert tuned["micro_f1"] == 1.0 and tuned["subset_accuracy"] == 1.0
    assert task.decode(logits[:1], names)[0]["labels"] == ["a"]


def _topic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows: dict[str, list[str]] = {}
    while len(rows) < n:
        words = rng.sample(sorted(TOPICS), rng.randint(1, 3)) + [rng.choice(NOUNS)]
        rng.shuffle(words)
        rows[" ".join(words)] = sorted({TOPICS[w] for w in words if w in TOPICS})
    return [{"text": t, "topics": labels} for t, labels in rows.items()]


@pytest.mark.recipe
def test_multi_label_trains_tunes_thresholds_and_predicts_label_sets(tmp_path, tiny_model_dir):
    rows = _topic_rows(48)
    train = _write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = tiny_config(
        tiny_model_dir, train, epochs=60, batch_size=8, learning_rate=1e-3, eval_strategy="epoch"
    )
    cfg["task"] = "multi_label_classification"
    cfg["data"].update(label_column="topics", validation_file=str(train), validation_size=0.0)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(config), "--output", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["validation"]["micro_f1"] >= 0.9
    assert set(metrics["thresholds"]) == {"labor", "monetary", "trade"}
    meta = json.loads((tmp_path / "run" / "model" / "lmforge.json").read_text())
    assert meta["thresholds"] == list(metrics["thresholds"].values())

    predictor = Predictor.load(tmp_path / "run", precision="fp32")
    predicted = predictor.predict([r["text"] for r in rows])
    exact = np.mean([p["labels"] == r["topics"] for p, r in zip(predicted, rows, strict=True)])
    assert exact == pytest.approx(
        metrics["validation"]["subset_accuracy"]
    )  # the saved thresholds are used
    assert (
        main(
            [
                "eval",
                str(tmp_path / "run"),
                "--data",
                str(train),
                "--precision",
                "fp32",
                "--json",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval.json").read_text())["micro_f1"] == pytest.approx(
        metrics["validation"]["micro_f1"]
    )


def test_thresholds_tuned_for_micro_f1_do_not_chase_a_rare_label():
    """Per-label F1 would pick a low threshold for the barely learned label c (F1 0.4 instead of
    0) and flood it with false positives; tuning for micro-F1 keeps 0.5 there."""
    task = MultiLabelClassification()
    n = 40
    truth = np.zeros((n, 2), dtype=np.float32)
    truth[:20, 0] = 1  # label a: learned (0.9 vs 0.1)
    truth[:2, 1] = 1  # label c: rare, not learned (0.15 for everything)
    probs = np.where(truth[:, :1] > 0, 0.9, 0.1)
    probs = np.concatenate([probs, np.full((n, 1), 0.15)], axis=1)
    logits = np.log(probs / (1 - probs))
    assert task.tune_thresholds(logits, truth, "micro_f1") == [0.5, 0.5]
    assert task.tune_thresholds(logits, truth, "macro_f1")[1] <= 0.15  # macro-F1 does reward it


@pytest.mark.recipe
def test_lora_trains_a_regression_head(tmp_path, tiny_model_dir):
    train = _write_jsonl(tmp_path / "train.jsonl", _scored_rows(24))
    cfg = tiny_config(tiny_model_dir, train, epochs=2, batch_size=8)
    cfg.update(task="regression", method="lora")
    cfg["data"]["label_column"] = "score"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(config), "--output", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    rows = Predictor.load(tmp_path / "run").predict(["profit rose", "sales fell"])
    assert [set(r) for r in rows] == [{"score"}, {"score"}]
