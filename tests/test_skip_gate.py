"""The suite's skip gate (tests/conftest.py): a skip not on the allow-list fails the run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

GATE = (Path(__file__).parent / "conftest.py").read_text()
SKIPPING = """
import pytest

def test_runs():
    pass

def test_needs_a_tool():
    pytest.skip("tool not installed")
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # Plugins the inner runs do not need (asyncio warns about its unset loop scope there).
    return pytester.runpytest(
        "-p", "no:aiohttp", "-p", "no:asyncio", "-p", "no:cacheprovider", *args
    )


def test_an_unexpected_skip_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(GATE)
    pytester.makepyfile(test_area=SKIPPING)
    result = run(pytester)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*unexpected skips*", "test_area.py::test_needs_a_tool: tool*"])


def test_a_module_skipped_at_collection_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(GATE)
    pytester.makepyfile(test_torch='import pytest\npytest.importorskip("no_such_module")\n')
    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["test_torch.py: could not import 'no_such_module'*"])


def allowing(reason: str) -> str:
    return GATE.replace(
        "ALLOWED_SKIPS: dict[str, str] = {",
        f'ALLOWED_SKIPS: dict[str, str] = {{\n    "test_area.py::test_needs_*": "{reason}",',
    )


def test_an_allowed_skip_passes_and_is_listed_with_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(allowing("tool not installed"))
    pytester.makepyfile(test_area=SKIPPING)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*allowed skips*", "test_area.py::test_needs_a_tool: tool*"])


def test_an_allowed_test_skipping_for_another_reason_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(allowing("a GPU is installed here"))
    pytester.makepyfile(test_area=SKIPPING)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*unexpected skips*", "test_area.py::test_needs_a_tool: tool*"])


def test_allow_skips_reports_without_failing(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(GATE)
    pytester.makepyfile(test_area=SKIPPING)
    result = run(pytester, "--allow-skips")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*unexpected skips*", "not failing the run: --allow-skips"])
