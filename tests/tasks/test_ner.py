"""Token classification (NER): sub-token alignment, entity metrics, training, spans, bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import yaml
from conftest import tiny_config

from lmforge.cli import main
from lmforge.data.batching import ragged
from lmforge.data.token_files import TokenExample, write_conll, write_jsonl
from lmforge.errors import LmforgeError
from lmforge.inference.predictor import Predictor
from lmforge.tasks.token_classification import TokenClassification, split_words, word_logits

pytestmark = pytest.mark.unit

NAMES = ["Anna", "Peter", "Maria", "Tomasz", "Ingrid"]
CITIES = ["Paris", "Berlin", "Kraków", "Lisbon", "Oslo"]
LABELS = ["O", "B-location", "I-location", "B-person", "I-person"]


def _sentences(n: int, seed: int = 0) -> list[TokenExample]:
    """'<person> flew to <city>' and friends: entities are the capitalized names the model must
    learn."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        person, city = rng.choice(NAMES), rng.choice(CITIES)
        if i % 3 == 0:
            out.append(
                TokenExample(
                    [person, "Smith", "flew", "to", city],
                    ["B-person", "I-person", "O", "O", "B-location"],
                )
            )
        elif i % 3 == 1:
            out.append(
                TokenExample(
                    ["we", "met", person, "in", "New", city, "."],
                    ["O", "O", "B-person", "O", "B-location", "I-location", "O"],
                )
            )
        else:
            out.append(TokenExample(["nothing", "happened", "today"], ["O", "O", "O"]))
    return out


def _logits_for(tags: list[list[str]], names: list[str] = LABELS) -> np.ndarray:
    """Word logits whose argmax is the given tags."""
    return ragged(
        [np.eye(len(names), dtype=np.float32)[[names.index(t) for t in row]] for row in tags]
    )


# --- alignment ------------------------------------------------------------------------------------


def test_first_sub_token_alignment_on_words_split_into_several_pieces(tiny_model_dir):
    from transformers import AutoTokenizer

    from lmforge.data.tokenization import tokenize_words

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    words = [
        "Anna",
        "visited",
        "Szczebrzeszyn",
        "yesterday",
    ]  # the town splits into several sub-tokens
    encoded = tokenize_words([words], tokenizer, max_length=32, use_cache=False)
    word_ids = encoded.word_ids[0]
    pieces = [tokenizer.convert_ids_to_tokens(int(i)) for i in encoded.ids[0]]
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and word_ids[0] == word_ids[-1] == -1
    assert (word_ids == 2).sum() >= 3  # "Szczebrzeszyn" is at least three pieces
    task = TokenClassification()
    tags = np.array([LABELS.index(t) for t in ["B-person", "O", "B-location", "O"]])
    labels = task.align(word_ids, tags, LABELS)
    town = np.flatnonzero(word_ids == 2)
    assert labels[town[0]] == LABELS.index("B-location")  # the first piece carries the tag
    assert (labels[town[1:]] == -100).all() and labels[0] == labels[-1] == -100
    assert [labels[np.flatnonzero(word_ids == w)[0]] for w in range(4)] == tags.tolist()

    task.configure({"label_all_tokens": True})
    every = task.align(word_ids, tags, LABELS)
    assert every[town[0]] == LABELS.index("B-location")
    assert (
        every[town[1:]] == LABELS.index("I-location")
    ).all()  # continuations are inside the entity

    # the word logits read each word's first piece back; a word past max_length has none (NaN -> O)
    token_logits = np.arange(len(word_ids) * 5, dtype=np.float32).reshape(len(word_ids), 5)
    per_word = word_logits([token_logits], [word_ids], [5])[0]
    assert np.array_equal(per_word[2], token_logits[town[0]]) and np.isnan(per_word[4]).all()
    assert task.predicted_tags([per_word], LABELS)[0][4] == "O"


# --- metrics --------------------------------------------------------------------------------------


def test_entity_metrics_on_a_hand_made_example():
    task = TokenClassification()
    truth = [["B-person", "I-person", "O", "B-location"], ["O", "B-person", "O", "O"]]
    predicted = [
        ["B-person", "I-person", "O", "O"],  # person right, location missed
        ["O", "B-location", "O", "B-location"],
    ]  # wrong type, one spurious location
    ids = ragged([np.array([LABELS.index(t) for t in row]) for row in truth])
    m = task.compute_metrics(_logits_for(predicted), ids, LABELS)
    # 3 true entities, 3 predicted, 1 right
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3)
    assert m["per_type"]["person"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert m["per_type"]["location"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["accuracy"] == pytest.approx(5 / 8) and m["entities_true"] == 3 and m["n"] == 2
    perfect = task.compute_metrics(_logits_for(truth), ids, LABELS)
    assert perfect["f1"] == perfect["precision"] == perfect["recall"] == 1.0


def test_a_partial_entity_does_not_count():
    task = TokenClassification()
    truth = [["B-location", "I-location", "O"]]
    ids = ragged([np.array([LABELS.index(t) for t in truth[0]])])
    m = task.compute_metrics(_logits_for([["B-location", "O", "O"]]), ids, LABELS)
    assert m["f1"] == 0.0 and m["precision"] == 0.0


def test_label_names_put_o_first_then_each_type_in_order():
    names = TokenClassification().label_names([["I-person", "B-person"], ["B-location", "O"]], None)
    assert names == ["O", "B-location", "B-person", "I-person"]
    with pytest.raises(LmforgeError, match="only 'O' tags"):
        TokenClassification().label_names([["O", "O"]], None)
    with pytest.raises(
        LmforgeError, match=r"dev.conll has 1 tag\(s\) the model was not trained on: 'B-product'"
    ):
        TokenClassification().encode_labels([["O", "B-product"]], LABELS, "dev.conll")


def test_raw_text_splits_into_words_with_offsets():
    text = "Anna's trip to Paris, via http://x.io/a?b=1 #travel @bob!"
    words = split_words(text)
    assert [w for w, _, _ in words] == [
        "Anna's",
        "trip",
        "to",
        "Paris",
        ",",
        "via",
        "http://x.io/a?b=1",
        "#travel",
        "@bob",
        "!",
    ]
    assert all(text[start:end] == word for word, start, end in words)


def test_entities_are_the_character_spans_of_the_predicted_words():
    """Decoding: word tags -> typed spans of the raw text, each scored by its words' mean
    probability; two B- tags in a row are two entities, a word without logits (cut off) is O."""
    text = "Anna Peter flew to New Oslo today"
    tags = ["B-person", "B-person", "O", "O", "B-location", "I-location"]
    logits = np.full((7, 5), np.nan, dtype=np.float32)  # "today" is past max_length
    logits[:6] = 0.0
    logits[np.arange(6), [LABELS.index(t) for t in tags]] = 3.0
    logits[5, LABELS.index("I-location")] = 2.0  # "Oslo" is less sure
    sure, unsure = np.exp(3) / (np.exp(3) + 4), np.exp(2) / (np.exp(2) + 4)
    spans = TokenClassification().entities(text, split_words(text), logits, LABELS)
    assert [s | {"score": 0} for s in spans] == [
        {"type": "person", "text": "Anna", "start": 0, "end": 4, "score": 0},
        {"type": "person", "text": "Peter", "start": 5, "end": 10, "score": 0},
        {"type": "location", "text": "New Oslo", "start": 19, "end": 27, "score": 0},
    ]
    assert [s["score"] for s in spans] == pytest.approx([sure, sure, (sure + unsure) / 2], abs=1e-6)
    assert all(text[s["start"] : s["end"]] == s["text"] for s in spans)
    assert TokenClassification().entities(text, split_words(text), np.zeros((7, 5)), LABELS) == []


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.recipe
@pytest.mark.parametrize("writer, suffix", [(write_conll, ".conll"), (write_jsonl, ".jsonl")])
def test_ner_trains_saves_evaluates_and_predicts_spans(
    tmp_path, tiny_model_dir, capsys, writer, suffix
):
    train = tmp_path / f"train{suffix}"
    writer(_sentences(30), train)
    dev = tmp_path / "emerging.dev.annotated"  # the format is read from the content
    write_conll(_sentences(12, seed=1), dev)
    cfg = tiny_config(tiny_model_dir, train, epochs=25, batch_size=8, eval_strategy="epoch")
    cfg["task"] = "token_classification"
    cfg["data"]["validation_file"] = str(dev)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["-q", "train", str(config), "--output", str(run)]) == 0
    assert "entity F1" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["labels"] == LABELS
    assert metrics["validation"]["f1"] > 0.9  # the pattern is learned
    assert set(metrics["validation"]["per_type"]) == {"location", "person"}
    assert (run / "model" / "model.safetensors").is_file()
    history = [
        json.loads(line) for line in (run / "logs" / "history.jsonl").read_text().splitlines()
    ]
    assert any(r["split"] == "validation" and "f1" in r for r in history)

    # eval of the saved model on the dev file gives the run's validation numbers
    assert (
        main(
            [
                "eval",
                str(run),
                "--data",
                str(dev),
                "--precision",
                "fp32",
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "all entities" in printed and "person" in printed
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["f1"] == pytest.approx(metrics["validation"]["f1"], abs=1e-6)

    # predict: entity spans with character offsets in the raw text
    texts = ["Maria Smith flew to Oslo", "we met Peter in New Berlin.", "nothing happened today"]
    rows = Predictor.load(run, precision="fp32").predict(texts)
    assert rows[0]["entities"][0] | {"score": 0} == {
        "type": "person",
        "text": "Maria Smith",
        "start": 0,
        "end": 11,
        "score": 0,
    }
    assert [(e["type"], e["text"]) for e in rows[1]["entities"]] == [
        ("person", "Peter"),
        ("location", "New Berlin"),
    ]
    assert rows[1]["entities"][1]["start"] == texts[1].index("New")
    assert rows[2]["entities"] == []
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["predict", str(run), "--input", str(inputs), "--precision", "fp32"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["entities"] for line in lines] == [r["entities"] for r in rows]

    # the saved directory is a plain Hugging Face token-classification model
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(run / "model")
    assert model.config.id2label[3] == "B-person"


@pytest.mark.recipe
def test_ner_with_lora_trains_only_the_adapter_and_head(tmp_path, tiny_model_dir):
    train = tmp_path / "train.conll"
    write_conll(_sentences(24), train)
    cfg = tiny_config(tiny_model_dir, train, epochs=3, batch_size=8)
    cfg.update(task="token_classification", method={"name": "lora", "r": 4})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(config), "--output", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 < metrics["train"]["trainable_share"] < 0.2
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    # a few LoRA epochs need not learn the names: check that what it tags decodes exactly
    predictor = Predictor.load(tmp_path / "run")
    texts = ["Anna Smith flew to Paris", "we met Peter in New Berlin."]
    for text, row in zip(texts, predictor.predict(texts), strict=True):
        words = split_words(text)
        sentence = predictor.word_logits([[w for w, _, _ in words]])[0]
        assert row == {"entities": predictor.task.entities(text, words, sentence, LABELS)}
        assert predictor.label_names == LABELS
        starts, ends = {s for _, s, _ in words}, {e for _, _, e in words}
        previous_end = 0
        for span in row["entities"]:
            assert set(span) == {"type", "text", "start", "end", "score"}
            assert span["type"] in {"person", "location"} and 0 < span["score"] <= 1
            assert span["text"] == text[span["start"] : span["end"]]
            assert span["start"] in starts and span["end"] in ends  # whole words, in order
            assert span["start"] >= previous_end
            previous_end = span["end"]


@pytest.mark.recipe
def test_invalid_transitions_are_repaired_and_reported_or_rejected(
    tmp_path, tiny_model_dir, capsys
):
    broken = _sentences(12)
    broken[0] = TokenExample(["Anna", "flew", "to", "Paris"], ["I-person", "O", "O", "I-location"])
    train = tmp_path / "train.conll"
    write_conll(broken, train)
    cfg = tiny_config(tiny_model_dir, train, epochs=1)
    cfg["task"] = "token_classification"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config), "--output", str(tmp_path / "run")]) == 0
    assert "2 invalid tag transitions repaired" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["cleaning"]["train"]["repaired_tags"] == 2

    assert (
        main(
            [
                "train",
                str(config),
                "--output",
                str(tmp_path / "strict"),
                "--set",
                "data.repair_tags=false",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("lmforge: error: ")
        and "sentence 1 has 'I-person' without a preceding entity" in err[-1]
    )


@pytest.mark.recipe
def test_tags_unknown_to_the_model_fail_eval_in_one_line(tmp_path, tiny_model_dir, capsys):
    train = tmp_path / "train.conll"
    write_conll(_sentences(12), train)
    cfg = tiny_config(tiny_model_dir, train, epochs=1)
    cfg["task"] = "token_classification"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(config), "--output", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    other = tmp_path / "other.conll"
    write_conll([TokenExample(["iPhone", "rocks"], ["B-product", "O"])], other)
    assert main(["eval", str(tmp_path / "run"), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"lmforge: error: {other} has 1 tag(s) the model was not trained on: 'B-product'; "
        f"the model knows: {', '.join(LABELS)}"
    ]


@pytest.mark.recipe
def test_long_sentences_are_cut_and_reported(tmp_path, tiny_model_dir, capsys):
    train = tmp_path / "train.conll"
    sentences = _sentences(12)
    sentences[1] = TokenExample(["word"] * 40 + ["Anna"], ["O"] * 40 + ["B-person"])
    write_conll(sentences, train)
    cfg = tiny_config(tiny_model_dir, train, epochs=1)
    cfg["task"] = "token_classification"
    cfg["data"]["max_length"] = 16
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config), "--output", str(tmp_path / "run")]) == 0
    assert "train: 1 of 12 sentences are longer than data.max_length=16" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                str(tmp_path / "run"),
                "--data",
                str(train),
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "e.json").read_text())["words_cut_off"] == 41 - 14


@pytest.mark.recipe
def test_ner_in_two_processes_gathers_every_validation_sentence(tmp_path, tiny_model_dir):
    """Ragged per-sentence logits are scored in shards and gathered (DDP on CPU)."""
    import os
    import subprocess
    import sys

    train = tmp_path / "train.conll"
    write_conll(_sentences(40), train)
    cfg = tiny_config(tiny_model_dir, train, epochs=2, batch_size=7, eval_strategy="epoch")
    cfg["task"] = "token_classification"
    cfg["data"]["validation_size"] = 0.25
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge",
            "-q",
            "train",
            str(config),
            "--output",
            str(tmp_path / "run"),
            "--nproc",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["processes"] == 2
    history = [
        json.loads(line)
        for line in (tmp_path / "run" / "logs" / "history.jsonl").read_text().splitlines()
    ]
    scored = [r for r in history if r["split"] == "validation"]
    assert len(scored) == 2 and all(0.0 <= r["f1"] <= 1.0 for r in scored)
    # the saved best model scored in one process agrees with its evaluation gathered from two
    best = next(r for r in scored if r["step"] == metrics["train"]["best_step"])
    assert metrics["validation"]["n"] == metrics["data"]["rows"]["validation"] == 10
    assert (best["f1"], best["accuracy"]) == pytest.approx(
        (metrics["validation"]["f1"], metrics["validation"]["accuracy"]), abs=1e-6
    )


def test_hf_dataset_is_refused_for_ner(tmp_path, tiny_model_dir):
    from lmforge.config import load_config
    from lmforge.data.loading import load_splits

    cfg = load_config({"task": "token_classification", "data": {"hf_dataset": "wnut_17"}})
    with pytest.raises(LmforgeError, match="reads CoNLL or token JSONL files"):
        load_splits(cfg.data, 0, tokens=True)
