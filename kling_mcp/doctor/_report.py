"""The doctor's report: one line per finding as it comes, and a summary naming the settings to change."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TextIO

Outcome = Literal["ok", "warn", "fail", "skip"]
_MARKS: Mapping[Outcome, str] = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def key_text(key: str) -> str:
    # Never the key itself: at most its last 4 characters, and none of a key too short to spare them.
    return f"ends in …{key[-4:]}" if len(key) >= 12 else "set (too short to show any of it)"


@dataclass
class Report:
    """Findings as they come, one line each, and the summary; the exit code is 1 when anything failed."""

    out: TextIO
    counts: Counter[str] = field(default_factory=Counter)
    fixes: list[str] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.out.write(f"\n{title}\n")

    def line(self, text: str) -> None:
        self.out.write(f"       {text}\n")
        self.out.flush()

    def add(self, outcome: Outcome, check: str, detail: str, fix: str | None = None) -> None:
        self.counts[outcome] += 1
        self.out.write(f"  {_MARKS[outcome]} {check}: {detail}\n")
        if fix:
            self.out.write(f"       fix: {fix}\n")
            if outcome == "fail" and fix not in self.fixes:
                self.fixes.append(fix)
        self.out.flush()

    def finish(self) -> int:
        counts = ", ".join(f"{self.counts[o]} {o}" for o in ("ok", "warn", "fail", "skip") if self.counts[o])
        self.section(f"Summary: {counts or 'nothing checked'}.")
        if self.fixes:
            self.line("What to change:")
        for fix in self.fixes:
            self.line(f"- {fix}")
        if not self.counts["fail"]:
            self.line("Every check passed." if not self.counts["warn"] else "No check failed; read the warnings.")
        self.out.flush()
        return 1 if self.counts["fail"] else 0
