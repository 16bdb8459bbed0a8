"""The baseline for ``lmforge bench serve``: a classifier served the way most people first write it.

A FastAPI app with one plain ``def`` route (FastAPI runs it in its thread pool) that calls a
``transformers.pipeline`` once per request: no batching across requests, no queue bound, no
keys, fp32 (the pipeline's default). It is kept deliberately short and untuned, because it is
what the load test compares lmforge's server with; it is not meant for production.

``python -m lmforge.serving.naive MODEL_DIR [--port 8001]`` (a run or model directory)
"""

from __future__ import annotations

import argparse
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


class ClassifyRequest(BaseModel):
    text: str


def create_app(model: str) -> FastAPI:
    """The baseline service for ``model`` (a run directory resolves to its ``model/``)."""
    from transformers import pipeline

    from lmforge.runs import find_model_dir

    model_dir = str(find_model_dir(model))
    classifier = pipeline("text-classification", model=model_dir, tokenizer=model_dir, top_k=None)
    app = FastAPI(title="naive pipeline server")

    @app.post("/v1/classify")
    def classify(body: ClassifyRequest) -> dict[str, Any]:
        scores = classifier([body.text])[0]  # [{"label", "score"}, ...], best first
        return {"label": scores[0]["label"], "scores": {s["label"]: s["score"] for s in scores}}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m lmforge.serving.naive", description=__doc__.splitlines()[0]
    )
    parser.add_argument("model", help="a run directory or a Hugging Face model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.model), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
