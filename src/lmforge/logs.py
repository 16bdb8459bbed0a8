"""Logging of lmforge's own messages: ``lmforge: ...`` lines on stderr."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Send lmforge's log records to stderr: debug with ``verbose``, warnings only with
    ``quiet``."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lmforge: %(message)s"))
    root = logging.getLogger("lmforge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers imports torchao when installed; its import-time notices are not the user's
    # concern.
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
