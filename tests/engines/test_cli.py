"""`inferwatch-exporter normalize FILE|URL`: works on every capture, clear exit codes otherwise."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.cli import main
from tests.engines.conftest import ENGINE_FIXTURES, ENGINE_OF_FIXTURE, FIXTURES, raw_samples


@pytest.mark.parametrize("fixture_name", ENGINE_FIXTURES)
def test_normalize_every_fixture(fixture_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["normalize", str(FIXTURES / f"{fixture_name}.txt")])
    out, err = capsys.readouterr()
    assert code == 0
    engine = ENGINE_OF_FIXTURE[fixture_name]
    assert f"engine: {engine} (auto-detected)" in err
    samples = raw_samples(out)
    assert samples, "stdout must be a parseable exposition"
    assert {labels["engine"] for _, labels, _ in samples} == {engine}
    assert {labels["target"] for _, labels, _ in samples} == {f"{fixture_name}.txt"}
    missing = [
        labels["metric"] for name, labels, v in samples if name.endswith("mapping_missing") and v
    ]
    for metric in missing:
        assert f"missing  {metric}" in err


def test_dcgm_exporter_is_no_engine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["normalize", str(FIXTURES / "dcgm-1.txt")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "engine: unknown" in err


def test_forced_engine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["normalize", str(FIXTURES / "tgi-1.txt"), "--engine", "tgi", "--model", "m"]) == 0
    out, err = capsys.readouterr()
    assert "(as given)" in err
    assert {labels["model"] for _, labels, _ in raw_samples(out) if "model" in labels} == {"m"}


@pytest.mark.parametrize(
    "argv",
    [
        ["normalize"],
        ["normalize", "x", "--engine", "ollama"],
        ["normalize", "/nonexistent/metrics.txt"],
        ["normalize", "http://127.0.0.1:9/metrics"],
    ],
)
def test_bad_usage_or_unreadable_input_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_html_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "page.html"
    page.write_text("<html><body>Sign in</body></html>\n")
    assert main(["normalize", str(page)]) == 2
    assert "HTML" in capsys.readouterr().err


@pytest.fixture
def fixture_http() -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving the capture directory."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(FIXTURES), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_normalize_url_with_the_console_script(fixture_http: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "normalize", f"{fixture_http}/vllm-3.txt"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "engine: vllm (auto-detected)" in proc.stderr
    host_port = fixture_http.removeprefix("http://")
    assert {labels["target"] for _, labels, _ in raw_samples(proc.stdout)} == {host_port}
