"""The request and response bodies of the HTTP API (pydantic: the OpenAPI schema comes from
here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TextsRequest(BaseModel):
    """One text (``text``) or several (``texts``), optionally with the second text of each pair."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="Served model name (GET /v1/models); optional when one is served."
    )
    text: str | None = Field(None, description="One input text.")
    texts: list[str] | None = Field(None, description="Several input texts, answered in order.")
    text_pair: str | None = Field(None, description="Pair models: the second text of `text`.")
    text_pairs: list[str] | None = Field(
        None, description="Pair models: the second text of each of `texts`."
    )

    @model_validator(mode="after")
    def _one_form(self) -> TextsRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give either 'text' (a string) or 'texts' (a list of strings)")
        if self.text_pair is not None and self.text is None:
            raise ValueError("'text_pair' goes with 'text'; with 'texts' give 'text_pairs'")
        if self.text_pairs is not None and (
            self.texts is None or len(self.text_pairs) != len(self.texts)
        ):
            raise ValueError("'text_pairs' needs 'texts' of the same length")
        return self

    def inputs(self) -> tuple[list[str], list[str] | None]:
        if self.text is not None:
            return [self.text], [self.text_pair] if self.text_pair is not None else None
        return list(self.texts or []), list(
            self.text_pairs
        ) if self.text_pairs is not None else None


class Classification(BaseModel):
    label: str | None = Field(None, description="The predicted label (single-label models).")
    labels: list[str] | None = Field(None, description="The predicted labels (multi-label models).")
    score: float | None = Field(None, description="Probability of `label`.")
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    results: list[Classification]


class Score(BaseModel):
    score: float


class ScoreResponse(BaseModel):
    model: str
    results: list[Score]


class Entity(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str
    start: int
    end: int
    score: float | None = None


class Tagging(BaseModel):
    entities: list[Entity]


class TagResponse(BaseModel):
    model: str
    results: list[Tagging]


class Embedding(BaseModel):
    embedding: list[float]


class EmbedResponse(BaseModel):
    model: str
    dimensions: int
    results: list[Embedding]


class ModelCard(BaseModel):
    id: str = Field(description="The name to put in `model`.")
    object: str = "model"
    created: int = Field(0, description="When the model was loaded (Unix time).")
    owned_by: str = "lmforge"
    task: str
    backend: str
    labels: list[str]
    endpoint: str = Field(description="The endpoint that serves this model's task.")
    reloads: int = Field(
        0, description="How often its directory was loaded again since start (hot reload)."
    )


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    error: dict[str, Any] = Field(description="`type` and `message`")


# --- generation: lmforge's own body, and the OpenAI-compatible ones -------------------------------


class SamplingFields(BaseModel):
    """Sampling settings shared by the generation bodies (lmforge's names; see
    GenerationOptions)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Served model name; optional when one is served.")
    temperature: float = Field(
        1.0, ge=0, le=100, description="0 means greedy (always the most likely token)."
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=1, description="Sample among the k most likely tokens.")
    repetition_penalty: float = Field(1.0, gt=0, le=100, description="> 1 discourages repeats.")
    stop: str | list[str] | None = Field(
        None, description="Stop at the first of these strings (at most 4)."
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Same seed, same text.")
    stream: bool = Field(False, description="Server-sent events as text is generated.")

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, max_length=64, description="Ignored.")

    def text(self) -> str:
        return (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )


class GenerateRequest(SamplingFields):
    """``prompt``, ``prompts`` (each continued) or ``messages`` (one conversation, chat
    template)."""

    prompt: str | None = Field(None, description="One text to continue.")
    prompts: list[str] | None = Field(
        None, description="Several texts to continue (not with stream)."
    )
    messages: list[ChatMessage] | None = Field(None, description="A conversation to answer.")
    max_new_tokens: int = Field(128, ge=1, description="Tokens to generate at most.")

    @model_validator(mode="after")
    def _one_form(self) -> GenerateRequest:
        if sum(x is not None for x in (self.prompt, self.prompts, self.messages)) != 1:
            raise ValueError(
                "give one of 'prompt' (a string), 'prompts' (a list) or 'messages' (a conversation)"
            )
        return self


class GeneratedText(BaseModel):
    text: str
    finish_reason: str = Field(
        description="`stop` (end of text, end of turn or a stop string) or `length`."
    )
    prompt_tokens: int
    completion_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    model: str
    results: list[GeneratedText]
    usage: Usage


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class OpenAIFields(BaseModel):
    """Fields of OpenAI's completion bodies. Accepted only at values lmforge honours, so a client
    never gets an answer to a question it did not ask."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Served model name; optional when one is served.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 means greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="Completions per prompt: only 1.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: float = Field(0.0, ge=0, le=0, description="Not supported: only 0.")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="Not supported: only 0.")
    user: str | None = Field(None, max_length=256, description="Ignored.")
    top_k: int | None = Field(None, ge=1, description="lmforge extension (as in vLLM).")
    repetition_penalty: float = Field(
        1.0, gt=0, le=100, description="lmforge extension (as in vLLM)."
    )

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(OpenAIFields):
    """OpenAI ``POST /v1/completions``."""

    prompt: str | list[str] = Field(description="A text, or several (not with stream).")
    max_tokens: int = Field(
        16, ge=1, description="Tokens to generate at most (OpenAI's default: 16)."
    )
    echo: bool = Field(False, description="Not supported: only false.")
    logprobs: None = Field(None, description="Not supported.")


class ChatCompletionRequest(OpenAIFields):
    """OpenAI ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens to generate at most (default: 128, or the server's cap if lower).",
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, description="The newer name of max_tokens."
    )
    logprobs: bool = Field(False, description="Not supported: only false.")


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
