"""A pytest plugin: under CI (env ``CI`` set, as CI services and ``.ci/run`` do) a skipped test fails the run.

Locally a skip is visible in the summary (``-ra``); in CI nobody reads it, and a test that silently stops running
(a missing optional package, a platform check gone wrong) is a test that cannot fail.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


def ci_enabled() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and ci_enabled():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {reason}"
    return report
