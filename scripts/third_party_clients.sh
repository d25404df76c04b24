#!/usr/bin/env bash
# Third-party MCP clients against kling-mcp, in sandbox mode (offline, nothing charged):
#   * the MCP Inspector CLI over stdio (a fresh server per call; the ledger in KLING_MCP_STATE_DIR carries jobs
#     across them) and over streamable HTTP (`kling-mcp serve --transport http`): tools/list, generate_video,
#     storyboard, an invalid call, and resources/read of kling://jobs/{request_id};
#   * the MCP conformance suite's generic server scenarios against the HTTP transport.
# The npm tools are pinned by scripts/third_party_clients/package-lock.json and installed with `npm ci` into
# .npm-tools/ (git-ignored; reinstalled only when the lock changes). Both tools need Node >= 22, which comes from
# the npm registry as the node-linux-<arch> package; the system node/npm only runs the install.
# Prints PASS/FAIL per check, then "N passed, M failed"; exits 1 if any check failed.
#
# Environment: PYTHON (default: python on PATH; must import kling_mcp), KLING_NPM_TOOLS_DIR (default .npm-tools),
# KEEP_WORK=1 keeps the temporary work directory (logs, outputs, videos) for inspection.
# shellcheck disable=SC2317,SC2015  # check bodies are called indirectly; `a && b || fail` is intended
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SPEC_DIR=$ROOT/scripts/third_party_clients
TOOLS_DIR=${KLING_NPM_TOOLS_DIR:-$ROOT/.npm-tools}
PYTHON=${PYTHON:-$(command -v python || command -v python3 || true)}
CALL_TIMEOUT=90     # seconds one client run may take (a stdio run starts a server; about 3 s here)
WAIT_SECONDS=50     # wait_seconds for the generating tools; at TIME_SCALE 2000 a sandbox job ends in < 1 s
SERVER_START_S=30   # seconds the HTTP server may take to accept connections
CONFORMANCE_SCENARIOS=(
    server-initialize ping tools-list resources-list prompts-list logging-set-level completion-complete
    resources-subscribe resources-unsubscribe server-sse-multiple-streams dns-rebinding-protection
)

START=$EPOCHREALTIME
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kling-mcp-3p.XXXXXX")
export KLING_3P_WORK=$WORK  # the checks find HTTP results' files (named relative to the output folder) under it
mkdir -p "$WORK/logs" "$WORK/out" "$WORK/home"
SERVER_PID=""
passed=0
failed=0

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

cleanup() {
    stop_server
    if [[ ${KEEP_WORK:-0} == 1 ]]; then
        echo "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

elapsed() { # seconds since $1 (an EPOCHREALTIME), one decimal
    local now=${EPOCHREALTIME/./} then=${1/./}
    local ds=$(((now - then) / 100000))
    echo "$((ds / 10)).$((ds % 10))"
}

# check NAME COMMAND...: runs COMMAND with its output in a log; one PASS/FAIL line (plus the log's tail on FAIL).
# A command may write a short note to $NOTE, shown on its line. Bodies run in an `if`, where `set -e` does not
# apply, so every step in them ends with `|| return 1`.
check() {
    local name=$1 t0=$EPOCHREALTIME
    shift
    local log=$WORK/logs/${name//[^A-Za-z0-9._-]/_}.log
    NOTE=$WORK/note
    : >"$NOTE"
    if "$@" >"$log" 2>&1; then
        passed=$((passed + 1))
        printf 'PASS  %-52s %5ss  %s\n' "$name" "$(elapsed "$t0")" "$(tr -s '\n' ' ' <"$NOTE" | head -c 200 | sed 's/ *$//')"
    else
        failed=$((failed + 1))
        printf 'FAIL  %-52s %5ss  %s\n' "$name" "$(elapsed "$t0")" "$(tr -s '\n' ' ' <"$NOTE" | head -c 200 | sed 's/ *$//')"
        tail -n 30 "$log" | sed 's/^/      | /'
    fi
}

summary_and_exit() {
    if ((failed > 0)) && [[ -s $WORK/logs/http-server.out ]]; then
        echo "HTTP server log (last 20 lines):"
        tail -n 20 "$WORK/logs/http-server.out" | sed 's/^/      | /'
    fi
    echo "third-party clients: total $(elapsed "$START") s"
    echo "$passed passed, $failed failed"
    exit $((failed > 0))
}

# --- assertions on the clients' JSON output (python, so no jq is needed) ------------------------------------------

cat >"$WORK/asserts.py" <<'PY'
"""asserts.py KIND FILE [ARGS]: checks one Inspector JSON output; prints a short note; exit 1 with the reason."""

import hashlib
import json
import os
import sys
from pathlib import Path

TOOLS = {"generate_video", "animate_image", "storyboard", "check_status", "list_jobs"}


def fail(msg):
    sys.exit(f"assertion failed: {msg}")


def load(path):
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError:
        fail(f"output is not one JSON document: {text[:500]!r}")


def tools(doc):
    listed = {t["name"]: t for t in doc["result"]["tools"]}
    if missing := TOOLS - listed.keys():
        fail(f"tools missing: {sorted(missing)}; listed {sorted(listed)}")
    for name, tool in listed.items():
        if not tool.get("description"):
            fail(f"tool {name} has no description")
        if tool.get("inputSchema", {}).get("type") != "object":
            fail(f"tool {name} inputSchema is not an object schema")
    for name in ("generate_video", "storyboard"):
        if "outputSchema" not in listed[name]:
            fail(f"tool {name} has no outputSchema")
    return f"{len(listed)} tools"


def on_server(shown):
    """A result's local_path: absolute for a stdio caller, relative to the server's output folder over HTTP."""
    path = Path(shown)
    if path.is_absolute():
        return path
    found = sorted(Path(os.environ["KLING_3P_WORK"]).glob(f"*/videos/{shown}"))
    return found[0] if len(found) == 1 else path


def job(doc, endpoint, seconds, shots, rid_file):
    result = doc["result"]
    if result.get("isError"):
        fail(f"isError result: {result['content']}")
    s = result["structuredContent"]
    rid = s["request_id"]
    expect = {"status": "completed", "mode": "sandbox", "video_seconds": int(seconds), "download": "saved"}
    for key, value in expect.items():
        if s.get(key) != value:
            fail(f"{key} is {s.get(key)!r}, expected {value!r} (job {json.dumps(s)[:800]})")
    if s["resource_uri"] != f"kling://jobs/{rid}":
        fail(f"resource_uri {s['resource_uri']!r} does not name {rid}")
    if s["params"]["endpoint"] != endpoint or len(s["params"]["shots"] or []) != int(shots):
        fail(f"params {s['params']} are not {endpoint} with {shots} shots")
    path = on_server(s["local_path"] or "")
    if not s["local_path"] or not path.is_file():
        fail(f"local_path {s['local_path']!r} does not exist")
    data = path.read_bytes()
    if len(data) != s["size_bytes"] or hashlib.sha256(data).hexdigest() != s["sha256"]:
        fail(f"{path} has {len(data)} bytes / another sha256 than the job reports")
    if data[4:8] != b"ftyp":
        fail(f"{path} is not an MP4 (no ftyp box)")
    # Without KLING_MCP_RESULT_LINKS=1 a result has no resource_link blocks: the text names the job and the file.
    text = " ".join(c.get("text", "") for c in result["content"] if c.get("type") == "text")
    if any(c.get("type") == "resource_link" for c in result["content"]):
        fail("a resource_link block although KLING_MCP_RESULT_LINKS is off")
    if s["resource_uri"] not in text or s["local_path"] not in text:
        fail(f"the text does not name the job resource and the local file: {text[:300]!r}")
    Path(rid_file).write_text(rid)
    return f"{rid[-12:]} completed, {len(data)} B mp4"


def resource(doc, rid_file):
    rid = Path(rid_file).read_text().strip()
    contents = doc["result"]["contents"]
    if len(contents) != 1 or contents[0]["uri"] != f"kling://jobs/{rid}":
        fail(f"contents are not the one job {rid}: {contents}")
    if contents[0].get("mimeType") != "application/json":
        fail(f"mimeType {contents[0].get('mimeType')!r}")
    j = json.loads(contents[0]["text"])
    if j["request_id"] != rid or j["status"] != "completed" or not on_server(j["local_path"]).is_file():
        fail(f"resource is not the completed job {rid} with its file: {j}")
    return f"{rid[-12:]} {j['status']}, local_path exists"


def is_error(doc, needle):
    result = doc["result"]
    text = " ".join(c.get("text", "") for c in result["content"])
    if not result.get("isError") or needle not in text:
        fail(f"expected an isError result mentioning {needle!r}: {result}")
    return "isError result names the field"


kind, path, *args = sys.argv[1:]
note = {"tools": tools, "job": job, "resource": resource, "is_error": is_error}[kind](load(path), *args)
sys.stdout.write(f"{note}\n")
PY

assert_json() { # KIND FILE ARGS...: the note goes to $NOTE and the log
    "$PYTHON" "$WORK/asserts.py" "$@" >"$WORK/assert.out" || return 1
    cat "$WORK/assert.out"
    cat "$WORK/assert.out" >>"$NOTE"
}

# --- setup --------------------------------------------------------------------------------------------------------

install_tools() {
    command -v npm >/dev/null || { echo "npm is not on PATH"; return 1; }
    [[ -n $PYTHON ]] && "$PYTHON" -m kling_mcp --version ||
        { echo "PYTHON=$PYTHON cannot run kling_mcp: activate the project's venv or set PYTHON"; return 1; }
    mkdir -p "$TOOLS_DIR" || return 1
    if ! cmp -s "$SPEC_DIR/package-lock.json" "$TOOLS_DIR/.installed-lock.json" ||
        ! [[ -x $TOOLS_DIR/node_modules/.bin/node && -e $TOOLS_DIR/node_modules/.bin/mcp-inspector &&
            -e $TOOLS_DIR/node_modules/.bin/conformance ]]; then
        rm -f "$TOOLS_DIR/.installed-lock.json"
        cp "$SPEC_DIR/package.json" "$SPEC_DIR/package-lock.json" "$TOOLS_DIR/" || return 1
        # The system npm runs the install; engine warnings (the tools want Node 22) are expected.
        (cd "$TOOLS_DIR" && timeout -k 10 600 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error \
            --engine-strict=false) || return 1
        cp "$SPEC_DIR/package-lock.json" "$TOOLS_DIR/.installed-lock.json" || return 1
        echo -n "installed;" >>"$NOTE"
    else
        echo -n "cached;" >>"$NOTE"
    fi
    NODE=$TOOLS_DIR/node_modules/.bin/node
    INSPECTOR=$TOOLS_DIR/node_modules/.bin/mcp-inspector
    CONFORMANCE=$TOOLS_DIR/node_modules/.bin/conformance
    "$NODE" -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 22 || (a == 22 && b >= 19) ? 0 : 1)' ||
        { echo "node $("$NODE" --version) is older than 22.19"; return 1; }
    printf ' node %s, inspector %s, conformance %s' "$("$NODE" --version)" \
        "$("$NODE" "$INSPECTOR" --cli --version 2>/dev/null | tail -n 1)" \
        "$("$NODE" "$CONFORMANCE" --version 2>/dev/null | tail -n 1)" >>"$NOTE"
}

# The sandbox settings every server gets; each transport has its own ledger and output folder.
sandbox_env() { # DIR: KEY=VALUE lines
    printf '%s\n' KLING_MCP_MODE=sandbox KLING_MCP_SANDBOX_TIME_SCALE=2000 KLING_MCP_SANDBOX_RENDER_SIZE=320x180 \
        KLING_MCP_SANDBOX_FPS=8 "KLING_MCP_STATE_DIR=$1/state" "KLING_MCP_OUTPUT_DIR=$1/videos"
}

start_http_server() {
    local attempt env_vars kling=("$PYTHON" -m kling_mcp)
    [[ -x $(dirname "$PYTHON")/kling-mcp ]] && kling=("$(dirname "$PYTHON")/kling-mcp")
    mapfile -t env_vars < <(sandbox_env "$WORK/http")
    for attempt in 1 2 3; do # a free port is picked, then bound by the server: retry if another process took it
        PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        MCP_URL=http://127.0.0.1:$PORT/mcp
        echo "attempt $attempt: ${kling[*]} serve --transport http --port $PORT"
        env -u PIXAZO_API_KEY -u PIXAZO_BASE_URL "${env_vars[@]}" \
            "${kling[@]}" serve --transport http --host 127.0.0.1 --port "$PORT" >"$WORK/logs/http-server.out" 2>&1 &
        SERVER_PID=$!
        local deadline=$((SECONDS + SERVER_START_S))
        while ((SECONDS < deadline)) && kill -0 "$SERVER_PID" 2>/dev/null; do
            if (: >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
                echo "listening at $MCP_URL (pid $SERVER_PID)" | tee -a "$NOTE"
                return 0
            fi
            sleep 0.2
        done
        cat "$WORK/logs/http-server.out"
        stop_server
    done
    return 1
}

# --- the clients --------------------------------------------------------------------------------------------------

# inspector OUT WANT_RC ARGS...: one Inspector CLI run (JSON output to OUT), which must exit WANT_RC.
inspector() {
    local out=$1 want=$2 rc=0
    shift 2
    HOME=$WORK/home timeout -k 5 "$CALL_TIMEOUT" "$NODE" "$INSPECTOR" --cli --format json "$@" >"$out" || rc=$?
    echo "inspector exit $rc; stdout:"
    head -c 2000 "$out"
    echo
    [[ $rc == "$want" ]] || { echo "expected exit $want"; return 1; }
}

inspector_stdio() { # OUT WANT_RC ARGS...: over stdio, a fresh `python -m kling_mcp` per run
    local out=$1 want=$2 env_args=() line
    shift 2
    while read -r line; do env_args+=(-e "$line"); done < <(sandbox_env "$WORK/stdio")
    inspector "$out" "$want" "$@" "${env_args[@]}" -- "$PYTHON" -m kling_mcp
}

inspector_http() { # OUT WANT_RC ARGS...
    local out=$1 want=$2
    shift 2
    inspector "$out" "$want" "$@" --connect-timeout 15000 "$MCP_URL"
}

GENERATE_ARGS='{"prompt": "A red fox trots through fresh snow at dawn, low tracking shot", "duration": 3, "aspect_ratio": "16:9", "wait_seconds": '$WAIT_SECONDS'}'
STORYBOARD_ARGS='{"shots": [{"prompt": "A lighthouse at dusk, waves below", "duration": 3}, {"prompt": "The lamp turns on, its beam sweeps the fog", "duration": 3}], "aspect_ratio": "9:16", "wait_seconds": '$WAIT_SECONDS'}'

# Each takes TRANSPORT (stdio|http) first; outputs go to $WORK/out/TRANSPORT-*.
list_tools() {
    local o=$WORK/out/$1-tools.json
    "inspector_$1" "$o" 0 --method tools/list --strict || return 1 # --strict: exit 6 on error-severity schema issues
    assert_json tools "$o"
}

call_generating_tool() { # TRANSPORT TOOL ARGS_JSON SECONDS SHOTS
    local o=$WORK/out/$1-$2
    "inspector_$1" "$o.json" 0 --method tools/call --tool-name "$2" --tool-args-json "$3" || return 1
    assert_json job "$o.json" text_to_video "$4" "$5" "$o.rid"
}

call_invalid() {
    local o=$WORK/out/$1-invalid.json
    "inspector_$1" "$o" 5 --method tools/call --tool-name generate_video --tool-args-json '{"prompt": ""}' || return 1
    assert_json is_error "$o" prompt
}

read_job() { # TRANSPORT TOOL: reads the job that TOOL's check made
    local rid_file=$WORK/out/$1-$2.rid o=$WORK/out/$1-read-$2.json
    [[ -s $rid_file ]] || { echo "no request_id: the $2 check failed"; return 1; }
    "inspector_$1" "$o" 0 --method resources/read --uri "kling://jobs/$(cat "$rid_file")" || return 1
    assert_json resource "$o" "$rid_file"
}

client_checks() { # TRANSPORT
    check "inspector/$1 tools/list --strict" list_tools "$1"
    check "inspector/$1 tools/call generate_video" call_generating_tool "$1" generate_video "$GENERATE_ARGS" 3 0
    check "inspector/$1 tools/call storyboard (2 shots)" call_generating_tool "$1" storyboard "$STORYBOARD_ARGS" 6 2
    check "inspector/$1 tools/call invalid prompt -> isError" call_invalid "$1"
    check "inspector/$1 resources/read generate_video job" read_job "$1" generate_video
    check "inspector/$1 resources/read storyboard job" read_job "$1" storyboard
}

conformance() { # SCENARIO
    local out=$WORK/out/conformance-$1.txt rc=0
    (cd "$WORK" && HOME=$WORK/home timeout -k 5 "$CALL_TIMEOUT" "$NODE" "$CONFORMANCE" server --url "$MCP_URL" \
        --scenario "$1") 2>&1 | sed -E 's/\x1b\[[0-9;]*[A-Za-z]//g' >"$out" || rc=$?
    cat "$out"
    [[ $rc == 0 ]] || { echo "conformance exited $rc"; return 1; }
    local line
    line=$(grep -E '^Passed: [0-9]+/[0-9]+, [0-9]+ failed' "$out") || { echo "no result line"; return 1; }
    echo "$line" >>"$NOTE"
    [[ $line =~ ^Passed:\ ([0-9]+)/([0-9]+),\ 0\ failed ]] && ((BASH_REMATCH[1] > 0)) &&
        [[ ${BASH_REMATCH[1]} == "${BASH_REMATCH[2]}" ]] || { echo "not every check passed"; return 1; }
}

# --- run ----------------------------------------------------------------------------------------------------------

echo "third-party MCP clients against kling-mcp (work directory $WORK)"
check "setup: kling_mcp runs; pinned npm tools in ${TOOLS_DIR#"$ROOT"/}" install_tools
if ((failed > 0)); then
    summary_and_exit
fi
export PATH=$TOOLS_DIR/node_modules/.bin:$PATH # so any `#!/usr/bin/env node` the tools spawn gets Node 22

client_checks stdio

check "setup: kling-mcp serve --transport http" start_http_server
client_checks http
for scenario in "${CONFORMANCE_SCENARIOS[@]}"; do
    check "conformance $scenario" conformance "$scenario"
done
stop_server
summary_and_exit
