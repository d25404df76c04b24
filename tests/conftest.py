from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kling_mcp.config import Settings
from tests.support import postgres
from tests.support.ci_skips import pytest_runtest_makereport  # a hook: CI turns every skip into a failure

pytest_plugins = ("pytester",)  # tests/test_ci_skips.py runs pytest on a scratch project

__all__ = ["pytest_runtest_makereport"]

# Fast enough that a 15 s clip "renders" in well under a second, slow enough that states are observable.
TEST_TIME_SCALE = 2000.0
TINY = (320, 180)


# --- PostgreSQL: one server per session, from the machine's Debian binaries -------------------------------------

LEDGERS = ("sqlite", "postgres")  # the backends the store tests run on
_PG_BIN = postgres.binaries()


def pytest_report_header(config: pytest.Config) -> str:
    if _PG_BIN is not None:
        return f"postgresql: {_PG_BIN} (ledger tests run on SQLite and PostgreSQL)"
    return (
        "postgresql: no /usr/lib/postgresql/*/bin found, so the PostgreSQL-parametrised tests are deselected "
        f"(apt-get install postgresql; {postgres.REQUIRED_ENV}=1 makes this an error)"
    )


def _needs_postgres(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    on_postgres = callspec is not None and callspec.params.get("ledger_kind") == "postgres"
    return on_postgres or item.get_closest_marker("postgres") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _PG_BIN is not None:
        return
    if postgres.required() and any(_needs_postgres(item) for item in items):
        raise pytest.UsageError(f"{postgres.REQUIRED_ENV} is set but no PostgreSQL binaries are installed.")
    # Deselected, not skipped: CI turns skips into failures, and a machine without PostgreSQL is a fine one.
    dropped = [item for item in items if _needs_postgres(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not _needs_postgres(item)]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    assert _PG_BIN is not None  # tests that need it are deselected otherwise
    with postgres.running_server(_PG_BIN) as server:
        yield server


@pytest.fixture(params=LEDGERS)
def ledger_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def ledger_url(ledger_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where a test's ledger lives: a SQLite file, or a fresh database on the session's PostgreSQL."""
    if ledger_kind == "sqlite":
        return str(tmp_path / "l.db")
    server: postgres.PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sandbox(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """The sandbox gateway on a real loopback port. ``@pytest.mark.render_size(w, h)`` renders bigger frames;
    ``@pytest.mark.private_image_urls`` lets it fetch images from loopback hosts the test serves."""
    from kling_mcp.sandbox import SandboxConfig, serve_sandbox

    marker = request.node.get_closest_marker("render_size")
    size = tuple(marker.args) if marker else TINY
    config = SandboxConfig(
        time_scale=TEST_TIME_SCALE,
        render_size=size,
        fps=8,
        media_dir=tmp_path / "sandbox-media",
        allow_private_image_urls=request.node.get_closest_marker("private_image_urls") is not None,
    )
    async with serve_sandbox(config) as served:
        yield served


@pytest.fixture
def settings(tmp_path: Path, sandbox: Any) -> Settings:
    """Server settings pointed at the test sandbox, with a private ledger and output folder."""
    return Settings(
        mode="sandbox",
        base_url=sandbox.base_url,
        poll_interval=0.05,
        max_wait=20,
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
        sandbox_time_scale=TEST_TIME_SCALE,
    )
