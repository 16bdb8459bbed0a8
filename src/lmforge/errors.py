"""The one exception type for mistakes a user can fix.

It is raised anywhere in lmforge and caught once, at the CLI boundary, where it is
printed as a single ``lmforge: error: ...`` line. Every other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LmforgeError(Exception):
    """A user error: bad config, bad data, a missing file. The message names the fix.

    The message is kept to one line: newlines coming from user values (a key, a column
    name, a YAML block scalar) are shown escaped.
    """

    def __init__(self, message: str):
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
