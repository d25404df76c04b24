"""The ledger on both backends (a real SQLite file, a real PostgreSQL server): idempotency, dedupe, guards,
aliases, several connections at once; and the SQLite file's own schema history."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, get_type_hints

import anyio
import pytest

from kling_mcp.errors import InvalidInputError, JobNotFoundError, SpendLimitError
from kling_mcp.models import Column, Job
from kling_mcp.pixazo import GenerationRequest
from kling_mcp.store import PROCESS_OWNER, Guards, JobUpdate, Ledger, Store, open_ledger
from kling_mcp.store import schema as store_module

pytestmark = pytest.mark.anyio

Opener = Callable[..., Ledger]


@pytest.fixture
async def ledger(ledger_kind: str, ledger_url: str) -> AsyncIterator[Opener]:
    """Opens ledgers on this test's backend (SQLite file or PostgreSQL database); all on the same one."""
    opened: list[Ledger] = []

    def open_(clock: Callable[[], float] = time.time, replica: str = PROCESS_OWNER) -> Ledger:
        url = ledger_url if ledger_kind == "postgres" else None
        store = open_ledger(url, Path(ledger_url), clock=clock, replica=replica)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.aclose()


def req(prompt: str = "a heron takes off", duration: int = 5) -> GenerationRequest:
    return GenerationRequest(endpoint="text_to_video", prompt=prompt, duration=duration)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_the_same_idempotency_key_returns_the_same_job(ledger: Opener) -> None:
    store = ledger()
    first, created = await store.create(req(), mode="sandbox", idempotency_key="k1")
    again, created_again = await store.create(req(), mode="sandbox", idempotency_key="k1")
    assert (created, created_again) == (True, False)
    assert again.job_id == first.job_id


async def test_an_idempotency_key_reused_for_a_different_request_is_refused_and_records_nothing(
    ledger: Opener,
) -> None:
    store = ledger()
    first, _ = await store.create(req(), mode="sandbox", idempotency_key="k1")
    with pytest.raises(InvalidInputError) as refused:
        await store.create(req("something else"), mode="sandbox", idempotency_key="k1")
    assert refused.value.field == "idempotency_key"
    assert first.job_id in str(refused.value)
    assert [j.job_id for j in await store.recent()] == [first.job_id]


async def test_identical_requests_inside_the_window_share_a_job_unless_forced(ledger: Opener) -> None:
    clock = Clock()
    store = ledger(clock)
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


async def test_failed_jobs_are_not_reused_by_dedupe(ledger: Opener) -> None:
    store = ledger()
    first, _ = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    await store.update(first.job_id, status="failed")
    second, created = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    assert created
    assert second.job_id != first.job_id


async def test_a_cancelled_job_keeps_its_status_against_a_late_driver_write(ledger: Opener) -> None:
    store, other_replica = ledger(), ledger(replica="r2")
    job, _ = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    await store.update(job.job_id, status="processing")
    await store.update(job.job_id, status="cancelled", error="cancelled by its client")
    late = await other_replica.update(job.job_id, status="completed", media_url="https://cdn.test/v.mp4")
    assert (late.status, late.media_url, late.error) == ("cancelled", None, "cancelled by its client")
    assert (await store.get(job.job_id)).status == "cancelled"


async def test_a_cancel_that_lost_the_race_to_a_final_status_is_dropped(ledger: Opener) -> None:
    # The canceller read the job running; meanwhile the replica driving it recorded the finished video.
    store, driver = ledger(), ledger(replica="r2")
    job, _ = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    await driver.update(job.job_id, status="completed", media_url="https://cdn.test/v.mp4")
    late = await store.update(job.job_id, status="cancelled", download_state="off", error="cancelled by its client")
    assert (late.status, late.media_url, late.download_state, late.error) == (
        "completed",
        "https://cdn.test/v.mp4",
        "pending",
        None,
    )


async def test_a_job_cancelled_mid_submit_still_records_the_request_the_gateway_accepted(ledger: Opener) -> None:
    store = ledger()
    job, _ = await store.create(req(), mode="sandbox", dedupe_seconds=600)
    await store.update(job.job_id, status="cancelled", error="cancelled by its client")
    late = await store.update(job.job_id, attempt_id="req-1", status="queued", polling_url="https://gw.test/s")
    assert (late.status, late.request_id, list(late.attempt_ids), late.polling_url) == (
        "cancelled",
        "req-1",
        ["req-1"],
        "https://gw.test/s",
    )
    assert (await store.get("req-1")).job_id == job.job_id  # the paid request stays findable by its id


async def test_concurrent_creates_from_two_connections_make_one_job_per_key(ledger: Opener) -> None:
    stores = [ledger(), ledger()]
    results: list[bool] = []

    async def create(store: Ledger) -> None:
        _, created = await store.create(req(), mode="sandbox", idempotency_key="shared")
        results.append(created)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(create, stores[i % 2])
    assert sorted(results) == [False] * 19 + [True]


async def test_active_job_guard_refuses_and_says_what_to_do(ledger: Opener) -> None:
    store = ledger()
    guards = Guards(max_active_jobs=2)
    for i in range(2):
        await store.create(req(f"p{i}"), mode="sandbox", guards=guards)
    with pytest.raises(SpendLimitError) as caught:
        await store.create(req("p3"), mode="sandbox", guards=guards)
    assert caught.value.limit == "max_active_jobs"
    assert "KLING_MCP_MAX_ACTIVE_JOBS=2" in str(caught.value)


async def test_daily_seconds_guard_counts_billed_seconds_and_resets_at_midnight(ledger: Opener) -> None:
    clock = Clock(1_800_000_000.0 - 1_800_000_000.0 % 86400 + 3600)  # 01:00 UTC
    store = ledger(clock)
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


async def test_jobs_are_found_by_any_of_their_ids(ledger: Opener) -> None:
    store = ledger()
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


async def test_only_one_claimant_gets_a_download(ledger: Opener) -> None:
    clock = Clock()
    one, two = ledger(clock), ledger(clock)
    job, _ = await one.create(req(), mode="sandbox")
    await one.update(job.job_id, status="completed", media_url="http://x/y.mp4")
    assert await one.claim_download(job.job_id, lease_seconds=60) is not None
    assert await two.claim_download(job.job_id, lease_seconds=60) is None
    clock.now += 61  # a claimant that died loses its lease
    assert await two.claim_download(job.job_id, lease_seconds=60) is not None


async def test_unsettled_lists_running_jobs_and_owed_downloads(ledger: Opener) -> None:
    store = ledger()
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


async def test_an_update_of_a_column_the_ledger_keeps_itself_is_refused(ledger: Opener) -> None:
    store = ledger()
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


# --- across replicas: guards, leases, migrations ------------------------------------------------------------


async def test_concurrent_creates_from_two_replicas_never_overshoot_the_guards(ledger: Opener) -> None:
    stores = [ledger(replica="a"), ledger(replica="b")]
    guards = Guards(max_active_jobs=3, total_daily_seconds=100)
    outcomes: list[str] = []

    async def create(store: Ledger, i: int) -> None:
        try:
            await store.create(req(f"p{i}"), mode="sandbox", owner=f"owner{i % 2}", guards=guards)
            outcomes.append("created")
        except SpendLimitError as refused:
            outcomes.append(refused.limit)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(create, stores[i % 2], i)
    # Three running jobs per owner, two owners: six created, the rest refused by the per-owner guard.
    assert outcomes.count("created") == 6
    assert len(await stores[0].recent(limit=100)) == 6


async def test_timestamps_keep_their_fractions(ledger: Opener) -> None:
    clock = Clock(1_800_000_000.123456)
    job, _ = await ledger(clock).create(req(), mode="sandbox")
    assert (await ledger().get(job.job_id)).created_at == 1_800_000_000.123456


async def test_a_job_is_leased_to_one_replica_until_its_lease_expires(ledger: Opener) -> None:
    clock = Clock()
    one, two = ledger(clock, replica="one"), ledger(clock, replica="two")
    job, _ = await one.create(req(), mode="sandbox", lease_seconds=15)
    assert (job.lease_owner, job.lease_until) == ("one", clock.now + 15)
    assert await two.acquire_lease(job.job_id, lease_seconds=15) is None
    assert await two.take_over(lease_seconds=15, limit=10) == []
    clock.now += 10
    assert await one.renew_leases([job.job_id], lease_seconds=15) == {job.job_id}
    clock.now += 14  # within the renewed lease
    assert await two.take_over(lease_seconds=15, limit=10) == []
    clock.now += 2  # one stopped renewing: its lease is over
    (taken,) = await two.take_over(lease_seconds=15, limit=10)
    assert (taken.job_id, taken.lease_owner) == (job.job_id, "two")
    assert await one.renew_leases([job.job_id], lease_seconds=15) == set()  # one learns it lost the job
    assert await one.acquire_lease(job.job_id, lease_seconds=15) is None


async def test_a_lease_of_a_replica_named_dead_is_taken_at_once(ledger: Opener) -> None:
    one, two = ledger(replica="host:1"), ledger(replica="two")
    job, _ = await one.create(req(), mode="sandbox", lease_seconds=600)
    assert await two.lease_holders() == ["host:1"]
    assert [j.job_id for j in await two.take_over(lease_seconds=15, limit=5, dead=["host:1"])] == [job.job_id]


async def test_settled_jobs_are_never_leased(ledger: Opener) -> None:
    store = ledger(replica="one")
    job, _ = await store.create(req(), mode="sandbox", download=False)
    await store.update(job.job_id, status="completed")
    assert await store.take_over(lease_seconds=15, limit=10) == []
    assert await store.acquire_lease(job.job_id, lease_seconds=15) is None


async def test_replicas_taking_over_together_share_the_jobs_out_without_overlap(ledger: Opener) -> None:
    seed = ledger(replica="seed")
    ids = set()
    for i in range(30):
        job, _ = await seed.create(req(f"p{i}"), mode="sandbox")
        await seed.update(job.job_id, status="queued")  # running and never leased: free to take
        ids.add(job.job_id)
    takers = [ledger(replica=f"r{i}") for i in range(3)]
    taken: dict[str, list[str]] = {}

    async def take(store: Ledger) -> None:
        while batch := await store.take_over(lease_seconds=60, limit=4):
            taken.setdefault(store.replica, []).extend(j.job_id for j in batch)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for store in takers:
                tg.start_soon(take, store)
    everyone = [job_id for batch in taken.values() for job_id in batch]
    assert sorted(everyone) == sorted(ids)  # each job exactly once
    for job_id in ids:
        assert (await seed.get(job_id)).lease_owner in taken


async def test_opening_a_ledger_again_migrates_nothing(ledger: Opener) -> None:
    first = ledger()
    job, _ = await first.create(req(), mode="sandbox")
    again = ledger()  # at the current version: the schema and the jobs stay as they are
    assert (await again.get(job.job_id)).job_id == job.job_id


async def test_an_operation_whose_caller_is_cancelled_lands_whole_or_not_at_all_and_keeps_its_connection(
    ledger: Opener,
) -> None:
    # A driver stopped by a lost lease, or a client that gives up, cancels its task mid-call. The write lands whole
    # or not at all, and the backend keeps its connections: on PostgreSQL, psycopg's cleanup of a query cancelled
    # under anyio dropped the connection each time, and left one open when cut between two statements.
    store = ledger()
    job, _ = await store.create(req(), mode="sandbox")
    last = 0
    for attempt in range(1, 41):
        with anyio.move_on_after(attempt * 0.0002):  # 0.2 ms to 8 ms: before, during and after the statements
            await store.update(job.job_id, download_attempts=attempt)
        now = (await store.get(job.job_id)).download_attempts
        assert now in (last, attempt)
        last = now
    assert last > 0  # the longer waits let writes through
    pool = getattr(store, "_pool", None)
    if pool is not None:  # PostgreSQL: no cancelled call cost a connection
        assert pool.get_stats()["connections_num"] <= pool.max_size


@pytest.mark.postgres
async def test_a_postgres_ledger_whose_first_call_is_cancelled_leaves_no_pool_behind(postgres_server: Any) -> None:
    import gc

    from psycopg_pool import AsyncConnectionPool

    from kling_mcp.store.postgres import PostgresStore

    store = PostgresStore(postgres_server.new_database())
    with anyio.move_on_after(0.001):  # while the pool opens its first connections
        await store.unsettled()
    await store.aclose()
    gc.collect()
    left = [pool for pool in gc.get_objects() if isinstance(pool, AsyncConnectionPool) and not pool.closed]
    for pool in left:  # before: a pool nobody could close, whose workers hung the event loop's shutdown
        await pool.close()
    assert left == []


@pytest.mark.postgres
def test_postgres_records_each_schema_version_and_keeps_times_as_double_precision(
    postgres_server: Any,
) -> None:
    import psycopg

    from kling_mcp.store.postgres import PostgresStore

    url = postgres_server.new_database()
    PostgresStore(url)
    PostgresStore(url)  # a second replica starting finds the ledger current
    with psycopg.connect(url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM ledger_schema ORDER BY version")]
        types: dict[str, str] = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'jobs'"
            ).fetchall()
        )
    assert versions == list(range(1, store_module.SCHEMA_VERSION + 1))
    assert types["created_at"] == "double precision"
    assert types["size_bytes"] == "bigint"  # a 2 GiB video does not fit a 32-bit integer


def test_a_postgres_url_without_its_driver_installed_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from kling_mcp.errors import ConfigurationError

    monkeypatch.delitem(sys.modules, "kling_mcp.store.postgres", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what an install without the extra looks like
    with pytest.raises(ConfigurationError) as caught:
        open_ledger("postgresql://k@db/k", tmp_path / "l.db")
    assert "kling-mcp[postgres]" in (caught.value.hint or "")
