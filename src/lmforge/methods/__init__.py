"""Fine-tuning methods (full, LoRA, ...), each a registered plug-in."""

from lmforge.methods.registry import METHOD_OPTIONS, count_parameters, get_method, register_method

__all__ = ["METHOD_OPTIONS", "count_parameters", "get_method", "register_method"]
