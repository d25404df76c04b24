"""The ledger on a real SQLite file: idempotency, dedupe, guards, aliases, several connections at once."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, get_type_hints

import anyio
import pytest

from kling_mcp import store as store_module
from kling_mcp.errors import InvalidInputError, JobNotFoundError, SpendLimitError
from kling_mcp.models import Column, Job
from kling_mcp.pixazo import GenerationRequest
from kling_mcp.store import Guards, JobUpdate, Store

pytestmark = pytest.mark.anyio


def req(prompt: str = "a heron takes off", duration: int = 5) -> GenerationRequest:
    return GenerationRequest(endpoint="text_to_video", prompt=prompt, duration=duration)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_the_same_idempotency_key_returns_the_same_job(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    first, created = await store.create(req(), mode="sandbox", idempotency_key="k1")
    again, created_again = await store.create(req(), mode="sandbox", idempotency_key="k1")
    assert (created, created_again) == (True, False)
    assert again.job_id == first.job_id


async def test_an_idempotency_key_reused_for_a_different_request_is_refused_and_records_nothing(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "l.db")
    first, _ = await store.create(req(), mode="sandbox", idempotency_key="k1")
    with pytest.raises(InvalidInputError) as refused:
        await store.create(req("something else"), mode="sandbox", idempotency_key="k1")
    assert refused.value.field == "idempotency_key"
    assert first.job_id in str(refused.value)
    assert [j.job_id for j in await store.recent()] == [first.job_id]


async def test_identical_requests_inside_the_window_share_a_job_unless_forced(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "l.db", clock=clock)
    first, _ = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    clock.now += 599
    same, created = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    assert not created
    assert same.job_id == first.job_id
    forced, created = await store.create(req(), mode="sandbox", dedupe_seconds=0)
    assert created
    assert forced.job_id != first.job_id
    clock.now += 2 + 600
    _, created = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    assert created


async def test_failed_jobs_are_not_reused_by_dedupe(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    first, _ = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    await store.update(first.job_id, status="failed")
    second, created = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    assert created
    assert second.job_id != first.job_id


async def test_concurrent_creates_from_two_connections_make_one_job_per_key(tmp_path: Path) -> None:
    stores = [Store(tmp_path / "l.db"), Store(tmp_path / "l.db")]
    results: list[bool] = []

    async def create(store: Store) -> None:
        _, created = await store.create(req(), mode="sandbox", idempotency_key="shared")
        results.append(created)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(create, stores[i % 2])
    assert sorted(results) == [False] * 19 + [True]


async def test_active_job_guard_refuses_and_says_what_to_do(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    guards = Guards(max_active_jobs=2)
    for i in range(2):
        await store.create(req(f"p{i}"), mode="sandbox", guards=guards)
    with pytest.raises(SpendLimitError) as caught:
        await store.create(req("p3"), mode="sandbox", guards=guards)
    assert caught.value.limit == "max_active_jobs"
    assert "KLING_MCP_MAX_ACTIVE_JOBS=2" in str(caught.value)


async def test_daily_seconds_guard_counts_billed_seconds_and_resets_at_midnight(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0 - 1_800_000_000.0 % 86400 + 3600)  # 01:00 UTC
    store = Store(tmp_path / "l.db", clock=clock)
    guards = Guards(daily_seconds=20)
    a, _ = await store.create(req("a", 10), mode="sandbox", guards=guards)
    errored, _ = await store.create(req("b", 10), mode="sandbox", guards=guards)
    await store.update(errored.job_id, status="error")  # ERROR is not charged, so it does not count
    await store.create(req("c", 8), mode="sandbox", guards=guards)
    with pytest.raises(SpendLimitError) as caught:
        await store.create(req("d", 5), mode="sandbox", guards=guards)
    assert caught.value.remaining == 2
    assert caught.value.resets_at is not None
    assert caught.value.resets_at.endswith("T00:00:00+00:00")
    clock.now += 86400
    _, created = await store.create(req("d", 5), mode="sandbox", guards=guards)
    assert created
    assert a.video_seconds == 10


async def test_jobs_are_found_by_any_of_their_ids(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    job, _ = await store.create(req(), mode="sandbox")
    await store.update(job.job_id, attempt_id="gw_1", status="queued")
    retried = await store.update(job.job_id, attempt_id="gw_2")
    assert retried.request_id == "gw_1"
    assert retried.current_request_id == "gw_2"
    assert retried.attempts == 2
    for alias in (job.job_id, "gw_1", "gw_2"):
        assert (await store.get(alias)).job_id == job.job_id
    with pytest.raises(JobNotFoundError):
        await store.get("gw_3")


async def test_only_one_claimant_gets_a_download(tmp_path: Path) -> None:
    clock = Clock()
    one, two = Store(tmp_path / "l.db", clock=clock), Store(tmp_path / "l.db", clock=clock)
    job, _ = await one.create(req(), mode="sandbox")
    await one.update(job.job_id, status="completed", media_url="http://x/y.mp4")
    assert await one.claim_download(job.job_id, lease_seconds=60) is not None
    assert await two.claim_download(job.job_id, lease_seconds=60) is None
    clock.now += 61  # a claimant that died loses its lease
    assert await two.claim_download(job.job_id, lease_seconds=60) is not None


async def test_unsettled_lists_running_jobs_and_owed_downloads(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    running, _ = await store.create(req("a"), mode="sandbox")
    await store.update(running.job_id, status="processing")
    owed, _ = await store.create(req("b"), mode="sandbox")
    await store.update(owed.job_id, status="completed")
    done, _ = await store.create(req("c"), mode="sandbox")
    await store.update(done.job_id, status="completed", download_state="done")
    assert {j.job_id for j in await store.unsettled()} == {running.job_id, owed.job_id}


# The ledger schema as released before schema versions existed (user_version 0): ledgers on disk hold it.
SCHEMA_BEFORE_VERSIONS = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    request_id TEXT,
    current_request_id TEXT,
    polling_url TEXT,
    status TEXT NOT NULL,
    mode TEXT NOT NULL,
    request_json TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    video_seconds INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    attempt_ids TEXT NOT NULL DEFAULT '[]',
    media_url TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    submitted_at REAL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    download_state TEXT NOT NULL DEFAULT 'off',
    download_error TEXT,
    download_attempts INTEGER NOT NULL DEFAULT 0,
    download_lease REAL,
    download_owner TEXT,
    local_path TEXT,
    sha256 TEXT,
    size_bytes INTEGER,
    parent_id TEXT,
    owner TEXT,
    webhook_token TEXT UNIQUE,
    extra_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX jobs_fingerprint ON jobs (fingerprint, created_at);
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_created ON jobs (created_at);
CREATE TABLE aliases (
    alias TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (job_id)
);
"""


def old_ledger(path: Path) -> None:
    """A ledger as the server before schema versions left it, with one job in it."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_BEFORE_VERSIONS)
    conn.execute(
        "INSERT INTO jobs (job_id, request_id, current_request_id, status, mode, request_json, fingerprint, "
        "video_seconds, attempts, attempt_ids, created_at, updated_at) "
        "VALUES ('job_old', 'gw_old', 'gw_old', 'queued', 'sandbox', ?, ?, 5, 1, '[\"gw_old\"]', 1.0, 2.0)",
        (req().model_dump_json(), req().fingerprint()),
    )
    conn.executemany("INSERT INTO aliases VALUES (?, 'job_old')", [("job_old",), ("gw_old",)])
    conn.commit()
    conn.close()


def shape(path: Path) -> dict[str, object]:
    """What a schema means to SQLite: each table's columns (by name: every query names them) and its indexes."""
    conn = sqlite3.connect(path)
    try:
        tables = {t: [c[1:] for c in conn.execute(f"PRAGMA table_info({t})")] for t in ("jobs", "aliases")}
        indexes = {
            (t, tuple(c[2] for c in conn.execute(f"PRAGMA index_info('{i[1]}')")), i[2])
            for t in ("jobs", "aliases")
            for i in conn.execute(f"PRAGMA index_list({t})")
        }
        return {"columns": {t: sorted(cols) for t, cols in tables.items()}, "indexes": indexes}
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


async def test_the_schema_derived_from_the_job_model_is_the_released_one(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "v1.db")
    for statement in store_module.migration(1):
        conn.execute(statement)
    conn.close()
    old_ledger(tmp_path / "old.db")
    assert shape(tmp_path / "v1.db") == shape(tmp_path / "old.db")  # version 1 is what was released
    Store(tmp_path / "new.db").close()
    Store(tmp_path / "old.db").close()
    assert shape(tmp_path / "new.db") == shape(tmp_path / "old.db")  # the migrations reach what a new ledger is
    assert user_version(tmp_path / "new.db") == store_module.SCHEMA_VERSION


async def test_a_ledger_from_before_schema_versions_opens_with_its_jobs(tmp_path: Path) -> None:
    old_ledger(tmp_path / "l.db")
    assert user_version(tmp_path / "l.db") == 0
    store = Store(tmp_path / "l.db")
    job = await store.get("gw_old")
    assert (job.job_id, job.status, job.attempt_ids, job.request) == ("job_old", "queued", ("gw_old",), req())
    updated = await store.update(job.job_id, status="completed", media_url="http://x/y.mp4")
    assert updated.media_url == "http://x/y.mp4"
    _, created = await store.create(req("a new one"), mode="sandbox")
    assert created
    store.close()
    assert user_version(tmp_path / "l.db") == store_module.SCHEMA_VERSION


async def test_a_new_schema_version_adds_its_columns_to_an_existing_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(tmp_path / "l.db").close()
    first, _ = await (store := Store(tmp_path / "l.db")).create(req(), mode="sandbox")
    store.close()
    version = store_module.SCHEMA_VERSION + 1
    later = store_module._Stored("note", Column("TEXT NOT NULL DEFAULT ''", since=version), None)
    monkeypatch.setattr(store_module, "_COLUMNS", (*store_module._COLUMNS, later))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", version)
    migrated = Store(tmp_path / "l.db")
    assert (await migrated.get(first.job_id)).job_id == first.job_id
    migrated.close()
    Store(tmp_path / "l.db").close()  # at the current version, opening changes nothing
    assert user_version(tmp_path / "l.db") == version
    conn = sqlite3.connect(tmp_path / "l.db")
    assert conn.execute("SELECT note FROM jobs").fetchall() == [("",)]
    conn.close()


def test_every_updatable_field_is_typed_as_the_job_field_it_sets() -> None:
    hints = get_type_hints(JobUpdate)
    assert hints.pop("attempt_id") is str
    assert hints
    assert {name: Job.model_fields[name].annotation for name in hints} == hints


async def test_an_update_of_a_column_the_ledger_keeps_itself_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.db")
    job, _ = await store.create(req(), mode="sandbox")
    untyped: Any = store  # what mypy would refuse, from a caller it does not check
    with pytest.raises(ValueError, match="fingerprint"):
        await untyped.update(job.job_id, fingerprint="forged")
    assert (await store.get(job.job_id)).fingerprint == job.fingerprint


def test_servers_opening_a_new_ledger_at_the_same_moment_all_start(tmp_path: Path) -> None:
    # SQLite refuses a second WAL switch at once rather than waiting; a race, so run it often enough to meet it.
    import threading

    failures: list[BaseException] = []
    for round_ in range(100):
        path = tmp_path / f"ledger-{round_}.sqlite3"
        barrier = threading.Barrier(3)

        def open_close(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(timeout=10)
            try:
                Store(path).close()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_close) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == []
