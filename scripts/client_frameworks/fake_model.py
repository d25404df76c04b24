"""A scripted stand-in for a model provider on 127.0.0.1, so no framework reaches a real one.

It speaks just enough of three wire formats: OpenAI Chat Completions (``/v1/chat/completions``), OpenAI Responses
(``/v1/responses``) and Gemini (``...:generateContent``). Each answer is the next step of a script: the number of tool
results already in the request picks the step, so the server keeps no conversation state and a framework that
retries or restarts gets the same answer. After the last scripted tool call it answers with a final text message.
Every request body is recorded, so a check can look at the tool result exactly as the model would have read it.

Standard library only: it runs inside each framework's own virtual environment.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FINAL_TEXT = "Done: the video job is handled."

ToolCall = tuple[str, dict[str, Any]]


def _chat_tool_results(body: dict[str, Any]) -> int:
    return sum(1 for m in body.get("messages", []) if m.get("role") == "tool")


def _responses_tool_results(body: dict[str, Any]) -> int:
    items = body.get("input")
    if not isinstance(items, list):
        return 0
    return sum(1 for i in items if isinstance(i, dict) and i.get("type") == "function_call_output")


def _gemini_tool_results(body: dict[str, Any]) -> int:
    return sum(
        1
        for content in body.get("contents", [])
        for part in content.get("parts", [])
        if isinstance(part, dict) and ("functionResponse" in part or "function_response" in part)
    )


def _chat_answer(step: ToolCall | None, n: int, model: str) -> dict[str, Any]:
    if step is None:
        message: dict[str, Any] = {"role": "assistant", "content": FINAL_TEXT}
        finish = "stop"
    else:
        call = {"id": f"call_{n}", "type": "function", "function": {"name": step[0], "arguments": json.dumps(step[1])}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish = "tool_calls"
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _responses_answer(step: ToolCall | None, n: int, model: str) -> dict[str, Any]:
    if step is None:
        content = [{"type": "output_text", "text": FINAL_TEXT, "annotations": []}]
        item: dict[str, Any] = {
            "type": "message",
            "id": f"msg_{n}",
            "role": "assistant",
            "status": "completed",
            "content": content,
        }
    else:
        item = {
            "type": "function_call",
            "id": f"fc_{n}",
            "call_id": f"call_{n}",
            "name": step[0],
            "arguments": json.dumps(step[1]),
            "status": "completed",
        }
    return {
        "id": f"resp_{n}",
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": model,
        "output": [item],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 1,
            "output_tokens": 1,
            "total_tokens": 2,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def _gemini_answer(step: ToolCall | None) -> dict[str, Any]:
    part: dict[str, Any] = (
        {"text": FINAL_TEXT} if step is None else {"functionCall": {"name": step[0], "args": step[1]}}
    )
    return {
        "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
        "modelVersion": "fake-gemini",
    }


class FakeModel:
    """``with FakeModel(script) as fake:`` serves on ``fake.base_url``; ``fake.requests`` are the recorded bodies."""

    def __init__(self, script: list[ToolCall]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []  # {"path": ..., "body": ...}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeModel:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def step(self, n: int) -> ToolCall | None:
        return self.script[n] if n < len(self.script) else None

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append({"path": path, "body": body})
        model = str(body.get("model", "fake-model"))
        if path.endswith("/chat/completions"):
            n = _chat_tool_results(body)
            return _chat_answer(self.step(n), n, model)
        if path.endswith("/responses"):
            n = _responses_tool_results(body)
            return _responses_answer(self.step(n), n, model)
        if ":generateContent" in path:
            return _gemini_answer(self.step(_gemini_tool_results(body)))
        raise LookupError(path)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:  # quiet: the checks print what matters
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                try:
                    status, answer = 200, fake.answer(path, json.loads(raw or b"{}"))
                except LookupError:
                    status, answer = 404, {"error": {"message": f"fake model: no route {path}"}}
                except ValueError as exc:
                    status, answer = 400, {"error": {"message": f"fake model: bad JSON body: {exc}"}}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
