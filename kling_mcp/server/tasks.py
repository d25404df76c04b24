"""Native MCP Tasks (``io.modelcontextprotocol/tasks``, protocol 2026-07-28) for the generating tools.

A job is a task: the task id is the job's public id, so a task lives as long as the ledger keeps the job, across
calls and server restarts. A ``tools/call`` of a generating tool from a client that declared the extension on that
request runs the tool's own code path (checks, spend confirmation, dedupe, submit) without waiting, and answers
with the task once the job's ledger row exists; a job already finished (a dedupe hit) answers with the plain
result. ``tasks/get`` renders the job as the tool would; ``tasks/cancel`` is the engine's cancel. Clients that did
not declare the extension are served exactly as before, and never sent a task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from mcp.server import ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import Extension, MethodBinding, require_client_extension
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_NAME_HEADER, decode_header_value
from mcp.types import INVALID_PARAMS, CallToolRequestParams, CallToolResult, RequestParams
from mcp.types.jsonrpc import HEADER_MISMATCH
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from kling_mcp.errors import KlingError
from kling_mcp.models import CANCELLED, Job
from kling_mcp.server.owners import owner_of
from kling_mcp.server.results import AS_TASK, iso_time, tool_result
from kling_mcp.server.state import AppState
from kling_mcp.server.tools import GENERATE, TOOLS

if TYPE_CHECKING:
    from kling_mcp.runtime import Runtime

EXTENSION: Final = "io.modelcontextprotocol/tasks"
# The tools whose calls may become tasks: the paid, long-running ones.
TASK_TOOLS: Final = frozenset(spec.fn.__name__ for spec in TOOLS if spec.annotations is GENERATE)
NOT_FOUND: Final = "Failed to retrieve task: Task not found"


class TaskParams(RequestParams):
    task_id: str = Field(alias="taskId", min_length=1, max_length=200)


class UpdateTaskParams(TaskParams):
    # Nothing is ever asked during a task (spend confirmation happens before it exists), so answers are ignored.
    input_responses: dict[str, Any] = Field(default_factory=dict, alias="inputResponses")


def declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether this request's client declared the extension (2026-07-28: in the request's own capabilities)."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return False
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.extensions and EXTENSION in capabilities.extensions)


def task_status(job: Job) -> str:
    """The task's status: a job the tool would still wait on is working; a failed one is a completed tool call."""
    if job.status == CANCELLED:
        return "cancelled"
    return "completed" if job.settled else "working"


def _status_message(job: Job, runtime: Runtime) -> str:
    if job.status == CANCELLED:
        return job.error or "Cancelled."
    progress, _, text = runtime.engine.progress(job)
    if job.settled:
        return f"Job {job.id} {text}; the tool result is in `result`."
    return f"Job {job.id} {text}; {progress:.0f}% by the estimate."


def task_of(job: Job, runtime: Runtime) -> dict[str, Any]:
    """The ``Task`` fields: pacing from the engine, lifetime from the ledger's retention."""
    retention = runtime.engine.config.retention_seconds
    task: dict[str, Any] = {
        "taskId": job.id,
        "status": task_status(job),
        "statusMessage": _status_message(job, runtime),
        "createdAt": iso_time(job.created_at),
        "lastUpdatedAt": iso_time(job.updated_at),
        "ttlMs": None if retention is None else round(retention * 1000),
    }
    if not job.settled:
        # Polling faster than the engine polls the gateway would only read the same ledger row again.
        task["pollIntervalMs"] = max(1, round(runtime.engine.config.poll_interval * 1000))
    return task


async def detailed_task(job: Job, runtime: Runtime) -> dict[str, Any]:
    """The task as ``tasks/get`` answers and ``notifications/tasks`` carries it: a completed one with the very
    ``CallToolResult`` the tool returns for the job."""
    task = task_of(job, runtime)
    if task["status"] == "completed":
        result = await tool_result(job, runtime=runtime)
        task["result"] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return task


async def owned_job(runtime: Runtime, task_id: str, owner: str) -> Job:
    """The owner's job for a task id; another owner's is as unknown as a missing one (-32602)."""
    try:
        return await runtime.engine.get(task_id.strip(), owner=owner)
    except KlingError:
        raise MCPError(code=INVALID_PARAMS, message=NOT_FOUND) from None


def check_name_header(ctx: ServerRequestContext[Any, Any], task_id: str) -> None:
    """Over streamable HTTP a ``tasks/*`` request names its task in ``Mcp-Name`` (load balancers route by it): a
    mismatch is refused as the SDK refuses other routing-header mismatches (-32020, HTTP 400)."""
    headers = getattr(ctx.request, "headers", None)
    if headers is None:
        return  # not HTTP: no routing headers
    if decode_header_value(headers.get(MCP_NAME_HEADER)) != task_id:
        raise MCPError(
            code=HEADER_MISMATCH,
            message=f"{MCP_NAME_HEADER} header does not match the request body's 'taskId' parameter",
        )


async def _task_job(ctx: ServerRequestContext[AppState, Any], params: TaskParams) -> tuple[Job, Runtime]:
    require_client_extension(ctx, EXTENSION)
    check_name_header(ctx, params.task_id)
    runtime = await ctx.lifespan_context.runtime()
    return await owned_job(runtime, params.task_id, owner_of(ctx)), runtime


async def get_task(ctx: ServerRequestContext[AppState, Any], params: TaskParams) -> HandlerResult:
    job, runtime = await _task_job(ctx, params)
    return {"resultType": "complete", **await detailed_task(job, runtime)}


async def update_task(ctx: ServerRequestContext[AppState, Any], params: UpdateTaskParams) -> HandlerResult:
    await _task_job(ctx, params)
    return {"resultType": "complete"}


async def cancel_task(ctx: ServerRequestContext[AppState, Any], params: TaskParams) -> HandlerResult:
    job, runtime = await _task_job(ctx, params)
    await runtime.engine.cancel(job.job_id, owner=job.owner)
    return {"resultType": "complete"}


def _running_job_id(result: HandlerResult) -> str | None:
    """The job a tool result left running, or None for anything to pass on as it is (input required, an error,
    a finished job)."""
    if not isinstance(result, CallToolResult) or result.is_error or not result.structured_content:
        return None
    data = result.structured_content
    return None if data.get("done", True) else str(data["request_id"])


class Tasks(Extension):
    """The Tasks extension: ``tasks/get``, ``tasks/update``, ``tasks/cancel``, and generations answered as tasks."""

    identifier = EXTENSION

    def methods(self) -> list[MethodBinding]:
        versions = frozenset(MODERN_PROTOCOL_VERSIONS)
        return [
            MethodBinding("tasks/get", TaskParams, get_task, protocol_versions=versions),
            MethodBinding("tasks/update", UpdateTaskParams, update_task, protocol_versions=versions),
            MethodBinding("tasks/cancel", TaskParams, cancel_task, protocol_versions=versions),
        ]

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if params.name not in TASK_TOOLS or not declared(ctx):
            return await call_next(ctx)
        token = AS_TASK.set(True)
        try:
            result = await call_next(ctx)  # the tool itself: checks, confirmation, dedupe, the durable submit
        finally:
            AS_TASK.reset(token)
        job_id = _running_job_id(result)
        if job_id is None:
            return result
        runtime: Runtime = await ctx.lifespan_context.runtime()
        job = await owned_job(runtime, job_id, owner_of(ctx))
        if job.status == "submitting":
            # A dedupe hit on a submit still in flight (another call's, perhaps on another replica): its task id
            # is the gateway's request id once that submit is answered, so the task is named only then.
            budget = 2 * runtime.settings.request_timeout
            job = await runtime.engine.wait(job.job_id, budget, tick=0.1, until=lambda j: j.status != "submitting")
        return {"resultType": "task", **task_of(job, runtime)}
