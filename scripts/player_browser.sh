#!/usr/bin/env bash
# The player (MCP App) in a real browser: headless Chromium (Debian's `chromium`, installed here only if missing)
# driven by playwright-core, behind the @modelcontextprotocol/ext-apps AppBridge, against kling-mcp in sandbox mode
# over streamable HTTP and over stdio (through a relay). See scripts/player_browser/run.mjs for the checks.
# PYTHON (default: python on PATH) must import kling_mcp. UPDATE_SCREENSHOTS=1 rewrites docs/img/player-*.png.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/scripts/player_browser
PYTHON=${PYTHON:-$(command -v python || command -v python3)}

if [[ ! -x /usr/bin/chromium ]]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
# npm ci only when the lock changed since the last install.
lock_sum=$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)
if [[ $(cat "$HERE/node_modules/.lock-sha256" 2>/dev/null) != "$lock_sum" ]]; then
    (cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
    echo "$lock_sum" >"$HERE/node_modules/.lock-sha256"
fi
shots=""
[[ ${UPDATE_SCREENSHOTS:-0} == 1 ]] && shots=$ROOT/docs/img
rc=0
for transport in http stdio; do
    KLING_PYTHON=$PYTHON KLING_SCREENSHOTS=$([[ $transport == http ]] && echo "$shots") \
        node "$HERE/run.mjs" "$transport" 2> >(grep -v '^\[' >&2) || rc=1
done
exit $rc
