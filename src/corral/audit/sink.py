"""Where results go as they arrive: --json/--keep/--drop files streamed, totals and the worst
trajectories kept for the console summary and the HTML report. Memory stays flat however large
the corpus: only the top trajectories and the first malformed records are held."""

from __future__ import annotations

import heapq
import json
from collections import Counter
from pathlib import Path
from typing import IO, Any

from corral.audit import checker
from corral.audit.model import SEVERITY_RANK

WORST_KEPT = 50
MALFORMED_KEPT = 500
UNREADABLE_KEPT = 500
FLAGGED_KEPT = 200_000  # every flagged trajectory, in brief, for the report's paged list


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


class AuditSink:
    def __init__(self, json_path: Path | None = None, keep_path: Path | None = None,
                 drop_path: Path | None = None) -> None:  # fmt: skip
        self._files: list[IO[str]] = []
        self.json_out = self._open(json_path, "backslashreplace")
        self.keep_out = self._open(keep_path)
        self.drop_out = self._open(drop_path)
        self.trajectories = 0
        self.steps = 0
        self.commands = 0
        self.files: set[str] = set()
        self.verdicts: Counter[str] = Counter()
        self.formats: Counter[str] = Counter()
        self.category_trajectories: Counter[str] = Counter()
        self.category_findings: Counter[str] = Counter()
        self.rules: Counter[str] = Counter()
        self.kept = 0
        self.dropped = 0
        self.malformed_count = 0
        self.malformed: list[dict[str, Any]] = []
        self.unreadable: list[dict[str, Any]] = []  # the first ones, with why (see summary)
        self.flagged: list[dict[str, Any]] = []  # every trajectory with findings, in brief
        self.flagged_count = 0
        self.format_verdicts: dict[str, Counter[str]] = {}
        self._worst: list[tuple[tuple[int, int, int], int, dict[str, Any]]] = []
        self._seq = 0

    def _open(self, path: Path | None, errors: str = "surrogateescape") -> IO[str] | None:
        """--keep/--drop write records back byte for byte (non-UTF-8 bytes were read as surrogate
        escapes); --json escapes such bytes (`\\udcXX`) so it stays valid UTF-8."""
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = path.open("w", encoding="utf-8", errors=errors)
        self._files.append(fh)
        return fh

    def add_chunk(self, chunk_result: dict[str, Any]) -> None:
        for bad in chunk_result["malformed"]:
            self.malformed_count += 1
            self.files.add(bad["file"])
            if len(self.malformed) < MALFORMED_KEPT:
                self.malformed.append(bad)
            if self.json_out:
                self.json_out.write(json.dumps(bad, ensure_ascii=False) + "\n")
        for r in chunk_result["results"]:
            self.add(r)

    def add(self, r: dict[str, Any]) -> None:
        self._seq += 1
        self.trajectories += 1
        self.steps += r["steps"]
        self.commands += r["commands"]
        self.files.add(r["file"])
        self.verdicts[r["verdict"]] += 1
        self.formats[r["format"]] += 1
        self.format_verdicts.setdefault(r["format"], Counter())[r["verdict"]] += 1
        if r["verdict"] == "unreadable" and len(self.unreadable) < UNREADABLE_KEPT:
            self.unreadable.append({k: r.get(k) for k in ("file", "line", "item", "format", "id",
                                                          "steps", "unreadable")})  # fmt: skip
        for cat in {f["category"] for f in r["findings"]}:
            self.category_trajectories[cat] += 1
        for f in r["findings"]:
            self.category_findings[f["category"]] += 1
            self.rules[f["rule"]] += 1
        if self.json_out:
            line = r.get("_json") or json.dumps(_public(r), ensure_ascii=False)
            self.json_out.write(line + "\n")
        out = self.keep_out if r["passed"] else self.drop_out
        if r["passed"]:
            self.kept += 1
        else:
            self.dropped += 1
        if out is not None:
            for line in r.get("_raw", []):
                out.write(line + "\n")
        if r["findings"]:
            self.flagged_count += 1
            if len(self.flagged) < FLAGGED_KEPT:
                w = r["worst"]
                self.flagged.append({
                    "file": r["file"], "line": r["line"], "item": r["item"], "id": r["id"],
                    "format": r["format"], "verdict": r["verdict"], "findings": len(r["findings"]),
                    "rule": w["rule"], "severity": w["severity"], "steps": w["steps"][:20],
                })  # fmt: skip
            sev = SEVERITY_RANK.get(r["worst"]["severity"], 0)
            verdict_rank = {"deny": 2, "ask": 1}.get(r["verdict"], 0)
            key = (verdict_rank, sev, len(r["findings"]))
            kept = {k: v for k, v in r.items() if k not in ("_raw", "_json")}
            item = (key, -self._seq, kept)
            if len(self._worst) < WORST_KEPT:
                heapq.heappush(self._worst, item)
            else:
                heapq.heappushpop(self._worst, item)

    def worst(self) -> list[dict[str, Any]]:
        """Worst first; ties keep input order."""
        return [item[2] for item in sorted(self._worst, key=lambda t: (t[0], t[1]), reverse=True)]

    def summary(self) -> dict[str, Any]:
        return {
            "engine": checker.ENGINE,
            "files": len(self.files),
            "trajectories": self.trajectories,
            "steps": self.steps,
            "commands": self.commands,
            "verdicts": {
                v: self.verdicts.get(v, 0) for v in ("allow", "ask", "deny", "unreadable")
            },
            "kept": self.kept,
            "dropped": self.dropped,
            "malformed": self.malformed_count,
            "formats": dict(self.formats.most_common()),
            "categories": {
                c: {"trajectories": n, "findings": self.category_findings[c]}
                for c, n in self.category_trajectories.most_common()
            },
            "rules": dict(self.rules.most_common()),
            "format_verdicts": {f: dict(c) for f, c in sorted(self.format_verdicts.items())},
            "flagged": self.flagged_count,
            "unreadable": self.unreadable,
        }

    def close(self) -> None:
        for fh in self._files:
            fh.close()
