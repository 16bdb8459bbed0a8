"""How the model is spread over processes: one process, DDP, or FSDP.

- ``ddp``: every rank holds the whole model; Accelerate wraps it in PyTorch's
  ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU), which all-reduces gradients.
- ``fsdp``: PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) shards parameters,
  gradients and optimizer state; each transformer layer (the model's ``_no_split_modules``)
  is one unit, gathered just before it runs and freed after. Accelerate's FSDP integration
  is GPU-only; FSDP2 itself also runs on CPU with gloo, so lmforge calls it directly and the
  same config trains on a laptop and on a GPU cluster.

Checkpoints and saved models always hold full (unsharded) tensors, so a run trained with
FSDP loads with plain ``transformers`` like any other.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from lmforge.distributed.context import DistContext
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")


class Strategy:
    """Wraps the model for the strategy and gives the loop, checkpoints and saving what they need.

    With one process both strategies are plain single-process training.
    """

    def __init__(
        self,
        name: str,
        ctx: DistContext,
        accelerator: Accelerator,
        device: str,
        precision: str,
        cpu_offload: bool = False,
    ):
        if name not in STRATEGIES:
            raise LmforgeError(
                f"distributed.strategy: unknown strategy {name!r}; "
                f"use one of {', '.join(STRATEGIES)}"
            )
        self.ctx, self.accelerator, self.device, self.precision = (
            ctx,
            accelerator,
            device,
            precision,
        )
        self.sharded = name == "fsdp" and ctx.enabled
        self.name = name if ctx.enabled else "single"
        self.cpu_offload = cpu_offload
        if self.sharded and precision == "fp16":
            raise LmforgeError(
                "distributed.strategy fsdp: fp16 needs a sharded gradient scaler; "
                "set training.precision to bf16 (or fp32)"
            )
        if cpu_offload and not self.sharded:
            log.warning(
                "distributed.cpu_offload applies to fsdp with several processes only; ignored"
            )

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    # --- building ------------------------------------------------------------------------------

    def prepare(
        self,
        model: torch.nn.Module,
        build_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.nn.Module]:
        """(model to train, optimizer, the plain model underneath for saving and checkpoints)."""
        if not self.sharded:
            optimizer = build_optimizer(model)
            model, optimizer = self.accelerator.prepare(model, optimizer)
            return model, optimizer, self.accelerator.unwrap_model(model)
        model = self._fully_shard(model.to(self.accelerator.device))
        if self.precision == "bf16":  # the same autocast Accelerate applies in the other strategies
            model.forward = torch.autocast(
                device_type=self.accelerator.device.type, dtype=torch.bfloat16
            )(model.forward)
        return model, build_optimizer(model), model

    def _fully_shard(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

        mesh = init_device_mesh(self.accelerator.device.type, (self.ctx.world_size,))
        options: dict[str, Any] = {"mesh": mesh}
        if self.cpu_offload:
            if self.device != "cuda":
                log.warning(
                    "distributed.cpu_offload: the parameters already live in CPU memory; ignored"
                )
            else:
                options["offload_policy"] = CPUOffloadPolicy()
        unit_names = set(getattr(model, "_no_split_modules", None) or [])
        units = [m for m in model.modules() if type(m).__name__ in unit_names]
        if not units:
            raise LmforgeError(
                f"distributed.strategy fsdp: {type(model).__name__} does not name its layers "
                "(_no_split_modules); use strategy ddp"
            )
        for unit in units:
            fully_shard(unit, **options)
        fully_shard(model, **options)
        log.info("fsdp: %d layers sharded over %d processes", len(units), self.ctx.world_size)
        return model

    # --- the step ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module) -> Iterator[None]:
        """Skip the gradient all-reduce / reduce-scatter on micro-batches that do not end a step."""
        if self.sharded:
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        else:
            with self.accelerator.no_sync(model):
                yield

    def backward(self, loss: torch.Tensor) -> None:
        if self.sharded:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float) -> None:
        if self.sharded:  # the norm over all shards (DTensor gradients)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        else:
            self.accelerator.clip_grad_norm_(model.parameters(), max_norm)

    @staticmethod
    def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Bytes this process holds of parameters, their gradients (one per trainable parameter)
        and optimizer state: what FSDP divides by the number of processes and DDP does not."""

        def local(t: torch.Tensor) -> torch.Tensor:
            return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's own shard

        total = 0
        for p in model.parameters():
            size = local(p).numel() * local(p).element_size()
            total += size * (2 if p.requires_grad else 1)
        for state in optimizer.state.values():
            total += sum(
                local(v).numel() * local(v).element_size()
                for v in state.values()
                if torch.is_tensor(v)
            )
        return total

    # --- full state for checkpoints and saving (collective under fsdp) ---------------------------

    def model_state(
        self, model: torch.nn.Module, trainable_only: bool = True
    ) -> dict[str, torch.Tensor] | None:
        """Full CPU tensors on rank 0; None on the others. Every rank must call it."""
        names = {n for n, p in model.named_parameters() if p.requires_grad or not trainable_only}
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            full = get_model_state_dict(
                model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
            if not trainable_only:
                return full if self.is_main else None
            return (
                {k: v.contiguous() for k, v in full.items() if k in names} if self.is_main else None
            )
        if not self.is_main:
            return None
        return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if n in names}

    def optimizer_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any] | None:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            full = get_optimizer_state_dict(
                model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
            return full if self.is_main else None
        return optimizer.state_dict() if self.is_main else None

    def load_model_state(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """Load full tensors (each rank has read them) into the possibly sharded model."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
            )

            set_model_state_dict(
                model, weights, options=StateDictOptions(full_state_dict=True, strict=False)
            )
            return
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, tensor in weights.items():
                params[name].copy_(tensor)

    def load_optimizer_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                model, optimizer, state, options=StateDictOptions(full_state_dict=True)
            )
        else:
            optimizer.load_state_dict(state)
