"""Typed run configuration, grouped by concern.

Every field has a default and a one-line description; the descriptions are what
``lmforge config`` prints, so they double as the reference of every key. Components
receive the plain values they need (``cfg.training.learning_rate``), never the whole
config object.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from lmforge.errors import did_you_mean
from lmforge.methods.registry import METHOD_OPTIONS, get_method
from lmforge.tasks.registry import TASK_NAMES

DEFAULT_MODEL = "default"


class _Section(BaseModel):
    # A column named 0 or a run named 2024 is meant as text: accept numbers where strings belong.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class ModelConfig(_Section):
    """Which pretrained model to start from."""

    name_or_path: str = Field(
        DEFAULT_MODEL,
        description="'default' (the packaged MiniLM-L6), a local Hugging Face directory, or a hub "
        "id.",
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) for a hub id."
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub (off: safer)."
    )
    from_scratch: FromScratchConfig | None = Field(
        None,
        description="causal_lm / masked_lm: build a new model of this shape instead of loading "
        "name_or_path.",
    )
    keep_layers: int | list[int] | None = Field(
        None,
        description="Keep only some transformer layers of the loaded model: N (evenly spaced, "
        "ending with the last) or a list of indices; a smaller student for distillation.",
    )

    @field_validator("keep_layers")
    @classmethod
    def _layers(cls, value: int | list[int] | None) -> int | list[int] | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"keep at least one layer (got {value})")
        if isinstance(value, list) and (not value or sorted(set(value)) != value or value[0] < 0):
            raise ValueError(
                f"must be increasing layer indices from 0, e.g. [1, 3, 5] (got {value})"
            )
        return value


class FromScratchConfig(_Section):
    """A new, randomly initialized model (causal_lm / masked_lm pretraining)."""

    arch: Literal["llama", "gpt2", "bert"] = Field(
        ..., description="Architecture: llama or gpt2 (causal_lm), bert (masked_lm)."
    )
    layers: int = Field(4, ge=1, le=256, description="Transformer layers.")
    hidden: int = Field(256, ge=8, le=65_536, description="Hidden size.")
    heads: int = Field(4, ge=1, le=1024, description="Attention heads (must divide hidden).")
    kv_heads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="llama: key/value heads (grouped-query attention); default: heads.",
    )
    intermediate: int | None = Field(
        None, ge=8, description="Feed-forward size; default 4 x hidden."
    )
    vocab_size: int = Field(
        8000,
        ge=300,
        le=1_000_000,
        description="Size of the tokenizer trained on the training corpus.",
    )
    max_positions: int | None = Field(
        None, ge=8, description="Longest sequence the model can take; default data.max_length."
    )
    tokenizer: str | None = Field(
        None, description="Use this tokenizer (directory or hub id) instead of training one."
    )

    @model_validator(mode="after")
    def _heads(self) -> FromScratchConfig:
        if self.hidden % self.heads:
            raise ValueError(
                f"model.from_scratch.heads ({self.heads}) must divide hidden ({self.hidden})"
            )
        if self.kv_heads and self.heads % self.kv_heads:
            raise ValueError(
                f"model.from_scratch.kv_heads ({self.kv_heads}) must divide heads ({self.heads})"
            )
        return self


class DataConfig(_Section):
    """Where the examples come from and how to read and clean them."""

    train_file: str | None = Field(
        None,
        description="Training file (CSV, TSV, JSONL, Parquet or delimited text; CoNLL or token "
        "JSONL for token_classification).",
    )
    validation_file: str | None = Field(
        None, description="Validation file; carved from train_file when absent."
    )
    test_file: str | None = Field(
        None, description="Optional held-out test file, evaluated once at the end."
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "delimited", "text"] = Field(
        "auto", description="File format; 'auto' decides from the extension, then the content."
    )
    delimiter: str | None = Field(
        None,
        description="Field delimiter: ',' for CSV, '\\t' for TSV, e.g. '@' for 'sentence@label' "
        "lines.",
    )
    header: bool = Field(
        True, description="Whether CSV/TSV/delimited files start with a header row."
    )
    encoding: str = Field("utf-8", description="Text encoding of the files, e.g. 'latin-1'.")
    text_column: str = Field("text", description="Column holding the input text.")
    text_pair_column: str | None = Field(
        None,
        description="Column holding the second text of a pair (paraphrase, NLI, question-answer "
        "match).",
    )
    negative_column: str | None = Field(
        None,
        description="embedding: column holding a hard negative for each (query, positive) pair.",
    )
    label_column: str = Field("label", description="Column holding the label.")
    label_delimiter: str = Field(
        "|",
        min_length=1,
        description="multi_label_classification: separator of several labels in one cell "
        "(a JSON list needs none).",
    )
    tag_scheme: Literal["bio", "bioes"] = Field(
        "bio",
        description="token_classification: tag scheme of the CoNLL/JSONL files (bio is IOB2).",
    )
    repair_tags: bool = Field(
        True,
        description="token_classification: repair invalid tag transitions (I-x after O becomes "
        "B-x, counted and reported); false: reject the file.",
    )
    label_all_tokens: bool = Field(
        False,
        description="token_classification: train on every sub-token of a word, not only the first.",
    )
    documents: Literal["line", "blank_line"] = Field(
        "line",
        description="causal_lm / masked_lm, plain-text corpora: one document per line, or "
        "documents separated by blank lines.",
    )
    packing: Literal["packed", "documents"] | None = Field(
        None,
        description="causal_lm / masked_lm: 'packed' (default) cuts the token stream into full "
        "blocks of max_length; 'documents' gives each document its own (padded) blocks. chat: "
        "'packed' puts several whole conversations in one row of up to max_length; 'documents' "
        "(default) one conversation per row.",
    )
    isolate_documents: bool = Field(
        True,
        description="causal_lm and chat, packed: documents in one row do not attend to each other "
        "(where the model supports a block-diagonal mask; else the end-of-document token "
        "separates them).",
    )
    chat_template: str | None = Field(
        None,
        description="chat / instruction: 'chatml' (lmforge's default, even where the tokenizer "
        "has a template), a .jinja file, or a Jinja template string; default: the tokenizer's own "
        "template, else chatml.",
    )
    mlm_probability: float = Field(
        0.15, gt=0.0, lt=1.0, description="masked_lm: share of tokens to predict."
    )
    whole_word_masking: bool = Field(
        False, description="masked_lm: mask all sub-tokens of a chosen word together."
    )
    hf_dataset: str | None = Field(
        None, description="Hugging Face dataset name or local dataset script/dir."
    )
    hf_config: str | None = Field(
        None, description="Configuration name of the Hugging Face dataset."
    )
    hf_train_split: str = Field("train", description="Split of hf_dataset used for training.")
    hf_validation_split: str | None = Field(
        None, description="Split of hf_dataset used for validation."
    )
    hf_test_split: str | None = Field(None, description="Split of hf_dataset used as the test set.")
    validation_size: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of train carved off (stratified) as validation when none is given.",
    )
    test_size: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of train carved off (stratified) as test when no test_file is given.",
    )
    max_length: int = Field(
        128, ge=8, le=8192, description="Longest input in tokens; longer inputs are truncated."
    )
    normalize_whitespace: bool = Field(True, description="Strip and collapse whitespace in texts.")
    drop_duplicates: bool = Field(
        True,
        description="Drop exact duplicate rows, and every copy of a text seen with conflicting "
        "labels.",
    )
    labels: list[str] | None = Field(
        None,
        description="Fixed label list (its order gives the ids); default: sorted labels of train.",
    )

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.train_file and self.hf_dataset:
            raise ValueError("give either data.train_file or data.hf_dataset, not both")
        if self.validation_size + self.test_size >= 0.9:
            raise ValueError("data.validation_size + data.test_size must stay below 0.9")
        return self


class TrainingConfig(_Section):
    """How to optimize: schedule, precision, evaluation and stopping."""

    epochs: int = Field(3, ge=1, le=10_000, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int | Literal["auto"] = Field(
        32,
        description="Examples per forward pass, all processes together (each of N processes takes "
        "1/N); 'auto': measured by the planner (see `lmforge plan`).",
    )
    effective_batch_size: int = Field(
        32,
        ge=1,
        le=65_536,
        description="With batch_size: auto, examples per optimizer step (batch x accumulation).",
    )
    memory_budget: str | None = Field(
        None,
        description="Memory a run may use, e.g. '8GB'; for batch_size: auto. Default: 90% of free "
        "RAM or GPU memory.",
    )
    eval_batch_size: int = Field(
        64, ge=1, le=65_536, description="Examples per forward pass at evaluation."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=4096, description="Micro-batches accumulated per optimizer step."
    )
    learning_rate: float = Field(5e-5, gt=0.0, le=1.0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(
        0.01, ge=0.0, le=1.0, description="AdamW weight decay (not applied to biases and norms)."
    )
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Decay after warmup."
    )
    warmup_ratio: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of steps with linear warmup."
    )
    max_grad_norm: float = Field(
        1.0, ge=0.0, description="Gradient clipping norm; 0 disables clipping."
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="'auto' picks bf16 where the CPU or GPU supports it, else fp32."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' uses a GPU when one is visible."
    )
    seed: int = Field(42, ge=0, description="Seed for weights, shuffling and the data split.")
    eval_strategy: Literal["epoch", "steps", "no"] = Field(
        "epoch", description="When to evaluate on validation."
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps (with eval_strategy: steps)."
    )
    metric: str | None = Field(
        None,
        description="Validation metric for choosing the best model and early stopping; default: "
        "the task's first (macro_f1 for classification, spearman for regression, f1 for NER).",
    )
    release_memory_steps: int | None = Field(
        None,
        ge=1,
        description="Hand freed host memory back to the system (glibc malloc_trim) every N "
        "optimizer steps, besides after each evaluation and epoch; lowers peak RSS on CPU.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without improvement of the metric.",
    )
    logging_steps: int = Field(10, ge=1, description="Log the training loss every N steps.")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes.")
    group_by_length: bool = Field(
        True,
        description="Batch examples of similar length together (little padding); batches stay "
        "shuffled.",
    )
    group_window: int = Field(
        50,
        ge=2,
        le=10_000,
        description="With group_by_length: batches per sorting window (smaller: more random "
        "batches, more padding).",
    )
    pad_to_multiple_of: int = Field(
        8,
        ge=1,
        le=512,
        description="Round each training batch's width up to a multiple of N tokens (1: no "
        "rounding). 8 suits GPU tensor cores and, on a CPU, keeps the number of batch shapes "
        "small, which lowers the peak RSS by 15% (docs/benchmarks.md, 'Peak memory').",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: less memory, about 30% more time.",
    )
    fast_dropout: bool = Field(
        True,
        description="CPU: draw dropout masks 4 elements per random word (same semantics, ~2x "
        "cheaper).",
    )
    compile: bool = Field(
        False,
        description="torch.compile the model (pays off only on long runs; see docs/benchmarks.md).",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="CPU threads for PyTorch; default: PyTorch's choice (the physical cores).",
    )
    keep_sparsity: bool = Field(
        False,
        description="Weights of the transformer layers that are exactly zero at the start stay "
        "zero (recovery fine-tuning of a pruned model).",
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65_536
        ):
            return value
        raise ValueError(f"must be a whole number from 1 to 65536, or 'auto' (got {value!r})")

    @field_validator("memory_budget")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        from lmforge.planning.memory import parse_size

        if value is not None:
            parse_size(value)  # raises ValueError with the accepted forms
        return value

    @field_validator("eval_strategy", mode="before")
    @classmethod
    def _yaml11_no(cls, value: Any) -> Any:
        # lmforge's own loader keeps `no` as text; a dict parsed elsewhere (yaml.safe_load) has
        # False.
        return "no" if value is False else value

    @model_validator(mode="after")
    def _check_eval(self) -> TrainingConfig:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("training.eval_strategy is 'steps': set training.eval_steps too")
        return self


class CheckpointConfig(_Section):
    """When to write crash-safe checkpoints and how many to keep."""

    every_steps: int | None = Field(None, ge=1, description="Checkpoint every N optimizer steps.")
    every_minutes: float | None = Field(
        30.0,
        gt=0,
        description="Checkpoint when this many minutes passed since the last one; null disables.",
    )
    at_epoch_end: bool = Field(True, description="Checkpoint at the end of every epoch.")
    keep_last: int = Field(
        1, ge=1, le=1000, description="Keep the newest K checkpoints (plus the best)."
    )
    keep_best: bool = Field(
        True, description="Also keep the checkpoint of the best validation step."
    )


class DistributedConfig(_Section):
    """How a run started with several processes (--nproc, torchrun, --ray) shares the work."""

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="'ddp': every process holds the model; 'fsdp': parameters, gradients and "
        "optimizer state are sharded over the processes (method: full).",
    )
    cpu_offload: bool = Field(
        False,
        description="With fsdp on GPUs: keep the sharded parameters and optimizer "
        "state in CPU memory.",
    )
    timeout_minutes: float = Field(
        30.0,
        gt=0,
        le=1440,
        description="How long a process waits for the others before the run fails.",
    )


class MethodConfig(BaseModel):
    """The fine-tuning method and its typed options (see lmforge.methods)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "full"
    options: BaseModel | None = None

    @model_serializer
    def _flat(self) -> dict[str, Any]:
        return {"name": self.name, **(self.options.model_dump() if self.options else {})}


def parse_method(value: Any) -> MethodConfig:
    """Turn ``"lora"`` or ``{"name": "lora", "r": 16}`` into a typed MethodConfig."""
    from lmforge.config.errors import format_validation_error  # local: avoids an import cycle

    if isinstance(value, MethodConfig):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ValueError("method must be a name such as 'lora' or a mapping with a 'name' key")
    name = value.get("name", "full")
    if not isinstance(name, str):
        raise ValueError(f"method.name must be a string such as 'lora', not {type(name).__name__}")
    if name not in METHOD_OPTIONS:
        raise ValueError(
            f"unknown method '{name}'{did_you_mean(str(name), METHOD_OPTIONS)}; "
            f"available: {', '.join(sorted(METHOD_OPTIONS))}"
        )
    options_cls = METHOD_OPTIONS[name]
    try:
        options = options_cls.model_validate({k: v for k, v in value.items() if k != "name"})
    except Exception as err:  # pydantic.ValidationError
        raise ValueError(format_validation_error(err, options_cls, prefix="method")) from None
    return MethodConfig(name=name, options=options)


class RegularizationConfig(_Section):
    """Remedies for overfitting and for brittle models (all off by default)."""

    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Classification and NER: spread this share "
        "of each target's probability over all classes.",
    )
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Override every dropout probability of the "
        "model (hidden, attention, classifier).",
    )
    layerwise_lr_decay: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Learning rate of layer l = "
        "learning_rate x decay^(layers - l): lower layers change less (1.0: off).",
    )
    adversarial: Literal["none", "fgm", "pgd"] = Field(
        "none",
        description="Adversarial training on the embeddings: fgm (one extra forward/backward per "
        "batch) or pgd (adversarial_steps extra).",
    )
    adversarial_epsilon: float = Field(
        0.2,
        gt=0.0,
        description="L2 radius of the perturbation, per example "
        "(1.0 cost 13 points of F1 on Financial PhraseBank; docs/methods.md).",
    )
    adversarial_alpha: float = Field(0.06, gt=0.0, description="pgd: step size of each inner step.")
    adversarial_steps: int = Field(3, ge=1, le=100, description="pgd: inner steps.")


class AugmentConfig(_Section):
    """Offline data augmentation of the training split (EDA operations, back-translation)."""

    operations: list[Literal["swap", "delete", "insert", "synonym"]] = Field(
        default_factory=list,
        description="EDA operations to draw from (synonym: nearest neighbours in the "
        "model's own embedding table); empty: no augmentation.",
    )
    rate: float = Field(
        0.1, gt=0.0, le=1.0, description="Share of the words of a text each operation changes."
    )
    copies: int = Field(1, ge=1, le=32, description="Augmented copies per training text.")
    back_translation: list[str] | None = Field(
        None,
        description="Two translation models [there, back] (e.g. Helsinki-NLP/opus-mt-en-de, "
        "Helsinki-NLP/opus-mt-de-en): one back-translated copy per training text.",
    )

    @field_validator("operations")
    @classmethod
    def _each_once(cls, value: list[str]) -> list[str]:
        twice = sorted({op for op in value if value.count(op) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} twice: list each operation once")
        return value

    @field_validator("back_translation")
    @classmethod
    def _two_models(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) != 2:
            raise ValueError("back_translation takes two models: [to the pivot language, back]")
        return value


class DistillationConfig(_Section):
    """Knowledge distillation: learn from a trained teacher's soft predictions as well as the
    labels."""

    teacher: str | None = Field(
        None,
        description="Run or model directory of the teacher (same task, labels and tokenizer); "
        "empty: off.",
    )
    temperature: float = Field(
        2.0,
        gt=0.0,
        le=100.0,
        description="Softmax temperature of the soft targets (Hinton et al. 2015); higher: softer.",
    )
    alpha: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Weight of the soft-target loss; 1 - alpha weighs the hard labels.",
    )


class RunConfig(_Section):
    """One training run: task, model, data, method and optimization."""

    task: str = Field(
        "sequence_classification",
        description="What to learn; one of the tasks listed by `lmforge config`.",
    )
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="Pretrained starting point."
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Input data.")
    method: MethodConfig = Field(
        default_factory=lambda: parse_method("full"),
        description="'full', 'lora', or a mapping with options.",
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimization.")
    regularization: RegularizationConfig = Field(
        default_factory=RegularizationConfig,
        description="Label smoothing, dropout, layer-wise LR decay, adversarial training.",
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Training-data augmentation."
    )
    distillation: DistillationConfig = Field(
        default_factory=DistillationConfig,
        description="Knowledge distillation from a teacher model.",
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="Checkpoints."
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Several processes: strategy and timeouts."
    )
    output_dir: str | None = Field(
        None, description="Run directory; default runs/<name>-<timestamp>."
    )
    resume: Literal["auto", "never"] = Field(
        "auto",
        description="'auto': when the output directory holds checkpoints of this run, resume it.",
    )
    continue_from: str | None = Field(
        None,
        description="Start from this finished run's weights (a new run; recorded as its parent).",
    )
    continue_optimizer: bool = Field(
        False, description="With continue_from: also restore its optimizer state."
    )
    name: str | None = Field(None, description="Run name used in the default output directory.")

    @model_validator(mode="after")
    def _scratch_task(self) -> RunConfig:
        if self.model.from_scratch is not None and self.task not in ("causal_lm", "masked_lm"):
            raise ValueError(
                f"model.from_scratch builds a model for pretraining; task {self.task} fine-tunes a "
                "pretrained one: remove model.from_scratch or set task: causal_lm / masked_lm"
            )
        return self

    @model_validator(mode="after")
    def _sparsity_method(self) -> RunConfig:
        if self.training.keep_sparsity and not get_method(self.method.name).keeps_sparsity:
            raise ValueError(
                f"training.keep_sparsity keeps pruned weights at zero while they train; method "
                f"{self.method.name} merges a dense update into them: use method full"
            )
        return self

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASK_NAMES:
            raise ValueError(
                f"unknown task '{value}'{did_you_mean(value, TASK_NAMES)}; "
                f"available: {', '.join(TASK_NAMES)}"
            )
        return value

    @field_validator("resume", mode="before")
    @classmethod
    def _yaml11_no(cls, value: Any) -> Any:
        return "never" if value is False else value  # see TrainingConfig._yaml11_no

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        return {"name_or_path": value} if isinstance(value, str) else value

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> MethodConfig:
        return parse_method(value)

    @model_validator(mode="after")
    def _known_metric(self) -> RunConfig:
        from lmforge.tasks.registry import TASK_METRICS

        metrics = TASK_METRICS[self.task]
        if self.training.metric is None:
            self.training.metric = metrics[0]
        if self.training.metric not in metrics:
            raise ValueError(
                f"training.metric '{self.training.metric}' is not reported by task "
                f"{self.task}{did_you_mean(self.training.metric, metrics)}; "
                f"choose one of: {', '.join(metrics)}"
            )
        return self
