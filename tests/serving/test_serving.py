"""lmforge serve: every endpoint behind keys and limits, batching, the queue bound, masking,
shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time

import pytest
from conftest import NEGATIVE, POSITIVE, error_line, run_cli, tiny_config, write_csv

pytestmark = pytest.mark.recipe

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from lmforge.serving.app import ServedModel, create_app  # noqa: E402
from lmforge.serving.config import ServeSettings  # noqa: E402
from lmforge.serving.security import ApiKeys, RateLimit, RateLimiter, mask_pii  # noqa: E402
from lmforge.tasks.registry import get_task  # noqa: E402

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


class SlowPredictor:
    """A stand-in model: answers each text with its own index and length after a fixed delay,
    and records the batches it was given (deterministic batching tests)."""

    def __init__(self, delay: float = 0.05):
        self.task = get_task("sequence_classification")  # a real task: it names the endpoint
        self.label_names, self.pairs, self.backend = ["a", "b"], False, "fake"
        self.delay, self.batches = delay, []

    def predict(self, texts, batch_size=32, pairs=None):
        self.batches.append(list(texts))
        time.sleep(self.delay)
        return [
            {"label": "a", "score": float(len(t)), "probabilities": {"a": 1.0, "b": 0.0}}
            for t in texts
        ]


def fake_app(settings=None, delay=0.05):
    predictor = SlowPredictor(delay)
    app = create_app({"fake": ServedModel("fake", predictor, "-")}, settings or ServeSettings())
    return app, predictor


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """A classifier and a regressor of the tiny BERT."""
    from lmforge.config import load_config
    from lmforge.training.recipe import run_training

    tmp = tmp_path_factory.mktemp("serve")
    rows = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    classifier = run_training(
        load_config(tiny_config(tiny_model_dir, write_csv(tmp / "c.csv", rows), epochs=4)),
        tmp / "sentiment",
    )
    scores = [(t, str(i / 10)) for i, (t, _) in enumerate(rows)]
    cfg = tiny_config(tiny_model_dir, write_csv(tmp / "r.csv", scores), epochs=2)
    cfg["task"] = "regression"
    regressor = run_training(load_config(cfg), tmp / "score")
    return classifier, regressor


@pytest.fixture(scope="module")
def client(runs):
    from lmforge.serving.recipe import load_models

    models = load_models([str(runs[0]), f"scorer={runs[1]}"], precision="fp32")
    settings = ServeSettings(
        keys=ApiKeys({"alice": KEY}), max_texts=4, max_chars=200, max_body_bytes=2000
    )
    with TestClient(create_app(models, settings)) as c:
        yield c


def test_every_endpoint_needs_a_key_and_answers_with_one(client):
    for path, body in (
        ("/v1/classify", {"model": "sentiment", "texts": ["profit rose", "profit fell"]}),
        ("/v1/score", {"model": "scorer", "text": "profit rose"}),
    ):
        assert client.post(path, json=body).status_code == 401
        assert (
            client.post(
                path, json=body, headers={"Authorization": "Bearer wrong-key-0123456789"}
            ).status_code
            == 401
        )
        response = client.post(path, json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == body["model"] and len(response.json()["results"]) == len(
            body.get("texts", [0])
        )
        assert response.headers["X-Request-ID"]
    classified = client.post(
        "/v1/classify", json={"model": "sentiment", "text": "profit rose"}, headers=AUTH
    ).json()
    assert set(classified["results"][0]) == {"label", "score", "probabilities"}
    models = client.get("/v1/models", headers=AUTH).json()["data"]
    assert {m["id"]: m["endpoint"] for m in models} == {
        "sentiment": "/v1/classify",
        "scorer": "/v1/score",
    }
    assert client.get("/v1/models").status_code == 401
    assert (
        client.get("/healthz").json() == {"status": "ok"}
        and client.get("/readyz").status_code == 200
    )
    assert "lmforge_requests_total" in client.get("/metrics").text
    assert "/v1/classify" in client.get("/openapi.json").json()["paths"]


def test_the_served_answer_is_the_predictors(client, runs):
    from lmforge.inference.predictor import Predictor

    texts = ["profit rose sharply", "the outlook was downgraded"]
    served = client.post(
        "/v1/classify", json={"model": "sentiment", "texts": texts}, headers=AUTH
    ).json()["results"]
    assert served == Predictor.load(runs[0], precision="fp32").predict(texts)


@pytest.mark.parametrize(
    "body, status, kind",
    [
        ({"model": "sentiment"}, 422, "invalid_request"),  # neither text nor texts
        ({"model": "sentiment", "text": 3}, 422, "invalid_request"),  # wrong type
        ({"model": "sentiment", "texts": []}, 422, "invalid_request"),
        ({"model": "sentiment", "texts": ["a"] * 5}, 422, "too_many_texts"),
        ({"model": "sentiment", "text": "x" * 201}, 422, "text_too_long"),
        ({"model": "sentiment", "text": "a", "extra": 1}, 422, "invalid_request"),
        ({"model": "nope", "text": "a"}, 404, "model_not_found"),
        ({"text": "a"}, 422, "model_required"),
        ({"model": "scorer", "text": "a"}, 422, "wrong_endpoint"),
        (
            {"model": "sentiment", "text": "a", "text_pair": "b"},
            422,
            "pair_mismatch",
        ),  # not dropped silently
    ],
)
def test_bad_requests_get_4xx_never_500(client, body, status, kind):
    response = client.post("/v1/classify", json=body, headers=AUTH)
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == kind


def test_malformed_and_oversized_bodies(client):
    headers = {**AUTH, "Content-Type": "application/json"}
    assert client.post("/v1/classify", content=b"{not json", headers=headers).status_code == 422
    assert client.post("/v1/classify", content=b"[1, 2]", headers=headers).status_code == 422
    big = json.dumps({"model": "sentiment", "text": "x" * 3000}).encode()
    response = client.post("/v1/classify", content=big, headers=headers)
    assert response.status_code == 413 and response.json()["error"]["type"] == "body_too_large"

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(10):
            yield b" " * 500

    assert client.post("/v1/classify", content=chunks(), headers=headers).status_code == 413


def test_rate_limit_answers_429_with_retry_after():
    app, _ = fake_app(
        ServeSettings(keys=ApiKeys({"bob": KEY}), rate_limit=RateLimit.parse("3/minute")), delay=0
    )
    with TestClient(app) as c:
        codes = [
            c.post("/v1/classify", json={"text": "a"}, headers=AUTH).status_code for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        last = c.post("/v1/classify", json={"text": "a"}, headers=AUTH)
        assert last.status_code == 429 and int(last.headers["Retry-After"]) >= 1
    clock = [0.0]
    limiter = RateLimiter(RateLimit.parse("2/second"), clock=lambda: clock[0])
    assert [limiter.allow("k") for _ in range(3)][:2] == [0.0, 0.0] and limiter.allow("k") > 0
    clock[0] += 1.0  # a second later the bucket has refilled
    assert limiter.allow("k") == 0.0


async def _concurrent(app, bodies):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await asyncio.gather(*(c.post("/v1/classify", json=b) for b in bodies))


def test_batching_merges_concurrent_requests_and_returns_each_its_own_rows():
    app, predictor = fake_app(ServeSettings(max_batch_size=64, max_wait_ms=50))
    bodies = [{"texts": ["x" * i, "y" * (i + 100)]} for i in range(1, 13)]
    responses = asyncio.run(_concurrent(app, bodies))
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200
        assert [r["score"] for r in response.json()["results"]] == [
            float(len(t)) for t in body["texts"]
        ]
    assert max(len(b) for b in predictor.batches) > 2  # requests shared forward passes
    assert len(predictor.batches) < len(bodies)
    text = app.state.metrics.render()[0].decode()
    texts, batches = (
        float(re.search(rf'^lmforge_batch_size_{k}{{model="fake"}} (\S+)$', text, re.M).group(1))
        for k in ("sum", "count")
    )
    assert texts == 24 and texts / batches > 1  # the batch-size metric says so too


def test_requests_that_queue_during_a_batch_share_the_next_one():
    """Sustained load: what queued while the model was busy goes in one batch, not one by one
    (their deadline has passed by then; a regression made every such batch one request)."""
    from lmforge.serving.batching import MicroBatcher

    batches = []

    def run(texts, pairs):
        batches.append(list(texts))
        time.sleep(0.1)
        return texts

    async def scenario():
        batcher = MicroBatcher(run, max_batch_size=32, max_wait_ms=1)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["first"]))
        await asyncio.sleep(0.03)  # the first batch is running now
        rest = [asyncio.create_task(batcher.submit([f"t{i}"])) for i in range(10)]
        answers = await asyncio.gather(first, *rest)
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [["first"], *[[f"t{i}"] for i in range(10)]]
    assert batches == [["first"], [f"t{i}" for i in range(10)]]


def test_with_two_model_threads_two_batches_run_at_once():
    from lmforge.serving.batching import MicroBatcher

    running, overlap = [0], [0]
    lock = threading.Lock()

    def run(texts, pairs):
        with lock:
            running[0] += 1
            overlap[0] = max(overlap[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return texts

    async def scenario():
        batcher = MicroBatcher(run, max_batch_size=2, max_wait_ms=0, concurrency=2)
        batcher.start()
        answers = await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(4)))
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [[f"t{i}"] for i in range(4)] and overlap[0] == 2


def test_model_threads_share_the_cores_and_each_has_its_own_tokenizer(runs):
    import torch

    from lmforge.serving.config import ServeConfig
    from lmforge.serving.recipe import load_models, model_threads

    before = torch.get_num_threads()
    try:
        assert model_threads(ServeConfig(models=["x"], model_threads=2)) == 2
        served = load_models([str(runs[0])], precision="fp32")
        settings = ServeSettings(model_threads=2)
        with TestClient(create_app(served, settings)) as c:
            answers = [
                c.post("/v1/classify", json={"texts": ["good", "bad film", "fine"]})
                for _ in range(6)
            ]
        assert all(a.status_code == 200 for a in answers)
        assert (
            len({json.dumps(a.json()) for a in answers}) == 1
        )  # every thread gives the same answer
    finally:
        torch.set_num_threads(before)


def test_a_full_queue_answers_503_instead_of_growing():
    app, _ = fake_app(ServeSettings(max_batch_size=1, max_wait_ms=0, max_queue=2), delay=0.2)
    responses = asyncio.run(_concurrent(app, [{"text": "a"}] * 8))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes
    full = next(r for r in responses if r.status_code == 503)
    assert full.json()["error"]["type"] == "overloaded" and int(full.headers["Retry-After"]) >= 1


def test_graceful_shutdown_finishes_in_flight_requests():
    import uvicorn

    app, _ = fake_app(delay=1.0)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    result = {}

    def call():
        result["response"] = httpx.post(
            f"http://127.0.0.1:{port}/v1/classify", json={"text": "slow"}, timeout=10
        )

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the request is in the model now
    server.should_exit = True  # what SIGTERM does
    caller.join(10)
    thread.join(10)
    assert (
        result["response"].status_code == 200
        and result["response"].json()["results"][0]["score"] == 4.0
    )


@pytest.mark.parametrize(
    "text, kind",
    [
        ("write to jane.doe@example.com today", "[EMAIL]"),
        ("call me on +44 20 7946 0958", "[PHONE]"),
        ("my number is (555) 123-4567", "[PHONE]"),
        ("card 4111 1111 1111 1111 was charged", "[CARD]"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "[ACCOUNT]"),
        ("account number 12345678 is overdrawn", "[ACCOUNT]"),
        ("SSN 123-45-6789 on file", "[ID]"),
    ],
)
def test_each_kind_of_personal_data_is_masked(text, kind):
    masked = mask_pii(text)
    assert kind in masked
    assert "@" not in masked and not re.search(r"\d{3}", masked)  # nothing of it is left


def test_ordinary_numbers_are_not_masked():
    text = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in 2007, up 12%."
    assert mask_pii(text) == text


def test_personal_data_never_reaches_a_log_line(caplog):
    from lmforge.serving.security import MaskingFilter

    record = logging.LogRecord(
        "lmforge", logging.INFO, __file__, 1, "caller %s sent %s", ("x", "bob@example.com"), None
    )
    MaskingFilter().filter(record)
    assert record.getMessage() == "caller x sent [EMAIL]"
    app, predictor = fake_app(ServeSettings(mask_inputs=True), delay=0)
    with TestClient(app) as c:
        c.post("/v1/classify", json={"text": "mail bob@example.com"})
    assert predictor.batches[-1] == ["mail [EMAIL]"]  # --mask-inputs: the model never saw it


def test_api_keys_are_gathered_hashed_and_named(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# ops\nops:ops-key-0123456789abcd\n")
    keys = ApiKeys.gather(
        ["ci:ci-key-0123456789abcdef"],
        str(keys_file),
        environ={"LMFORGE_API_KEYS": "env-key-0123456789abcdef"},
    )
    assert len(keys) == 3
    assert (
        keys.identify("ops-key-0123456789abcd") == "ops"
        and keys.identify("ci-key-0123456789abcdef") == "ci"
    )
    assert (
        keys.identify("env-key-0123456789abcdef").startswith("key")
        and keys.identify("nope") is None
    )
    assert "ops-key" not in repr(vars(keys))  # only digests are kept
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="at least 16"):
        ApiKeys.gather(["short"], None, environ={})


def test_serve_refuses_what_it_cannot_do(capsys, runs, tmp_path):
    code, _, err = run_cli(["serve", runs[0], "--host", "0.0.0.0"], capsys)
    assert code == 2 and "--allow-open" in error_line(err)
    code, _, err = run_cli(["serve", runs[0], "--rate-limit", "fast"], capsys)
    assert code == 2 and "N/minute" in error_line(err)
    code, _, err = run_cli(["serve", runs[0], f"sentiment={runs[1]}"], capsys)
    assert code == 2 and "named 'sentiment'" in error_line(err)
    code, _, err = run_cli(["serve", tmp_path / "missing"], capsys)
    assert code == 2 and "does not exist" in error_line(err)
