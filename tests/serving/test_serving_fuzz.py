"""Schema-based fuzzing of the service: whatever a client sends, the answer is never a 5xx.

Schemathesis reads the app's own OpenAPI schema and sends every operation requests that fit
it and requests that break it; the app answers 4xx for the bad ones and 200 for the rest, and
a 5xx is a bug. The app runs in-process (ASGI) with a tiny classifier and a tiny Llama behind
an API key. Schemathesis runs the app's lifespan around the requests (its ASGI client sends
``lifespan.startup`` before an operation's first case and ``lifespan.shutdown`` after its last),
so the micro-batchers and generation runners are live, as under uvicorn; the GET /readyz case
checks it. A failure shows the case as a ``curl`` line.

``.venv/bin/pytest -m slow tests/serving/test_serving_fuzz.py -q``
"""

from __future__ import annotations

import zlib
from collections import Counter

import pytest

pytestmark = pytest.mark.recipe

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from conftest import save_tiny_chat_llama  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from lmforge.serving.app import create_app  # noqa: E402
from lmforge.serving.config import ServeSettings  # noqa: E402
from lmforge.serving.security import ApiKeys  # noqa: E402

KEY = "fuzz-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_EXAMPLES = (
    100  # Hypothesis examples per operation and phase; schemathesis adds its own coverage cases
)
# the model each endpoint is aimed at (a classifier on /v1/score or /v1/embed is a 422 worth
# sending too)
MODEL_OF = {"/v1/generate": "lm", "/v1/completions": "lm", "/v1/chat/completions": "lm"}
# the input forms of which a body takes one (the others: text or texts)
ONE_OF = {
    "/v1/generate": ("prompt", "prompts", "messages"),
    "/v1/completions": ("prompt",),
    "/v1/chat/completions": ("messages",),
}
CASES: Counter[tuple[str, int]] = Counter()  # (operation, status) -> cases


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A tiny Llama with a chat template, saved as a plain Hugging Face directory (no
    lmforge.json)."""
    return save_tiny_chat_llama(tmp_path_factory.mktemp("fuzz-llama"))


@pytest.fixture(scope="module")
def fuzzed_app(tiny_model_dir, lm_dir, request):
    """The app with both models, the key and tight limits (cases stay small and quick)."""
    from lmforge.serving.recipe import load_models

    models = load_models([f"clf={tiny_model_dir}", f"lm={lm_dir}"], precision="fp32")
    limits = ServeSettings(
        keys=ApiKeys({"fuzzer": KEY}),
        max_texts=8,
        max_chars=500,
        max_new_tokens=128,
        max_body_bytes=20_000,
    )
    yield create_app(models, limits)
    print_summary(request.config)


def print_summary(config: pytest.Config) -> None:
    """Cases per operation, by status: the evidence that the fuzzer reached the models (200s)."""
    if not CASES:
        return
    per_operation: dict[str, Counter[int]] = {}
    for (operation, status), n in CASES.items():
        per_operation.setdefault(operation, Counter())[status] += n
    lines = [f"fuzz cases: {sum(CASES.values())} in all"]
    for operation, statuses in sorted(per_operation.items()):
        by_status = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
        lines.append(f"  {operation}: {sum(statuses.values())} ({by_status})")
    capture = config.pluginmanager.get_plugin("capturemanager")
    with (
        capture.global_and_fixture_disabled()
    ):  # a module fixture's teardown output is captured otherwise
        print("\n" + "\n".join(lines))


# The schema comes from an app without models: the routes, and so the schema, do not depend on
# them, and collecting this module loads no model (schemathesis still takes ~1 s to read the
# schema). The cases go to `fuzzed_app` (case.call(app=...)).
# (schemathesis.pytest.from_fixture would be the lazy way, but 4.32 fails under pytest 9:
# it sets `request.node._nodeid`, which pytest 9 no longer has.)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app({}, ServeSettings()))


def steer(case) -> None:
    """Three bodies in four are steered past the rules the schema cannot state, so that they reach
    the models: a served model's name (a random one only ever reaches the 404), one input form of
    the body's one-of (``text`` or ``texts``; ``prompt``, ``prompts`` or ``messages``; a fixed text
    where the body has none), and no second texts (the classifier takes single texts). The fourth
    stays as the fuzzer made it."""
    body = case.body
    if not isinstance(body, dict) or zlib.crc32(repr(body).encode()) % 4 == 0:
        return
    path = case.operation.path
    body["model"] = MODEL_OF.get(path, "clf")
    forms = [key for key in ONE_OF.get(path, ("text", "texts")) if key in body]
    for extra in forms[1:]:
        del body[extra]
    if not forms:  # all are optional in the schema, so bodies without any are common
        body[ONE_OF.get(path, ("text",))[0]] = "the cat sat on the mat"
    if path not in MODEL_OF:
        body.pop("text_pair", None)
        body.pop("text_pairs", None)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_is_answered_with_a_server_error(case, fuzzed_app):
    steer(case)
    response = case.call(app=fuzzed_app, headers=AUTH)
    CASES[case.operation.label, response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error])
    if (
        case.operation.label == "GET /readyz" and case.method == "GET"
    ):  # the lifespan ran: batchers are up
        assert response.status_code == 200, response.text
