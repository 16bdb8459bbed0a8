"""lmforge serve for causal LMs: /v1/generate and the OpenAI-compatible endpoints, whole and
streamed."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from conftest import save_tiny_chat_llama, tiny_bpe_tokenizer, tiny_llama

pytestmark = pytest.mark.recipe

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from lmforge.generation.generate import GenerationOptions, complete, generate  # noqa: E402
from lmforge.serving.app import create_app  # noqa: E402
from lmforge.serving.config import ServeSettings  # noqa: E402
from lmforge.serving.generation import AnswerShape, GenerationJob, GenerationRunner, sse_answer  # noqa: E402
from lmforge.serving.security import ApiKeys  # noqa: E402

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONVERSATION = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "Capital of France?"},
]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A tiny Llama with a chat template, saved as a plain Hugging Face directory (no
    lmforge.json)."""
    return save_tiny_chat_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def models(lm_dir):
    from lmforge.serving.recipe import load_models

    return load_models([f"lm={lm_dir}"], precision="fp32")


@pytest.fixture(scope="module")
def client(models):
    settings = ServeSettings(
        keys=ApiKeys({"alice": KEY}), max_new_tokens=64, max_texts=4, max_chars=500
    )
    with TestClient(create_app(models, settings)) as c:
        yield c


def events(response) -> list:
    """The SSE stream, strictly: every event one `data: ` line and a blank line; JSON but the
    last."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == "", "the stream ends with a blank line"
    payloads = []
    for block in blocks[:-1]:
        assert block.startswith("data: ") and "\n" not in block, block
        payloads.append(block[len("data: ") :])
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def test_a_plain_causal_lm_directory_is_served_as_a_generator(client):
    card = client.get("/v1/models", headers=AUTH).json()["data"][0]
    assert (card["id"], card["task"], card["endpoint"], card["owned_by"]) == (
        "lm",
        "causal_lm",
        "/v1/generate",
        "lmforge",
    )


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/generate", {"prompt": "the cat"}),
        ("/v1/completions", {"model": "lm", "prompt": "the cat"}),
        ("/v1/chat/completions", {"model": "lm", "messages": CONVERSATION}),
    ],
)
def test_generation_endpoints_need_a_key(client, path, body):
    assert client.post(path, json=body).status_code == 401
    assert (
        client.post(
            path, json=body, headers={"Authorization": "Bearer wrong-key-0123456789"}
        ).status_code
        == 401
    )
    assert (
        client.post(
            path,
            json={**body, "max_tokens" if "v1/generate" not in path else "max_new_tokens": 4},
            headers=AUTH,
        ).status_code
        == 200
    )


def test_generate_answers_what_lmforge_generate_answers(client, models):
    predictor = models["lm"].predictor
    want = complete(
        predictor.model,
        predictor.tokenizer,
        ["the cat", "hello"],
        GenerationOptions(greedy=True, max_new_tokens=12),
    )
    answer = client.post(
        "/v1/generate",
        json={"prompts": ["the cat", "hello"], "temperature": 0, "max_new_tokens": 12},
        headers=AUTH,
    ).json()
    assert [r["text"] for r in answer["results"]] == [c.text for c in want]
    assert [r["text"] for r in answer["results"]] == generate(
        predictor.model,
        predictor.tokenizer,
        ["the cat", "hello"],
        GenerationOptions(greedy=True, max_new_tokens=12),
    )
    prompt_tokens = [len(predictor.tokenizer(p)["input_ids"]) for p in ("the cat", "hello")]
    assert [r["prompt_tokens"] for r in answer["results"]] == prompt_tokens
    assert [(r["completion_tokens"], r["finish_reason"]) for r in answer["results"]] == [
        (c.completion_tokens, c.finish_reason) for c in want
    ]
    eos = predictor.tokenizer.eos_token_id
    for prompt, row in zip(
        ("the cat", "hello"), answer["results"], strict=True
    ):  # counted by plain HF generate
        ids = predictor.tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = predictor.model.generate(
            ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=eos
        )
        new_ids = out[0, ids.shape[1] :].tolist()
        assert row["completion_tokens"] == len(new_ids)
        assert row["finish_reason"] == ("stop" if new_ids[-1] == eos else "length")
    assert answer["usage"]["total_tokens"] == sum(prompt_tokens) + sum(
        r["completion_tokens"] for r in answer["results"]
    )


def test_a_seed_gives_the_same_sample_and_temperature_zero_is_greedy(client):
    body = {"model": "lm", "prompt": "Paris is", "max_tokens": 10, "temperature": 1.5, "seed": 7}
    first = client.post("/v1/completions", json=body, headers=AUTH).json()["choices"][0]["text"]
    assert (
        client.post("/v1/completions", json=body, headers=AUTH).json()["choices"][0]["text"]
        == first
    )
    greedy = [
        client.post(
            "/v1/completions", json={**body, "temperature": 0, "seed": s}, headers=AUTH
        ).json()
        for s in (1, 2)
    ]
    assert greedy[0]["choices"][0]["text"] == greedy[1]["choices"][0]["text"]


def test_completions_stream_adds_up_to_the_whole_answer(client):
    body = {"model": "lm", "prompt": "the dog", "max_tokens": 16, "temperature": 0}
    whole = client.post("/v1/completions", json=body, headers=AUTH).json()
    assert whole["object"] == "text_completion" and whole["id"].startswith("cmpl-")
    streamed = events(
        client.post(
            "/v1/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
            headers=AUTH,
        )
    )
    chunks, usage = streamed[:-1], streamed[-1]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in streamed)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == whole["choices"][0][
        "finish_reason"
    ]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]


def test_chat_stream_is_deltas_of_the_assistant_message(client):
    body = {"model": "lm", "messages": CONVERSATION, "max_tokens": 16, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=body, headers=AUTH).json()
    assert (
        whole["object"] == "chat.completion"
        and whole["choices"][0]["message"]["role"] == "assistant"
    )
    chunks = events(
        client.post("/v1/chat/completions", json={**body, "stream": True}, headers=AUTH)
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_the_openai_client_reads_the_answers_and_the_stream(client):
    openai = pytest.importorskip("openai")
    ai = openai.OpenAI(
        base_url=f"{client.base_url}/v1", api_key=KEY, http_client=client, max_retries=0
    )
    whole = ai.chat.completions.create(
        model="lm", messages=CONVERSATION, max_tokens=12, temperature=0
    )
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in ai.chat.completions.create(
            model="lm", messages=CONVERSATION, max_tokens=12, temperature=0, stream=True
        )
        if chunk.choices
    ]
    assert "".join(pieces) == whole.choices[0].message.content
    assert whole.usage.completion_tokens >= 1
    text = (
        ai.completions.create(model="lm", prompt="the cat", max_tokens=8, temperature=0)
        .choices[0]
        .text
    )
    streamed = "".join(
        c.choices[0].text
        for c in ai.completions.create(
            model="lm", prompt="the cat", max_tokens=8, temperature=0, stream=True
        )
    )
    assert streamed == text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{client.base_url}/v1",
            api_key="wrong-key-0123456789",
            http_client=client,
            max_retries=0,
        ).completions.create(model="lm", prompt="x", max_tokens=2)


@pytest.mark.parametrize(
    "path, body, kind",
    [
        ("/v1/completions", {"prompt": "a", "n": 2}, "invalid_request"),
        ("/v1/completions", {"prompt": "a", "logit_bias": {"1": 5}}, "invalid_request"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 65}, "too_many_tokens"),
        ("/v1/completions", {"prompt": ["a", "b"], "stream": True}, "invalid_request"),
        (
            "/v1/completions",
            {"prompt": "q " * 240, "max_tokens": 60},
            "invalid_input",
        ),  # past 256 positions
        ("/v1/completions", {"prompt": 5}, "invalid_request"),
        ("/v1/completions", {"prompt": []}, "invalid_request"),
        ("/v1/chat/completions", {"messages": []}, "invalid_request"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "robot", "content": "x"}]},
            "invalid_request",
        ),
        ("/v1/generate", {"prompt": "a", "prompts": ["b"]}, "invalid_request"),
        ("/v1/generate", {"prompt": "a", "top_p": 0}, "invalid_request"),
        ("/v1/generate", {"prompts": ["a"] * 5}, "too_many_texts"),
        ("/v1/generate", {"prompt": "x" * 501}, "text_too_long"),
        ("/v1/classify", {"text": "a"}, "wrong_endpoint"),
    ],
)
def test_bad_generation_requests_are_422s(client, path, body, kind):
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == kind


def test_chat_to_a_model_without_a_chat_template_says_what_to_use(tmp_path):
    from lmforge.serving.recipe import load_models

    tokenizer = tiny_bpe_tokenizer()  # no template: a pretrained LM, not fine-tuned for chat
    tiny_llama(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with TestClient(
        create_app(load_models([f"base={tmp_path}"], precision="fp32"), ServeSettings())
    ) as c:
        answer = c.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert answer.status_code == 422
        assert "no chat template" in answer.json()["error"]["message"]
        assert "/v1/completions" in answer.json()["error"]["message"]
        assert (
            c.post("/v1/completions", json={"prompt": "the cat", "max_tokens": 2}).status_code
            == 200
        )


def test_generation_metrics_count_tokens(client):
    client.post(
        "/v1/completions", json={"prompt": "hello", "max_tokens": 5, "stream": True}, headers=AUTH
    )
    text = client.get("/metrics").text
    generated = float(
        next(
            line.split()[-1]
            for line in text.splitlines()
            if line.startswith('lmforge_generated_tokens_total{model="lm"}')
        )
    )
    assert generated >= 1
    assert 'lmforge_time_to_first_token_seconds_count{model="lm"}' in text


class _Predictor:
    model = tokenizer = None


def test_a_closed_stream_stops_its_generation_at_the_next_piece():
    """The client goes away after the first piece: the worker's next write raises, the slot
    frees."""
    written = []

    def slow_generation(job, stream):
        for n in range(200):
            stream.write(f"piece {n} ")
            written.append(n)
            time.sleep(0.01)
        raise AssertionError("generation ran to the end after its client left")

    async def scenario():
        runner = GenerationRunner(_Predictor(), max_queue=2)
        runner._generate = slow_generation
        runner.reserve()
        job = GenerationJob(["x"], GenerationOptions(greedy=True))
        stream = sse_answer(runner, job, AnswerShape("lm"))
        assert json.loads((await anext(stream))[len("data: ") :]) == {"text": "piece 0 "}
        await stream.aclose()  # what Starlette does when the client disconnects
        deadline = time.monotonic() + 5
        while runner.waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert runner.waiting == 0
        await runner.stop()

    asyncio.run(scenario())
    assert len(written) < 50


def test_the_generation_queue_bound_answers_503(models):
    settings = ServeSettings(max_generation_queue=1)
    release = threading.Event()
    with TestClient(create_app(models, settings)) as c:
        runner = c.app.state.models["lm"].generator
        original = runner._generate
        runner._generate = lambda job, stream: (release.wait(5), original(job, stream))[1]
        results = {}
        first = threading.Thread(
            target=lambda: results.setdefault(
                "first", c.post("/v1/generate", json={"prompt": "the cat", "max_new_tokens": 2})
            )
        )
        first.start()
        deadline = time.monotonic() + 5
        while runner.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = c.post("/v1/generate", json={"prompt": "hello", "max_new_tokens": 2})
        release.set()
        first.join()
    assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
    assert results["first"].status_code == 200


@pytest.mark.parametrize(
    "path, body",
    [  # found by the schemathesis run: these were 500s
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}], "stop": "\u001f"}),
        ("/v1/completions", {"prompt": "the cat", "stop": "\u001f"}),
        ("/v1/generate", {"prompt": "the cat", "stop": ["é"], "max_new_tokens": 4}),
        (
            "/v1/generate",
            {"prompt": "the cat", "stop": ["é"], "max_new_tokens": 4, "stream": True},
        ),  # before the stream starts
    ],
)
def test_a_stop_string_the_tokenizer_cannot_spell_is_a_422(client, path, body):
    answer = client.post(path, json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert "stop strings" in answer.json()["error"]["message"]
