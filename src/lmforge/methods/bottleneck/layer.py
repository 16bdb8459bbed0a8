"""The bottleneck adapter module and the layer that carries it on a target projection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from lmforge.methods.bottleneck.config import BottleneckConfig

_NON_LINEARITIES = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))``: a residual two-layer MLP through a narrow bottleneck.

    Args:
        hidden_size: Size of the features the adapter reads and writes.
        bottleneck_size: Width of the bottleneck.
        non_linearity: ``"relu"``, ``"gelu"`` or ``"swish"``.
        init_std: Standard deviation of the down-projection's weight initialization.
    """

    def __init__(
        self,
        hidden_size: int,
        bottleneck_size: int,
        non_linearity: str = "relu",
        init_std: float = 1e-2,
    ):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = _NON_LINEARITIES[non_linearity]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        with torch.no_grad():
            nn.init.normal_(self.down.weight, std=init_std)
            nn.init.zeros_(self.down.bias)
            # A zero up-projection makes the adapter output exactly h, so inserting it
            # leaves the model unchanged; gradients still reach `up` (its input is not
            # zero), and `down` starts learning as soon as `up` moves away from zero.
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.act(self.down(h))  # (B, T, b)
        return h + self.up(z)  # (B, T, H)


class AdapterLayer(nn.Module):
    """A target projection followed by its named bottleneck adapters, one active at a time.

    The wrapped projection is the last linear map of a sub-layer (attention output or
    feed-forward output), so the adapter sees the sub-layer's output before the residual
    addition and LayerNorm that follow it in the block.

    Args:
        base_layer: The wrapped ``nn.Linear`` or GPT-2 ``Conv1D``.

    Attributes:
        base_layer: The original module; its parameters keep their values.
        adapters: The named adapters of this layer.
        active_adapter: Name of the adapter applied in ``forward``; ``None`` runs the
            base layer alone.
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        if projection_size(base_layer) is None:
            raise TypeError(
                f"AdapterLayer wraps nn.Linear or Conv1D, not {type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active_adapter: str | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight, for model code that reads ``proj.weight`` (dtype, init)."""
        return self.base_layer.weight

    @property
    def out_features(self) -> int:
        return projection_size(self.base_layer)

    def add(self, name: str, config: BottleneckConfig) -> None:
        """Create adapter ``name`` on this layer, with the base weight's dtype and device."""
        hidden = self.out_features
        adapter = BottleneckAdapter(
            hidden,
            bottleneck_size(hidden, config.reduction_factor),
            config.non_linearity,
            config.init_std,
        )
        weight = self.base_layer.weight
        self.adapters[name] = adapter.to(device=weight.device, dtype=weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)  # (B, T, H)
        if self.active_adapter is None or self.active_adapter not in self.adapters:
            return out
        return self.adapters[self.active_adapter](out)  # (B, T, H)

    def extra_repr(self) -> str:
        return f"active_adapter={self.active_adapter!r}"


def bottleneck_size(hidden_size: int, reduction_factor: int) -> int:
    """``hidden_size // reduction_factor``, at least 1."""
    return max(1, hidden_size // reduction_factor)


def projection_size(module: nn.Module) -> int | None:
    """Output size of an ``nn.Linear`` or GPT-2 ``Conv1D``; ``None`` for anything else."""
    if isinstance(module, nn.Linear):
        return module.out_features
    from transformers.pytorch_utils import Conv1D  # lazy: keeps transformers off import

    if isinstance(module, Conv1D):
        return module.nf  # Conv1D's weight is (in, out), the transpose of nn.Linear's
    return None
