"""Who may call the service, how often, and what personal data never reaches a log line.

- **API keys** are kept as SHA-256 digests only; a presented key is hashed and compared with
  every stored digest by ``hmac.compare_digest`` (constant time, and no early exit on the
  first match), so neither timing nor a memory dump gives a key away. Keys have names, which
  are what logs and metrics show.
- **Rate limits**: a token bucket per key (``N/second|minute|hour``); over the limit a request is
  answered 429 with ``Retry-After``.
- **Masking**: e-mail addresses, phone numbers, payment-card numbers (Luhn-checked), IBANs and
  account numbers, and national-ID-style numbers are replaced by ``[EMAIL]``, ``[PHONE]``,
  ``[CARD]``, ``[ACCOUNT]`` and ``[ID]`` in every log record (:class:`MaskingFilter`), and,
  with ``--mask-inputs``, in the texts themselves before the model sees them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError

KEYS_ENV = "LMFORGE_API_KEYS"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """Named API keys, stored hashed. Empty: the service is open (only allowed on loopback)."""

    def __init__(self, named: dict[str, str] | None = None):
        self._digests: list[tuple[str, bytes]] = []
        for name, key in (named or {}).items():
            self.add(name, key)

    def add(self, name: str, key: str) -> None:
        if len(key) < 16:
            raise LmforgeError(
                f"API key '{name}' is {len(key)} characters long; use at least 16 "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if any(n == name for n, _ in self._digests):
            raise LmforgeError(f"API key name '{name}' is given twice; name each key once")
        self._digests.append((name, _digest(key)))

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, presented: str | None) -> str | None:
        """The name of the key ``presented`` is, or None. Compares with every key, in constant
        time."""
        if not presented:
            return None
        digest = _digest(presented)
        found = None
        for name, stored in self._digests:
            if hmac.compare_digest(digest, stored) and found is None:
                found = name
        return found

    def digests(self) -> list[tuple[str, str]]:
        """(name, hex digest) pairs: how worker processes get the keys without seeing them."""
        return [(name, digest.hex()) for name, digest in self._digests]

    @classmethod
    def from_digests(cls, pairs: list[tuple[str, str]]) -> ApiKeys:
        keys = cls()
        keys._digests = [(name, bytes.fromhex(digest)) for name, digest in pairs]
        return keys

    @classmethod
    def gather(
        cls, keys: list[str], keys_file: str | None, environ: dict[str, str] | None = None
    ) -> ApiKeys:
        """Keys from ``--api-key`` (``KEY`` or ``NAME:KEY``), a keys file (one such entry per line,
        ``#`` comments) and ``$LMFORGE_API_KEYS`` (comma-separated entries)."""
        environ = os.environ if environ is None else environ
        entries = [(f"--api-key #{i + 1}", k) for i, k in enumerate(keys)]
        if keys_file:
            path = Path(keys_file)
            if not path.is_file():
                raise LmforgeError(f"--api-keys-file {path} not found")
            lines = path.read_text(encoding="utf-8").splitlines()
            entries += [
                (f"{path}:{n}", line.strip())
                for n, line in enumerate(lines, start=1)
                if line.strip() and not line.strip().startswith("#")
            ]
        entries += [
            (f"${KEYS_ENV} entry {i + 1}", e.strip())
            for i, e in enumerate(environ.get(KEYS_ENV, "").split(","))
            if e.strip()
        ]
        out = cls()
        for n, (where, entry) in enumerate(entries, start=1):
            name, sep, key = entry.partition(":")
            if not sep:
                name, key = f"key{n}", entry
            if not name or not key:
                raise LmforgeError(f"{where}: expected KEY or NAME:KEY")
            out.add(name, key)
        return out


_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


@dataclass(frozen=True)
class RateLimit:
    """``requests`` per ``period`` seconds, with bursts up to ``requests``."""

    requests: int
    period: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(second|minute|hour)s?\s*", text)
        if not match or int(match.group(1)) < 1:
            raise LmforgeError(
                f"--rate-limit {text!r}: expected N/second, N/minute or N/hour, e.g. 600/minute"
            )
        return cls(int(match.group(1)), _UNITS[match.group(2)])


class RateLimiter:
    """A token bucket per caller: ``allow(who)`` is 0 when the request may go, else the seconds
    to wait."""

    def __init__(self, limit: RateLimit | None, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # who -> (tokens, last refill)
        self._lock = threading.Lock()

    def allow(self, who: str) -> float:
        if self.limit is None:
            return 0.0
        rate = self.limit.requests / self.limit.period  # tokens per second
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(who, (float(self.limit.requests), now))
            tokens = min(float(self.limit.requests), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[who] = (tokens - 1.0, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1.0 - tokens) / rate


# --- personal data -----------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
_DIGIT_RUN = re.compile(r"(?<![\w+])\+?\d[\d ().-]{6,}\d(?!\w)")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_ACCOUNT_WORDS = re.compile(r"(?i)\b(account|acct|a/c|iban|routing|sort code)\b[^\d]{0,20}$")


def _luhn(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _classify_digits(match: re.Match[str], text: str) -> str:
    run = match.group(0)
    digits = re.sub(r"\D", "", run)
    if 13 <= len(digits) <= 19 and _luhn(digits):
        return "[CARD]"
    if _ACCOUNT_WORDS.search(text[max(0, match.start() - 30) : match.start()]) and len(digits) >= 6:
        return "[ACCOUNT]"
    if 7 <= len(digits) <= 15 and (
        run.startswith("+") or re.search(r"[ ().-]", run) or len(digits) >= 10
    ):
        return "[PHONE]"
    if len(digits) >= 8:
        return "[ACCOUNT]"
    return run


def mask_pii(text: str) -> str:
    """``text`` with e-mails, phone numbers, card and account numbers and ID numbers masked."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _IBAN.sub("[ACCOUNT]", text)
    text = _SSN.sub("[ID]", text)
    return _DIGIT_RUN.sub(lambda m: _classify_digits(m, m.string), text)


class MaskingFilter(logging.Filter):
    """Masks personal data in the final message of every record that passes through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_pii(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
