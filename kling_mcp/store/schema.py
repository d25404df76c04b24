"""The ledger's schema, derived from the Job model: its columns, their versions and migrations, the row mapping.

Written once for both backends; a backend only translates a column type where its SQL differs (``Dialect``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypedDict

from pydantic import BaseModel

from kling_mcp.models import Column, DownloadState, Job, JobStatus

# How much of a job's request the ledger still holds: all of it while the job may be sent again, then no inline
# image (its hash instead), and after the retention period no prompt or image reference either (hashes of them).
KEPT_WHOLE: Final = "whole"
KEPT_NO_INLINE_IMAGE: Final = "no-inline-image"
KEPT_HASHES: Final = "hashes"

# Columns the ledger keeps for itself: the download lease, and room for later fields without a migration.
_LEDGER_ONLY: Final[Mapping[str, Column]] = {
    "download_lease": Column("REAL"),
    "download_owner": Column("TEXT"),
    "extra_json": Column("TEXT NOT NULL DEFAULT '{}'"),
    # Idempotency keys from before owners: unique across everyone, so version 2 moved them to the owner's column.
    "idempotency_key": Column("TEXT UNIQUE"),
    "request_kept": Column(f"TEXT NOT NULL DEFAULT '{KEPT_WHOLE}'", since=2),
}


@dataclass(frozen=True)
class _Stored:
    column: str
    spec: Column
    field: str | None  # the Job field it holds; None for a ledger-only column


def _stored_columns() -> tuple[_Stored, ...]:
    stored = []
    for name, info in Job.model_fields.items():
        (spec,) = (m for m in info.metadata if isinstance(m, Column))
        stored.append(_Stored(spec.name or name, spec, name))
    return (*stored, *(_Stored(name, spec, None) for name, spec in _LEDGER_ONLY.items()))


_COLUMNS: Final = _stored_columns()
_BY_FIELD: Final = {c.field: c for c in _COLUMNS if c.field is not None}

# What each schema version adds besides its columns. A released version never changes: the next change is a new
# version, so a ledger of any age is brought up to date by applying the versions it lacks in order.
_EXTRA_DDL: Final[Mapping[int, tuple[str, ...]]] = {
    1: (
        "CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint, created_at)",
        "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status)",
        "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)",
        "CREATE TABLE IF NOT EXISTS aliases (alias TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs (job_id))",
    ),
    # Owners: jobs from before them are the local user's (the column's default); keys become unique per owner.
    2: (
        "UPDATE jobs SET owner_idempotency_key = idempotency_key, idempotency_key = NULL "
        "WHERE idempotency_key IS NOT NULL",
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_idempotency ON jobs (principal, owner_idempotency_key)",
        "CREATE INDEX IF NOT EXISTS jobs_owner_created ON jobs (principal, created_at)",
    ),
    # Replicas: leases (columns from the Job model), and the changes feed other replicas read.
    3: ("CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated_at)",),
}
SCHEMA_VERSION: Final = max(*_EXTRA_DDL, *(c.spec.since for c in _COLUMNS))


@dataclass(frozen=True)
class Dialect:
    """Where a backend's SQL differs from the SQLite the statements are written in."""

    types: Mapping[str, str]  # column type -> this backend's type, e.g. REAL -> DOUBLE PRECISION

    def column(self, sql: str) -> str:
        for name, replacement in self.types.items():
            sql = re.sub(rf"\b{name}\b", replacement, sql)
        return sql


SQLITE: Final = Dialect(types={})


def migration(version: int, dialect: Dialect = SQLITE) -> list[str]:
    """The statements that bring a ledger from ``version - 1`` to ``version``."""
    added = [f"{c.column} {dialect.column(c.spec.sql)}" for c in _COLUMNS if c.spec.since == version]
    if version == 1:
        # IF NOT EXISTS: ledgers from before schema versions (user_version 0) already hold version 1.
        statements = [f"CREATE TABLE IF NOT EXISTS jobs ({', '.join(added)})"]
    else:
        # SQLite adds a column only without UNIQUE or PRIMARY KEY, and NOT NULL only with a default.
        statements = [f"ALTER TABLE jobs ADD COLUMN {declaration}" for declaration in added]
    return [*statements, *_EXTRA_DDL.get(version, ())]


def row_to_job(row: Mapping[str, Any]) -> Job:
    return Job.model_validate(
        {field: json.loads(row[c.column]) if c.spec.as_json else row[c.column] for field, c in _BY_FIELD.items()}
    )


def to_columns(fields: Mapping[str, object]) -> dict[str, object]:
    """Job field values as column values."""
    out: dict[str, object] = {}
    for field, value in fields.items():
        c = _BY_FIELD[field]
        if not c.spec.as_json:
            out[c.column] = value
        elif isinstance(value, BaseModel):
            out[c.column] = value.model_dump_json()
        else:
            out[c.column] = json.dumps(value)
    return out


class JobUpdate(TypedDict, total=False):
    """What ``Store.update`` may set, typed as the Job fields it sets; the ledger keeps the other columns itself."""

    polling_url: str | None
    status: JobStatus
    media_url: str | None
    error: str | None
    submitted_at: float | None
    finished_at: float | None
    download_state: DownloadState
    download_error: str | None
    download_attempts: int
    local_path: str | None
    sha256: str | None
    size_bytes: int | None
    attempt_id: str  # not a column: appends a gateway request id to attempt_ids (and its alias)


UPDATABLE: Final = JobUpdate.__optional_keys__ - {"attempt_id"}
