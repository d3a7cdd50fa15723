"""The rule pack format, validated with pydantic so a bad pack names its file, rule and field.

A pack is `{pack, category?, attack?, rules: [...]}`; pack-level `category`/`attack` are defaults for
its rules. `match: command` rules hold a `when` over one analysed simple command; `match: event`
rules hold a `when` over the dotted fields of a runtime event's facts; `match: record` rules hold no
`when`: they declare an id that a sensor or the sandbox writes itself (a lifecycle record, a limit
hit, the gateway's refusals), so every id any code can emit is listed by `corral rules list`.
A pack may also hold `macros: [...]`, named conditions its rules (and others') reference as
`{macro: name}` (`Macro`; expanded by `corral.rules.macros`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.contracts import FACT_KINDS, check_fact_path
from corral.rules.finding import ResponseName, Severity

CATEGORIES = ("mining", "tunnel", "reverse_shell", "probe_internal", "metadata", "exfiltration",
              "persistence", "escape", "ingress_exec", "reward_tampering", "resource",
              "policy", "lifecycle")  # fmt: skip
HOST_CLASSES = ("ip", "name", "loopback", "internal", "metadata", "external")
EVENT_OPS = ("eq", "ne", "in", "not_in", "regex", "gte", "gt", "lte", "lt", "exists", "contains",
             "reputation", "host_class")  # fmt: skip


def _check_regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as err:
        raise ValueError(f"bad regular expression {v!r}: {err}") from None
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CommandCond(_Strict):
    """Conditions over one simple command; all given keys must hold (AND); `any` is OR, `not` NOR."""

    program: list[str] | None = Field(None, description="basenames; '*' globs allowed")
    flags: list[str] | None = Field(None, description="any of these options present")
    all_flags: list[str] | None = None
    takes_value: str = Field("", description="short options of this tool that take a value")
    args: list[str] | None = Field(None, description="regexes: any argument matches any")
    all_args: list[str] | None = Field(None, description="regexes: each matches some argument")
    last_arg: str | None = Field(None, description="regex over the last argument (a destination)")
    text: str | None = Field(None, description="regex over argv joined by spaces")
    redirect: str | None = Field(None, description="regex over any redirect target")
    redirect_write: str | None = Field(None, description="regex over written/appended targets")
    redirect_append: str | None = None
    facts: list[str] | None = Field(None, description="any of these analysis facts")
    all_facts: list[str] | None = None
    pipe_from: list[str] | None = Field(None, description="an earlier pipeline stage is one of")
    pipe_to: list[str] | None = None
    origin: list[str] | None = Field(None, description="where the command came from (prefixes)")
    hosts: list[str] | None = Field(
        None, description="a named host is of one of these classes (internal, metadata, external,"
        " loopback, ip, name) or reputation categories as 'rep:<category>', 'port:<category>'",
    )  # fmt: skip
    any: list[CommandCond] | None = None
    not_: list[CommandCond] | None = Field(None, alias="not")
    macro: str | None = Field(None, description="a named command macro that must also hold")

    @field_validator("args", "all_args")
    @classmethod
    def _regexes(cls, v: list[str] | None) -> list[str] | None:
        for r in v or []:
            _check_regex(r)
        return v

    @field_validator("text", "last_arg", "redirect", "redirect_write", "redirect_append")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return _check_regex(v) if v is not None else v

    @field_validator("flags", "all_flags")
    @classmethod
    def _flags(cls, v: list[str] | None) -> list[str] | None:
        for f in v or []:
            if not re.fullmatch(r"-[A-Za-z0-9?]|--[A-Za-z0-9][A-Za-z0-9_.-]*", f):
                raise ValueError(f"{f!r} is not an option like -R or --donate-level")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str] | None) -> list[str] | None:
        for h in v or []:
            if h not in HOST_CLASSES and not re.fullmatch(r"(rep|port):[a-z_]+", h):
                raise ValueError(
                    f"{h!r}: use one of {', '.join(HOST_CLASSES)}, rep:<cat>, port:<cat>"
                )
        return v


class Rule(_Strict):
    id: str
    category: Literal[CATEGORIES]  # type: ignore[valid-type]
    severity: Severity
    attack: str | None = None
    description: str
    response: ResponseName = "alert"
    match: Literal["command", "event", "record"]
    when: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(None, description="record rules: the event source that writes it")
    allowed_host_severity: Severity | None = Field(
        None, description="severity used for the verdict when every host named is allowed by policy"
    )
    examples: list[Any] = Field(default_factory=list, description="inputs this rule must fire on")
    counter_examples: list[Any] = Field(default_factory=list, description="inputs it must not")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+", v):
            raise ValueError("must be dotted lower-case, like tunnel.ssh_remote_forward")
        return v

    @field_validator("attack")
    @classmethod
    def _attack(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"T\d{4}(\.\d{3})?", v):
            raise ValueError("must be a MITRE ATT&CK technique id like T1572 or T1059.004")
        return v

    @model_validator(mode="after")
    def _when(self) -> Rule:
        if self.match == "record":
            if self.when or self.examples or self.counter_examples:
                raise ValueError(
                    "a record rule declares an id: no when, examples or counter_examples"
                )
            return self
        if self.category == "lifecycle":
            raise ValueError("category lifecycle is for record rules only")
        if self.match == "command":
            CommandCond.model_validate(self.when)
            for key in ("examples", "counter_examples"):
                for i, ex in enumerate(getattr(self, key)):
                    if not isinstance(ex, str):
                        raise ValueError(f"{key}[{i}] must be a command string (quote it in YAML)")
        else:
            validate_event_cond(self.when)
            for key in ("examples", "counter_examples"):
                for i, ex in enumerate(getattr(self, key)):
                    if not isinstance(ex, dict):
                        raise ValueError(f"{key}[{i}] must be a mapping of event fields")
        return self


MACRO_NAME = re.compile(r"[a-z][a-z0-9_]*")


class Macro(_Strict):
    """A named condition (Falco's macros): written once, referenced from any rule, exception or
    other macro of the same language as `{macro: name}`. A later pack (or the policy's
    `rules.macros`) that defines the same name replaces it, so a shipped rule can be tuned
    without copying it. No `when` means the macro never holds: a `user_known_*` hook that the
    shipped rules reference as `not: {macro: ...}` and a user fills in."""

    macro: str
    match: Literal["command", "event"]
    description: str = ""
    when: dict[str, Any] | None = None

    @field_validator("macro")
    @classmethod
    def _name(cls, v: str) -> str:
        if not MACRO_NAME.fullmatch(v):
            raise ValueError("must be lower-case letters, digits and _, like user_known_cpu_jobs")
        return v

    @model_validator(mode="after")
    def _cond(self) -> Macro:
        if self.when is None:
            return self
        if self.match == "command":
            CommandCond.model_validate(self.when)
        else:
            validate_event_cond(self.when)
        return self


class Pack(_Strict):
    pack: str
    category: str | None = None
    attack: str | None = None
    description: str = ""
    macros: list[dict[str, Any]] = Field(default_factory=list)
    rules: list[dict[str, Any]] = Field(default_factory=list)


def validate_event_cond(cond: Any, path: str = "when") -> None:
    """Event conditions: {field.path: scalar | {op: value}} plus any/all/not combinators."""
    if not isinstance(cond, dict) or not cond:
        raise ValueError(f"{path}: must be a non-empty mapping of field paths to conditions")
    for key, val in cond.items():
        where = f"{path}.{key}"
        if key in ("any", "all"):
            if not isinstance(val, list) or not val:
                raise ValueError(f"{where}: must be a non-empty list of conditions")
            for i, sub in enumerate(val):
                validate_event_cond(sub, f"{where}[{i}]")
        elif key == "not":
            validate_event_cond(val, where)
        elif key == "macro":
            if not isinstance(val, str) or not MACRO_NAME.fullmatch(val):
                raise ValueError(f"{where}: must name a macro (got {val!r})")
        else:
            why = check_fact_path(key)
            if why is not None:
                raise ValueError(f"{where}: {why}")
            if key == "kind":
                kinds = val if isinstance(val, str) else [x for v in val.values()
                                                          for x in (v if isinstance(v, list) else [v])]  # fmt: skip
                unknown = sorted(
                    {str(k) for k in ([kinds] if isinstance(kinds, str) else kinds)} - FACT_KINDS
                )
                if unknown:
                    raise ValueError(f"{where}: unknown fact kind {', '.join(unknown)}"
                                     f" (known: {', '.join(sorted(FACT_KINDS))})")  # fmt: skip
        if key not in ("any", "all", "not", "macro") and isinstance(val, dict):
            for op, arg in val.items():
                if op not in EVENT_OPS:
                    raise ValueError(
                        f"{where}: unknown operator {op!r} (use {', '.join(EVENT_OPS)})"
                    )
                if op == "regex":
                    _check_regex(str(arg))
                if op in ("in", "not_in", "reputation", "host_class") and not isinstance(arg, list):
                    raise ValueError(f"{where}.{op}: must be a list")
                if op in ("gte", "gt", "lte", "lt") and not isinstance(arg, int | float):
                    raise ValueError(f"{where}.{op}: must be a number")


CommandCond.model_rebuild()
