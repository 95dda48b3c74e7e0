"""GPU collector config: bad keys fail at start with a path-qualified message and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import load_config
from exporter.settings import ConfigError


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "inferwatch-exporter"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "exporter"]
    return subprocess.run(
        [*argv, "check-config", str(path)], capture_output=True, text=True, timeout=60
    )


def test_unknown_gpu_key_is_rejected_with_its_path_and_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("collectors:\n  gpu:\n    interval_secs: 5\n")
    result = check_config(path)
    assert result.returncode == 2
    assert f"{path}: collectors.gpu.interval_secs: unknown key" in result.stderr


def test_bad_gpu_value_is_rejected_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("collectors:\n  gpu:\n    reinit_interval_seconds: -1\n")
    result = check_config(path)
    assert result.returncode == 2
    assert "collectors.gpu.reinit_interval_seconds" in result.stderr


def test_valid_gpu_config_is_printed(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("collectors:\n  gpu:\n    process_memory: false\n    interval_seconds: 2\n")
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert '"process_memory": false' in result.stdout


def test_env_overrides_the_gpu_interval(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("collectors:\n  gpu:\n    interval_seconds: 10\n")
    env = {"INFERWATCH_COLLECTORS__GPU__INTERVAL_SECONDS": "2.5"}
    cfg = load_config(path, environ=env)
    assert cfg.collectors.gpu.interval_seconds == 2.5
    assert load_config(path, environ={}).collectors.gpu.interval_seconds == 10


def test_other_components_variables_do_not_break_the_exporter(tmp_path: Path) -> None:
    """The remediator's token, the probe's switch and ./run's cache share the INFERWATCH_ prefix."""
    env = {
        "INFERWATCH_REMEDIATOR_TOKEN": "secret",
        "INFERWATCH_PROBE_DIR": str(tmp_path),
        "INFERWATCH_CACHE": str(tmp_path),
        "INFERWATCH_LOG_FORMAT": "json",
    }
    assert load_config(None, environ=env).log_format == "json"


def test_flags_win_over_env_and_a_typo_in_env_fails_fast(tmp_path: Path) -> None:
    env = {"INFERWATCH_LISTEN": "127.0.0.1:1111"}
    cfg = load_config(None, environ=env, flags={"listen": "127.0.0.1:2222"})
    assert cfg.listen == "127.0.0.1:2222"
    with pytest.raises(ConfigError, match="listn: unknown key"):
        load_config(None, environ={"INFERWATCH_LISTN": "127.0.0.1:1111"})
