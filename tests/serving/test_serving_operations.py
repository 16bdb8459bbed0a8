"""lmforge serve operations: serve.yaml with flags on top, hot reload of a model directory, several
workers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import error_line, run_cli, save_tiny_classifier

pytestmark = pytest.mark.recipe

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.serving.app import create_app  # noqa: E402
from lmforge.serving.config import ServeSettings, load_serve_config  # noqa: E402
from lmforge.serving.security import ApiKeys  # noqa: E402

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


def save_classifier(out: Path, tokenizer_dir: Path, seed: int) -> Path:
    """A plain Hugging Face sequence classifier of the tiny BERT (no lmforge.json), seeded."""
    return save_tiny_classifier(out, ["negative", "positive"], seed, tokenizer_dir)


@pytest.fixture(scope="module")
def versions(tmp_path_factory, tiny_model_dir):
    """Two versions of one classifier (different weights, so different answers)."""
    tmp = tmp_path_factory.mktemp("versions")
    return save_classifier(tmp / "v1", tiny_model_dir, 1), save_classifier(
        tmp / "v2", tiny_model_dir, 2
    )


def probability(client, text="the service was great") -> float:
    answer = client.post("/v1/classify", json={"text": text}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()["results"][0]["probabilities"]["positive"]


def reloads(client, result: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("lmforge_model_reloads_total{") and f'result="{result}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# --- serve.yaml --------------------------------------------------------------------------------


def test_a_config_file_is_validated_and_flags_win(tmp_path, versions):
    (tmp_path / "models").mkdir()
    shutil.copytree(versions[0], tmp_path / "models" / "sentiment")
    config = tmp_path / "serve.yaml"
    config.write_text(
        "models: [models/sentiment]\nport: 9000\nmax_batch_size: 64\nrate_limit: 10/second\n"
    )
    loaded = load_serve_config(str(config), {"port": 9100, "max_wait_ms": None, "models": []})
    assert (
        loaded.port == 9100 and loaded.max_batch_size == 64
    )  # the flag wins, the file fills the rest
    assert loaded.models == [str(tmp_path / "models" / "sentiment")]  # relative to the file
    settings = loaded.settings(ApiKeys({"alice": KEY}))
    assert settings.max_batch_size == 64 and settings.rate_limit.requests == 10 and settings.keys

    config.write_text("models: [x]\nmax_batch_sise: 64\n")
    with pytest.raises(
        LmforgeError,
        match=r"serve.yaml: unknown key 'max_batch_sise'.*did you mean 'max_batch_size'",
    ):
        load_serve_config(str(config), {})
    config.write_text("models: [x]\nmax_texts: 0\n")
    with pytest.raises(
        LmforgeError, match=r"serve.yaml: max_texts: Input should be greater than or equal to 1"
    ):
        load_serve_config(str(config), {})
    config.write_text("")
    with pytest.raises(LmforgeError, match=r"serve.yaml is empty; a config needs at least models:"):
        load_serve_config(str(config), {})


def test_serve_config_errors_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(["serve"], capsys)
    assert code == 2 and "no models to serve" in error_line(err)
    code, _, err = run_cli(["serve", "x", "--max-queue", "0"], capsys)
    assert code == 2 and "max_queue: Input should be greater than or equal to 1" in error_line(err)
    code, _, err = run_cli(["serve", "--config", tmp_path / "none.yaml"], capsys)
    assert code == 2 and "not found" in error_line(err)


def test_a_model_without_an_endpoint_is_refused_before_loading(
    capsys, tmp_path, tiny_model_dir, versions
):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(
        BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(tmp_path / "mlm")
    code, _, err = run_cli(["serve", versions[0], tmp_path / "mlm", "--workers", "2"], capsys)
    assert code == 2 and "is a masked lm model: it has no endpoint" in error_line(err)
    code, _, err = run_cli(["serve", f"a={versions[0]}", f"a={versions[1]}"], capsys)
    assert code == 2 and "two models are named 'a'" in error_line(err)


# --- hot reload --------------------------------------------------------------------------------


@pytest.fixture()
def served(tmp_path, versions):
    """A client of a service watching a copy of v1 every 0.1 s, and the directory it watches."""
    from lmforge.serving.recipe import load_models

    live = tmp_path / "live"
    shutil.copytree(versions[0], live)
    models = load_models([f"sentiment={live}"], precision="fp32")
    settings = ServeSettings(keys=ApiKeys({"alice": KEY}), reload_interval=0.1)
    with TestClient(create_app(models, settings)) as client:
        yield client, live


def test_new_weights_in_the_directory_are_served_without_a_restart(served, versions):
    client, live = served
    before = probability(client)
    shutil.copy(versions[1] / "model.safetensors", live / "model.safetensors")
    assert wait_for(lambda: reloads(client, "ok") == 1), (
        "the watcher did not reload the new weights"
    )
    after = probability(client)
    assert after != pytest.approx(before, abs=1e-6)
    card = client.get("/v1/models", headers=AUTH).json()["data"][0]
    assert card["reloads"] == 1


def test_a_broken_model_keeps_the_old_one_serving(served):
    client, live = served
    before = probability(client)
    (live / "model.safetensors").write_bytes(b"not a safetensors file")
    assert wait_for(lambda: reloads(client, "failed") == 1), "the broken files were not tried"
    assert probability(client) == pytest.approx(before)  # still the old weights
    time.sleep(0.4)
    assert reloads(client, "failed") == 1  # the same broken files are not retried every interval


def test_the_reload_endpoint_swaps_at_once_and_refuses_another_task(served, versions, tmp_path):
    client, live = served
    assert client.post("/v1/models/sentiment/reload").status_code == 401
    assert client.post("/v1/models/nope/reload", headers=AUTH).status_code == 404
    shutil.copy(versions[1] / "model.safetensors", live / "model.safetensors")
    answer = client.post("/v1/models/sentiment/reload", headers=AUTH)
    assert answer.status_code == 200 and answer.json()["reloads"] == 1
    served_now = probability(client)

    import json

    config = json.loads((live / "config.json").read_text())
    config["architectures"] = ["BertForTokenClassification"]
    (live / "config.json").write_text(json.dumps(config))
    refused = client.post("/v1/models/sentiment/reload", headers=AUTH)
    assert refused.status_code == 422 and refused.json()["error"]["type"] == "reload_failed"
    assert "token classification model" in refused.json()["error"]["message"]
    assert probability(client) == pytest.approx(served_now)  # the last good model still serves


# --- several workers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_workers_share_the_port_and_their_metrics_add_up(tmp_path, versions):
    import psutil

    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmforge",
            "serve",
            f"sentiment={versions[0]}",
            "--workers",
            "2",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--precision",
            "fp32",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                assert server.poll() is None, server.stderr.read()
                return False

        assert wait_for(ready, 90), "the workers did not start"
        assert wait_for(lambda: len(psutil.Process(server.pid).children()) >= 2, 30)
        for _ in range(12):  # a fresh connection each: the kernel hands them to either worker
            answer = httpx.post(
                f"{base}/v1/classify", json={"text": "fine"}, headers=AUTH, timeout=30
            )
            assert answer.status_code == 200
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("lmforge_requests_total{") and 'endpoint="/v1/classify"' in line
        )
        assert counted == 12  # every worker's requests, whichever worker answered the scrape
    finally:
        server.terminate()
        server.wait(30)
