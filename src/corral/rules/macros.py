"""Macros (Falco's): named conditions, expanded into the rules that reference them at load.

A condition names a macro as `{macro: name}` (besides any other keys, which still must hold). The
engine expands every reference before it compiles a rule, so the compiled predicates, the program
index and the prefilter gates see plain conditions and cost nothing more per command.

Where the same name is defined twice, the later definition replaces the earlier (a later pack,
then the policy's `rules.macros`), as in Falco; twice in one file is a mistake and refused. An
undefined name, a macro of the other language (command vs event) and a cycle are refused at load,
naming the rule or macro that refers to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from corral.rules.schema import Macro

# What a macro without `when` (a `user_known_*` hook nobody filled in) expands to: a condition in
# the language's own terms that never holds. `not: [{}]` is "none of [always]"; no fact has a
# `kind` in the empty list.
NEVER: dict[str, dict[str, Any]] = {"command": {"not": [{}]}, "event": {"kind": {"in": []}}}


# the combinators holding a list of sub-conditions, per language (event `not` holds one)
_LISTS = {"command": ("any", "not"), "event": ("any", "all")}


class MacroError(ValueError):
    """A macro reference that cannot be expanded; the message names who refers to what."""


def collect(defs: Iterable[tuple[Macro, str]]) -> dict[str, tuple[Macro, str]]:
    """Macros by name from (macro, origin) in load order: a later origin replaces an earlier one;
    the same name twice from one origin is refused."""
    out: dict[str, tuple[Macro, str]] = {}
    for m, origin in defs:
        prev = out.get(m.macro)
        if prev is not None and prev[1] == origin:
            raise MacroError(f"invalid rule pack {origin}: macro {m.macro} is defined twice")
        out[m.macro] = (m, origin)
    return out


def refs(cond: Any) -> bool:
    """Whether a condition names any macro (most do not: they are compiled as written)."""
    if isinstance(cond, dict):
        return "macro" in cond or any(refs(v) for v in cond.values())
    if isinstance(cond, list):
        return any(refs(v) for v in cond)
    return False


class Expander:
    """Expands macro references against one set of definitions, each macro's body once."""

    def __init__(self, macros: dict[str, tuple[Macro, str]]) -> None:
        self.macros = macros
        self._done: dict[str, dict[str, Any]] = {}

    def check_all(self) -> None:
        """Expand every macro, used or not, so an undefined name or a cycle in any is refused."""
        for name, (_, origin) in self.macros.items():
            self.body(name, None, f"macro {name} ({origin})", ())

    def body(
        self, name: str, lang: str | None, where: str, stack: tuple[str, ...]
    ) -> dict[str, Any]:
        """The expanded condition of macro `name`, required to be of language `lang`."""
        if name in stack:
            raise MacroError(f"{where}: macro cycle {' -> '.join([*stack, name])}")
        hit = self.macros.get(name)
        if hit is None:
            raise MacroError(f"{where}: no macro {name!r} is defined")
        m, origin = hit
        if lang is not None and m.match != lang:
            raise MacroError(f"{where}: macro {name} is a {m.match} condition, not a {lang} one")
        done = self._done.get(name)
        if done is not None:
            return done
        if m.when is None:
            out = NEVER[m.match]
        else:
            out = self.expand(m.when, m.match, f"macro {name} ({origin})", (*stack, name))
        self._done[name] = out
        return out

    def expand(self, cond: dict[str, Any], lang: str, where: str,
               stack: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
        """`cond` with every `{macro: name}` replaced by the macro's condition, ANDed with the
        keys beside it: merged when no key clashes, else nested (`not: [{not: [m]}]` for command
        conditions, which have no `all`; `all: [m]` for event conditions)."""
        if not refs(cond):
            return cond
        out: dict[str, Any] = {}
        for key, val in cond.items():
            if key == "macro":
                continue
            if key in _LISTS[lang]:
                out[key] = [self.expand(s, lang, where, stack) for s in val]
            elif lang == "event" and key == "not":
                out[key] = self.expand(val, lang, where, stack)
            else:
                out[key] = val
        name = cond.get("macro")
        if name is None:
            return out
        body = self.body(name, lang, where, stack)
        if not out:
            return body
        clash = set(body) & set(out)
        if lang == "command":
            clash |= {"takes_value"} & (set(body) | set(out))  # it modifies the other's flags
            if not clash:
                return {**out, **body}
            return {**out, "not": [*out.get("not", []), {"not": [body]}]}
        if not clash:
            return {**out, **body}
        return {**out, "all": [*out.get("all", []), body]}
