"""Context footprint of the tools: bytes and tokens of ``tools/list``, all tools and each one.

    python -m bench.footprint          # from the repository root

Spawns ``python -m kling_mcp`` (sandbox mode) and speaks raw JSON-RPC over its stdio: ``initialize``, then
``tools/list``, keeping the exact line the server wrote. Counts:

* wire: the bytes of the JSON-RPC answer line as sent;
* tools: the ``tools`` array re-serialised compactly (no spaces), which is what a client forwards at best;
* model-facing: per tool only ``name``, ``description`` and ``inputSchema``, the part LLM APIs put into the prompt
  (``outputSchema``, ``title`` and ``annotations`` are for the client; some clients forward them all).

Tokens: with the ``bpe-openai`` package installed (``pip install bpe-openai``; it ships the cl100k_base and
o200k_base BPE tables inside the wheel, so it works offline) the counts are exact for those two OpenAI
encodings. ``tiktoken`` is not used: it downloads its BPE files from the network on first use. Claude's
tokenizer is not public (counting goes through an online API), so no exact Claude figure is possible offline.
The heuristic ceil(UTF-8 bytes / 4) is printed beside, and alone when no tokenizer is installed; the script prints
how many bytes a cl100k token covers on this very text, which is the heuristic's calibration. The verdict uses the
exact counts when there are any (the higher of the two), else the heuristic.

Target: at most 2,500 tokens for all tools together.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import REPO, STDIO_HANDSHAKE, base_env, header

TARGET_TOKENS = 2500
ENCODINGS = ("cl100k_base", "o200k_base")  # the ones bpe-openai ships; others would reach for the network


def heuristic_tokens(text: str) -> int:
    """ceil(UTF-8 bytes / 4), the usual rule of thumb for English and compact JSON with BPE tokenizers."""
    return math.ceil(len(text.encode()) / 4)


def tokenizers() -> dict[str, Callable[[str], int]]:
    """Exact counters that work offline, by encoding name; empty when bpe-openai is not installed."""
    try:
        bpe: Any = importlib.import_module("bpe_openai")
    except ImportError:
        return {}

    def counter(encoding: Any) -> Callable[[str], int]:
        def count(text: str) -> int:
            return len(encoding.encode(text))

        return count

    return {name: counter(bpe.get_encoding(name)) for name in ENCODINGS}


def tools_list_line(work: Path) -> bytes:
    env = base_env(
        work / "home",
        KLING_MCP_MODE="sandbox",
        KLING_MCP_STATE_DIR=str(work / "state"),
        KLING_MCP_OUTPUT_DIR=str(work / "out"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kling_mcp"],
        env=env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        for message in STDIO_HANDSHAKE:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
            proc.stdin.flush()
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the server closed stdout before answering tools/list")
            if json.loads(line).get("id") == 2:
                return line
    finally:
        proc.stdin.close()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    header()
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        line = tools_list_line(Path(tmp))
    tools: list[dict[str, Any]] = json.loads(line)["result"]["tools"]
    counters = tokenizers()
    names = [*counters, "bytes/4"]
    count: dict[str, Callable[[str], int]] = {**counters, "bytes/4": heuristic_tokens}
    if not counters:
        print(
            "# bpe-openai is not installed (pip install bpe-openai): token counts are the heuristic ceil(bytes/4) only"
        )

    def compact(value: object) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    def facing(tool: dict[str, Any]) -> dict[str, Any]:
        return {k: tool[k] for k in ("name", "description", "inputSchema") if k in tool}

    print(f"wire: the tools/list answer line is {len(line)} bytes for {len(tools)} tools")
    print(f"{'':<16} {'bytes':>7} " + " ".join(f"{n:>11}" for n in names) + "   (tokens)")

    def row(label: str, text: str) -> dict[str, int]:
        counts = {n: count[n](text) for n in names}
        print(f"{label:<16} {len(text.encode()):>7} " + " ".join(f"{counts[n]:>11}" for n in names))
        return counts

    total = row("all tools", compact(tools))
    model = row("model-facing", compact([facing(t) for t in tools]))
    print("per tool (all fields | description | inputSchema | outputSchema):")
    first = names[0]
    for tool in tools:
        parts = [
            compact(tool),
            tool.get("description", ""),
            compact(tool.get("inputSchema", {})),
            compact(tool.get("outputSchema", {})) if "outputSchema" in tool else "",
        ]
        cells = " | ".join(f"{len(p.encode()):>5} B {count[first](p):>5} t" for p in parts)
        print(f"  {tool['name']:<16} {cells}")
    if counters:
        ratio = len(compact(tools).encode()) / total[first]
        print(f"bytes per {first} token on this text: {ratio:.2f} (the heuristic assumes 4)")
    judged = [n for n in names if n in counters] or names
    worst = max(total[n] for n in judged)
    verdict = "meets" if worst <= TARGET_TOKENS else "misses"
    print(
        f"target: all tools <= {TARGET_TOKENS} tokens; {'/'.join(judged)}: highest count {worst} ({verdict}, "
        f"{worst - TARGET_TOKENS:+d}); model-facing part {max(model[n] for n in judged)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
