"""Parameter-efficient methods through PEFT: LoRA, DoRA, AdaLoRA, IA3, prefix and prompt tuning.

Each method is a typed options class plus a function that turns the options into a PEFT
config; one handler (:class:`PeftMethod`) applies, saves and continues them all. What differs
is whether the trained delta can be folded into the base weights:

- **mergeable** (lora, dora, adalora, ia3): ``adapter/`` holds the small PEFT adapter and
  ``model/`` the merged plain Hugging Face model, which eval, predict, export and serve use
  with no PEFT at run time.
- **not mergeable** (prefix, prompt): virtual tokens cannot be folded into weights. ``model/``
  then holds the adapter itself, its ``adapter_config.json`` naming the base model by absolute
  path, so ``AutoPeftModelFor...from_pretrained(run/model)`` (plain ``peft``) and lmforge's
  loaders (:func:`lmforge.models.loading.load_pretrained`) rebuild base + adapter.

Target modules default to PEFT's per-architecture choice (``target_modules: null``) and can be
overridden. Classification heads train in full (PEFT's ``modules_to_save`` for the task type,
plus BERT's pooler for sequence classification: :func:`lmforge.models.structure.head_modules`).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmforge.errors import LmforgeError
from lmforge.methods.base import Method, MethodSetting, absolute_base_path
from lmforge.methods.registry import register_adapter_kind, register_method

if TYPE_CHECKING:  # peft and torch load only when a method is applied
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraOptions(_Options):
    """Options of ``method: {name: lora | dora, ...}``."""

    r: int = Field(8, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: int = Field(
        16, ge=1, description="Scaling numerator: the update is scaled by alpha / r."
    )
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; default: PEFT's choice for the architecture."
    )
    save_merged: bool = Field(True, description="Also save the merged plain model in model/.")


class AdaLoraOptions(_Options):
    """Options of ``method: {name: adalora, ...}`` (Zhang et al. 2023): LoRA whose rank budget is
    redistributed during training by importance, from ``init_r`` down to ``target_r`` on average."""

    init_r: int = Field(12, ge=1, description="Initial rank of every adapted matrix.")
    target_r: int = Field(8, ge=1, description="Average rank left after pruning.")
    alpha: int = Field(16, ge=1, description="Scaling numerator.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    warmup_share: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the steps before pruning starts (tinit)."
    )
    final_share: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Share of the steps at the end with a fixed budget (tfinal).",
    )
    interval: int = Field(10, ge=1, description="Steps between two budget reallocations (deltaT).")
    orth_reg_weight: float = Field(
        0.5, ge=0.0, description="Weight of the orthogonality regularizer."
    )
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; default: PEFT's choice."
    )
    save_merged: bool = Field(True, description="Also save the merged plain model in model/.")


class IA3Options(_Options):
    """Options of ``method: {name: ia3, ...}`` (Liu et al. 2022): learned vectors that rescale
    keys, values and feed-forward activations; the fewest trainable parameters of all."""

    target_modules: list[str] | None = Field(
        None, description="Modules to rescale; default: PEFT's choice."
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="Which of target_modules are feed-forward (rescaled at their input); "
        "default: PEFT's.",
    )
    save_merged: bool = Field(True, description="Also save the merged plain model in model/.")


class PrefixOptions(_Options):
    """Options of ``method: {name: prefix, ...}`` (Li & Liang 2021): trained key/value vectors
    prepended at every layer."""

    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Prefix length.")
    projection: bool = Field(
        False,
        description="Reparameterize the prefix through an MLP (more stable, more "
        "parameters during training).",
    )
    projection_hidden: int | None = Field(
        None, ge=1, description="Hidden size of that MLP; default: the model's."
    )


class PromptOptions(_Options):
    """Options of ``method: {name: prompt, ...}`` (Lester et al. 2021): trained soft-prompt
    embeddings prepended to the input."""

    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Soft-prompt length.")
    init: Literal["random", "text"] = Field(
        "random", description="Initialize from random vectors or from the embeddings of init_text."
    )
    init_text: str | None = Field(
        None,
        description="With init: text, the text whose token embeddings start the "
        "prompt (e.g. 'Classify the sentiment:').",
    )


Build = Callable[[Any, MethodSetting, str], "PeftConfig"]
"""(options, setting, the base model's location) -> the PEFT config of one method."""


class PeftMethod(Method):
    """Apply, save and continue one PEFT method; ``build`` turns its options into a PEFT config.

    Args:
        name: The method's name in configs.
        options_class: Its typed options.
        build: Turns (options, setting, the base model's location) into a PEFT config.
        mergeable: Whether the trained delta folds into the base weights.
        needs_task_type: Refuse tasks PEFT has no task type for (prefix, prompt).
        check: Refuses a model the method cannot adapt, before any training.
        continues_adapter: A parent run of this method continues by training its adapter.
        after_update: ``(model, step)`` after each optimizer step, where the method needs it.
    """

    def __init__(
        self,
        name: str,
        options_class: type[BaseModel],
        build: Build,
        mergeable: bool,
        needs_task_type: bool = False,
        check: Callable[[PreTrainedModel, str | None], None] | None = None,
        continues_adapter: bool = False,
        after_update: Callable[[PeftModel, int], None] | None = None,
    ):
        self.name = name
        self.options_class = options_class
        self.build = build
        self.mergeable = mergeable
        self.needs_task_type = needs_task_type
        self.check = check
        self.continues_adapter = continues_adapter
        self.updates_after_step = after_update is not None
        self._after_update = after_update

    def after_update(self, model: PeftModel, step: int) -> None:
        if self._after_update is not None:
            self._after_update(model, step)

    def apply(self, model: PreTrainedModel, setting: MethodSetting) -> PeftModel:
        from peft import PeftModel, get_peft_model

        # models.structure imports torch: not on the config-validation path.
        from lmforge.models.structure import NEW_HEADS, head_modules

        task_type = setting.peft_task_type
        if setting.adapter_dir is not None:  # continue training a finished run's adapter
            return PeftModel.from_pretrained(model, setting.adapter_dir, is_trainable=True)
        if self.needs_task_type and task_type is None:
            raise LmforgeError(
                f"method {self.name} is not available for this task (PEFT has no task type for "
                "it); use method: lora or full"
            )
        if self.check is not None:
            self.check(model, task_type)
        config = self.build(setting.options, setting, model.config._name_or_path)
        # The head above the encoder trains in full: PEFT adds the new one itself, lmforge
        # the pooler.
        extra = [m for m in head_modules(model, task_type) if m not in NEW_HEADS]
        if extra:
            config.modules_to_save = [*(config.modules_to_save or []), *extra]
        try:
            return get_peft_model(model, config)
        except (ValueError, TypeError) as err:  # e.g. target modules that match nothing
            first = str(err).strip().splitlines()[0]
            raise LmforgeError(
                f"method {self.name} cannot adapt {type(model).__name__}: {first}; set "
                "method.target_modules to module names of this model"
            ) from None

    def save(
        self,
        model: PeftModel,
        run_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        self.refuse_state_dict(state_dict)
        adapter_dir = run_dir / "adapter"
        model.save_pretrained(adapter_dir, safe_serialization=True)
        absolute_base_path(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        out = run_dir / "model"
        if not self.mergeable:  # model/ is the adapter: loaders rebuild base + adapter from it
            shutil.copytree(adapter_dir, out)
            return out
        # merge_and_unload() would merge in place and break further training; merge a copy.
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        return out


class PeftAdapters:
    """Loads and switches saved PEFT adapters (an :class:`~lmforge.methods.base.AdapterKind`)."""

    def __init__(self, peft_type: str):
        self.kind = peft_type  # one PEFT model holds adapters of one type (LoRA with LoRA)

    def load(self, model: PreTrainedModel, directory: Path, name: str = "default") -> PeftModel:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, directory, adapter_name=name)

    def add(self, model: PeftModel, directory: Path, name: str) -> None:
        model.load_adapter(str(directory), adapter_name=name)

    def activate(self, model: PeftModel, name: str) -> None:
        model.set_adapter(name)

    def head_state(self, directory: Path) -> dict[str, torch.Tensor]:
        return {}  # each PEFT adapter keeps its own copy of the head (modules_to_save)


def dispatch_peft(adapter_config: Mapping[str, Any]) -> PeftAdapters | None:
    """PEFT writes ``peft_type`` into every adapter_config.json it saves."""
    peft_type = adapter_config.get("peft_type")
    return PeftAdapters(str(peft_type)) if peft_type else None


def _lora(
    options: LoraOptions, setting: MethodSetting, base: str = "", dora: bool = False
) -> PeftConfig:
    from peft import LoraConfig

    return LoraConfig(
        task_type=setting.peft_task_type,
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        use_dora=dora,
        # New embedding rows (chat markers) train in full; PEFT ties them to a tied LM head.
        trainable_token_indices=list(setting.new_token_ids) or None,
    )


def _dora(options: LoraOptions, setting: MethodSetting, base: str = "") -> PeftConfig:
    return _lora(options, setting, base, dora=True)


def _adalora(options: AdaLoraOptions, setting: MethodSetting, base: str = "") -> PeftConfig:
    from peft import AdaLoraConfig

    if options.target_r > options.init_r:
        raise LmforgeError(
            f"method.target_r ({options.target_r}) must not exceed method.init_r ({options.init_r})"
        )
    total_steps = setting.total_steps
    tinit, tfinal = int(total_steps * options.warmup_share), int(total_steps * options.final_share)
    if total_steps - tinit - tfinal <= 0:
        raise LmforgeError(
            f"method adalora: {total_steps} steps leave no budget phase after warmup_share and "
            "final_share; train longer or lower them"
        )
    return AdaLoraConfig(
        task_type=setting.peft_task_type,
        init_r=options.init_r,
        target_r=options.target_r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=options.interval,
        orth_reg_weight=options.orth_reg_weight,
        total_step=total_steps,
        target_modules=options.target_modules,
    )


def reallocate_ranks(model: PeftModel, step: int) -> None:
    """AdaLoRA moves its rank budget by the gradients' importance, after each optimizer step."""
    model.base_model.update_and_allocate(step)


def _ia3(options: IA3Options, setting: MethodSetting, base: str = "") -> PeftConfig:
    from peft import IA3Config

    return IA3Config(
        task_type=setting.peft_task_type,
        target_modules=options.target_modules,
        feedforward_modules=options.feedforward_modules,
    )


def _prefix(options: PrefixOptions, setting: MethodSetting, base: str = "") -> PeftConfig:
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(
        task_type=setting.peft_task_type,
        num_virtual_tokens=options.num_virtual_tokens,
        prefix_projection=options.projection,
        **({"encoder_hidden_size": options.projection_hidden} if options.projection_hidden else {}),
    )


def takes_past_key_values(model: PreTrainedModel, task_type: str | None) -> None:
    """Prefix tuning feeds its vectors as ``past_key_values``. Decoders take them (as their KV
    cache); for classification PEFT looks for the argument by name, which encoders (BERT and kin)
    no longer have in transformers 5, so PEFT would fail at the first forward pass."""
    import inspect

    if task_type == "CAUSAL_LM":
        return
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), model)
    if not any(
        "past_key_values" in inspect.signature(m.forward).parameters for m in (model, backbone)
    ):
        raise LmforgeError(
            f"method prefix needs a model that takes past_key_values; {type(model).__name__} "
            "does not (encoders lost it in transformers 5): use method prompt, adapter or lora, "
            "or prefix on a causal LM"
        )


def _prompt(options: PromptOptions, setting: MethodSetting, base: str = "") -> PeftConfig:
    from peft import PromptTuningConfig

    if options.init == "text" and not options.init_text:
        raise LmforgeError(
            "method.init: text needs method.init_text, the text whose embeddings start the prompt"
        )
    return PromptTuningConfig(
        task_type=setting.peft_task_type,
        num_virtual_tokens=options.num_virtual_tokens,
        prompt_tuning_init=options.init.upper(),
        prompt_tuning_init_text=options.init_text,
        tokenizer_name_or_path=base if options.init == "text" else None,
    )


class QLoraOptions(LoraOptions):
    """Options of ``method: {name: qlora, ...}``: LoRA's, on a base held in 4-bit NF4."""


class QLoRA(PeftMethod):
    """LoRA on a 4-bit NF4 base (Dettmers et al. 2023): the base model is reloaded quantized by
    bitsandbytes, prepared for k-bit training (PEFT), then adapted. CUDA only. ``adapter/`` is
    the portable result (apply it to the full-precision base); ``model/`` is PEFT's merge into
    the 4-bit base. The GPU path has not run on lmforge's CI (no GPU there)."""

    def apply(self, model: PreTrainedModel, setting: MethodSetting) -> PeftModel:
        import torch

        if not torch.cuda.is_available():
            raise LmforgeError(
                "method qlora quantizes the base to 4 bits with bitsandbytes, which needs a CUDA "
                "GPU; on this machine use method: lora"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise LmforgeError(
                "method qlora needs bitsandbytes: pip install bitsandbytes (or use method: lora)"
            ) from None
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        location = model.config._name_or_path
        quantized = type(model).from_pretrained(
            location,
            config=model.config,
            quantization_config=quantization,
            device_map={"": torch.cuda.current_device()},
        )
        if (
            quantized.get_input_embeddings().num_embeddings
            != model.get_input_embeddings().num_embeddings
        ):
            quantized.resize_token_embeddings(model.get_input_embeddings().num_embeddings)
        del model
        quantized = prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)
        return super().apply(quantized, setting)


# LoRA after LoRA continues the parent's adapter (its optimizer state fits); the other
# methods start again from the parent's merged model.
register_method(PeftMethod("lora", LoraOptions, _lora, mergeable=True, continues_adapter=True))
register_method(PeftMethod("dora", LoraOptions, _dora, mergeable=True))
register_method(
    PeftMethod("adalora", AdaLoraOptions, _adalora, mergeable=True, after_update=reallocate_ranks)
)
register_method(PeftMethod("ia3", IA3Options, _ia3, mergeable=True))
register_method(
    PeftMethod(
        "prefix",
        PrefixOptions,
        _prefix,
        mergeable=False,
        needs_task_type=True,
        check=takes_past_key_values,
    )
)
register_method(PeftMethod("prompt", PromptOptions, _prompt, mergeable=False, needs_task_type=True))
register_method(QLoRA("qlora", QLoraOptions, _lora, mergeable=True))
register_adapter_kind(dispatch_peft)
