"""The rule engine: YAML packs in, findings out, for commands (static) and runtime events alike.

One engine serves the gate, `corral check`, the offline audit and the runtime monitor, so a rule
written once applies everywhere. Packs are validated and compiled at load; per command the work is a
tree-sitter parse, a dict lookup by program name and the few rules indexed under it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corral.analysis.model import Analysis, Command
from corral.analysis.shell import analyse, analyse_argv
from corral.rules import reputation as reputation_mod
from corral.rules.conditions import (
    MAX_WORD,
    CommandView,
    EventPred,
    Pred,
    compile_command,
    compile_event,
    gate_of,
    has_facts,
    has_redirects,
    split_programs,
)
from corral.rules.finding import Finding, severity_rank
from corral.rules.macros import Expander, MacroError, collect, refs
from corral.rules.prefilter import searcher, word_local
from corral.rules.reputation import Reputation
from corral.rules.schema import CommandCond, Macro, Pack, Rule, validate_event_cond

CACHE_SIZE = 200_000
_DECODE_ORIGINS = ("stdin", "procsub", "eval")


@dataclass(slots=True)
class _Plan:
    tied: list[CompiledRule] = field(default_factory=list)
    facts: list[CompiledRule] = field(default_factory=list)
    redirects: list[CompiledRule] = field(default_factory=list)
    regex: list[CompiledRule] = field(default_factory=list)
    calls: list[tuple[CompiledRule, tuple[Pred, ...]]] = field(default_factory=list)


class RulePackError(ValueError):
    """A pack that cannot be used; the message names the file, the rule and the field."""


@dataclass(slots=True)
class CompiledRule:
    rule: Rule
    pred: Pred | EventPred
    source: str
    programs: list[str] | None = None  # tried on these unconditionally (globs allowed)
    prog_exact: frozenset[str] = frozenset()
    prog_glob: re.Pattern[str] | None = None
    free: bool = False  # may also fire on other programs (then through the gate, if any)
    gated: bool = False  # True: fires only if a gate call holds or gate_regex is in the text
    gate_calls: tuple[Pred, ...] = ()
    gate_regex: re.Pattern[str] | None = None
    exceptions: tuple[Any, ...] = ()  # conditions (the rule's own language) that stop it firing


def _format_error(err: ValidationError, origin: str, rule_id: str | None,
                  who: str | None = None) -> str:  # fmt: skip
    """One line: the file, the rule (or macro) and each field with what is wrong with it."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        msg = msg.removeprefix("Value error, ")
        got = e.get("input")
        got_s = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        parts.append(f"{loc}: {msg}{got_s}" if loc else f"{msg}{got_s}")
    who = f" {who}" if who else f" rule {rule_id}" if rule_id else ""
    return f"invalid rule pack {origin}{who}: " + "; ".join(parts)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a mapping with the same key twice (PyYAML keeps the last silently: a
    rule's second `when:` would replace its first without a word)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_pack(text: str, origin: str) -> list[Rule]:
    """A pack's rules (its macros: `parse_pack_full`)."""
    return parse_pack_full(text, origin)[0]


def _rule_or_macro_at(text: str, line: int) -> str | None:
    """`rule <id>` or `macro <name>` for the YAML line an error points at."""
    found = None
    for i, ln in enumerate(text.splitlines()):
        if i > line:
            break
        m = re.match(r"\s*-?\s*(id|macro):\s*([\w.]+)", ln)
        if m:
            found = ("rule " if m.group(1) == "id" else "macro ") + m.group(2)
    return found


def parse_pack_full(text: str, origin: str) -> tuple[list[Rule], list[Macro]]:
    """A pack's rules and macros, validated; a mistake names the file and the rule or macro."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        who = _rule_or_macro_at(text, mark.line) if mark is not None else None
        where = f" {who}" if who else ""
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise RulePackError(f"invalid rule pack {origin}{where}: {err.problem}{line}") from None
    except yaml.YAMLError as err:
        raise RulePackError(f"invalid rule pack {origin}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RulePackError(f"invalid rule pack {origin}: top level must be a mapping with 'rules'")
    try:
        pack = Pack.model_validate(data)
    except ValidationError as err:
        raise RulePackError(_format_error(err, origin, None)) from None
    macros: list[Macro] = []
    names: set[str] = set()
    for i, raw in enumerate(pack.macros):
        if not isinstance(raw, dict):
            raise RulePackError(f"invalid rule pack {origin}: macros[{i}] must be a mapping")
        name = str(raw.get("macro") or f"macros[{i}]")
        try:
            m = Macro.model_validate(raw)
        except ValidationError as err:
            raise RulePackError(_format_error(err, origin, None, f"macro {name}")) from None
        if m.macro in names:
            raise RulePackError(f"invalid rule pack {origin}: macro {m.macro} is defined twice")
        names.add(m.macro)
        macros.append(m)
    out = []
    for i, raw in enumerate(pack.rules):
        if not isinstance(raw, dict):
            raise RulePackError(f"invalid rule pack {origin}: rules[{i}] must be a mapping")
        merged = dict(raw)
        if pack.category and "category" not in merged:
            merged["category"] = pack.category
        if pack.attack and "attack" not in merged:
            merged["attack"] = pack.attack
        rid = str(merged.get("id") or f"rules[{i}]")
        try:
            out.append(Rule.model_validate(merged))
        except ValidationError as err:
            raise RulePackError(_format_error(err, origin, rid)) from None
    return out, macros


class RuleEngine:
    """Holds compiled rules; thread-compatible (the cache is a plain dict of immutable tuples)."""

    def __init__(self, rules: list[Rule], reputation: Reputation | None = None,
                 sources: dict[str, str] | None = None,
                 exceptions: dict[str, list[dict[str, Any]]] | None = None,
                 macros: dict[str, tuple[Macro, str]] | None = None) -> None:  # fmt: skip
        """`rules` as parsed (their `{macro: ...}` references are expanded here against `macros`,
        name -> (definition, origin), so `self.rules` holds the conditions as compiled);
        `exceptions`: rule id -> conditions that stop it firing (references expanded too)."""
        self.reputation = reputation or reputation_mod.load()
        self.rules: list[Rule] = []
        self.macros: dict[str, tuple[Macro, str]] = dict(macros or {})
        self.exceptions: dict[str, list[dict[str, Any]]] = {}
        self._command: list[CompiledRule] = []
        self._plans: dict[str, _Plan] = {}  # memo: program -> rules to try
        self._event: list[CompiledRule] = []
        self._by_id: dict[str, Rule] = {}
        self._cache: dict[str, tuple[Finding, ...]] = {}
        sources = sources or {}
        regex_gates: list[str] = []
        expander = Expander(self.macros)
        try:
            expander.check_all()
        except MacroError as err:
            raise RulePackError(str(err)) from None
        for rule in rules:
            src = sources.get(rule.id, "")
            if rule.id in self._by_id:
                raise RulePackError(f"duplicate rule id {rule.id} ({src or 'unknown pack'})")
            if rule.match != "record" and refs(rule.when):
                try:
                    when = expander.expand(rule.when, rule.match, f"rule {rule.id} ({src or '?'})")
                except MacroError as err:
                    raise RulePackError(str(err)) from None
                rule = rule.model_copy(update={"when": when})  # noqa: PLW2901 - as compiled
            self._by_id[rule.id] = rule
            self.rules.append(rule)
            if rule.match == "record":
                continue  # declared, written by its sensor: nothing to match
            excs = []
            for exc in (exceptions or {}).get(rule.id, []):
                try:
                    excs.append(expander.expand(exc, rule.match,
                                                f"policy rules.exceptions (rule {rule.id})"))  # fmt: skip
                except MacroError as err:
                    raise RulePackError(str(err)) from None
            if excs:
                self.exceptions[rule.id] = excs
            if rule.match == "event":
                self._event.append(
                    CompiledRule(rule, compile_event(rule.when, self.reputation), src,
                                 exceptions=tuple(compile_event(e, self.reputation) for e in excs))
                )  # fmt: skip
                continue
            progs, rest = split_programs(rule.when)
            gate = None if rest is None else gate_of(rest, self.reputation)
            cr = CompiledRule(rule, compile_command(rule.when, self.reputation), src, progs,
                              exceptions=tuple(compile_command(e, self.reputation) for e in excs))  # fmt: skip
            cr.free = rest is not None
            globs = [p for p in progs if any(ch in p for ch in "*?[")]
            cr.prog_exact = frozenset(p for p in progs if p not in globs)
            cr.prog_glob = (
                re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None
            )
            if gate is not None:
                cr.gated = True
                cr.gate_calls = tuple(gate[0])
                if gate[1]:
                    rx = "|".join(f"(?:{r})" for r in gate[1])
                    cr.gate_regex = re.compile(rx)
                    regex_gates.append(rx)
            self._command.append(cr)
        self._exact: dict[str, list[CompiledRule]] = {}
        self._globbed = [c for c in self._command if c.prog_glob is not None]
        for c in self._command:
            for p in c.prog_exact:
                self._exact.setdefault(p, []).append(c)
        self._free_plan = self._bucket([c for c in self._command if c.free])
        # one search settles every host-gated rule for a command that names no host and whose text
        # holds none of their hints (most commands); None when some gate has no such hint
        hints = [getattr(g, "hint", None) for c in self._command for g in c.gate_calls
                 if g not in (has_facts, has_redirects)]  # fmt: skip
        self._host_hint = (
            re.compile("|".join(f"(?:{h})" for h in dict.fromkeys(hints)))
            if hints and None not in hints
            else None
        )
        # one search over the command text settles every regex-gated rule for most commands
        self._any_gate = (
            re.compile("|".join(f"(?:{g})" for g in regex_gates)) if regex_gates else None
        )
        # the gate over a command's text that rules out all regex- and host-gated rules at once
        # (None: no such gate, try them all): its word-local parts are asked per word, remembered
        # per word; the rest (patterns that span words) over the whole text
        gates = [*regex_gates, *(dict.fromkeys(hints) if self._host_hint is not None else ())]
        self._gating = self._host_hint is not None or not self._free_plan.calls
        local = [g for g in gates if word_local(g)]
        spanning = [g for g in gates if g not in local]
        self._gate_local = searcher("|".join(f"(?:{g})" for g in local)) if local else None
        self._gate_spanning = searcher("|".join(f"(?:{g})" for g in spanning)) if spanning else None
        self._gate_words: dict[str, bool] = {}

    # ---------------------------------------------------------------- loading
    @classmethod
    def default(cls) -> RuleEngine:
        """The shipped packs (cached: one engine per process)."""
        return _default_engine()

    @classmethod
    def for_policy(cls, policy: Any) -> RuleEngine:
        """The engine a policy's `rules:` section asks for (extra packs, disabled rules,
        exceptions, macros replaced); the shipped one when it asks for nothing. Cached per distinct section.
        Unknown rule ids and bad conditions are refused here, naming the rule."""
        section = getattr(policy, "rules", None)
        if section is None or not (
            section.packs or section.disabled or section.exceptions or section.macros
        ):
            return cls.default()
        key = json.dumps(section.model_dump(mode="json"), sort_keys=True)
        hit = _tuned.get(key)
        if hit is None:
            hit = _tuned[key] = cls._tuned(section)
            while len(_tuned) > 32:
                _tuned.pop(next(iter(_tuned)))
        return hit

    @classmethod
    def _tuned(cls, section: Any) -> RuleEngine:
        from corral.rules.cache import load_default

        shipped, sources, rep, shipped_macros = load_default()
        extra, extra_sources, extra_macros = _read(section.packs)
        rules = [*shipped, *extra]
        sources = {**sources, **extra_sources}
        macros = _collect([*shipped_macros, *extra_macros])
        by_id = {r.id: r for r in rules}
        for rid in section.disabled:
            if rid not in by_id:
                raise RulePackError(f"policy rules.disabled: no rule {rid!r} in the packs")
        for name, when in section.macros.items():
            where = f"policy rules.macros.{name}"
            known = macros.get(name)
            if known is None:
                raise RulePackError(f"{where}: no macro {name!r} in the packs to replace (a new"
                                    " macro goes in a pack of rules.packs)")  # fmt: skip
            if when is not None:
                when = _expand_lists(when, section.lists, where)
                _check_cond(when, known[0].match, where)
            macros[name] = (Macro(macro=name, match=known[0].match, when=when,
                                  description=known[0].description), "policy rules.macros")  # fmt: skip
        exceptions: dict[str, list[dict[str, Any]]] = {}
        for i, exc in enumerate(section.exceptions):
            rule = by_id.get(exc.rule)
            where = f"policy rules.exceptions[{i}] (rule {exc.rule})"
            if rule is None:
                raise RulePackError(f"{where}: no such rule in the packs")
            if rule.match == "record":
                raise RulePackError(f"{where}: a record rule is written by its sensor, not matched")
            when = _expand_lists(exc.when, section.lists, where)
            _check_cond(when, rule.match, where)
            exceptions.setdefault(exc.rule, []).append(when)
        rules = [r for r in rules if r.id not in set(section.disabled)]
        return cls(rules, rep, sources, exceptions, macros)

    @classmethod
    def load(cls, paths: Iterable[str | Path] | str | Path,
             reputation: Reputation | None = None) -> RuleEngine:  # fmt: skip
        """Packs from YAML files or directories of them (`*.yaml`, `*.yml`), in order: a macro
        defined again in a later file replaces the earlier definition."""
        rules, sources, macros = _read([paths] if isinstance(paths, str | Path) else paths)
        return cls(rules, reputation, sources, {}, _collect(macros))

    def _plan(self, prog: str) -> _Plan:
        """The command rules that can fire on `prog`, bucketed by what lets them through: tied to
        `prog` (always tried), or free and gated on facts, redirects, text patterns or a host
        check, so one test per bucket skips most rules for most commands. Memoised per program."""
        plan = self._plans.get(prog)
        if plan is not None:
            return plan
        tied = list(self._exact.get(prog, ()))
        tied += [c for c in self._globbed if c.prog_glob.match(prog)]  # type: ignore[union-attr]
        if not tied:
            plan = self._free_plan
        else:
            ids = {id(c) for c in tied}
            plan = self._bucket([c for c in self._command if c.free and id(c) not in ids])
            plan.tied = [c for c in self._command if id(c) in ids] + plan.tied
        if len(self._plans) < 50_000:
            self._plans[prog] = plan
        return plan

    @staticmethod
    def _bucket(free: list[CompiledRule]) -> _Plan:
        plan = _Plan()
        for c in free:
            if not c.gated:
                plan.tied.append(c)
                continue
            if has_facts in c.gate_calls:
                plan.facts.append(c)
            if has_redirects in c.gate_calls:
                plan.redirects.append(c)
            if c.gate_regex is not None:
                plan.regex.append(c)
            others = tuple(g for g in c.gate_calls if g not in (has_facts, has_redirects))
            if others:
                plan.calls.append((c, others))
        return plan

    def rule(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)

    # ---------------------------------------------------------------- checking
    def check_command(self, command: str) -> list[Finding]:
        """Findings for one shell command line, worst first."""
        hit = self._cache.get(command)
        if hit is None:
            hit = tuple(self.check_analysis(analyse(command)))
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[command] = hit
        return list(hit)

    def check_argv(self, argv: list[str]) -> list[Finding]:
        """Findings for one exec seen at runtime (argv as the kernel reports it)."""
        return self.check_analysis(analyse_argv(list(argv)))

    def check_analysis(self, analysis: Analysis) -> list[Finding]:
        findings: dict[str, Finding] = {}
        rep = self.reputation
        plans = self._plans
        for cmd in analysis.commands:
            if not cmd.argv:
                continue
            view = CommandView(cmd, rep)
            plan = plans.get(view.prog) or self._plan(view.prog)
            extra: list[CompiledRule] = []
            if cmd.facts:
                extra += plan.facts
            if cmd.redirects:
                extra += plan.redirects
            if plan.regex or plan.calls:
                blob = view.blob
                # one search over the text rules out every regex- and host-gated rule at once for
                # a command that names no host (most commands); else each gate is asked in turn
                if cmd.hosts or not self._gating or self._gate_hit(view, blob):
                    if plan.regex and self._any_gate is not None and self._any_gate.search(blob):
                        extra += [c for c in plan.regex if c.gate_regex.search(blob)]  # type: ignore[union-attr]
                    if plan.calls and (cmd.hosts or self._host_hint is None
                                       or self._host_hint.search(blob)):  # fmt: skip
                        for c, calls in plan.calls:
                            for call in calls:
                                if call(view):
                                    extra.append(c)
                                    break
            for cr in plan.tied + extra if extra else plan.tied:
                if cr.rule.id not in findings and cr.pred(view):  # type: ignore[arg-type]
                    if cr.exceptions and any(x(view) for x in cr.exceptions):
                        continue  # a known-good case the policy declared
                    findings[cr.rule.id] = self._finding(cr.rule, view, analysis.source)
        if analysis.flags:
            for f in self._analysis_findings(analysis):
                findings.setdefault(f.rule, f)
        if not findings:
            return []
        return sorted(findings.values(), key=lambda f: -severity_rank(f.severity))

    def _gate_hit(self, view: CommandView, blob: str) -> bool:
        """Whether the combined gate is found in `blob` (argv[0], the arguments and the redirect
        targets, as CommandView joins them)."""
        if self._gate_spanning is not None and self._gate_spanning.search(blob):
            return True
        local = self._gate_local
        if local is None:
            return False
        seen = self._gate_words
        if len(seen) > 200_000:
            seen.clear()
        cmd = view.cmd
        words = [cmd.argv[0][:MAX_WORD], *view.args]
        if cmd.redirects:
            words += [r.target[: MAX_WORD * 4] for r in cmd.redirects]
        get = seen.get
        for w in words:
            hit = get(w)
            if hit is None:
                hit = seen[w] = local.search(w) is not None
            if hit:
                return True
        return False

    def _finding(self, rule: Rule, view: CommandView, source: str) -> Finding:
        cmd = view.cmd
        shown = source if cmd.depth == 0 and cmd.origin in ("shell", "exec") else view.text
        snippet = shown if len(shown) <= 160 else shown[:157] + "..."
        if shown is not source:
            snippet += f" (via {cmd.origin})"
        evidence: dict[str, Any] = {"argv": cmd.argv[:32], "origin": cmd.origin}
        hosts = view.hosts
        if hosts:
            evidence["hosts"] = [str(h) for h in hosts[:16]]
        if rule.allowed_host_severity:
            evidence["if_host_allowed"] = rule.allowed_host_severity
        if cmd.redirects:
            evidence["redirects"] = [f"{r.op} {r.target}" for r in cmd.redirects[:8]]
        return Finding(rule=rule.id, category=rule.category, severity=rule.severity,
                       attack=rule.attack, message=f"{rule.description}: {snippet}",
                       response=rule.response, evidence=evidence)  # fmt: skip

    def _analysis_findings(self, analysis: Analysis) -> list[Finding]:
        out = []
        flags = analysis.flags
        if not flags:
            return out
        if "parse_error" in flags:
            out.append(Finding(rule="analysis.parse_error", category="policy", severity="low",
                               message="the command does not parse as shell; analysed as far as "
                               "it goes", evidence={"flags": sorted(flags)}))  # fmt: skip
        if "too_deep" in flags or "truncated" in flags:
            out.append(Finding(rule="analysis.incomplete", category="policy", severity="medium",
                               attack="T1027", message="the command is too large or too deeply "
                               "nested to analyse fully", evidence={"flags": sorted(flags)}))  # fmt: skip
        if "decoded" in flags and any(c.origin.startswith(_DECODE_ORIGINS) or c.origin.endswith(" -c")
                                      for c in analysis.commands):  # fmt: skip
            out.append(Finding(rule="analysis.decoded_exec", category="policy", severity="medium",
                               attack="T1027", message="runs a decoded (base64/hex/compressed) "
                               "payload", evidence={"payloads": [d[:200] for d in
                                                                 analysis.decoded[:4]]}))  # fmt: skip
        return out

    def match_event(self, facts: dict[str, Any]) -> list[Finding]:
        """Findings for one runtime event's facts (dotted paths: `dst.port`, `evidence.cpu_percent`)."""
        out = []
        for cr in self._event:
            try:
                ok = cr.pred(facts)  # type: ignore[arg-type]
            except Exception:  # a malformed event must not stop the monitor
                ok = False
            if ok and cr.exceptions:
                with contextlib.suppress(Exception):
                    ok = not any(x(facts) for x in cr.exceptions)
            if ok:
                rule = cr.rule
                msg = facts.get("message") if isinstance(facts.get("message"), str) else ""
                out.append(Finding(rule=rule.id, category=rule.category, severity=rule.severity,
                                   attack=rule.attack, response=rule.response,
                                   message=rule.description + (f": {msg}" if msg else ""),
                                   evidence={k: facts[k] for k in ("pid", "exe", "dst", "path")
                                             if k in facts},
                                   step=facts.get("step") if isinstance(facts.get("step"), int)
                                   else None))  # fmt: skip
        return sorted(out, key=lambda f: -severity_rank(f.severity))


_tuned: dict[str, RuleEngine] = {}


def _read(
    paths: Iterable[str | Path],
) -> tuple[list[Rule], dict[str, str], list[tuple[Macro, str]]]:
    """Rules, their source files and (macro, source file) from pack files or directories."""
    rules: list[Rule] = []
    sources: dict[str, str] = {}
    macros: list[tuple[Macro, str]] = []
    for p in paths:
        path = Path(p)
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise RulePackError(f"no rule packs (*.yaml) in {path}")
        for f in files:
            try:
                text = f.read_text()
            except OSError as err:
                raise RulePackError(f"cannot read rule pack {f}: {err}") from None
            got, defs = parse_pack_full(text, str(f))
            for rule in got:
                rules.append(rule)
                sources[rule.id] = str(f)
            macros += [(m, str(f)) for m in defs]
    return rules, sources, macros


def _collect(defs: list[tuple[Macro, str]]) -> dict[str, tuple[Macro, str]]:
    try:
        return collect(defs)
    except MacroError as err:
        raise RulePackError(str(err)) from None


def _check_cond(when: Any, lang: str, where: str) -> None:
    """A policy's condition, in the language `lang` (command or event), or a one-line refusal."""
    try:
        if lang == "command":
            CommandCond.model_validate(when)
        else:
            validate_event_cond(when, "when")
    except (ValidationError, ValueError) as err:
        msg = (
            "; ".join(
                f"when.{'.'.join(str(p) for p in e['loc'])}: "
                + ("unknown field" if e["type"] == "extra_forbidden" else e["msg"])
                for e in err.errors()
            )
            if isinstance(err, ValidationError)
            else str(err)
        )
        raise RulePackError(f"{where}: {msg}") from None


def _expand_lists(cond: Any, lists: dict[str, list[str]], where: str) -> Any:
    """`$name` items of a condition's lists become the policy's named list (Falco's lists)."""
    if isinstance(cond, dict):
        return {k: _expand_lists(v, lists, where) for k, v in cond.items()}
    if isinstance(cond, list):
        out: list[Any] = []
        for item in cond:
            if isinstance(item, str) and item.startswith("$"):
                if item[1:] not in lists:
                    raise RulePackError(f"{where}: no list {item[1:]!r} in policy rules.lists")
                out.extend(lists[item[1:]])
            else:
                out.append(_expand_lists(item, lists, where))
        return out
    return cond


def pack_files() -> list[Path]:
    from corral.rules.cache import pack_files

    return pack_files()


_default_lock = threading.Lock()


def _default_engine() -> RuleEngine:
    """Built once per process (threads asking at once wait for the one build) from the parsed
    packs kept on disk by content hash (`corral.rules.cache`)."""
    with _default_lock:
        return _build_default()


def default_built() -> bool:
    """Whether `RuleEngine.default()` would answer without building."""
    return _build_default.cache_info().currsize > 0


@lru_cache(maxsize=1)
def _build_default() -> RuleEngine:
    from corral.rules.cache import load_default

    rules, sources, rep, macros = load_default()
    return RuleEngine(rules, rep, sources, {}, _collect(macros))


def commands_of(analysis: Analysis) -> list[Command]:
    return analysis.commands
