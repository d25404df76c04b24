"""The URIs this server names things by: one place for the ``kling://`` scheme."""

from __future__ import annotations

JOB_URI_PREFIX = "kling://jobs/"
JOBS_URI = "kling://jobs"


def job_uri(job_id: str, suffix: str = "") -> str:
    return JOB_URI_PREFIX + job_id + (f"/{suffix}" if suffix else "")
