"""lmforge bench serve: both servers start, answer under load with no errors, and the report adds
up."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import NEGATIVE, POSITIVE, error_line, run_cli

pytestmark = pytest.mark.recipe

pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from lmforge.serving.loadtest import LoadResult, _Record, format_table, summarize  # noqa: E402


@pytest.fixture
def texts_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(POSITIVE + NEGATIVE) + "\n", encoding="utf-8")
    return path


def test_bench_serve_loads_both_servers_without_errors(
    tiny_model_dir, texts_file, tmp_path, capsys
):
    out = tmp_path / "bench.json"
    code, stdout, err = run_cli(
        [
            "bench",
            "serve",
            tiny_model_dir,
            "--texts",
            texts_file,
            "--clients",
            4,
            "--duration",
            1.5,
            "--warmup",
            0.5,
            "--precision",
            "fp32",
            "--json",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads(out.read_text())
    servers = {s["server"]: s for s in report["servers"]}
    assert set(servers) == {"lmforge", "naive"}
    for s in servers.values():
        assert s["requests"] > 0 and s["errors"] == {} and s["error_count"] == 0
        assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]
        assert s["throughput_rps"] == pytest.approx(s["requests"] / 1.5)
        assert 0 < s["rss_start_mb"] <= s["rss_peak_mb"] and s["rss_end_mb"] <= s["rss_peak_mb"]
        assert s["server_cpu_percent"] > 0 and s["client_cpu_percent"] > 0
    assert report["throughput_ratio"] == pytest.approx(
        servers["lmforge"]["throughput_rps"] / servers["naive"]["throughput_rps"]
    )
    assert "| lmforge | 4 |" in stdout and "| naive | 4 |" in stdout and "lmforge / naive" in stdout


def test_naive_server_answers_with_label_scores(tiny_model_dir):
    from lmforge.serving.naive import create_app

    with TestClient(create_app(str(tiny_model_dir))) as client:
        assert client.get("/readyz").status_code == 200
        response = client.post("/v1/classify", json={"text": POSITIVE[0]})
    assert response.status_code == 200
    body = response.json()
    assert set(body["scores"]) == {"LABEL_0", "LABEL_1"}
    assert body["label"] == max(body["scores"], key=body["scores"].get)
    assert sum(body["scores"].values()) == pytest.approx(1.0, abs=1e-4)


def test_missing_texts_file_is_one_line(tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(
        ["bench", "serve", tiny_model_dir, "--texts", tmp_path / "nope.txt"], capsys
    )
    assert code == 2
    assert "nope.txt not found" in error_line(err)


def test_a_server_that_dies_is_one_line_with_its_last_words():
    from lmforge.errors import LmforgeError
    from lmforge.serving.loadtest import ServerSpec, started_server, wait_until_ready

    dies = (
        "import sys; print('loading...'); "
        "print('lmforge: error: no such model', file=sys.stderr); sys.exit(2)"
    )
    spec = ServerSpec("lmforge", lambda port: [sys.executable, "-c", dies])
    with pytest.raises(LmforgeError) as err, started_server(spec) as server:
        wait_until_ready(server, timeout=30)
    assert str(err.value) == (
        "the lmforge server exited (code 2) before it was ready: lmforge: error: no such model"
    )


def test_summary_counts_errors_by_kind_and_fits_the_memory_slope():
    records = [_Record(1.0, 0.010 * (i + 1), None) for i in range(100)]
    records += [
        _Record(1.0, 0.5, "HTTP 503"),
        _Record(1.0, 0.5, "HTTP 503"),
        _Record(1.0, 0.5, "ReadTimeout"),
    ]
    samples = [(t, 100.0 + 2.0 * t / 60) for t in range(0, 61, 5)]  # +2 MB per minute
    result = summarize("x", clients=4, duration=10.0, records=records, samples=samples)
    assert result.requests == 100 and result.throughput_rps == pytest.approx(10.0)
    assert result.errors == {"HTTP 503": 2, "ReadTimeout": 1}
    assert result.p50_ms == pytest.approx(505.0) and result.p99_ms == pytest.approx(990.1)
    assert result.rss_slope_mb_per_min == pytest.approx(2.0)
    assert result.rss_peak_mb == pytest.approx(102.0)
    base = LoadResult("naive", 4, 10.0, 25, 2.5, 100.0, 150.0, 1980.2)
    table = format_table([result, base])
    assert "HTTP 503: 2, ReadTimeout: 1" in table and "| naive |" in table
    assert "lmforge / naive" not in table  # no row is named lmforge: no ratio
