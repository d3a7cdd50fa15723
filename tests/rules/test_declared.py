"""Every rule id any code can emit is declared in a pack (and so listed by `corral rules list`);
every declared record id is one some code emits."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from corral.rules import RuleEngine
from corral.rules.schema import CATEGORIES

SRC = Path(__file__).resolve().parents[2] / "src" / "corral"
PREFIXES = (
    *CATEGORIES,
    "sandbox",
    "egress",
    "respond",
    "process",
    "gpu",
    "file",
    "analysis",
    "gate",
)
ID = re.compile(rf"(?:{'|'.join(PREFIXES)})\.[a-z0-9_]+")
# literals shaped like ids that are not: JSON-RPC method names of the stratum protocol
NOT_IDS = {"mining.subscribe", "mining.authorize", "mining.submit", "mining.extranonce",
           "mining.notify", "mining.set_difficulty", "mining.configure",
           "mining.suggest_difficulty"}  # stratum method names, not rule ids  # fmt: skip
# ids built at run time: the f-string's shape and what it can expand to
DYNAMIC = {
    r"respond\.\{response\}": [f"respond.{r}" for r in ("alert", "block", "kill", "terminate")],
}


def _emitted() -> dict[str, str]:
    """id -> where, for every string literal in the source that is shaped like a rule id."""
    out: dict[str, str] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }  # fmt: skip
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) in docstrings or not ID.fullmatch(node.value):
                    continue
                if node.value not in NOT_IDS:
                    out.setdefault(node.value, f"{path.relative_to(SRC)}:{node.lineno}")
            elif isinstance(node, ast.JoinedStr):
                shape = "".join(
                    v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
                    for v in node.values
                )  # fmt: skip
                for pattern, ids in DYNAMIC.items():
                    if re.fullmatch(pattern, shape):
                        for i in ids:
                            out.setdefault(i, f"{path.relative_to(SRC)}:{node.lineno}")
    return out


def test_every_emitted_id_is_declared() -> None:
    declared = {r.id for r in RuleEngine.default().rules}
    missing = {i: where for i, where in _emitted().items() if i not in declared}
    assert not missing, f"declare these in a pack (rules/packs/records.yaml for records): {missing}"


def test_every_record_id_is_emitted_somewhere() -> None:
    emitted = _emitted()
    records = [r.id for r in RuleEngine.default().rules if r.match == "record"]
    assert records
    assert not [r for r in records if r not in emitted], "a declared id that nothing can produce"


def test_the_scan_sees_dynamic_and_literal_ids() -> None:
    emitted = _emitted()
    assert (
        "process.exec" in emitted and "respond.kill" in emitted and "respond.terminate" in emitted
    )
    assert "mining.subscribe" not in emitted
