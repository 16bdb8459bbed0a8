"""lmforge on Ray Serve: the app builder's arguments, and the tiny classifier served by a local
Ray."""

from __future__ import annotations

import re
import socket

import pytest

pytestmark = pytest.mark.unit

pytest.importorskip("ray.serve")

from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.serving.ray_serve import ReplicaResources, app_builder, parse_args  # noqa: E402

KEY = "test-key-0123456789abcdef"


def test_arguments_from_the_command_line_are_parsed_and_paths_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "fpb").mkdir()
    monkeypatch.chdir(tmp_path)
    resources, config = parse_args(
        {
            "models": "fpb, lm=hub-org/tiny",
            "num_replicas": "2",
            "num_cpus": "0.5",
            "precision": "fp32",
            "allow_open": "true",
            "max_batch_size": "64",
            "rate_limit": "600/minute",
        }
    )
    assert config.models == [f"fpb={tmp_path / 'fpb'}", "lm=hub-org/tiny"]
    assert resources == ReplicaResources(num_replicas=2, num_cpus=0.5, num_gpus=0.0)
    assert (config.precision, config.allow_open, config.max_batch_size) == ("fp32", True, 64)
    assert config.settings().rate_limit.requests == 600


def test_a_serve_yaml_gives_the_settings_and_arguments_win(tmp_path):
    (tmp_path / "runs" / "fpb").mkdir(parents=True)
    (tmp_path / "serve.yaml").write_text("models: [runs/fpb]\nmax_wait_ms: 2\nmax_batch_size: 8\n")
    _, config = parse_args({"config": str(tmp_path / "serve.yaml"), "max_batch_size": 16})
    assert config.models == [f"fpb={(tmp_path / 'runs' / 'fpb').resolve()}"]  # relative to the file
    assert (config.max_wait_ms, config.max_batch_size) == (2.0, 16)


@pytest.mark.parametrize(
    "args, message",
    [
        ({}, "no models to serve"),
        ({"models": " , "}, "no models to serve"),
        (
            {"models": "a", "num_replica": "2"},
            "unknown argument 'num_replica' (did you mean 'num_replicas'?)",
        ),
        ({"models": "a", "port": "9000"}, "port: on Ray Serve, use Ray Serve's http_options"),
        ({"models": "a", "workers": "2"}, "workers: on Ray Serve, use num_replicas"),
        ({"models": "a", "num_replicas": "two"}, "num_replicas=two: expected a whole number"),
        ({"models": "a", "num_replicas": "0"}, "num_replicas must be at least 1"),
        ({"models": "a", "num_cpus": "0"}, "num_cpus must be more than 0"),
        ({"models": "a", "num_gpus": "-1"}, "num_gpus must be 0 or more"),
        ({"models": "a", "precision": "fp8"}, "precision"),
        ({"models": "a", "max_batch_size": "0"}, "max_batch_size"),
        ({"models": "a", "rate_limit": "lots"}, "expected N/second, N/minute or N/hour"),
        ({"models": "x/a,y/a"}, "two models are named 'a'"),
        ({"models": "bad name=x"}, "model name 'bad name'"),
        ({"models": "a", "config": "/nonexistent/serve.yaml"}, "serve.yaml"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message, monkeypatch):
    monkeypatch.setenv("LMFORGE_API_KEYS", f"alice:{KEY}")
    with pytest.raises(LmforgeError, match=re.escape(message)) as caught:
        app_builder(args)
    assert "\n" not in str(caught.value)


def test_building_without_keys_needs_allow_open(monkeypatch):
    monkeypatch.delenv("LMFORGE_API_KEYS", raising=False)
    with pytest.raises(LmforgeError, match=r"no API keys: set \$LMFORGE_API_KEYS"):
        app_builder({"models": "a"})
    monkeypatch.setenv("LMFORGE_API_KEYS", "short")
    with pytest.raises(LmforgeError, match="use at least 16"):
        app_builder({"models": "a"})


def test_the_deployment_has_the_asked_replicas_and_resources(monkeypatch):
    monkeypatch.setenv("LMFORGE_API_KEYS", f"alice:{KEY}")
    app = app_builder({"models": "a", "num_replicas": "3", "num_cpus": "2", "num_gpus": "0.5"})
    deployment = app._bound_deployment  # the only way Ray Serve exposes an Application's options
    assert deployment.name == "lmforge"
    assert deployment.num_replicas == 3
    assert deployment.ray_actor_options["num_cpus"] == 2.0
    assert deployment.ray_actor_options["num_gpus"] == 0.5
    assert deployment.max_ongoing_requests == 256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_local_ray_serves_the_classifier_with_batchers_started(tiny_model_dir, monkeypatch):
    import httpx
    import ray
    from ray import serve

    monkeypatch.setenv("LMFORGE_API_KEYS", f"alice:{KEY}")
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            app_builder({"models": f"tiny={tiny_model_dir}", "num_cpus": "1", "precision": "fp32"}),
            name="lmforge",
            route_prefix="/",
        )
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{base}/readyz").json() == {
            "status": "ready",
            "models": ["tiny"],
        }  # lifespan ran
        assert httpx.post(f"{base}/v1/classify", json={"texts": ["profit rose"]}).status_code == 401
        answer = httpx.post(
            f"{base}/v1/classify",
            json={"texts": ["profit rose", "sales fell"]},
            headers=auth,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "tiny"
        assert [sorted(r["probabilities"]) for r in body["results"]] == [["LABEL_0", "LABEL_1"]] * 2
        assert all(abs(sum(r["probabilities"].values()) - 1.0) < 1e-4 for r in body["results"])
        assert 'lmforge_batch_size_count{model="tiny"} 1.0' in httpx.get(f"{base}/metrics").text
    finally:
        serve.shutdown()
        ray.shutdown()


def test_without_ray_serve_the_error_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(
        sys.modules, "ray", None
    )  # what an environment without ray looks like to import
    monkeypatch.setenv("LMFORGE_API_KEYS", f"alice:{KEY}")
    with pytest.raises(LmforgeError, match=r"pip install 'lmforge\[serve-ray\]'"):
        app_builder({"models": "a"})
