"""Embedding task end to end: contrastive training, retrieval metrics, `lmforge embed`,
sentence-transformers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_config

from lmforge.cli import main
from lmforge.inference.predictor import Predictor
from lmforge.tasks.embedding import Embedding

pytestmark = pytest.mark.recipe

INTENTS = {
    "card arrival": [
        "when will my card arrive",
        "my new card has not come yet",
        "is my card in the mail",
    ],
    "exchange rate": [
        "what is the euro rate today",
        "how much is a dollar in pounds",
        "which rate do you use",
    ],
    "lost phone": ["i lost my phone", "someone stole my mobile", "my phone is gone what now"],
    "top up failed": [
        "my top up did not work",
        "the top up was declined",
        "why did adding money fail",
    ],
}


def _pairs() -> list[dict]:
    rows = [
        {"query": q, "positive": intent} for intent, queries in INTENTS.items() for q in queries
    ]
    random.Random(0).shuffle(rows)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train(tmp_path: Path, model_dir: Path, **extra) -> Path:
    data = _write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    cfg = tiny_config(
        model_dir, data, epochs=30, batch_size=6, learning_rate=2e-3, eval_strategy="epoch"
    )
    cfg["task"] = "embedding"
    cfg["data"].update(text_column="query", text_pair_column="positive", validation_file=str(data))
    cfg.update(extra)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["-q", "train", str(config), "--output", str(run)]) == 0
    return run


@pytest.mark.unit
def test_retrieval_metrics_of_the_task_dedupe_queries_and_documents():
    # 3 rows: query 0 twice (with both documents), query 1 once; embeddings chosen by hand
    q = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = np.array([[0, 0], [0, 1], [1, 1]])  # (query text id, positive text id)
    m = Embedding().compute_metrics(np.concatenate([q, p], axis=1), labels, [])
    # query 0: relevant {doc 0, doc 1}, ranks 1 and 2; query 1: relevant {doc 1}, rank 1
    assert m["n"] == 2 and m["n_corpus"] == 2
    assert m["recall@1"] == pytest.approx((0.5 + 1.0) / 2) and m["mrr"] == 1.0
    with_distractor = Embedding().compute_metrics(
        np.concatenate([q, p], axis=1), labels, [], extra_corpus=np.array([[0.0, 1.0]])
    )
    assert with_distractor["n_corpus"] == 3


def test_embedding_trains_evaluates_embeds_and_loads_in_sentence_transformers(
    tmp_path, tiny_model_dir, capsys
):
    run = _train(tmp_path, tiny_model_dir)
    assert "recall@1" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "embedding" and metrics["labels"] == []
    history = [
        json.loads(line) for line in (run / "logs" / "history.jsonl").read_text().splitlines()
    ]
    first = next(r for r in history if r["split"] == "validation")
    assert metrics["validation"]["recall@1"] == 1.0 > first["recall@1"]  # the 4 intents are learned
    assert metrics["validation"]["n"] == 12 and metrics["validation"]["n_corpus"] == 4

    # eval reproduces it; distractor documents make the task harder, never easier
    data = str(tmp_path / "pairs.jsonl")
    assert (
        main(
            [
                "eval",
                str(run),
                "--data",
                data,
                "--precision",
                "fp32",
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "e.json").read_text())["mrr"] == pytest.approx(
        metrics["validation"]["mrr"]
    )
    (tmp_path / "docs.txt").write_text(
        "card arrival\nbranch opening hours\nmortgage rates\n", encoding="utf-8"
    )
    assert (
        main(
            [
                "eval",
                str(run),
                "--data",
                data,
                "--corpus",
                str(tmp_path / "docs.txt"),
                "--json",
                str(tmp_path / "d.json"),
            ]
        )
        == 0
    )
    harder = json.loads((tmp_path / "d.json").read_text())
    assert harder["n_corpus"] == 6 and harder["mrr"] <= metrics["validation"]["mrr"] + 1e-9

    # lmforge embed: .npy in input order, unit length; .jsonl carries the texts
    texts = ["when will my card arrive", "i lost my phone", "card arrival"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert (
        main(
            [
                "embed",
                str(run),
                "-i",
                str(tmp_path / "in.txt"),
                "-o",
                str(tmp_path / "v.npy"),
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[2] > vectors[1] @ vectors[2]  # the query is closest to its intent
    assert (
        main(
            [
                "embed",
                str(run),
                "-i",
                str(tmp_path / "in.txt"),
                "-o",
                str(tmp_path / "v.jsonl"),
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts and np.allclose(
        [r["embedding"] for r in rows], vectors, atol=1e-5
    )

    # the saved model loads in sentence-transformers and gives the same vectors
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(run / "model"), device="cpu")
    assert np.allclose(model.encode(texts), vectors, atol=1e-5)
    # and reloads in lmforge with the same predictions
    again = Predictor.load(run, precision="fp32").predict(texts)
    assert np.allclose([r["embedding"] for r in again], vectors, atol=1e-5)


def test_embed_works_on_any_encoder_directory(tmp_path, tiny_model_dir):
    (tmp_path / "in.txt").write_text("hello\nworld\n", encoding="utf-8")
    assert (
        main(
            [
                "embed",
                str(tiny_model_dir),
                "-i",
                str(tmp_path / "in.txt"),
                "-o",
                str(tmp_path / "v.npy"),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "v.npy").shape == (2, 32)
    data = _write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    assert (
        main(
            [
                "eval",
                str(tiny_model_dir),
                "--task",
                "embedding",
                "--data",
                str(data),
                "--text-column",
                "query",
                "--text-pair-column",
                "positive",
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "e.json").read_text())["n_corpus"] == 4


def test_embedding_with_hard_negatives_and_lora(tmp_path, tiny_model_dir):
    rows = _pairs()
    names = list(INTENTS)
    for row in rows:
        row["negative"] = names[(names.index(row["positive"]) + 1) % len(names)]
    data = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = tiny_config(tiny_model_dir, data, epochs=2, batch_size=6)
    cfg.update(task="embedding", method={"name": "lora", "r": 4})
    cfg["data"].update(
        text_column="query",
        text_pair_column="positive",
        negative_column="negative",
        validation_size=0.25,
    )  # carved at random: pairs have no classes
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(config), "--output", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 < metrics["train"]["trainable_share"] < 0.2
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert (
        tmp_path / "run" / "model" / "modules.json"
    ).is_file()  # the merged model is a sentence-transformer
    assert (
        metrics["data"]["rows"] == {"train": 9, "validation": 3} and metrics["validation"]["n"] == 3
    )


def test_embedding_needs_pairs_in_one_line(tmp_path, tiny_model_dir, capsys):
    data = _write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    cfg = tiny_config(tiny_model_dir, data)
    cfg["task"] = "embedding"
    cfg["data"]["text_column"] = "query"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "lmforge: error: task embedding trains on (query, positive) pairs: set "
        "data.text_pair_column"
    )
