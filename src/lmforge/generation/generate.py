"""Batched text generation with stop strings, seeded sampling and streaming, plus two text metrics.

Decisions worth knowing:

* **Left padding, done here.** Decoder-only models continue the *last* position of each row,
  so prompts are padded on the left and the attention mask hides the padding (Hugging Face
  derives position ids from that mask). The padding is built by hand, so the caller's
  tokenizer is never modified: no ``padding_side`` flip, no pad token assigned. The pad id is
  the tokenizer's pad token, else its EOS, else 0 (masked either way).
* **Sampling that does not depend on the batch.** ``torch.multinomial`` draws from one
  generator for the whole batch, so a prompt's sample would change with its batch mates.
  Instead every prompt gets its own generator, seeded from ``(seed, prompt index)``, and a
  sample is drawn with the Gumbel-max trick: ``argmax(logits / T + Gumbel noise)`` is an exact
  draw from ``softmax(logits / T)`` (after top-k / top-p filtering). Generation then runs in
  greedy mode over the noised scores. The same seed gives the same text for a prompt whatever
  the batch size (the stream is keyed by the prompt's position in the list).
* **Repetition penalty that ignores padding.** Hugging Face's processor penalizes every id in
  the row, left padding included (the pad id is often EOS, which would make padded rows stop
  later); ours skips each row's padding. Otherwise it is the same CTRL penalty
  (https://arxiv.org/abs/1909.05858) over prompt and generated tokens.
* **Stop strings** stop generation per row (Hugging Face's ``StopStringCriteria``, which
  matches across token boundaries); the text is cut before the first stop string.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TextIO

import numpy as np
import torch

from lmforge.data.batching import length_sorted_batches
from lmforge.errors import LmforgeError
from lmforge.generation.chat import end_of_turn_token_id, render_chat

if TYPE_CHECKING:
    from transformers import (
        GenerationConfig,
        LogitsProcessorList,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

log = logging.getLogger(__name__)


@dataclass
class GenerationOptions:
    """How text is generated; validated on creation."""

    max_new_tokens: int = 128
    """Most tokens generated per prompt (the prompt is not counted)."""
    temperature: float = 1.0
    """Sampling temperature (> 0); below 1 sharper, above 1 more random. Ignored when greedy."""
    top_k: int | None = None
    """Sample only among the k most likely tokens (>= 1); None: no limit. Ignored when greedy."""
    top_p: float | None = None
    """Nucleus sampling: keep the fewest tokens holding this probability (0 < p <= 1)."""
    repetition_penalty: float = 1.0
    """Divide the scores of tokens already present by this (> 0; 1.0: off, ~1.1-1.3: common)."""
    greedy: bool = False
    """Always pick the most likely token (deterministic); temperature, top_k, top_p unused."""
    stop: list[str] = field(default_factory=list)
    """Stop a completion at the first of these strings; the string itself is not returned."""
    seed: int | None = None
    """Seed for sampling (>= 0): same seed, same text per prompt. None: different each call."""

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> LmforgeError:
            return LmforgeError(f"generation {name} must be {rule}, got {getattr(self, name)!r}")

        if not _is_int(self.max_new_tokens, minimum=1):
            raise fail("max_new_tokens", "an integer >= 1")
        if not self.greedy and not _is_positive(self.temperature):
            raise LmforgeError(
                f"generation temperature must be > 0 when sampling, got {self.temperature!r}; "
                "set greedy for deterministic output"
            )
        if self.top_k is not None and not _is_int(self.top_k, minimum=1):
            raise fail("top_k", "an integer >= 1 (or unset)")
        if self.top_p is not None and not (_is_positive(self.top_p) and self.top_p <= 1):
            raise fail("top_p", "in (0, 1] (or unset)")
        if not _is_positive(self.repetition_penalty):
            raise fail("repetition_penalty", "> 0 (1.0: off)")
        if isinstance(self.stop, str):
            raise fail("stop", "a list of strings (write one stop string as a one-item list)")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise fail("stop", "a list of non-empty strings")
        if self.seed is not None and not _is_int(self.seed, minimum=0):
            raise fail("seed", "an integer >= 0 (or unset)")


def _is_int(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_positive(value: object) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


# --- generation --------------------------------------------------------------------------------


@dataclass
class Completion:
    """One prompt's completion and what it cost (the ``usage`` of an OpenAI-style answer)."""

    text: str
    """The new text, special tokens removed, cut before the first stop string."""
    prompt_tokens: int
    completion_tokens: int
    """Tokens generated, the one that ended the completion included."""
    finish_reason: str
    """``stop`` (end of text, end of turn or a stop string) or ``length`` (``max_new_tokens``
    reached)."""


Prompt = str | Sequence[dict]
"""A text to continue, or a conversation (a list of ``{"role", "content"}`` messages)."""


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    options: GenerationOptions,
    batch_size: int = 8,
    stream: TextIO | None = None,
    chat: bool = False,
) -> list[str]:
    """Complete each prompt; return only the new text, cut before the first stop string.

    Args:
        model: A Hugging Face causal LM (decoder-only). It is put in eval mode while
            generating and given back in the mode it was in.
        tokenizer: Its tokenizer; not modified.
        prompts: The prompts, returned in the same order. A conversation (a list of
            messages) goes through the tokenizer's chat template, ending with the assistant
            header.
        options: Length, sampling and stopping settings.
        batch_size: Prompts per forward pass; prompts of similar length are batched together.
        stream: With exactly one prompt, text is written (and flushed) here as it is generated.
        chat: Wrap each text prompt as one user message through the tokenizer's chat template;
            the end-of-turn token then also stops generation (implied by conversations).

    Returns:
        One completion per prompt (special tokens removed).
    """
    return [c.text for c in complete(model, tokenizer, prompts, options, batch_size, stream, chat)]


def complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    options: GenerationOptions,
    batch_size: int = 8,
    stream: TextIO | None = None,
    chat: bool = False,
) -> list[Completion]:
    """:func:`generate`, with each completion's token counts and why it ended."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if stream is not None and len(prompts) != 1:
        raise ValueError(f"streaming writes one completion, got {len(prompts)} prompts")
    if not prompts:
        return []
    chat = chat or any(not isinstance(p, str) for p in prompts)
    check_stop_strings(tokenizer, options.stop)
    stop_ids = _stop_token_ids(model, tokenizer, chat)
    pad_id = next(i for i in (tokenizer.pad_token_id, *stop_ids, 0) if i is not None)
    encoded = encode_prompts(model, tokenizer, prompts, 1, chat)  # room for one new token at least
    options = _within_positions(model, options, max(len(ids) for ids in encoded))
    seed = options.seed if options.seed is not None else int(torch.randint(2**62, ()).item())
    config = _generation_config(options, stop_ids, pad_id)

    was_training = model.training
    model.eval()
    results: list[Completion | None] = [None] * len(prompts)
    try:
        for batch in length_sorted_batches([len(ids) for ids in encoded], batch_size):
            ids, mask = _left_pad([encoded[i] for i in batch], pad_id)  # (B, T), (B, T)
            processors = _logits_processors(options, mask, [(seed, i) for i in batch])
            streamer = None
            if stream is not None:
                streamer = _StopStringStreamer(tokenizer, stream, options.stop, stop_ids)
            out = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                generation_config=config,
                logits_processor=processors,
                tokenizer=tokenizer,  # for stop strings
                streamer=streamer,
            )  # (B, T + new)
            for i, new_ids in zip(batch, out[:, ids.shape[1] :].tolist(), strict=True):
                results[i] = _completion(
                    new_ids, len(encoded[i]), tokenizer, options, stop_ids, pad_id
                )
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]  # every slot is filled


def _stop_token_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, chat: bool
) -> list[int]:
    """Ids that end a completion: tokenizer and model EOS; with chat, the end of turn."""
    ids: list[int] = []
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates = [
        tokenizer.eos_token_id,
        *(model_eos if isinstance(model_eos, list) else [model_eos]),
    ]
    if chat:
        candidates.append(end_of_turn_token_id(tokenizer))
    for i in candidates:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def encode_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    chat: bool = False,
) -> list[list[int]]:
    """The prompts' token ids, checked: not empty, and room for ``max_new_tokens`` more within
    the model's positions (a server checks before it starts streaming an answer)."""
    chat = chat or any(not isinstance(p, str) for p in prompts)
    encoded = [_encode_prompt(p, n, tokenizer, chat) for n, p in enumerate(prompts, 1)]
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    for n, ids in enumerate(encoded, 1):
        if isinstance(positions, int) and len(ids) + max_new_tokens > positions:
            raise LmforgeError(
                f"prompt {n} has {len(ids)} tokens; with max_new_tokens {max_new_tokens} that is "
                f"over the model's {positions} positions: shorten it or ask for fewer tokens"
            )
    return encoded


def _within_positions(
    model: PreTrainedModel, options: GenerationOptions, longest: int
) -> GenerationOptions:
    """``options`` fitted to the model's positions, for the longest prompt.

    Learned position embeddings (GPT-2) have no row past the last: ``max_new_tokens`` is lowered
    to what fits, said in the log (it is an upper bound; answers usually stop well before).
    Rotary ones (Llama) go on past the trained length, as in Hugging Face, with a warning. (A
    server refuses both, as OpenAI's API and vLLM do: see :func:`encode_prompts`.)
    """
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or longest + options.max_new_tokens <= positions:
        return options
    if any(key.startswith("rope") for key in config.to_dict()):
        log.warning(
            "generating past the model's %d trained positions (prompt %d + up to %d new tokens)",
            positions,
            longest,
            options.max_new_tokens,
        )
        return options
    log.warning(
        "max_new_tokens %d lowered to %d: the longest prompt has %d of the model's %d positions",
        options.max_new_tokens,
        positions - longest,
        longest,
        positions,
    )
    return replace(options, max_new_tokens=positions - longest)


def check_stop_strings(tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]) -> None:
    """A one-line error for stop strings the tokenizer cannot spell (Hugging Face's stop-string
    matcher raises a ValueError deep inside ``generate`` for them)."""
    if not stop:
        return
    from transformers import StopStringCriteria

    try:
        StopStringCriteria(tokenizer, list(stop))  # builds (and caches) the matcher generate() uses
    except ValueError:
        raise LmforgeError(
            f"stop strings {list(stop)!r}: one has characters this model's tokenizer has no "
            "tokens for; use stop strings made of ordinary text"
        ) from None


def _encode_prompt(
    prompt: Prompt, number: int, tokenizer: PreTrainedTokenizerBase, chat: bool
) -> list[int]:
    if chat:
        messages = (
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        )
        if not messages:
            raise LmforgeError(f"conversation {number} has no messages")
        text = render_chat(messages, tokenizer, add_generation_prompt=True)
        # the template writes BOS itself, where the model has one
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not ids:  # a model cannot continue nothing
        raise LmforgeError(f"prompt {number} is empty; give every prompt some text")
    return ids


def _generation_config(
    options: GenerationOptions, stop_ids: list[int], pad_id: int
) -> GenerationConfig:
    """A greedy-mode config: sampling is done by our logits processors (see the module docstring).

    Fields left unset are filled by Hugging Face from the model's own generation config, so
    every setting that lmforge owns is written explicitly (a hub config with
    ``do_sample: true, temperature: 0.6`` must not leak in).
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=options.max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=1.0,
        top_p=1.0,
        repetition_penalty=1.0,
        stop_strings=list(options.stop) or None,
        eos_token_id=stop_ids or None,
        pad_token_id=pad_id,
    )


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the left to the longest row, and the mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for row, r in enumerate(rows):
        ids[row, width - len(r) :] = torch.as_tensor(r, dtype=torch.long)
        mask[row, width - len(r) :] = 1
    return ids, mask


def _completion(
    ids: Sequence[int],
    prompt_tokens: int,
    tokenizer: PreTrainedTokenizerBase,
    options: GenerationOptions,
    stop_ids: Sequence[int],
    pad_id: int,
) -> Completion:
    """Decode new ids up to the first stop id, then cut before the first stop string.

    Rows of a batch that ended early are filled up with ``pad_id`` (Hugging Face's padding of
    finished rows); that filling is not counted as generated.
    """
    end = next((n for n, i in enumerate(ids) if i in stop_ids), None)
    if end is not None:
        kept, generated, reason = list(ids[:end]), end + 1, "stop"
    else:
        kept = list(ids)
        while kept and kept[-1] == pad_id:
            kept.pop()
        generated = len(kept)
        reason = "length" if generated >= options.max_new_tokens else "stop"
    text, cut = _cut_at_stop(tokenizer.decode(kept, skip_special_tokens=True), options.stop)
    return Completion(text, prompt_tokens, generated, "stop" if cut else reason)


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = min((p for p in (text.find(s) for s in stop) if p >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


# --- logits processors -------------------------------------------------------------------------


class _UnpaddedRepetitionPenalty:
    """CTRL repetition penalty over each row's own tokens, skipping its left padding."""

    def __init__(self, penalty: float, prompt_mask: torch.Tensor):
        self.penalty = penalty
        self.prompt_mask = prompt_mask  # (B, T): 0 on padding

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        prompt = self.prompt_mask.to(input_ids.device)
        generated = input_ids.shape[1] - prompt.shape[1]
        real = torch.cat([prompt, prompt.new_ones(len(prompt), generated)], dim=1)  # (B, L)
        counts = torch.zeros_like(scores).scatter_add_(1, input_ids, real.to(scores.dtype))
        seen = counts > 0  # (B, V)
        penalized = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)  # (B, V)
        return torch.where(seen, penalized, scores)


class _GumbelSample:
    """Add Gumbel noise from one generator per prompt; argmax then draws a sample (Gumbel-max)."""

    def __init__(self, keys: list[tuple[int, int]]):
        # SeedSequence mixes (seed, index) into well-separated seeds: seed 1 prompt 0 and
        # seed 0 prompt 1 do not share a stream, as they would with seed + index.
        self.seeds = [
            int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)
            for key in keys
        ]
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generators is None:  # created on the scores' device, on first use
            self.generators = [
                torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds
            ]
        vocab = scores.shape[1]
        uniform = torch.stack(
            [
                torch.rand(vocab, generator=g, device=scores.device, dtype=torch.float32)
                for g in self.generators
            ]
        )  # (B, V)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1.0 - 1e-7)))  # (B, V)
        return scores + gumbel.to(scores.dtype)  # filtered tokens stay at -inf


def _logits_processors(
    options: GenerationOptions, prompt_mask: torch.Tensor, keys: list[tuple[int, int]]
) -> LogitsProcessorList:
    """Repetition penalty, then temperature, top-k and top-p (Hugging Face's order), then the draw.

    ``keys`` are the ``(seed, prompt index)`` of the batch rows, one random stream each.
    """
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if options.repetition_penalty != 1.0:
        processors.append(_UnpaddedRepetitionPenalty(options.repetition_penalty, prompt_mask))
    if options.greedy:
        return processors
    if options.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(options.temperature))
    if options.top_k is not None:
        processors.append(TopKLogitsWarper(top_k=options.top_k))
    if options.top_p is not None and options.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=options.top_p))
    processors.append(_GumbelSample(keys))
    return processors


# --- streaming ---------------------------------------------------------------------------------


class _StopStringStreamer:
    """Write a single completion to ``stream`` as tokens arrive, ending before any stop string.

    Hugging Face's ``TextStreamer`` prints to stdout and knows nothing of stop strings. This
    one re-decodes all new ids at every step and writes the part that can no longer change:
    it holds back a tail that could be the start of a stop string, an incomplete UTF-8
    character (decoded as U+FFFD), and trailing whitespace (``clean_up_tokenization_spaces``
    may still join it with punctuation). What it writes adds up to the returned text.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        stream: TextIO,
        stop: Sequence[str],
        stop_ids: Sequence[int],
    ):
        self.tokenizer = tokenizer
        self.stream = stream
        self.stop = list(stop)
        self.stop_ids = set(stop_ids)
        self.ids: list[int] = []
        self.written = 0  # characters of the completion already written
        self.prompt_seen = False
        self.done = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt itself
            self.prompt_seen = True
            return
        if self.done:
            return
        for token in value.reshape(-1).tolist():
            if token in self.stop_ids:
                self.done = True
                break
            self.ids.append(token)
        self._write(final=self.done)

    def end(self) -> None:
        if not self.done:
            self._write(final=True)
        self.done = True

    def _write(self, final: bool) -> None:
        text, stopped = _cut_at_stop(
            self.tokenizer.decode(self.ids, skip_special_tokens=True), self.stop
        )
        if stopped:
            self.done = True
        end = len(text) if final or stopped else self._settled(text)
        if end > self.written:
            self.stream.write(text[self.written : end])
            self.stream.flush()
            self.written = end

    def _settled(self, text: str) -> int:
        """How much of ``text`` later tokens can neither change nor turn into a stop string."""
        end = len(text.rstrip())
        while end and text[end - 1] == "\ufffd":
            end -= 1
        settled = end
        for s in self.stop:  # a tail that may grow into a stop string waits for the next token
            for n in range(min(len(s) - 1, end), 0, -1):
                if text[end - n : end] == s[:n]:
                    settled = min(settled, end - n)
                    break
        return settled


# --- metrics -----------------------------------------------------------------------------------


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference, whitespace collapsed (case-sensitive)."""
    _check_pairs(predictions, references)
    return sum(
        " ".join(p.split()) == " ".join(r.split())
        for p, r in zip(predictions, references, strict=True)
    ) / len(predictions)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over whitespace tokens (case-sensitive, no stemming).

    Per pair: with ``L`` the longest common subsequence, ``P = L / len(prediction)``,
    ``R = L / len(reference)`` and ``F = 2PR / (P + R)`` (Lin, 2004, with beta = 1, as the
    ``rouge_score`` package reports). Two empty texts score 1, one empty text 0.
    """
    _check_pairs(predictions, references)
    total = 0.0
    for prediction, reference in zip(predictions, references, strict=True):
        p, r = prediction.split(), reference.split()
        if not p or not r:
            total += float(not p and not r)
            continue
        common = _lcs_length(p, r)
        total += 0.0 if common == 0 else 2 * common / (len(p) + len(r))  # = 2PR / (P + R)
    return total / len(predictions)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence length, dynamic programming over two rows: O(len(a) * len(b))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
