"""Crash-safe checkpoints: atomic directories with a checksum manifest, exact resume, retention.

A checkpoint is written into a hidden temporary directory, every file is flushed to disk,
the manifest (sha256 and size of every file) is written last, and only then is the
directory renamed to ``step-NNNNNNNN``. A rename is atomic, so a crash leaves either the
previous checkpoints or a complete new one -- never a half-written one that gets loaded.
On load, the manifest is checked; a damaged checkpoint is skipped with a message and the
previous one is used.

Weights are stored as safetensors; optimizer, scheduler and RNG state with ``torch.save``
and read back with ``weights_only=True``, so loading a checkpoint never runs code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.training.state import TrainState

if TYPE_CHECKING:
    from lmforge.distributed.strategy import Strategy

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_REQUIRED = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")


# --- random number generators ------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step may draw from, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing -----------------------------------------------------------------------------------


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors; frozen weights are reloaded from the base model on resume."""
    return {
        name: p.detach().cpu().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint_atomically(
    root: Path,
    state: TrainState,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None = None,
    *,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write ``root/step-NNNNNNNN`` atomically and return it.

    ``weights``, ``optimizer_state`` and ``rng`` default to this process's model, optimizer
    and RNGs; a distributed run passes them gathered from all ranks.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights if weights is not None else trainable_state(model), tmp / "model.safetensors")
    torch.save(
        optimizer_state if optimizer_state is not None else optimizer.state_dict(),
        tmp / "optimizer.pt",
    )
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng if rng is not None else capture_rng(), tmp / "rng.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state.to_dict(), indent=2), encoding="utf-8")
    files = {}
    for path in sorted(tmp.iterdir()):
        _fsync(path)
        files[path.name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    manifest = {"format": FORMAT_VERSION, "step": state.step, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    _fsync(tmp / MANIFEST)
    _fsync(tmp)
    if final.exists():  # the same step saved again (e.g. an interrupt right after a scheduled save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(root)
    return final


# --- reading -----------------------------------------------------------------------------------


def verify_checkpoint(path: Path) -> str | None:
    """None when intact, else what is wrong (missing file, size or checksum mismatch)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        return "no manifest (the write did not finish)"
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return "unreadable manifest"
    for name in _REQUIRED:
        if name not in files:
            return f"manifest lacks {name}"
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != meta.get("bytes"):
            return (
                f"{name} has {file.stat().st_size} bytes, the manifest says "
                f"{meta.get('bytes')} (truncated?)"
            )
        if _sha256(file) != meta.get("sha256"):
            return f"{name} does not match its checksum (modified or damaged)"
    return None


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories, newest step first (temporary directories are ignored)."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def latest_intact_checkpoint(root: Path) -> Path:
    """The newest checkpoint that passes :func:`verify_checkpoint`, saying which ones were
    skipped."""
    candidates = list_checkpoints(root)
    for path in candidates:
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is damaged: %s; falling back to the previous one", path, problem)
    if candidates:
        raise LmforgeError(
            f"no intact checkpoint in {root} ({len(candidates)} damaged); "
            "the run cannot be resumed: start it again with a new --output"
        )
    raise LmforgeError(f"no checkpoints in {root}; nothing to resume")


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None = None,
    strategy: Strategy | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Restore weights, optimizer, scheduler (and scaler) in place; return the state and RNG states.

    The RNG states are returned rather than applied: the caller restores them last, right
    before the first step, so that nothing built in between consumes random numbers.
    ``strategy`` (a :class:`~lmforge.distributed.strategy.Strategy`) loads into a sharded model.
    """
    weights = load_file(path / "model.safetensors")
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise LmforgeError(
            f"checkpoint {path} does not fit this model (missing {missing[:3]}, "
            f"unexpected {extra[:3]}); was the config changed?"
        )
    optimizer_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    if strategy is not None:
        strategy.load_model_state(model, weights)
        strategy.load_optimizer_state(model, optimizer, optimizer_state)
    else:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and (path / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    state = TrainState.from_dict(
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    )
    return state, rng


def rank_rng(rng: dict[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """This rank's RNG states from a checkpoint (a distributed checkpoint keeps every rank's)."""
    ranks = rng.get("ranks")
    if ranks is not None and len(ranks) == world_size:
        return ranks[rank]
    if world_size > 1 or ranks is not None:
        log.warning(
            "the checkpoint was written by %d process(es), this run has %d: the data order is the "
            "same, dropout masks will differ from an uninterrupted run",
            len(ranks or [rng]),
            world_size,
        )
    return {k: v for k, v in rng.items() if k != "ranks"}


def prune_checkpoints(root: Path, keep_last: int, keep_step: int | None) -> None:
    """Keep the newest ``keep_last`` checkpoints and the one at ``keep_step`` (the best); remove
    the rest."""
    for i, path in enumerate(list_checkpoints(root)):
        if i >= keep_last and int(path.name[5:]) != keep_step:
            shutil.rmtree(path, ignore_errors=True)
    for tmp in root.glob(".tmp-step-*"):
        if not tmp.name.endswith(f"-{os.getpid()}"):  # left behind by a killed process
            shutil.rmtree(tmp, ignore_errors=True)


# --- policy ------------------------------------------------------------------------------------


@dataclass
class CheckpointPolicy:
    """When to checkpoint: every N steps and/or M minutes, and at the end of each epoch."""

    every_steps: int | None = None
    every_minutes: float | None = None
    at_epoch_end: bool = True
    keep_last: int = 1
    keep_best: bool = True


class Checkpointer:
    """Saves checkpoints for one run according to a policy and times what they cost.

    Every rank calls :meth:`save`; the ``strategy`` (a
    :class:`~lmforge.distributed.strategy.Strategy`, also for one process) gathers the state
    from all of them (a collective under FSDP) and rank 0 writes.
    """

    def __init__(
        self,
        root: Path,
        policy: CheckpointPolicy,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler | None,
        strategy: Strategy,
    ):
        self.root, self.policy, self.strategy = root, policy, strategy
        self.model, self.optimizer, self.scheduler, self.scaler = (
            model,
            optimizer,
            scheduler,
            scaler,
        )
        self.last_step: int | None = None
        self.last_time = time.monotonic()

    def due(self, state: TrainState) -> bool:
        """A scheduled (step- or time-based) checkpoint is due after this step.

        The time-based part differs between ranks; a distributed loop agrees on it first.
        """
        p = self.policy
        if p.every_steps and state.step % p.every_steps == 0:
            return True
        return bool(p.every_minutes and time.monotonic() - self.last_time >= 60 * p.every_minutes)

    def save(self, state: TrainState, reason: str) -> Path | None:
        if self.last_step == state.step:
            return None
        start = time.perf_counter()
        state.checkpoints_written += 1
        path = None
        weights = self.strategy.model_state(self.model)
        optimizer_state = self.strategy.optimizer_state(self.model, self.optimizer)
        rngs = self.strategy.ctx.gather(capture_rng())
        if self.strategy.is_main:
            rng = rngs[0] if len(rngs) == 1 else {**rngs[0], "ranks": rngs}
            path = save_checkpoint_atomically(
                self.root,
                state,
                None,
                None,
                self.scheduler,
                self.scaler,
                weights=weights,
                optimizer_state=optimizer_state,
                rng=rng,
            )
        if path is not None:
            prune_checkpoints(
                self.root, self.policy.keep_last, state.best_step if self.policy.keep_best else None
            )
        seconds = time.perf_counter() - start
        state.checkpoint_seconds += seconds
        self.last_step, self.last_time = state.step, time.monotonic()
        if path is not None:
            log.debug("checkpoint %s (%s) in %.2f s", path.name, reason, seconds)
        return path
