"""Native MCP Tasks (io.modelcontextprotocol/tasks) through the SDK's client at the raw-request level."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client import ClientExtension
from mcp.client.extension import NotificationBinding, ResultClaim
from mcp.server.mcpserver import MCPServer
from mcp.types import (
    CallToolResult,
    ElicitRequestParams,
    ElicitResult,
    InputRequiredResult,
    NotificationParams,
    Request,
    RequestParams,
    Result,
    SubscriptionFilter,
    SubscriptionsListenRequest,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
)
from pydantic import ConfigDict, Field

from kling_mcp.config import Settings
from kling_mcp.server import build_server
from kling_mcp.server.tasks import EXTENSION
from tests.test_http_security import serve

HOLD = "[sandbox:hold] "  # the sandbox keeps the job processing until the test finishes it
ALICE = "tok_alice_Tasks_Distinct_1"
BOB = "tok_bob_Tasks_Distinct_2"
MISSING = "kling-video-v3-turbo-pro-text-to-video_00000000-0000-0000-0000-000000000000"

pytestmark = pytest.mark.anyio


class Task(Result):
    """A task as the wire carries it: the fields the tests read, the rest kept."""

    model_config = ConfigDict(extra="allow")

    task_id: str = Field(alias="taskId")
    status: str
    status_message: str | None = Field(default=None, alias="statusMessage")
    created_at: str = Field(alias="createdAt")
    last_updated_at: str = Field(alias="lastUpdatedAt")
    ttl_ms: int | None = Field(alias="ttlMs")
    poll_interval_ms: int | None = Field(default=None, alias="pollIntervalMs")
    result: dict[str, Any] | None = None


class CreatedTask(Task):
    """``CreateTaskResult``: the task, tagged."""

    result_type: Literal["task"] = Field(default="task", alias="resultType")


class TaskParams(RequestParams):
    task_id: str = Field(alias="taskId")


class GetTask(Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"


class CancelTask(Request[TaskParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"


class UpdateParams(TaskParams):
    input_responses: dict[str, Any] = Field(alias="inputResponses")


class UpdateTask(Request[UpdateParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"


class TaskNote(NotificationParams):
    model_config = ConfigDict(extra="allow")


class TasksClient(ClientExtension):
    """Declares the extension and leaves every task to the test: claimed results come back as they are."""

    identifier = EXTENSION

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []
        self.arrived = anyio.Event()

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=self._unexpected)]

    async def _unexpected(self, result: Any, ctx: Any) -> CallToolResult:
        raise AssertionError("the test reads claimed results itself")

    def notifications(self) -> list[NotificationBinding[Any]]:
        return [NotificationBinding(method="notifications/tasks", params_type=TaskNote, handler=self._on_note)]

    async def _on_note(self, params: TaskNote) -> None:
        self.notes.append(params.model_dump(by_alias=True, exclude_none=True))
        self.arrived.set()


@asynccontextmanager
async def tasks_client(server: MCPServer[Any], ext: ClientExtension | None = None) -> AsyncIterator[Client]:
    async with Client(server, extensions=[ext or TasksClient()]) as client:
        yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    """A declaring client on a server of its own."""
    async with tasks_client(build_server(settings)) as connected:
        yield connected


async def call(client: Client, tool: str, args: dict[str, Any]) -> CreatedTask | CallToolResult:
    result = await client.session.call_tool(tool, args, allow_claimed=True)
    assert isinstance(result, CreatedTask | CallToolResult), result
    return result


async def get_task(client: Client, task_id: str) -> Task:
    return await client.session.send_request(GetTask(params=TaskParams(task_id=task_id)), Task)


async def until_settled(client: Client, task_id: str) -> Task:
    while True:
        task = await get_task(client, task_id)
        if task.status != "working":
            return task
        await anyio.sleep((task.poll_interval_ms or 50) / 1000)


async def cancel_task(client: Client, task_id: str) -> Result:
    return await client.session.send_request(CancelTask(params=TaskParams(task_id=task_id)), Result)


async def create(client: Client, prompt: str, **args: Any) -> CreatedTask:
    created = await call(client, "generate_video", {"prompt": prompt, "duration": 3, **args})
    assert isinstance(created, CreatedTask), created
    return created


def as_result(task: Task) -> CallToolResult:
    assert task.status == "completed", task
    assert task.result is not None
    return CallToolResult.model_validate(task.result)


# --- negotiation --------------------------------------------------------------------------------------------


async def test_the_server_advertises_tasks_and_only_declaring_clients_get_one(settings: Settings, sandbox: Any) -> None:
    server = build_server(settings)
    with anyio.fail_after(30):
        async with Client(server) as plain, Client(server, mode="legacy") as legacy:
            advertised = plain.server_capabilities.extensions or {}
            result = await plain.session.call_tool("generate_video", {"prompt": "no tasks here", "duration": 3})
            old = await legacy.call_tool("generate_video", {"prompt": "nor here", "duration": 3})
            with pytest.raises(MCPError) as refused:
                await get_task(plain, str(result.structured_content["request_id"]))
            with pytest.raises(MCPError) as not_in_that_era:
                await get_task(legacy, str(result.structured_content["request_id"]))
    assert advertised.get(EXTENSION) == {}
    assert isinstance(result, CallToolResult)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "completed"  # waited, exactly as before
    assert old.structured_content is not None
    assert old.structured_content["status"] == "completed"
    assert refused.value.error.code == -32021
    assert not_in_that_era.value.error.code == -32601  # the extension is a 2026-07-28 one
    assert refused.value.error.data == {"requiredCapabilities": {"extensions": {EXTENSION: {}}}}


async def test_tools_that_are_not_generations_answer_declaring_clients_as_before(client: Client) -> None:
    listed = await call(client, "list_jobs", {})
    created = await create(client, HOLD + "nothing to ask")
    answers = UpdateParams(task_id=created.task_id, input_responses={"never-asked": {"action": "accept"}})
    acknowledged = await client.session.send_request(UpdateTask(params=answers), Result)  # nothing outstanding
    still = await get_task(client, created.task_id)
    assert set(acknowledged.model_dump(exclude_none=True)) <= {"meta", "result_type"}
    assert still.status == "working"
    assert isinstance(listed, CallToolResult)
    assert not listed.is_error


# --- create, get, complete ---------------------------------------------------------------------------------


async def test_a_task_is_durable_when_created_and_completes_with_the_result_a_plain_call_returns(
    settings: Settings, sandbox: Any
) -> None:
    server = build_server(settings)
    with anyio.fail_after(30):
        async with tasks_client(server) as client:
            created = await create(client, HOLD + "a kite as a task")
            first = await get_task(client, created.task_id)
            sandbox.gateway.finish(created.task_id)
            done = await until_settled(client, created.task_id)
        async with Client(server) as plain:
            again = await plain.call_tool("check_status", {"request_id": created.task_id})
    assert created.status == "working"
    assert first.status == "working"
    assert created.poll_interval_ms == round(settings.poll_interval * 1000)
    assert created.ttl_ms == round(settings.retention_days * 86400 * 1000)
    assert created.status_message is not None
    assert created.task_id in created.status_message
    assert "elapsed" in created.status_message
    assert "% by the estimate" in created.status_message
    result = as_result(done)
    assert result.structured_content == again.structured_content
    assert result.content == again.content
    assert result.is_error is False
    assert again.structured_content is not None
    assert again.structured_content["status"] == "completed"
    assert done.poll_interval_ms is None  # nothing left to poll for
    assert sandbox.gateway.submit_count == 1


async def test_a_failed_generation_is_a_completed_task_whose_result_is_an_error(client: Client) -> None:
    with anyio.fail_after(30):
        created = await create(client, "[sandbox:fail] refused by the gateway's moderation")  # no wait: a task
        done = await until_settled(client, created.task_id)
    result = as_result(done)
    assert result.is_error is True
    assert result.structured_content is not None
    assert result.structured_content["status"] == "failed"
    assert "FAILED" in result.content[0].text  # type: ignore[union-attr]


async def test_bad_arguments_are_the_tools_own_error_and_no_task(client: Client, sandbox: Any) -> None:
    result = await call(client, "generate_video", {"prompt": "x", "duration": 99})
    assert isinstance(result, CallToolResult)
    assert result.is_error
    assert "duration" in result.content[0].text  # type: ignore[union-attr]
    assert sandbox.gateway.submit_count == 0


async def test_a_dedupe_hit_on_a_finished_job_answers_at_once_and_on_a_running_one_with_its_task(
    settings: Settings, sandbox: Any
) -> None:
    server = build_server(settings)
    with anyio.fail_after(30):
        async with Client(server) as plain, tasks_client(server) as client:
            finished = await plain.call_tool("generate_video", {"prompt": "made before", "duration": 3})
            hit = await call(client, "generate_video", {"prompt": "made before", "duration": 3})
            running = await create(client, HOLD + "still running")
            joined = await call(client, "generate_video", {"prompt": HOLD + "still running", "duration": 3})
    assert isinstance(hit, CallToolResult)
    assert hit.structured_content is not None
    assert finished.structured_content is not None
    assert hit.structured_content["request_id"] == finished.structured_content["request_id"]
    assert hit.structured_content["reused"] is True
    assert hit.structured_content["status"] == "completed"
    assert isinstance(joined, CreatedTask)
    assert joined.task_id == running.task_id
    assert sandbox.gateway.submit_count == 2


async def test_spend_confirmation_is_settled_on_the_call_before_the_task_exists(
    settings: Settings, sandbox: Any
) -> None:
    async def never(context: Any, params: ElicitRequestParams) -> ElicitResult:
        raise AssertionError("the test answers the input request itself")

    live = settings.with_(mode="live", api_key="sk_live_tasks_test", confirm_above_seconds=5, allow_private_urls=True)
    args = {"prompt": HOLD + "big", "duration": 10}
    with anyio.fail_after(30):
        async with Client(build_server(live), extensions=[TasksClient()], elicitation_callback=never) as client:
            asked = await client.session.call_tool(
                "generate_video", args, allow_input_required=True, allow_claimed=True
            )
            assert isinstance(asked, InputRequiredResult)
            submitted_before_answer = sandbox.gateway.submit_count
            (key,) = asked.input_requests or {}
            answer = ElicitResult(action="accept", content={"confirm": True})
            created = await client.session.call_tool(
                "generate_video",
                args,
                input_responses={key: answer},
                request_state=asked.request_state,
                allow_input_required=True,
                allow_claimed=True,
            )
            assert isinstance(created, CreatedTask), created
            got = await get_task(client, created.task_id)
    assert submitted_before_answer == 0
    assert got.status == "working"
    assert sandbox.gateway.submit_count == 1


# --- restarts, cancel ----------------------------------------------------------------------------------------


async def test_a_task_created_before_a_restart_is_answered_after_it(settings: Settings, sandbox: Any) -> None:
    with anyio.fail_after(30):
        async with tasks_client(build_server(settings)) as before:
            created = await create(before, HOLD + "across a restart")
        sandbox.gateway.finish(created.task_id)
        async with tasks_client(build_server(settings)) as after:  # a new server on the same state folder
            done = await until_settled(after, created.task_id)
    result = as_result(done)
    assert result.structured_content is not None
    assert result.structured_content["request_id"] == created.task_id
    assert result.structured_content["status"] == "completed"
    assert done.created_at == created.created_at


async def test_a_cancelled_task_ends_cancelled_is_not_downloaded_and_stays_listed(
    settings: Settings, client: Client, sandbox: Any
) -> None:
    with anyio.fail_after(30):
        created = await create(client, HOLD + "changed my mind")
        ack = await cancel_task(client, created.task_id)
        cancelled = await get_task(client, created.task_id)
        sandbox.gateway.finish(created.task_id)  # the gateway renders it anyway: it has no cancel
        again = await cancel_task(client, created.task_id)  # cancelling twice is acknowledged too
        listed = await call(client, "list_jobs", {"status": "cancelled"})
        status = await call(client, "check_status", {"request_id": created.task_id, "wait_seconds": 0})
    assert ack.model_dump(exclude={"meta"}) == again.model_dump(exclude={"meta"})
    assert set(ack.model_dump(exclude_none=True)) <= {"meta", "result_type"}  # an empty acknowledgement
    assert cancelled.status == "cancelled"
    assert cancelled.result is None
    message = cancelled.status_message or ""
    assert "gateway has no cancel" in message
    assert "may still" in message
    assert "charged" in message
    assert "will not download" in message
    assert isinstance(listed, CallToolResult)
    assert listed.structured_content is not None
    assert [j["request_id"] for j in listed.structured_content["jobs"]] == [created.task_id]
    assert isinstance(status, CallToolResult)
    assert status.structured_content is not None
    assert status.structured_content["status"] == "cancelled"
    assert status.structured_content["local_path"] is None
    assert status.structured_content["download"] == "off"
    assert not list((settings.output_dir or Path()).glob("*.mp4"))


# --- notifications -------------------------------------------------------------------------------------------


def listen_request(task_ids: list[str], **kinds: Any) -> SubscriptionsListenRequest:
    wanted = SubscriptionFilter.model_validate({"taskIds": task_ids, **kinds})
    return SubscriptionsListenRequest(params=SubscriptionsListenRequestParams(notifications=wanted))


async def test_a_listen_stream_carries_each_task_whole_until_it_completes(settings: Settings, sandbox: Any) -> None:
    ext = TasksClient()
    server = build_server(settings)
    with anyio.fail_after(30):
        async with tasks_client(server, ext) as client, tasks_client(server) as other:
            created = await create(client, HOLD + "tell me when")
            mine_not = await create(other, HOLD + "someone else's")

            async with anyio.create_task_group() as tg:

                async def listen() -> None:
                    request = listen_request([created.task_id, MISSING])
                    await client.session.send_request(request, SubscriptionsListenResult)

                tg.start_soon(listen)
                while not ext.notes:
                    await ext.arrived.wait()
                    ext.arrived = anyio.Event()
                sandbox.gateway.finish(mine_not.task_id)
                sandbox.gateway.finish(created.task_id)
                while ext.notes[-1]["status"] == "working":
                    await ext.arrived.wait()
                    ext.arrived = anyio.Event()
                tg.cancel_scope.cancel()
            got = await get_task(client, created.task_id)
    assert {n["taskId"] for n in ext.notes} == {created.task_id}
    assert ext.notes[0]["status"] == "working"
    last = ext.notes[-1]
    assert last["status"] == "completed"
    tasks_get = got.model_dump(by_alias=True, exclude_none=True, exclude={"meta"})
    assert {k: v for k, v in last.items() if k != "_meta"} == {k: v for k, v in tasks_get.items() if k != "resultType"}
    assert "io.modelcontextprotocol/subscriptionId" in last["_meta"]


async def test_listening_for_tasks_without_declaring_the_extension_is_refused(settings: Settings) -> None:
    async with Client(build_server(settings)) as plain:
        with pytest.raises(MCPError) as refused:
            await plain.session.send_request(listen_request(["any"]), SubscriptionsListenResult)
    assert refused.value.error.code == -32021


async def test_unknown_task_ids_are_invalid_params(client: Client) -> None:
    with pytest.raises(MCPError) as unknown:
        await get_task(client, MISSING)
    with pytest.raises(MCPError) as cancel:
        await cancel_task(client, MISSING)
    with pytest.raises(MCPError) as update:
        await client.session.send_request(UpdateTask(params=UpdateParams(task_id=MISSING, input_responses={})), Result)
    assert update.value.error.code == -32602
    assert unknown.value.error.code == cancel.value.error.code == -32602
    assert unknown.value.error.message == "Failed to retrieve task: Task not found"


# --- over streamable HTTP: owners and the Mcp-Name routing header ------------------------------------------------

_ids = iter(range(1, 10_000))


META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXTENSION: {}}},
}


def headers_for(method: str, token: str) -> dict[str, str]:
    return {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
        "Authorization": f"Bearer {token}",
    }


async def rpc(
    http: httpx2.AsyncClient, method: str, params: dict[str, Any], *, name: str | None, token: str
) -> tuple[int, dict[str, Any]]:
    """One raw 2026-07-28 request from a client that declares the extension; (HTTP status, JSON-RPC message)."""
    meta = META
    headers = headers_for(method, token)
    if name is not None:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": {**params, "_meta": meta}}
    response = await http.post("/mcp", json=body, headers=headers)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        frames = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
        return response.status_code, next(f for f in frames if "id" in f)
    return response.status_code, response.json()


async def first_listen_frame(http: httpx2.AsyncClient, task_id: str, token: str) -> dict[str, Any]:
    """The acknowledgement a raw listen stream for one task starts with."""
    body = {
        "jsonrpc": "2.0",
        "id": next(_ids),
        "method": "subscriptions/listen",
        "params": {"notifications": {"taskIds": [task_id]}, "_meta": META},
    }
    headers = {**headers_for("subscriptions/listen", token)}
    async with http.stream("POST", "/mcp", json=body, headers=headers) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                return dict(json.loads(line[5:]))
    raise AssertionError(f"the listen stream ended without a frame (HTTP {response.status_code})")


async def test_over_http_tasks_are_their_owners_and_name_themselves_in_mcp_name(settings: Settings) -> None:
    team = settings.with_(auth_tokens=(f"alice={ALICE}", f"bob={BOB}"))
    with anyio.fail_after(30):
        async with serve(team) as base, httpx2.AsyncClient(base_url=base, timeout=20) as http:
            args = {"name": "generate_video", "arguments": {"prompt": HOLD + "alice's", "duration": 3}}
            _, created = await rpc(http, "tools/call", args, name="generate_video", token=ALICE)
            task_id = created["result"]["taskId"]
            _, mine = await rpc(http, "tasks/get", {"taskId": task_id}, name=task_id, token=ALICE)
            _, bobs = await rpc(http, "tasks/get", {"taskId": task_id}, name=task_id, token=BOB)
            _, missing = await rpc(http, "tasks/get", {"taskId": MISSING}, name=MISSING, token=BOB)
            _, bob_cancels = await rpc(http, "tasks/cancel", {"taskId": task_id}, name=task_id, token=BOB)
            _, still = await rpc(http, "tasks/get", {"taskId": task_id}, name=task_id, token=ALICE)
            wrong = await rpc(http, "tasks/get", {"taskId": task_id}, name=MISSING, token=ALICE)
            absent = await rpc(http, "tasks/cancel", {"taskId": task_id}, name=None, token=ALICE)
            sdk_own = await rpc(http, "tools/call", args, name="list_jobs", token=ALICE)
            _, after = await rpc(http, "tasks/get", {"taskId": task_id}, name=task_id, token=ALICE)
            alice_hears = await first_listen_frame(http, task_id, ALICE)
            bob_hears = await first_listen_frame(http, task_id, BOB)
    assert created["result"]["resultType"] == "task"
    assert mine["result"]["status"] == "working"
    assert bobs["error"] == missing["error"]  # another owner's task reads exactly like an unknown one
    assert bobs["error"]["code"] == -32602
    assert bob_cancels["error"] == missing["error"]
    assert still["result"]["status"] == "working"
    # Refused as the SDK refuses its own routing-header mismatches: the same HTTP status and JSON-RPC code.
    assert wrong[0] == absent[0] == sdk_own[0] == 400
    assert wrong[1]["error"]["code"] == absent[1]["error"]["code"] == sdk_own[1]["error"]["code"] == -32020
    assert "mcp-name header does not match" in wrong[1]["error"]["message"]
    assert after["result"]["status"] == "working"  # the refused cancel did nothing
    assert alice_hears["params"]["notifications"]["taskIds"] == [task_id]
    assert bob_hears["params"]["notifications"]["taskIds"] == []  # another owner's task is not honoured


async def test_the_players_app_only_tools_answer_as_they_always_do_even_to_a_declaring_client(
    settings: Settings,
) -> None:
    # The app inside the host calls them and reads their plain results (player.html knows no tasks): a retake is
    # answered at once with its new job, which the app then follows with player_view.
    from tests.test_player import APPS

    async with Client(build_server(settings), extensions=[TasksClient(), APPS]) as client:
        created = await create(client, "a heron, once")
        with anyio.fail_after(30):
            await until_settled(client, created.task_id)
        retake = await call(client, "player_retake", {"request_id": created.task_id})
        view = await call(client, "player_view", {"request_id": created.task_id})
    assert isinstance(retake, CallToolResult)
    assert isinstance(view, CallToolResult)
    assert retake.structured_content is not None
    assert retake.structured_content["request_id"] != created.task_id
    assert retake.structured_content["done"] is False


async def test_a_dedupe_hit_on_a_submit_in_flight_is_named_by_the_request_id_its_submit_brings(
    settings: Settings, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task id must not change: the hit waits for the other call's submit instead of naming the task by the
    # ledger's local id, which tasks/get and notifications would answer under another id.
    from kling_mcp.pixazo import PixazoClient

    entered, release = anyio.Event(), anyio.Event()
    real_submit = PixazoClient.submit

    async def held_submit(self: PixazoClient, *args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()  # the first call's submit stays in flight until the second call has hit it
        return await real_submit(self, *args, **kwargs)

    monkeypatch.setattr(PixazoClient, "submit", held_submit)
    server = build_server(settings)
    args = {"prompt": HOLD + "asked twice at once", "duration": 3}
    first: list[CreatedTask | CallToolResult] = []
    second: list[CreatedTask | CallToolResult] = []
    with anyio.fail_after(30):
        async with tasks_client(server) as client:
            async with anyio.create_task_group() as tg:

                async def ask(into: list[CreatedTask | CallToolResult]) -> None:
                    into.append(await call(client, "generate_video", args))

                tg.start_soon(ask, first)
                await entered.wait()
                tg.start_soon(ask, second)
                await anyio.wait_all_tasks_blocked()  # the second call is waiting on the first's submit
                release.set()
            (hit,) = second
            fetched = await get_task(client, hit.task_id) if isinstance(hit, CreatedTask) else None
    (created,) = first
    assert isinstance(created, CreatedTask)
    assert isinstance(hit, CreatedTask)
    assert hit.task_id == created.task_id
    assert fetched is not None
    assert fetched.task_id == created.task_id
    assert sandbox.gateway.submit_count == 1
