"""Bottleneck adapters on a whole model: find the targets, add, switch, delete, save, load.

PEFT has no sequential bottleneck adapters, so this package provides them in the shape
of a PEFT tuner: the config (:mod:`.config`), a layer that wraps a target module
(:mod:`.layer`), and these model-level functions.

An adapter is a small residual MLP, ``h + up(act(down(h)))``, inserted on the output of
a sub-layer's output projection, before that sub-layer's residual addition and
LayerNorm:

* Houlsby et al. (2019): one adapter after the attention output projection and one
  after the feed-forward output projection, in every layer.
* Pfeiffer et al. (2021): one adapter after the feed-forward output projection only;
  half the parameters, usually about the same quality.

``up`` starts at zero, so a freshly inserted adapter is the identity: the model computes
exactly what the base model computes until training moves it.

Typical use::

    names = add_adapter(model, BottleneckConfig(placement="houlsby"))
    mark_only_adapters_trainable(model, "default", also=["classifier"])
    ...  # train
    save_adapter(model, "out/adapter", extra_state={k: v for k, v in model.state_dict().items()
                                                    if k.startswith("classifier.")})
    load_adapter(fresh_model, "out/adapter")
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError, did_you_mean
from lmforge.methods.bottleneck.config import ADAPTER_TYPE, CONFIG_NAME, BottleneckConfig
from lmforge.methods.bottleneck.layer import AdapterLayer, projection_size

WEIGHTS_NAME = "adapter_model.safetensors"

# Key prefixes inside adapter_model.safetensors. Adapter keys are stored *without* the
# adapter name, so a file saved as "default" can be loaded under any other name.
_ADAPTER_PREFIX = "bottleneck."
_EXTRA_PREFIX = "extra."

# (attention output projection, feed-forward output projection) per architecture family.
# Regexes are anchored with ``$`` and searched in full module names. The BERT ones need
# the ``layer\.\d+\.`` prefix: a plain ``output\.dense$`` would also hit
# ``attention.output.dense``.
_BERT_TARGETS = (r"layer\.\d+\.attention\.output\.dense$", r"layer\.\d+\.output\.dense$")
_DISTILBERT_TARGETS = (r"attention\.out_lin$", r"ffn\.lin2$")
_LLAMA_TARGETS = (r"self_attn\.o_proj$", r"mlp\.down_proj$")
_GPT2_TARGETS = (r"attn\.c_proj$", r"mlp\.c_proj$")

_TARGETS_BY_MODEL_TYPE: dict[str, tuple[str, str]] = {
    "bert": _BERT_TARGETS,
    "roberta": _BERT_TARGETS,
    "xlm-roberta": _BERT_TARGETS,
    "electra": _BERT_TARGETS,
    "distilbert": _DISTILBERT_TARGETS,
    "llama": _LLAMA_TARGETS,
    "mistral": _LLAMA_TARGETS,
    "qwen2": _LLAMA_TARGETS,
    "qwen3": _LLAMA_TARGETS,
    "gemma": _LLAMA_TARGETS,
    "gpt2": _GPT2_TARGETS,
}


# -- target selection -------------------------------------------------------------------


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def target_patterns(model: nn.Module, config: BottleneckConfig) -> tuple[str, ...]:
    """The regexes that select the modules to wrap for ``config`` on ``model``.

    Args:
        model: The model to adapt.
        config: The adapter config; its ``target_modules`` win when set.

    Returns:
        The regexes, searched in full module names.

    Raises:
        LmforgeError: The architecture is unknown and ``target_modules`` is not set.
    """
    if config.target_modules is not None:
        return tuple(config.target_modules)
    model_type = _model_type(model)
    pair = _TARGETS_BY_MODEL_TYPE.get(model_type) if model_type else None
    if pair is None and _matches_any(model, _BERT_TARGETS):
        # Many encoders (camembert, deberta, ...) reuse BERT's module layout under their
        # own model_type; recognize the layout rather than listing every name.
        pair = _BERT_TARGETS
    if pair is None:
        raise LmforgeError(
            f"no default bottleneck adapter targets for model type {model_type!r}; "
            f"set method.target_modules to regexes of the output projections to adapt"
        )
    attention, ffn = pair
    return (attention, ffn) if config.placement == "houlsby" else (ffn,)


def _matches_any(model: nn.Module, patterns: Sequence[str]) -> bool:
    return any(re.search(p, name) for name, _ in model.named_modules() for p in patterns)


def _find_targets(model: nn.Module, patterns: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """Modules whose names match a pattern and that can carry an adapter, in model order.

    Existing :class:`AdapterLayer` s match by their own name (the name the projection had
    before wrapping); their insides (``base_layer``, the adapters' ``down``/``up``) are
    never targets, or a broad regex would wrap an adapter's own projections.
    """
    compiled = [re.compile(p) for p in patterns]
    wrapped: list[str] = []
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(w + ".") for w in wrapped):
            continue
        if isinstance(module, AdapterLayer):
            wrapped.append(name)
        if not any(c.search(name) for c in compiled):
            continue
        if isinstance(module, AdapterLayer) or projection_size(module) is not None:
            found.append((name, module))
    return found


# -- model-level API ----------------------------------------------------------------------


def _adapter_layers(model: nn.Module) -> list[tuple[str, AdapterLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterLayer)]


def _configs(model: nn.Module) -> dict[str, BottleneckConfig]:
    # A plain attribute (not a buffer): configs are not tensors and must not enter state_dict.
    configs = getattr(model, "_bottleneck_configs", None)
    if configs is None:
        configs = {}
        model._bottleneck_configs = configs
    return configs


def _check_name(model: nn.Module, name: str) -> None:
    known = _configs(model)
    if name not in known:
        listed = ", ".join(repr(k) for k in known) or "none"
        raise LmforgeError(
            f"unknown bottleneck adapter {name!r}{did_you_mean(name, known)}; "
            f"known adapters: {listed}"
        )


def add_adapter(model: nn.Module, config: BottleneckConfig, name: str = "default") -> list[str]:
    """Insert bottleneck adapter ``name`` into ``model`` (in place) and make it active.

    The first adapter wraps each target projection in an :class:`AdapterLayer`; a later
    adapter with another name joins the existing layers (and wraps any targets of its own
    that are not wrapped yet), so several adapters can share one base model. Nothing is
    frozen here: that is the caller's choice (see :func:`mark_only_adapters_trainable`).

    Args:
        model: The model to adapt, usually a Hugging Face ``PreTrainedModel``.
        config: The adapter's settings.
        name: The adapter's name, used to switch, save and count it.

    Returns:
        The names of the modules that carry the new adapter, in model order.

    Raises:
        LmforgeError: ``name`` exists already, the architecture has no default targets,
            or the targets match no ``nn.Linear``/``Conv1D`` module.
    """
    if not name or "." in name:
        # The name becomes a ModuleDict key, which must not contain dots.
        raise LmforgeError(
            f"bad bottleneck adapter name {name!r}: use a non-empty name without '.'"
        )
    if name in _configs(model):
        raise LmforgeError(
            f"bottleneck adapter {name!r} already exists on this model; pick another name"
        )
    patterns = target_patterns(model, config)
    targets = _find_targets(model, patterns)
    if not targets:
        raise LmforgeError(
            f"bottleneck target_modules {list(patterns)} match no nn.Linear or Conv1D "
            f"module of this model; check the module names with model.named_modules()"
        )

    names = []
    for module_name, module in targets:
        if not isinstance(module, AdapterLayer):
            parent_name, _, child_name = module_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            module = AdapterLayer(module)
            setattr(parent, child_name, module)  # works for ModuleList indices ("0") too
        module.add(name, config)
        names.append(module_name)
    _configs(model)[name] = config
    set_active_adapter(model, name)
    return names


def set_active_adapter(model: nn.Module, name: str | None) -> None:
    """Make adapter ``name`` the one that runs; ``None`` runs the base model alone.

    Layers that do not carry ``name`` (it targets fewer modules than another adapter)
    run their base projection alone.

    Raises:
        LmforgeError: ``name`` is not an adapter of this model.
    """
    if name is not None:
        _check_name(model, name)
    for _, layer in _adapter_layers(model):
        layer.active_adapter = name if name in layer.adapters else None


def active_adapter(model: nn.Module) -> str | None:
    """Name of the adapter that runs now, or ``None`` when the base model runs alone."""
    for _, layer in _adapter_layers(model):
        if layer.active_adapter is not None:
            return layer.active_adapter
    return None


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; layers left without adapters get their original module back.

    Deleting every adapter restores the plain model (original module types and
    ``state_dict`` keys), e.g. for ``save_pretrained``.

    Raises:
        LmforgeError: ``name`` is not an adapter of this model.
    """
    _check_name(model, name)
    for module_name, layer in _adapter_layers(model):
        if name not in layer.adapters:
            continue
        del layer.adapters[name]
        if layer.active_adapter == name:
            layer.active_adapter = None
        if not layer.adapters:
            parent_name, _, child_name = module_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, layer.base_layer)
    del _configs(model)[name]


def _adapter_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """Adapter ``name``'s parameters, keyed by their full names in ``model``."""
    _check_name(model, name)
    params = {}
    for module_name, layer in _adapter_layers(model):
        if name in layer.adapters:
            prefix = f"{module_name}.adapters.{name}."
            for key, param in layer.adapters[name].named_parameters():
                params[prefix + key] = param
    return params


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors (detached), keyed as in ``model.state_dict()``.

    The keys depend only on the architecture and the adapter name, so they are the same
    in every process that builds the same model.

    Raises:
        LmforgeError: ``name`` is not an adapter of this model.
    """
    return {k: p.detach() for k, p in _adapter_parameters(model, name).items()}


def count_adapter_parameters(model: nn.Module, name: str = "default") -> int:
    """Number of parameters in adapter ``name`` (all its layers together)."""
    return sum(p.numel() for p in _adapter_parameters(model, name).values())


def mark_only_adapters_trainable(
    model: nn.Module, name: str = "default", also: Sequence[str] = ()
) -> None:
    """Train adapter ``name`` (and parameters named like ``also``); freeze everything else.

    Args:
        model: The adapted model.
        name: The adapter to train.
        also: Substrings of parameter names that train too, e.g. ``["classifier"]`` for a
            new, randomly initialized task head.

    Raises:
        LmforgeError: ``name`` is not an adapter of this model.
    """
    if isinstance(also, str):  # also="classifier" would otherwise match single letters
        also = (also,)
    trainable = set(_adapter_parameters(model, name))
    for key, param in model.named_parameters():
        param.requires_grad_(key in trainable or any(s in key for s in also))


def _strip_name(key: str, name: str) -> str:
    """``x.adapters.<name>.down.weight`` -> ``x.down.weight`` (the on-disk form)."""
    return key.replace(f".adapters.{name}.", ".", 1)


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    name: str = "default",
    extra_state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write adapter ``name`` to ``directory``.

    Files: ``adapter_config.json`` (the config, ``adapter_type`` and
    ``base_model_name_or_path``) and ``adapter_model.safetensors`` (the adapter's tensors
    under ``bottleneck.``, ``extra_state`` under ``extra.``).

    Args:
        model: The adapted model.
        directory: Created if missing; existing adapter files are overwritten.
        name: The adapter to save. Its name is not stored in the tensor keys, so it can
            be loaded under another name.
        extra_state: Other tensors to restore on load, keyed as in ``model.state_dict()``,
            e.g. a trained classification head.

    Returns:
        The directory.

    Raises:
        LmforgeError: ``name`` is not an adapter of this model.
    """
    from safetensors.torch import save_file

    _check_name(model, name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        _ADAPTER_PREFIX + _strip_name(k, name): v
        for k, v in adapter_state_dict(model, name).items()
    }
    tensors.update({_EXTRA_PREFIX + k: v.detach() for k, v in (extra_state or {}).items()})
    # safetensors refuses shared or strided storage (tied weights, views): store copies.
    save_file(
        {k: v.cpu().contiguous().clone() for k, v in tensors.items()},
        str(directory / WEIGHTS_NAME),
        metadata={"format": "pt", "adapter_type": ADAPTER_TYPE},
    )

    config = _configs(model)[name].to_dict()
    config["adapter_type"] = ADAPTER_TYPE
    config["base_model_name_or_path"] = getattr(
        getattr(model, "config", None), "_name_or_path", None
    )
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory


def read_adapter_config(directory: str | Path) -> BottleneckConfig:
    """Read ``adapter_config.json`` from a directory written by :func:`save_adapter`.

    Raises:
        LmforgeError: The file is missing, is not JSON, or is not a bottleneck adapter's.
    """
    path = Path(directory) / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"no bottleneck adapter in {directory}: {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmforgeError(f"cannot read bottleneck adapter config {path}: {e}") from None
    if not isinstance(data, dict):
        raise LmforgeError(f"bottleneck adapter config {path} is not a JSON object")
    kind = data.pop("adapter_type", None)
    if kind != ADAPTER_TYPE:
        hint = f" (a PEFT {data['peft_type']} adapter)" if "peft_type" in data else ""
        raise LmforgeError(
            f"{path} is not a bottleneck adapter config: adapter_type is {kind!r}{hint}"
        )
    data.pop("base_model_name_or_path", None)
    try:
        return BottleneckConfig.from_dict(data)
    except LmforgeError as e:
        raise LmforgeError(f"{path}: {e}") from None
    except TypeError as e:  # e.g. a JSON list where a number belongs
        raise LmforgeError(f"{path}: bad bottleneck adapter config: {e}") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise LmforgeError(f"bottleneck adapter weights {path} not found") from None
    except (OSError, SafetensorError) as e:
        raise LmforgeError(f"cannot read bottleneck adapter weights {path}: {e}") from None


def saved_extra_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """The ``extra_state`` saved with an adapter (e.g. its trained head), keyed as in the model."""
    saved = _read_tensors(Path(directory) / WEIGHTS_NAME)
    return {k[len(_EXTRA_PREFIX) :]: v for k, v in saved.items() if k.startswith(_EXTRA_PREFIX)}


def load_adapter(model: nn.Module, directory: str | Path, name: str = "default") -> nn.Module:
    """Add the adapter saved in ``directory`` to ``model`` as ``name`` and make it active.

    Adapter tensors load strictly: the saved keys must be exactly those the config
    creates on this model, with the same shapes. Saved ``extra_state`` loads into the
    model with ``load_state_dict(strict=False)``; each of its keys must exist in the
    model. On any error the model is left as it was.

    Args:
        model: The base model (or one already carrying other adapters), same architecture
            as the one saved from.
        directory: A directory written by :func:`save_adapter`.
        name: The name to give the loaded adapter.

    Returns:
        ``model``, for chaining.

    Raises:
        LmforgeError: A file is missing or unreadable, or the saved tensors do not fit
            this model; the message names the directory.
    """
    directory = Path(directory)
    config = read_adapter_config(directory)
    saved = _read_tensors(directory / WEIGHTS_NAME)
    adapter = {
        k[len(_ADAPTER_PREFIX) :]: v for k, v in saved.items() if k.startswith(_ADAPTER_PREFIX)
    }
    extra = {k[len(_EXTRA_PREFIX) :]: v for k, v in saved.items() if k.startswith(_EXTRA_PREFIX)}
    stray = sorted(k for k in saved if not k.startswith((_ADAPTER_PREFIX, _EXTRA_PREFIX)))
    if stray:
        raise LmforgeError(f"unexpected tensor {stray[0]!r} in {directory / WEIGHTS_NAME}")

    add_adapter(model, config, name)
    try:
        # Checked after wrapping: extra keys were taken from an adapted model's state_dict.
        model_state = model.state_dict()
        for key, value in extra.items():
            if key not in model_state:
                raise LmforgeError(
                    f"extra state {key!r} saved in {directory} is not a parameter or buffer "
                    f"of this model{did_you_mean(key, model_state)}"
                )
            if value.shape != model_state[key].shape:
                raise LmforgeError(
                    f"extra state {key!r} saved in {directory} has shape "
                    f"{tuple(value.shape)}, the model's has {tuple(model_state[key].shape)}"
                )
        expected = {_strip_name(k, name): k for k in adapter_state_dict(model, name)}
        missing = sorted(set(expected) - set(adapter))
        unexpected = sorted(set(adapter) - set(expected))
        if missing or unexpected:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
            raise LmforgeError(
                f"bottleneck adapter in {directory} does not fit this model: {what} "
                f"({len(missing)} missing, {len(unexpected)} unexpected adapter tensors)"
            )
        current = adapter_state_dict(model, name)
        for key, full_key in expected.items():
            if adapter[key].shape != current[full_key].shape:
                raise LmforgeError(
                    f"bottleneck adapter in {directory} does not fit this model: {key!r} has "
                    f"shape {tuple(adapter[key].shape)}, expected {tuple(current[full_key].shape)}"
                )
    except LmforgeError:
        delete_adapter(model, name)  # leave the model as it was
        raise

    # load_state_dict copies into the existing tensors, keeping their dtype and device.
    state = {full_key: adapter[key] for key, full_key in expected.items()}
    state.update(extra)
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # checked above
    return model
