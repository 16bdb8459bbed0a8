"""Pretraining end to end: from-scratch and continued causal/masked LM, perplexity, generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmforge.cli import main

pytestmark = pytest.mark.recipe

PATTERN = "alpha beta gamma delta epsilon zeta eta theta"


def _corpus(path: Path, lines: int = 120) -> Path:
    """Documents that repeat one pattern from a shifting start: a model can learn it perfectly."""
    words = PATTERN.split()
    rows = [" ".join(words[(i + j) % len(words)] for j in range(12)) for i in range(lines)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _config(tmp_path: Path, task: str, model: object, **training) -> Path:
    corpus = _corpus(tmp_path / "corpus.txt")
    cfg = {
        "task": task,
        "model": model,
        "data": {"train_file": str(corpus), "validation_file": str(corpus), "max_length": 32},
        "training": {
            "epochs": 20,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "logging_steps": 5,
            **training,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _history(run: Path) -> list[dict]:
    return [
        r
        for r in map(json.loads, (run / "logs" / "history.jsonl").read_text().splitlines())
        if r["split"] == "validation"
    ]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_tiny_causal_lm_from_scratch_learns_a_repeated_pattern(tmp_path, arch, capsys):
    scratch = {"arch": arch, "layers": 2, "hidden": 32, "heads": 4, "vocab_size": 300}
    config = _config(tmp_path, "causal_lm", {"from_scratch": scratch})
    run = tmp_path / "run"
    assert main(["-q", "train", str(config), "--output", str(run)]) == 0
    assert "perplexity" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    evaluations = _history(run)
    assert evaluations[0]["perplexity"] > 2 * metrics["validation"]["perplexity"]
    assert metrics["validation"]["perplexity"] < 1.6  # towards 1: the pattern is learned
    assert metrics["data"]["corpus"]["train"]["documents"] == 120
    # a plain Hugging Face directory with its trained tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(run / "model").config.model_type == arch
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert tokenizer.decode(tokenizer(PATTERN)["input_ids"]) == PATTERN

    # eval on the corpus reproduces the run's validation perplexity
    assert (
        main(
            [
                "eval",
                str(run),
                "--data",
                str(tmp_path / "corpus.txt"),
                "--precision",
                "fp32",
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["perplexity"] == pytest.approx(metrics["validation"]["perplexity"], rel=1e-4)

    # predict points to generate
    capsys.readouterr()
    (tmp_path / "in.txt").write_text("alpha beta\n", encoding="utf-8")
    assert main(["predict", str(run), "-i", str(tmp_path / "in.txt")]) == 2
    assert "use `lmforge generate`" in capsys.readouterr().err

    # greedy generation continues the pattern and stops at a stop string
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                str(run),
                "-p",
                "alpha beta gamma",
                "--greedy",
                "--max-new-tokens",
                "12",
                "--stop",
                "zeta",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == "delta epsilon"
    # sampling is reproducible with a seed
    outputs = []
    for _ in range(2):
        assert (
            main(
                [
                    "generate",
                    str(run),
                    "-p",
                    "beta",
                    "--seed",
                    "7",
                    "--temperature",
                    "1.5",
                    "--max-new-tokens",
                    "8",
                    "--precision",
                    "fp32",
                ]
            )
            == 0
        )
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].strip()


def test_continued_causal_lm_with_lora(tmp_path):
    scratch = {"arch": "llama", "layers": 2, "hidden": 32, "heads": 4, "vocab_size": 300}
    base = tmp_path / "base"
    assert (
        main(
            [
                "-q",
                "train",
                str(_config(tmp_path, "causal_lm", {"from_scratch": scratch}, epochs=1)),
                "--output",
                str(base),
            ]
        )
        == 0
    )
    (tmp_path / "lora").mkdir()
    config = _config(tmp_path / "lora", "causal_lm", str(base / "model"), epochs=2)
    cfg = yaml.safe_load(config.read_text())
    cfg["method"] = {"name": "lora", "r": 4}
    config.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "train", str(config), "--output", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 < metrics["train"]["trainable_share"] < 0.2
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    before = json.loads((base / "metrics.json").read_text())["validation"]["perplexity"]
    assert metrics["validation"]["perplexity"] < before


def test_continued_masked_lm_lowers_perplexity(tmp_path, tiny_model_dir):
    config = _config(tmp_path, "masked_lm", str(tiny_model_dir), epochs=8)
    run = tmp_path / "run"
    assert main(["-q", "train", str(config), "--output", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    evaluations = _history(run)
    assert metrics["validation"]["perplexity"] < evaluations[0]["perplexity"] / 2
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(run / "model").config.model_type == "bert"


def test_a_bert_from_scratch_trains_its_own_wordpiece_tokenizer(tmp_path):
    scratch = {"arch": "bert", "layers": 2, "hidden": 32, "heads": 2, "vocab_size": 300}
    config = _config(tmp_path, "masked_lm", {"from_scratch": scratch}, epochs=2)
    run = tmp_path / "run"
    assert main(["-q", "train", str(config), "--output", str(run)]) == 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert tokenizer.mask_token == "[MASK]" and tokenizer.tokenize("alpha beta") == [
        "alpha",
        "beta",
    ]
    assert (
        json.loads((run / "model" / "lmforge.json").read_text())["base_model"]
        == "from_scratch:bert"
    )


def test_pretraining_bad_input_fails_in_one_line(tmp_path, capsys):
    config = _config(tmp_path, "sequence_classification", {"from_scratch": {"arch": "llama"}})
    assert main(["train", str(config)]) == 2
    assert "model.from_scratch builds a model for pretraining" in capsys.readouterr().err

    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    cfg = yaml.safe_load(
        _config(tmp_path, "causal_lm", {"from_scratch": {"arch": "gpt2"}}).read_text()
    )
    cfg["data"].update(train_file=str(tmp_path / "binary.txt"), validation_file=None)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lmforge: error: ") and "binary.txt" in err[-1]
    assert not (tmp_path / "run").exists()

    cfg["data"]["train_file"] = str(tmp_path / "nothing-*.txt")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "run")]) == 2
    assert "nothing-*.txt" in capsys.readouterr().err.strip().splitlines()[-1]


CHATS = [
    ("which planet is red", "mars is red"),
    ("which planet has rings", "saturn has rings"),
    ("which planet is largest", "jupiter is largest"),
    ("which planet is ours", "earth is ours"),
]


def test_chat_fine_tuning_learns_the_answers_and_generates_them(tmp_path, capsys):
    scratch = {"arch": "llama", "layers": 2, "hidden": 32, "heads": 4, "vocab_size": 300}
    base = tmp_path / "base"
    config = _config(tmp_path, "causal_lm", {"from_scratch": scratch}, epochs=1)
    # the base model's tokenizer learns the words of the conversations (whole-word tokens)
    words = " ".join(f"{q} {a} name a planet venus hello goodbye" for q, a in CHATS)
    (tmp_path / "corpus.txt").write_text((words + "\n") * 40, encoding="utf-8")
    assert main(["-q", "train", str(config), "--output", str(base)]) == 0
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in CHATS
    ]
    rows.append(
        {
            "messages": [
                {"role": "system", "content": "answer briefly"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "goodbye"},
            ]
        }
    )
    rows.append(
        {"instruction": "name a planet", "input": "", "output": "venus"}
    )  # Alpaca records too
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 4), encoding="utf-8")
    cfg = {
        "task": "chat",
        "model": str(base / "model"),
        "data": {"train_file": str(data), "validation_file": str(data), "max_length": 64},
        "training": {
            "epochs": 40,
            "batch_size": 6,
            "learning_rate": 5e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "logging_steps": 10,
        },
    }
    config = tmp_path / "chat.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "chat"
    assert main(["-q", "train", str(config), "--output", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["perplexity"] < _history(run)[0]["perplexity"] / 3
    assert metrics["data"]["conversations"]["train"]["conversations"] == 24
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert "<|im_start|>" in tokenizer.chat_template  # the default template is saved with the model
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                str(run),
                "--chat",
                "-p",
                "which planet has rings",
                "--greedy",
                "--max-new-tokens",
                "40",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    assert (
        capsys.readouterr().out.strip() == "saturn has rings"
    )  # and it stops at the end of its turn
    # eval on the conversations: loss on the assistant tokens only
    assert (
        main(
            [
                "eval",
                str(run),
                "--data",
                str(data),
                "--precision",
                "fp32",
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["perplexity"] == pytest.approx(metrics["validation"]["perplexity"], rel=1e-4)

    # LoRA on packed conversations: several conversations per row, the ChatML markers train too
    cfg["method"] = {"name": "lora", "r": 4}
    cfg["data"]["packing"] = "packed"
    cfg["training"]["epochs"] = 2
    config.write_text(yaml.safe_dump(cfg))
    lora = tmp_path / "lora"
    assert main(["-q", "train", str(config), "--output", str(lora)]) == 0
    metrics = json.loads((lora / "metrics.json").read_text())
    packing = metrics["data"]["conversations"]["train"]
    assert (
        packing["packed_rows"] < packing["conversations"]
        and metrics["data"]["rows"]["train"] == packing["packed_rows"]
    )
    from safetensors.torch import load_file

    assert any(
        "trainable_tokens" in key
        for key in load_file(lora / "adapter" / "adapter_model.safetensors")
    )
    # isolation is exact: the packed validation scores what one conversation per row scores
    from lmforge.config import load_config
    from lmforge.inference.predictor import Predictor
    from lmforge.tasks.language_modeling import evaluate_loss

    predictor = Predictor.load(lora, device="cpu", precision="fp32")
    predictor.task.bind(predictor.tokenizer)
    predictor.task.check_model(predictor.model)
    alone, _ = predictor.task.file_dataset(
        load_config(lora / "config.yaml").data, str(data), predictor.tokenizer
    )
    unpacked = evaluate_loss(predictor.model, alone, 8, predictor.task, "cpu")
    assert unpacked["perplexity"] == pytest.approx(metrics["validation"]["perplexity"], rel=1e-4)


def test_chat_records_without_an_assistant_turn_fail_in_one_line(tmp_path, capsys):
    scratch = {"arch": "gpt2", "layers": 1, "hidden": 32, "heads": 2, "vocab_size": 300}
    base = tmp_path / "base"
    assert (
        main(
            [
                "-q",
                "train",
                str(_config(tmp_path, "causal_lm", {"from_scratch": scratch}, epochs=1)),
                "--output",
                str(base),
            ]
        )
        == 0
    )
    data = tmp_path / "chat.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n", encoding="utf-8"
    )
    config = tmp_path / "chat.yaml"
    config.write_text(
        yaml.safe_dump(
            {"task": "instruction", "model": str(base / "model"), "data": {"train_file": str(data)}}
        )
    )
    capsys.readouterr()
    assert main(["train", str(config), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("lmforge: error: ") and "chat.jsonl" in err[-1] and "line 1" in err[-1]
    )


@pytest.mark.slow  # three processes; the planner itself is covered by tests/training/test_speed.py
def test_auto_batch_size_plans_a_causal_lm(tmp_path):
    """The planner measures language-model candidates (blocks from a token file, loss-only
    evaluation)."""
    scratch = {"arch": "llama", "layers": 1, "hidden": 32, "heads": 4, "vocab_size": 300}
    config = _config(
        tmp_path,
        "causal_lm",
        {"from_scratch": scratch},
        epochs=1,
        batch_size="auto",
        effective_batch_size=2,
    )
    run = tmp_path / "run"
    assert main(["-q", "train", str(config), "--output", str(run)]) == 0
    plan = json.loads((run / "plan.json").read_text())
    assert [c["batch_size"] for c in plan["candidates"]] == [2, 1]
    assert all(
        c["error"] is None and c["measured"]["eval_seconds_per_token"] > 0
        for c in plan["candidates"]
    )
    train = json.loads((run / "metrics.json").read_text())["train"]
    assert (train["batch_size"], train["gradient_accumulation_steps"]) == (
        plan["recommendation"]["batch_size"],
        plan["recommendation"]["gradient_accumulation_steps"],
    )


@pytest.mark.parametrize("task", ["masked_lm", pytest.param("causal_lm", marks=pytest.mark.slow)])
def test_a_killed_pretraining_run_resumes_exactly(tmp_path, tiny_model_dir, task):
    """SIGKILL mid-run, resume: the same weights and perplexity as the uninterrupted run (masked LM
    draws its masks from the restored RNG; a from-scratch model reuses its trained tokenizer)."""
    import subprocess

    from conftest import (
        LMFORGE,
        max_difference,
        run_weights,
        subprocess_env,
        train_with_random_kills,
    )

    model = (
        str(tiny_model_dir)
        if task == "masked_lm"
        else {
            "from_scratch": {
                "arch": "llama",
                "layers": 1,
                "hidden": 32,
                "heads": 4,
                "vocab_size": 300,
            }
        }
    )
    config = _config(tmp_path, task, model, epochs=2, logging_steps=2)
    cfg = yaml.safe_load(config.read_text())
    cfg["checkpoint"] = {"every_steps": 1, "every_minutes": None, "keep_last": 2}
    config.write_text(yaml.safe_dump(cfg))
    reference = tmp_path / "reference"
    result = subprocess.run(
        [*LMFORGE, "train", str(config), "--output", str(reference)],
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    killed = tmp_path / "killed"
    assert train_with_random_kills(config, killed, subprocess_env(tmp_path), kills=1, seed=3) == 1
    assert max_difference(run_weights(killed), run_weights(reference)) == 0.0
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (killed, reference)]
    assert metrics[0]["validation"] == metrics[1]["validation"] and metrics[0]["train"]["resumed"]
