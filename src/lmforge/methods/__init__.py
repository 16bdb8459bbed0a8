"""Fine-tuning methods (full, LoRA, bottleneck adapters, ...), each a registered plug-in."""

from lmforge.methods.base import AdapterKind, Method, MethodSetting
from lmforge.methods.registry import (
    METHOD_OPTIONS,
    adapter_handler,
    count_parameters,
    get_method,
    register_adapter_kind,
    register_method,
)

__all__ = [
    "METHOD_OPTIONS",
    "AdapterKind",
    "Method",
    "MethodSetting",
    "adapter_handler",
    "count_parameters",
    "get_method",
    "register_adapter_kind",
    "register_method",
]
