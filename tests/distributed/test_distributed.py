"""Several processes: DDP and FSDP on CPU (gloo) give the single-process weights, a killed
worker's run resumes exactly, Ray Train runs the same recipe, sharding covers every example."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from conftest import (
    LMFORGE,
    max_difference,
    newest_checkpoint_step,
    run_weights,
    save_tiny_bert,
    subprocess_env,
    tiny_config,
    write_csv,
)

from lmforge.distributed.launch import strip_options
from lmforge.training.sampler import EpochBatchSampler

pytestmark = pytest.mark.recipe

WORDS = [
    "profit",
    "sales",
    "shares",
    "company",
    "orders",
    "margins",
    "revenue",
    "outlook",
    "rose",
    "fell",
    "jumped",
    "slumped",
]


# --- sharding ----------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("grouped", [False, True])
def test_shards_cover_every_global_batch_once(world, grouped):
    lengths = np.random.default_rng(0).integers(1, 60, size=53)
    samplers = [
        EpochBatchSampler(
            53, 8, seed=3, lengths=lengths if grouped else None, rank=r, world_size=world
        )
        for r in range(world)
    ]
    single = EpochBatchSampler(53, 8, seed=3, lengths=lengths if grouped else None)
    for epoch in range(2):
        for s in samplers:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in samplers]
        assert all(len(batches) == len(single) for batches in per_rank)
        for index, batch in enumerate(single.batches(epoch)):
            parts = [per_rank[r][index] for r in range(world)]
            scales = [samplers[r].loss_scale(epoch, index) for r in range(world)]
            real = [p for p, scale in zip(parts, scales, strict=True) if scale > 0]
            assert sorted(i for p in real for i in p) == sorted(
                batch
            )  # each example once, none lost
            # What DDP computes, the mean over ranks of (scale x the rank's mean loss), is the
            # mean over the global batch (a per-example "loss" stands in for the real one).
            loss = lengths.astype(float)
            ddp = (
                sum(scale * loss[p].mean() for p, scale in zip(parts, scales, strict=True)) / world
            )
            assert ddp == pytest.approx(loss[batch].mean())


@pytest.mark.unit
def test_a_rank_without_examples_gets_a_weightless_filler():
    sampler = EpochBatchSampler(9, 8, seed=0, shuffle=False, rank=2, world_size=3)
    last = sampler.batches(0)[-1]  # one example left for three ranks
    assert len(last) == 1
    assert sampler.shard(last) == last  # something to run (collectives need every rank)
    assert sampler.loss_scale(0, 1) == 0.0  # but it adds nothing to the gradient


@pytest.mark.unit
def test_launcher_strips_only_its_own_options():
    argv = [
        "-q",
        "train",
        "cfg.yaml",
        "--nproc",
        "2",
        "--set",
        "a=1",
        "--output=runs/x",
        "-o",
        "y",
        "--resume",
        "r",
    ]
    assert strip_options(argv, {"--nproc": True, "--output": True, "-o": True}) == [
        "-q",
        "train",
        "cfg.yaml",
        "--set",
        "a=1",
        "--resume",
        "r",
    ]


# --- end to end: 2 processes on CPU ------------------------------------------------------------


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory) -> Path:
    """Dropout draws different masks on each rank; without it DDP must equal one process."""
    return save_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert-no-dropout"),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


@pytest.fixture(scope="module")
def uneven_csv(tmp_path_factory) -> Path:
    """61 sentences of 2-12 words (46 for training, 15 for validation)."""
    rng = random.Random(0)
    rows = []
    for _ in range(61):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        rows.append((text, "up" if ("rose" in text or "jumped" in text) else "down"))
    return write_csv(tmp_path_factory.mktemp("uneven") / "train.csv", rows)


def _config(tmp_path: Path, model_dir: Path, train_csv: Path, **sections) -> Path:
    # 46 train sentences in batches of 7: every batch splits 4/3 over two processes, the last
    # (4) 2/2.
    cfg = tiny_config(
        model_dir, train_csv, epochs=2, batch_size=7, learning_rate=3e-3, eval_strategy="epoch"
    )
    cfg["data"]["validation_size"] = 0.25  # 15 validation sentences: scored in shards, gathered
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: Path, run_dir: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*LMFORGE, "train", str(config), "--output", str(run_dir), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, no_dropout_model, uneven_csv):
    tmp = tmp_path_factory.mktemp("single")
    config = _config(tmp, no_dropout_model, uneven_csv)
    _train(config, tmp / "run", subprocess_env(tmp))
    return {"config": config, "run_dir": tmp / "run"}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_give_the_single_process_weights(tmp_path, single_run, strategy):
    run_dir = tmp_path / strategy
    result = _train(
        single_run["config"],
        run_dir,
        subprocess_env(tmp_path),
        "--nproc",
        "2",
        "--set",
        f"distributed.strategy={strategy}",
    )
    assert max_difference(run_weights(run_dir), run_weights(single_run["run_dir"])) < 1e-5
    train = json.loads((run_dir / "metrics.json").read_text())["train"]
    reference = json.loads((single_run["run_dir"] / "metrics.json").read_text())["train"]
    assert (train["processes"], train["strategy"]) == (2, strategy)
    assert (
        train["steps"] == reference["steps"]
        and train["examples_seen"] == reference["examples_seen"] == 2 * 46
    )
    assert result.stdout.count("trained ") == 1  # one summary, not one per process
    # Logged training loss (the global batch's) and validation scored in shards: as in one process.
    for split in ("train", "validation"):
        losses = [
            [
                r["loss"]
                for r in map(json.loads, (d / "logs" / "history.jsonl").read_text().splitlines())
                if r["split"] == split
            ]
            for d in (run_dir, single_run["run_dir"])
        ]
        assert len(losses[0]) >= 2 and losses[0] == pytest.approx(losses[1], abs=1e-5)
    validation = [
        json.loads((d / "metrics.json").read_text())["validation"]
        for d in (run_dir, single_run["run_dir"])
    ]
    assert (
        validation[0]["n"] == 15
        and validation[0]["confusion_matrix"] == validation[1]["confusion_matrix"]
    )


def test_fsdp_refuses_adapter_methods(tmp_path, no_dropout_model, uneven_csv):
    config = _config(tmp_path, no_dropout_model, uneven_csv, distributed={"strategy": "fsdp"})
    result = subprocess.run(
        [
            *LMFORGE,
            "train",
            str(config),
            "--output",
            str(tmp_path / "run"),
            "--nproc",
            "2",
            "--set",
            "method=lora",
        ],
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "fsdp shards full fine-tuning; method lora" in result.stderr


def _workers(launcher: subprocess.Popen) -> dict[int, psutil.Process]:
    """The torchrun workers below ``launcher``, by local rank."""
    found = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            rank = child.environ().get("LOCAL_RANK")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if rank is not None and "lmforge" in " ".join(child.cmdline()):
            found[int(rank)] = child
    return found


# fsdp's run is a minute on 2 cores, so it runs with -m slow; two-process fsdp training stays in the
# default suite (test_two_processes_give_the_single_process_weights[fsdp])
@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_killed_worker_then_resume_is_exact(tmp_path, tiny_model_dir, uneven_csv, strategy):
    """SIGKILL one of two workers after a checkpoint; the resumed run equals an uninterrupted one
    (dropout on: every rank's random state is restored)."""
    config = _config(
        tmp_path,
        tiny_model_dir,
        uneven_csv,
        training={"epochs": 6},
        checkpoint={"every_steps": 2, "keep_last": 2},
        distributed={"strategy": strategy},
    )
    env = subprocess_env(tmp_path)
    _train(config, tmp_path / "reference", env, "--nproc", "2")

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [*LMFORGE, "train", str(config), "--output", str(run_dir), "--nproc", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while (
        proc.poll() is None and newest_checkpoint_step(run_dir) < 4 and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    workers = _workers(proc)
    assert sorted(workers) == [0, 1]  # --nproc 2 started exactly two ranks
    killed_at = newest_checkpoint_step(run_dir)
    workers[1].send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    # Killed mid-run (42 steps; killed after step 4): torchrun stops the others, nothing is
    # finished.
    assert proc.returncode != 0
    assert not (run_dir / "metrics.json").exists()
    assert 4 <= killed_at <= newest_checkpoint_step(run_dir) < 42  # 6 epochs x 7 batches

    result = subprocess.run(
        [*LMFORGE, "train", "--resume", str(run_dir), "--nproc", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert max_difference(run_weights(run_dir), run_weights(tmp_path / "reference")) < 1e-6
    metrics = [
        json.loads((d / "metrics.json").read_text())["train"]
        for d in (run_dir, tmp_path / "reference")
    ]
    assert metrics[0]["resumed"] and metrics[0]["steps"] == metrics[1]["steps"]


# --- Ray Train ---------------------------------------------------------------------------------


@pytest.mark.slow  # 1-3 minutes (a local Ray cluster starts); passed in the full run of 2026-11-23
def test_ray_train_with_two_local_workers(tmp_path, single_run):
    """About 30 s: a local Ray instance starts, two Ray Train workers run the recipe with DDP."""
    pytest.importorskip("ray.train")
    run_dir = tmp_path / "ray"
    result = subprocess.run(
        [
            *LMFORGE,
            "train",
            str(single_run["config"]),
            "--output",
            str(run_dir),
            "--ray",
            "--workers",
            "2",
            "--cpus-per-worker",
            "1",
        ],
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    train = json.loads((run_dir / "metrics.json").read_text())["train"]
    assert train["processes"] == 2
    assert max_difference(run_weights(run_dir), run_weights(single_run["run_dir"])) < 1e-5


def test_nproc_must_be_positive(tmp_path, single_run, capsys):
    from lmforge.cli import main

    assert (
        main(
            ["train", str(single_run["config"]), "--output", str(tmp_path / "run"), "--nproc", "0"]
        )
        == 2
    )
    assert "--nproc must be at least 1 (got 0)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
