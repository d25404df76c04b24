#!/usr/bin/env bash
# Native MCP Tasks with the reference client: @modelcontextprotocol/ext-tasks (npm, pinned by
# scripts/tasks_client/package-lock.json, installed with `npm ci` into scripts/tasks_client/node_modules, git-ignored,
# reinstalled only when the lock changes) drives `kling-mcp serve --transport http` in sandbox mode (offline, nothing
# charged): a generation created as a task, followed to completion and its result read; a cancel acknowledged.
# Node 20 (the machine's) is enough. Exits non-zero on any failure.
#
# Environment: PYTHON (default: python on PATH; must import kling_mcp), KEEP_WORK=1 keeps the work directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLIENT_DIR=$ROOT/scripts/tasks_client
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
SERVER_START_S=30
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kling-mcp-tasks.XXXXXX")
SERVER_PID=""

cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if ! cmp -s "$CLIENT_DIR/package-lock.json" "$CLIENT_DIR/node_modules/.installed-lock.json"; then
    (cd "$CLIENT_DIR" && timeout -k 10 300 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    cp "$CLIENT_DIR/package-lock.json" "$CLIENT_DIR/node_modules/.installed-lock.json"
fi

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
env -u PIXAZO_API_KEY -u PIXAZO_BASE_URL KLING_MCP_MODE=sandbox KLING_MCP_SANDBOX_TIME_SCALE=200 \
    KLING_MCP_SANDBOX_RENDER_SIZE=320x180 KLING_MCP_SANDBOX_FPS=8 KLING_MCP_STATE_DIR="$WORK/state" \
    KLING_MCP_OUTPUT_DIR="$WORK/videos" "$PYTHON" -m kling_mcp serve --transport http --host 127.0.0.1 --port "$PORT" \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
deadline=$((SECONDS + SERVER_START_S))
until (: >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    if ((SECONDS >= deadline)) || ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "FAIL the server did not start listening on port $PORT:"
        cat "$WORK/server.log"
        exit 1
    fi
    sleep 0.2
done

if ! (cd "$CLIENT_DIR" && timeout -k 5 120 node check.mjs "http://127.0.0.1:$PORT/mcp"); then
    echo "server log (last 20 lines):"
    tail -n 20 "$WORK/server.log" | sed 's/^/      | /'
    exit 1
fi
ls "$WORK/videos"/*.mp4 >/dev/null || { echo "FAIL no video was saved"; exit 1; }
echo "tasks client: passed"
