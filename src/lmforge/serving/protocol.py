"""The request and response bodies of the HTTP API (pydantic: the OpenAPI schema comes from here)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TextsRequest(BaseModel):
    """One text (``text``) or several (``texts``), optionally with the second text of each pair."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Served model name (GET /v1/models); optional when one is served.")
    text: str | None = Field(None, description="One input text.")
    texts: list[str] | None = Field(None, description="Several input texts, answered in order.")
    text_pair: str | None = Field(None, description="Pair models: the second text of `text`.")
    text_pairs: list[str] | None = Field(None, description="Pair models: the second text of each of `texts`.")

    @model_validator(mode="after")
    def _one_form(self) -> TextsRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give either 'text' (a string) or 'texts' (a list of strings)")
        if self.text_pair is not None and self.text is None:
            raise ValueError("'text_pair' goes with 'text'; with 'texts' give 'text_pairs'")
        if self.text_pairs is not None and (self.texts is None or len(self.text_pairs) != len(self.texts)):
            raise ValueError("'text_pairs' needs 'texts' of the same length")
        return self

    def inputs(self) -> tuple[list[str], list[str] | None]:
        if self.text is not None:
            return [self.text], [self.text_pair] if self.text_pair is not None else None
        return list(self.texts or []), list(self.text_pairs) if self.text_pairs is not None else None


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
    task: str
    backend: str
    labels: list[str]
    endpoint: str = Field(description="The endpoint that serves this model's task.")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    error: dict[str, Any] = Field(description="`type` and `message`")
