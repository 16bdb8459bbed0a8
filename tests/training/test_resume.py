"""Never lose a run: atomic checkpoints, exact resume after SIGKILL, SIGTERM, corruption,
continue."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    LMFORGE,
    max_difference,
    newest_checkpoint_step,
    run_weights,
    subprocess_env,
    tiny_config,
    train_with_random_kills,
)
from safetensors.torch import load_file

from lmforge.errors import LmforgeError
from lmforge.training.checkpoint import (
    latest_intact_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint_atomically,
    verify_checkpoint,
)
from lmforge.training.sampler import EpochBatchSampler
from lmforge.training.state import TrainState

pytestmark = pytest.mark.recipe

# --- units: sampler and checkpoint files ---------------------------------------------------------


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    sampler = EpochBatchSampler(10, 3, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(i for b in full for i in b) == list(range(10)) and len(full) == 4
    sampler.set_epoch(0)
    list(sampler)  # iterating another epoch in between changes nothing
    sampler.set_epoch(2, start_batch=2)
    assert list(sampler) == full[2:]
    sampler.set_epoch(3)
    assert list(sampler) != full


def _tiny_training_objects():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def test_checkpoint_round_trip_restores_everything(tmp_path):
    model, optimizer, scheduler = _tiny_training_objects()
    state = TrainState(
        step=3, epoch=1, batches_in_epoch=2, examples_seen=15, best_metric=0.5, best_step=2
    )
    path = save_checkpoint_atomically(tmp_path, state, model, optimizer, scheduler)
    assert path.name == "step-00000003" and verify_checkpoint(path) is None
    expected_next = torch.rand(3)  # the RNG stream right after the save

    fresh, fresh_opt, fresh_sched = _tiny_training_objects()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    restored, rng = load_checkpoint(path, fresh, fresh_opt, fresh_sched)
    assert restored == state
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fresh_sched.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]
    assert torch.equal(
        fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    from lmforge.training.checkpoint import restore_rng

    torch.rand(7)
    restore_rng(rng)
    assert torch.equal(torch.rand(3), expected_next)


def test_damaged_checkpoints_are_detected_and_skipped(tmp_path, caplog):
    model, optimizer, scheduler = _tiny_training_objects()
    for step in (1, 2, 3):
        save_checkpoint_atomically(tmp_path, TrainState(step=step), model, optimizer, scheduler)
    newest = tmp_path / "step-00000003"
    with (newest / "model.safetensors").open("r+b") as f:
        f.truncate(10)
    assert "truncated" in verify_checkpoint(newest)
    tampered = tmp_path / "step-00000002" / "trainer_state.json"
    tampered.write_text(tampered.read_text().replace('"step": 2', '"step": 9'))
    assert "checksum" in verify_checkpoint(tmp_path / "step-00000002")
    with caplog.at_level("WARNING"):
        assert latest_intact_checkpoint(tmp_path).name == "step-00000001"
    assert "falling back" in caplog.text
    (tmp_path / "step-00000001" / "manifest.json").unlink()
    with pytest.raises(LmforgeError, match="no intact checkpoint"):
        latest_intact_checkpoint(tmp_path)


def test_half_written_checkpoint_is_invisible_and_cleaned(tmp_path):
    model, optimizer, scheduler = _tiny_training_objects()
    save_checkpoint_atomically(tmp_path, TrainState(step=1), model, optimizer, scheduler)
    half = tmp_path / ".tmp-step-00000002-999999"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    prune_checkpoints(tmp_path, keep_last=2, keep_step=None)
    assert not half.exists()


def test_retention_keeps_last_k_and_best(tmp_path):
    model, optimizer, scheduler = _tiny_training_objects()
    for step in range(1, 7):
        save_checkpoint_atomically(tmp_path, TrainState(step=step), model, optimizer, scheduler)
    prune_checkpoints(tmp_path, keep_last=2, keep_step=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-00000006",
        "step-00000005",
        "step-00000002",
    ]


def test_checkpoint_state_loads_without_unpickling_code(tmp_path):
    """Every .pt file of a checkpoint loads with weights_only=True (no code execution)."""
    model, optimizer, scheduler = _tiny_training_objects()
    path = save_checkpoint_atomically(tmp_path, TrainState(step=1), model, optimizer, scheduler)
    for file in path.glob("*.pt"):
        torch.load(file, weights_only=True)
    evil = path / "optimizer.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state": Evil()}, evil)
    with pytest.raises(Exception, match="[Ww]eights only"):
        torch.load(evil, weights_only=True)


# --- end to end in subprocesses: SIGKILL, SIGTERM, corruption ---------------------------------


def _write_config(tmp_path: Path, model_dir: Path, train_csv: Path, **overrides) -> Path:
    cfg = tiny_config(
        model_dir,
        train_csv,
        epochs=6,
        batch_size=3,
        logging_steps=2,
        eval_strategy="epoch",
        learning_rate=1e-3,
        early_stopping_patience=None,
    )
    cfg["data"]["validation_size"] = 0.25
    cfg["checkpoint"] = {"every_steps": 1, "every_minutes": None, "keep_last": 2}
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        cfg.setdefault(section, {})[name] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _validation(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        k: metrics["validation"][k]
        for k in ("accuracy", "macro_f1", "per_class", "confusion_matrix")
    }


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model_dir):
    """The uninterrupted run every interrupted one must reproduce."""
    from conftest import NEGATIVE, POSITIVE, write_csv

    tmp = tmp_path_factory.mktemp("reference")
    rows = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    random.Random(0).shuffle(rows)
    train = write_csv(tmp / "train.csv", rows)
    config = _write_config(tmp, tiny_model_dir, train)
    run_dir = tmp / "run"
    result = subprocess.run(
        [*LMFORGE, "train", str(config), "--output", str(run_dir)],
        env=subprocess_env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return {"config": config, "run_dir": run_dir, "tmp": tmp}


def test_sigkill_at_random_steps_then_resume_is_exact(tmp_path, reference_run):
    run_dir = tmp_path / "killed"
    survived = train_with_random_kills(
        reference_run["config"], run_dir, subprocess_env(tmp_path), kills=3, seed=1
    )
    assert survived >= 1
    assert max_difference(run_weights(run_dir), run_weights(reference_run["run_dir"])) == 0.0
    assert _validation(run_dir) == _validation(reference_run["run_dir"])
    history = [
        json.loads(line) for line in (run_dir / "logs" / "history.jsonl").read_text().splitlines()
    ]
    reference = [
        json.loads(line)
        for line in (reference_run["run_dir"] / "logs" / "history.jsonl").read_text().splitlines()
    ]
    strip = ("examples_per_second",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in history] == [
        {k: v for k, v in r.items() if k not in strip} for r in reference
    ]


def test_sigterm_saves_and_prints_the_resume_command(tmp_path, reference_run):
    run_dir = tmp_path / "term"
    env = subprocess_env(tmp_path)
    proc = subprocess.Popen(
        [*LMFORGE, "train", str(reference_run["config"]), "--output", str(run_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None and newest_checkpoint_step(run_dir) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if "Resume with:" in line)
    command = line.split("Resume with: ")[1].split()
    assert command[:3] == ["lmforge", "train", "--resume"]
    assert not (run_dir / "metrics.json").exists()
    result = subprocess.run(
        [*LMFORGE, *command[1:]], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert max_difference(run_weights(run_dir), run_weights(reference_run["run_dir"])) == 0.0


def test_corrupt_newest_checkpoint_falls_back(tmp_path, reference_run):
    run_dir = tmp_path / "corrupt"
    env = subprocess_env(tmp_path)
    proc = subprocess.Popen(
        [*LMFORGE, "train", str(reference_run["config"]), "--output", str(run_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while proc.poll() is None and newest_checkpoint_step(run_dir) < 5:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    newest = list_checkpoints(run_dir / "checkpoints")[0]
    with (newest / "optimizer.pt").open("r+b") as f:
        f.truncate(100)
    result = subprocess.run(
        [*LMFORGE[:-1], "train", "--resume", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"checkpoint {newest} is damaged" in result.stderr and "falling back" in result.stderr
    assert max_difference(run_weights(run_dir), run_weights(reference_run["run_dir"])) == 0.0


def test_resume_refuses_changed_settings_and_finished_runs(tmp_path, reference_run):
    from lmforge.cli import main

    run = reference_run["run_dir"]
    assert main(["train", "--resume", str(run)]) == 2  # finished: only continue makes sense
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text((run / "config.yaml").read_text())
    (partial / "checkpoints").mkdir()
    import shutil

    shutil.copytree(
        list_checkpoints(run / "checkpoints")[0], partial / "checkpoints" / "step-00000001"
    )
    code = main(
        [
            "train",
            str(reference_run["config"]),
            "--output",
            str(partial),
            "--set",
            "training.learning_rate=0.5",
        ]
    )
    assert code == 2  # different settings: not the same run


def test_rerunning_the_same_command_resumes_automatically(tmp_path, reference_run):
    run_dir = tmp_path / "auto"
    env = subprocess_env(tmp_path)
    args = [*LMFORGE, "train", str(reference_run["config"]), "--output", str(run_dir)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and newest_checkpoint_step(run_dir) < 4:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = subprocess.run(
        [*LMFORGE[:-1], *args[4:]], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "resuming from step-" in result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["resumed"] is True
    assert max_difference(run_weights(run_dir), run_weights(reference_run["run_dir"])) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_twenty_random_kills(tmp_path, tiny_model_dir, reference_run, precision):
    env = subprocess_env(tmp_path)
    config = reference_run["config"]
    if precision == "bf16":
        cfg = yaml.safe_load(config.read_text())
        cfg["training"]["precision"] = "bf16"
        config = tmp_path / "bf16.yaml"
        config.write_text(yaml.safe_dump(cfg))
        reference = tmp_path / "reference-bf16"
        subprocess.run(
            [*LMFORGE, "train", str(config), "--output", str(reference)],
            env=env,
            check=True,
            timeout=300,
        )
    else:
        reference = reference_run["run_dir"]
    cfg = yaml.safe_load(config.read_text())
    cfg["training"]["epochs"] = 40  # 160 steps: room for 20 kills even when steps outrun the killer
    config20 = tmp_path / "long.yaml"
    config20.write_text(yaml.safe_dump(cfg))
    reference20 = tmp_path / "reference20"
    subprocess.run(
        [*LMFORGE, "train", str(config20), "--output", str(reference20)],
        env=env,
        check=True,
        timeout=600,
    )
    run_dir = tmp_path / "killed20"
    survived = train_with_random_kills(config20, run_dir, env, kills=20, seed=2)
    difference = max_difference(run_weights(run_dir), run_weights(reference20))
    print(f"{precision}: survived {survived} kills, largest weight difference {difference:.3g}")
    (tmp_path.parent / f"kill-report-{precision}.json").write_text(
        json.dumps({"precision": precision, "kills": survived, "max_weight_difference": difference})
    )
    assert survived == 20
    assert difference == 0.0 if precision == "fp32" else difference < 1e-2


# --- continue: a new run from a finished one -----------------------------------------------------


def test_continue_starts_from_the_finished_weights_and_records_its_parent(tmp_path, reference_run):
    from lmforge.config import load_config
    from lmforge.training.recipe import run_training

    parent = reference_run["run_dir"]
    cfg = load_config(
        reference_run["config"],
        [
            "training.learning_rate=1e-9",
            "training.max_steps=1",
            "training.warmup_ratio=0",
            f"continue_from={parent}",
        ],
    )
    child = run_training(cfg, output_dir=tmp_path / "child")
    assert yaml.safe_load((child / "config.yaml").read_text())["continue_from"] == str(parent)
    assert json.loads((child / "metrics.json").read_text())["parent_run"] == str(parent)
    assert (
        max_difference(run_weights(child), run_weights(parent)) < 1e-5
    )  # a 1e-9 step away from the parent

    cfg = load_config(
        reference_run["config"],
        ["training.learning_rate=1e-9", "training.max_steps=1", "training.warmup_ratio=0"],
    )
    fresh = run_training(cfg, output_dir=tmp_path / "fresh")
    assert (
        max_difference(run_weights(fresh), run_weights(parent)) > 1e-3
    )  # without continue: the base model


def test_continue_lora_with_optimizer_state(tmp_path, tiny_model_dir, reference_run):
    from lmforge.config import load_config
    from lmforge.training.recipe import run_training

    base = ["method=lora", "training.epochs=2", "checkpoint.every_steps=null"]
    parent = run_training(
        load_config(reference_run["config"], base), output_dir=tmp_path / "lora-parent"
    )
    cfg = load_config(
        reference_run["config"],
        [
            *base,
            f"continue_from={parent}",
            "continue_optimizer=true",
            "training.learning_rate=1e-9",
            "training.max_steps=1",
            "training.warmup_ratio=0",
        ],
    )
    child = run_training(cfg, output_dir=tmp_path / "lora-child")
    parent_adapter = load_file(parent / "adapter" / "adapter_model.safetensors")
    child_adapter = load_file(child / "adapter" / "adapter_model.safetensors")
    assert max_difference(parent_adapter, child_adapter) < 1e-5
    with pytest.raises(LmforgeError, match="optimizer states do not fit"):
        run_training(
            load_config(
                reference_run["config"], [f"continue_from={parent}", "continue_optimizer=true"]
            ),
            output_dir=tmp_path / "full-child",
        )
