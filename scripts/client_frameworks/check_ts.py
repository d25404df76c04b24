"""Runs ts/check.mjs (the TypeScript SDK) with the sandbox servers it needs: the Python side only starts servers.

The timeout check gets a sandbox at real-time pace (a 3 s clip takes 65-75 s), longer than the SDK's 60 s default.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent
REAL_TIME_SCALE = "1"


def main() -> None:
    opts = common.args()
    env = {**os.environ, "KLING_SERVER_PYTHON": common.SERVER_PYTHON}
    with common.workdir() as root:
        env["CF_ENV_JSON"] = json.dumps(common.server_env(root / "fast"))
        env["CF_SLOW_ENV_JSON"] = json.dumps(common.server_env(root / "slow", REAL_TIME_SCALE))
        cmd = [os.environ.get("NODE", "node"), str(HERE / "ts" / "check.mjs"), opts.transport]
        if opts.transport == "http":
            with (
                common.http_server(root / "fast") as url,
                common.http_server(root / "slow", REAL_TIME_SCALE) as slow_url,
            ):
                rc = subprocess.run(cmd, env={**env, "CF_MCP_URL": url, "CF_SLOW_MCP_URL": slow_url}, check=False)
        else:
            rc = subprocess.run(cmd, env=env, check=False)
    raise SystemExit(rc.returncode)


if __name__ == "__main__":
    main()
