#!/usr/bin/env bash
# Real LLM-client frameworks against kling-mcp in sandbox mode (offline, nothing charged), each the way its users
# wire it: langchain-mcp-adapters + langchain-openai, openai-agents, google-genai, pydantic-ai, fastmcp, mcp-use
# and the TypeScript SDK, over stdio and streamable HTTP. Where a framework needs a model, a scripted fake one on
# 127.0.0.1 (scripts/client_frameworks/fake_model.py) answers and records what the model would have read.
#
# The frameworks live in their own environments, never the project's: .venv-clients/mcp2 (the project itself, so
# the server runs as `python -m kling_mcp`, plus the frameworks that work with mcp 2.3) and .venv-clients/mcp1
# (langchain-mcp-adapters and mcp-use, which pin mcp<2; they drive the mcp2 server as a subprocess or over HTTP).
# The TypeScript SDK is installed by npm into scripts/client_frameworks/ts/node_modules. Installs are skipped when
# the requirement files are unchanged since the last one.
#
# Prints each check's expectations, then a table (framework, transport, result, notes); exits 1 if any failed.
# Environment: ONLY="fastmcp langchain ..." runs some checks; KEEP_WORK=1 keeps the servers' folders and logs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=$ROOT/scripts/client_frameworks
VENVS=$ROOT/.venv-clients
PYTHON3=${PYTHON3:-python3}
CHECKS=(fastmcp langchain openai_agents google_genai pydantic_ai mcp_use ts)
declare -A VENV_OF=([fastmcp]=mcp2 [langchain]=mcp1 [openai_agents]=mcp2 [google_genai]=mcp2 [pydantic_ai]=mcp2
    [mcp_use]=mcp1 [ts]=mcp2)
CHECK_TIMEOUT=300 # seconds per check script (the TypeScript one waits out the SDK's 60 s timeout)

# No framework may phone home: telemetry and tracing off, and no provider key reaches them.
export MCP_USE_ANONYMIZED_TELEMETRY=false OPENAI_AGENTS_DISABLE_TRACING=1 LANGSMITH_TRACING=false \
    LANGCHAIN_TRACING_V2=false DO_NOT_TRACK=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
unset OPENAI_API_KEY GOOGLE_API_KEY GEMINI_API_KEY PIXAZO_API_KEY PIXAZO_BASE_URL OPENAI_BASE_URL || true

START=$SECONDS
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/kling-cf-logs.XXXXXX")
cleanup() { if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "logs kept: $LOGS"; else rm -rf "$LOGS"; fi; }
trap cleanup EXIT

# install_venv NAME REQUIREMENTS [EDITABLE_PROJECT]
install_venv() {
    local venv=$VENVS/$1 req=$DIR/$2 stamp
    stamp=$(cat "$req" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
    if [[ -x $venv/bin/python && $(cat "$venv/.installed" 2>/dev/null) == "$stamp" ]]; then
        echo "  $1: up to date"
        return 0
    fi
    local t0=$SECONDS
    rm -f "$venv/.installed"
    [[ -x $venv/bin/python ]] || "$PYTHON3" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    local extra=()
    [[ ${3:-} == project ]] && extra=(-e "$ROOT")
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" "${extra[@]}" 2>&1 |
        grep -v "^WARNING: Location" || true
    "$venv/bin/python" -m pip check >/dev/null 2>&1 || echo "  $1: pip check reports conflicts (see pip check)"
    echo "$stamp" >"$venv/.installed"
    echo "  $1: installed in $((SECONDS - t0)) s"
}

install_ts() {
    local ts=$DIR/ts stamp
    stamp=$(sha256sum "$ts/package.json" "$ts/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1)
    if [[ -d $ts/node_modules/@modelcontextprotocol/sdk && $(cat "$ts/node_modules/.installed" 2>/dev/null) == "$stamp" ]]; then
        echo "  ts: up to date"
        return 0
    fi
    local t0=$SECONDS
    (cd "$ts" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
    stamp=$(sha256sum "$ts/package.json" "$ts/package-lock.json" | sha256sum | cut -d' ' -f1)
    echo "$stamp" >"$ts/node_modules/.installed"
    echo "  ts: installed in $((SECONDS - t0)) s"
}

echo "== client frameworks: installing (separate environments under ${VENVS#"$ROOT"/})"
install_venv mcp2 requirements-mcp2.txt project
install_venv mcp1 requirements-mcp1.txt
install_ts
export KLING_SERVER_PYTHON=$VENVS/mcp2/bin/python
"$KLING_SERVER_PYTHON" -m kling_mcp --version
for v in mcp2 mcp1; do
    echo "  $v: $("$VENVS/$v/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE '^(mcp|langchain-mcp-adapters|langchain-openai|langgraph|openai-agents|google-genai|pydantic-ai-slim|fastmcp|mcp-use)==' | tr '\n' ' ')"
done
echo "  ts: @modelcontextprotocol/sdk $(node -p 'require("'"$DIR"'/ts/node_modules/@modelcontextprotocol/sdk/package.json").version'), node $(node --version)"
INSTALL_S=$((SECONDS - START))

selected=("${CHECKS[@]}")
[[ -n ${ONLY:-} ]] && read -r -a selected <<<"$ONLY"
: >"$LOGS/results.jsonl"
failed=0
passed=0
for check in "${selected[@]}"; do
    for transport in stdio http; do
        echo "== $check over $transport"
        log=$LOGS/$check-$transport.log
        rc=0
        (cd "$DIR" && timeout -k 10 "$CHECK_TIMEOUT" "$VENVS/${VENV_OF[$check]}/bin/python" "check_$check.py" \
            --transport "$transport") >"$log" 2>&1 || rc=$?
        grep -E '^  (PASS|FAIL|note)|^       ' "$log" || true
        if line=$(grep '^RESULT ' "$log" | tail -n 1) && [[ -n $line ]]; then
            echo "${line#RESULT }" >>"$LOGS/results.jsonl"
        else
            echo "  FAIL no result (exit $rc); last lines of the log:"
            tail -n 15 "$log" | sed 's/^/    | /'
            printf '{"framework": "%s", "transport": "%s", "result": "FAIL", "seconds": 0, "failed": ["exit %s without a result (timeout or crash)"], "notes": [], "passed": []}\n' \
                "$check" "$transport" "$rc" >>"$LOGS/results.jsonl"
        fi
        if ((rc == 0)); then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    done
done

echo
echo "== client frameworks: results (install $INSTALL_S s, total $((SECONDS - START)) s)"
"$PYTHON3" - "$LOGS/results.jsonl" <<'PY'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'framework':32} {'transport':9} {'result':6} {'s':>5}  notes")
for r in rows:
    short = [f if len(f) <= 130 else f[:129] + "…" for f in r["failed"]]
    notes = " | ".join(short) or "; ".join(r["notes"]) or "all expectations met"
    print(f"{r['framework']:32} {r['transport']:9} {r['result']:6} {r['seconds']:>5}  {notes}")
PY
echo "$passed passed, $failed failed"
exit $((failed > 0))
