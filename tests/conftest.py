"""Shared pytest set-up. Area-specific fixtures live in each tests/<area>/conftest.py.

A skipped test is a test that did not run, so the suite fails on any skip that is not on the
allow-list below: a missing tool or package (promtool, helm, llama-server, torch) is a set-up
error that `./run setup` fixes, never a reason for the suite to go green with less coverage.
`--allow-skips` turns the failure into a warning for a partial local environment.
"""

from __future__ import annotations

import fnmatch

import pytest

# Tests that may skip: node id pattern (fnmatch) -> the skip reason they must give. Each entry is
# a test that cannot run on some machine *by design*, never one whose set-up is merely missing;
# matching the reason too keeps an allowed test from skipping for another cause (no promtool).
ALLOWED_SKIPS: dict[str, str] = {
    # The missing-NVML paths: on a machine with a real NVIDIA driver the library loads, so the
    # "no NVML" behaviour cannot be produced there (CI has no GPU, so these run in CI).
    "tests/gpu/test_app.py::test_without_nvml_metrics_still_serves_the_other_collectors": (
        "a real NVML is installed here"
    ),
    "tests/gpu/test_collector.py::test_nvml_library_missing_fails_the_collector_*": (
        "a real NVML is installed here"
    ),
    "tests/gpu/test_gpu_less_node.py::*": "a real NVML is installed here",
}


class SkipGate:
    """Records every skip of the session and fails the run on one not in ALLOWED_SKIPS."""

    def __init__(self, config: pytest.Config) -> None:
        self.allow_all = bool(config.getoption("--allow-skips"))
        self.allowed: list[tuple[str, str]] = []
        self.unexpected: list[tuple[str, str]] = []

    def record(self, nodeid: str, reason: str) -> None:
        if any(
            fnmatch.fnmatchcase(nodeid, pattern) and why in reason
            for pattern, why in ALLOWED_SKIPS.items()
        ):
            self.allowed.append((nodeid, reason))
        else:
            self.unexpected.append((nodeid, reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.record(report.nodeid, _skip_reason(report))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # A module-level skip (pytest.importorskip) skips every test of the file at collection.
        if report.skipped:
            self.record(report.nodeid, _skip_reason(report))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        # Also when every test skipped at collection: pytest then reports "no tests" (5).
        ran_clean = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.unexpected and not self.allow_all and ran_clean:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.allowed:
            terminalreporter.section("allowed skips (tests/conftest.py ALLOWED_SKIPS)")
            for nodeid, reason in self.allowed:
                terminalreporter.line(f"{nodeid}: {reason}")
        if self.unexpected:
            fail = not self.allow_all
            terminalreporter.section("unexpected skips", red=fail, bold=True)
            for nodeid, reason in self.unexpected:
                terminalreporter.line(f"{nodeid}: {reason}")
            terminalreporter.line(
                "the run fails: fix the set-up (./run setup) or, for a test that cannot run here "
                "by design, add it and its skip reason to ALLOWED_SKIPS in tests/conftest.py"
                if fail
                else "not failing the run: --allow-skips",
                red=fail,
            )


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--allow-skips",
        action="store_true",
        help="report skips not on tests/conftest.py's ALLOWED_SKIPS without failing the run",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGate(config), "inferwatch-skip-gate")
