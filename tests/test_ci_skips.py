"""The CI guard on skips (tests/support/ci_skips.py), run on a scratch project through pytester."""

from __future__ import annotations

import pytest

from tests.support.ci_skips import ci_enabled

SCRATCH = """
import pytest

def test_skipped():
    pytest.skip("an optional package is missing")

@pytest.mark.skipif(True, reason="a platform check")
def test_skipped_by_mark():
    pass

@pytest.mark.xfail(strict=True, reason="known bug")
def test_expected_failure():
    assert False

def test_runs():
    pass
"""


def scratch(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makeconftest("from tests.support.ci_skips import pytest_runtest_makereport")
    pytester.makepyfile(SCRATCH)
    # Hypothesis's plugin spends seconds in its end-of-run summary; the scratch project has no use for it.
    return pytester.runpytest("-p", "no:hypothesispytest")


def test_under_ci_a_skip_fails_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = scratch(pytester)
    result.assert_outcomes(passed=1, failed=1, errors=1, xfailed=1)  # a skip mark fails in setup: an error
    result.stdout.fnmatch_lines(["*skipped under CI, where every test must run: an optional package is missing*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_outside_ci_a_skip_stays_a_skip(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = scratch(pytester)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize(
    ("value", "on"), [(None, False), ("", False), ("false", False), ("0", False), ("true", True), ("1", True)]
)
def test_what_counts_as_ci(monkeypatch: pytest.MonkeyPatch, value: str | None, on: bool) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert ci_enabled() is on
