"""Chat records -> messages -> token ids with labels on the assistant turns only.

Two record shapes are accepted (one JSON object per line):

* chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``
* Alpaca: ``{"instruction": "...", "input": "..." (optional), "output": "..."}``

A conversation is turned into text by the tokenizer's chat template, so a model fine-tuned
here is prompted at generation time exactly as it was trained. Tokenizers without a template
get :data:`DEFAULT_CHAT_TEMPLATE` (ChatML).

Only the assistant turns are trained on: every other token (system prompt, user turns, the
template's role headers) gets the label ``IGNORE_INDEX``. How the assistant tokens are found
is explained in :func:`encode_conversation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from lmforge.data.batching import IGNORE_INDEX
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")

CHATML_START = "<|im_start|>"
CHATML_END = "<|im_end|>"

# ChatML, the format of Qwen and many open chat models:
#
#   <|im_start|>system\nYou are terse.<|im_end|>\n
#   <|im_start|>user\nCapital of France?<|im_end|>\n
#   <|im_start|>assistant\nParis.<|im_end|>\n
#
# ``add_generation_prompt`` appends the open assistant header ``<|im_start|>assistant\n``,
# which is where generation starts; the model ends its turn with ``<|im_end|>``. Every turn
# renders the same whatever follows it, which the prefix-based label masking relies on.
# Written on one line: Jinja would otherwise copy the template's own newlines into the text.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --- records -----------------------------------------------------------------------------------


def records_to_messages(record: dict, source: str, line: int) -> list[dict]:
    """One chat or Alpaca record as a list of ``{"role", "content"}`` messages.

    Alpaca records become one user turn (``instruction``, plus ``"\\n\\n" + input`` when the
    input is non-empty) and one assistant turn (``output``). Messages keep only their role
    and content. A conversation must contain an assistant turn (the only thing trained on)
    and may not open with one (there would be nothing it answers).

    Args:
        record: The parsed JSON object.
        source: The file it came from, for error messages.
        line: Its 1-based line number, for error messages.

    Raises:
        LmforgeError: The record has neither shape, or both; a role is unknown; a content
            is not a string; there is no assistant turn.
    """
    where = f"{source} line {line}"
    if not isinstance(record, dict):
        raise LmforgeError(
            f"{where}: expected a JSON object with 'messages' or 'instruction'/'output', "
            f"got {type(record).__name__}"
        )
    if "messages" in record and "instruction" in record:
        raise LmforgeError(f"{where}: has both 'messages' and 'instruction'; keep one record shape")
    if "messages" in record:
        messages = _chat_messages(record["messages"], where)
    elif "instruction" in record:
        messages = _alpaca_messages(record, where)
    else:
        keys = ", ".join(repr(k) for k in list(record)[:5]) or "none"
        raise LmforgeError(
            f"{where}: expected 'messages' (chat) or 'instruction' and 'output' (Alpaca); "
            f"found keys {keys}"
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise LmforgeError(f"{where}: no assistant turn; add the answer the model should learn")
    first = next(m["role"] for m in messages if m["role"] != "system")
    if first == "assistant":
        raise LmforgeError(
            f"{where}: the conversation opens with an assistant turn; "
            "start with the user turn it answers"
        )
    return messages


def _chat_messages(raw: object, where: str) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise LmforgeError(
            f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects"
        )
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise LmforgeError(
                f"{where}: messages[{i}] must be an object with 'role' and 'content'"
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise LmforgeError(
                f"{where}: messages[{i}] has role {role!r}; use one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise LmforgeError(
                f"{where}: messages[{i}] ({role}) content must be a string, "
                f"got {type(content).__name__}"
            )
        messages.append({"role": role, "content": content})
    return messages


def _alpaca_messages(record: dict, where: str) -> list[dict]:
    instruction, extra = record.get("instruction"), record.get("input")
    if not isinstance(instruction, str):
        raise LmforgeError(
            f"{where}: 'instruction' must be a string, got {type(instruction).__name__}"
        )
    if extra is not None and not isinstance(extra, str):
        raise LmforgeError(
            f"{where}: 'input' must be a string (or absent), got {type(extra).__name__}"
        )
    if "output" not in record:
        raise LmforgeError(f"{where}: no assistant turn: an Alpaca record needs 'output'")
    output = record["output"]
    if not isinstance(output, str):
        raise LmforgeError(f"{where}: 'output' must be a string, got {type(output).__name__}")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


# --- chat template -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTemplateSetup:
    """What :func:`ensure_chat_template` changed; true when it set a template.

    ``tokens_added`` new ids exist now (``len(tokenizer)`` grew): the caller must call
    ``model.resize_token_embeddings(len(tokenizer))`` before training or generating.
    """

    template_set: bool
    tokens_added: int

    def __bool__(self) -> bool:
        return self.template_set


def ensure_chat_template(
    tokenizer: PreTrainedTokenizerBase, template: str | None = None
) -> ChatTemplateSetup:
    """Give ``tokenizer`` :data:`DEFAULT_CHAT_TEMPLATE` when it has no chat template (or
    ``template="chatml"``), or the Jinja ``template`` given.

    ``<|im_start|>`` and ``<|im_end|>`` are added as *special* tokens (only those the
    vocabulary lacks). As plain text a byte-level BPE would split each into ~6 pieces that can
    merge with the neighbouring text; as single special tokens (a) ``<|im_end|>`` is one id the
    model learns to emit and generation can stop on, like an EOS, (b) the boundary between
    scaffolding and content never falls inside a token, so the label mask is exact, and
    (c) ``decode(..., skip_special_tokens=True)`` drops them. The cost is two new embedding
    rows to train, and user text that literally contains ``<|im_end|>`` is read as the marker.

    A Jinja ``template`` is set as it is (its markers must already be tokens of the
    tokenizer); no tokens are added. The tokenizer is changed in place; without ``template``,
    one that has a template is left as it is.
    """
    if template and template != "chatml":
        tokenizer.chat_template = template
        return ChatTemplateSetup(template_set=True, tokens_added=0)
    if getattr(tokenizer, "chat_template", None) and template != "chatml":
        return ChatTemplateSetup(template_set=False, tokens_added=0)
    added = tokenizer.add_special_tokens(
        {"extra_special_tokens": [CHATML_START, CHATML_END]}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return ChatTemplateSetup(template_set=True, tokens_added=added)


def render_chat(
    messages: Sequence[dict],
    tokenizer: PreTrainedTokenizerBase,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation as text through the tokenizer's chat template (not tokenized)."""
    from jinja2 import TemplateError

    if not getattr(tokenizer, "chat_template", None):
        raise LmforgeError(
            "the tokenizer has no chat template; set one (tokenizer.chat_template) or let "
            "lmforge add its default with ensure_chat_template"
        )
    try:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as err:  # e.g. "Conversation roles must alternate user/assistant"
        raise LmforgeError(
            f"the tokenizer's chat template rejected the conversation: {err}"
        ) from err


def end_of_turn_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id of the token that closes an assistant turn (``<|im_end|>``, ``<|eot_id|>``, ``</s>``).

    Found by rendering a sample turn and reading what the template writes after its content;
    None when that is not exactly one token (generation then relies on EOS and stop strings).
    """
    sentinel = "lmforge-end-of-turn-probe"
    try:
        text = render_chat(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}],
            tokenizer,
        )
    except LmforgeError:
        return None
    tail = text[text.rfind(sentinel) + len(sentinel) :].strip()
    ids = tokenizer.encode(tail, add_special_tokens=False) if tail else []
    return int(ids[0]) if len(ids) == 1 else None


# --- encoding ----------------------------------------------------------------------------------


class EncodedConversation(NamedTuple):
    """A conversation's ids and labels (the id on assistant tokens, IGNORE_INDEX elsewhere)."""

    input_ids: np.ndarray  # (T,) int32
    labels: np.ndarray  # (T,) int32
    truncated_tokens: int  # tokens cut from the right to fit max_length

    @property
    def has_targets(self) -> bool:
        """False when truncation left no assistant token: the row teaches nothing and is skipped."""
        return bool((self.labels != IGNORE_INDEX).any())


def encode_conversation(
    messages: Sequence[dict], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> EncodedConversation:
    """Tokenize a conversation through the chat template, labelling only the assistant turns.

    How the assistant tokens are found: the template renders the conversation prefix by
    prefix, as text. For the assistant message ``k``, ``render(messages[:k],
    add_generation_prompt=True)`` ends exactly where its content starts, and
    ``render(messages[:k + 1])`` ends after its end-of-turn marker (trailing whitespace such as
    ChatML's ``\\n`` is scaffolding, not trained). Both must be prefixes of the full rendering;
    the full text is then tokenized once, and a token is labelled when its character span
    (``return_offsets_mapping``) overlaps an assistant span.

    Why not the alternatives: comparing *token* counts of tokenized prefixes breaks when a
    BPE merge crosses a turn boundary; ``return_assistant_tokens_mask`` needs
    ``{% generation %}`` blocks, which few hub templates have. Character spans work for any
    template that renders a turn the same whatever follows it, and the token ids are exactly
    those of ``apply_chat_template(messages)``. Templates that rewrite history (reasoning
    templates dropping earlier ``<think>`` blocks, Mistral's system prompt moved into the last
    user turn) are refused with an error rather than masked wrongly.

    Args:
        messages: ``{"role", "content"}`` dicts, e.g. from :func:`records_to_messages`.
        tokenizer: A fast (Rust-backed) tokenizer with a chat template.
        max_length: Longest row kept; longer conversations lose tokens from the right.

    Returns:
        The ids, the labels and how many tokens were truncated; ``has_targets`` is False when
        no assistant token survived truncation.
    """
    if not getattr(tokenizer, "is_fast", False):  # pure-Python tokenizers have no offsets
        raise LmforgeError(
            "chat fine-tuning needs a fast tokenizer (one with a tokenizer.json) to find the "
            "assistant tokens; load the model's tokenizer with use_fast left on"
        )
    full = render_chat(messages, tokenizer)
    spans = _assistant_spans(messages, tokenizer, full)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.int32)  # (T,)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)  # (T, 2)
    assistant = np.zeros(len(ids), dtype=bool)  # (T,)
    for start, end in spans:
        assistant |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
    labels = np.where(assistant, ids, IGNORE_INDEX).astype(np.int32)  # (T,)
    truncated = max(0, len(ids) - max_length)
    return EncodedConversation(ids[:max_length], labels[:max_length], truncated)


def _assistant_spans(
    messages: Sequence[dict], tokenizer: PreTrainedTokenizerBase, full: str
) -> list[tuple[int, int]]:
    """Character ``[start, end)`` of each assistant turn (content + end marker) in ``full``."""
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if k == 0:
            raise LmforgeError(
                "the conversation opens with an assistant turn; start with the user turn it answers"
            )
        before = render_chat(messages[:k], tokenizer, add_generation_prompt=True)
        through = render_chat(messages[: k + 1], tokenizer)
        if not (
            full.startswith(before) and full.startswith(through) and len(through) >= len(before)
        ):
            raise LmforgeError(
                "the tokenizer's chat template renders a turn differently once later turns follow, "
                "so the assistant tokens cannot be located; use a template that renders each turn "
                "the same whatever follows it (e.g. ChatML)"
            )
        end = len(before) + len(through[len(before) :].rstrip())
        spans.append((len(before), end))
    return spans
