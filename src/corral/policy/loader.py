"""Loading policies from presets and YAML files, with errors a person can act on."""

from __future__ import annotations

import contextvars
import functools
import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corral.policy.model import Policy

PRESETS_PACKAGE = "corral.policy.presets"


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the field and what is allowed."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML would let a second `limits:` silently replace the first: a policy must not."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@functools.cache
def _preset(name: str) -> Policy:
    """Presets parse once per process; callers get their own copy to change."""
    text = resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml").read_text()
    return policy_from_mapping(yaml.safe_load(text), f"preset {name!r}")


@functools.lru_cache(maxsize=1)
def _preset_names() -> tuple[str, ...]:
    return tuple(
        sorted(
            p.name.removesuffix(".yaml")
            for p in resources.files(PRESETS_PACKAGE).iterdir()
            if p.name.endswith(".yaml")
        )
    )


def preset_names() -> list[str]:
    return list(_preset_names())


def _format_validation(err: ValidationError, origin: str) -> str:
    lines = [f"invalid policy {origin}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{got_s}")
    return "\n".join(lines)


# the policies being loaded in this context, outermost first: an `extends:` loop is named, not a
# RecursionError
_LOADING: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("corral_policy_chain",
                                                                          default=())  # fmt: skip
MAX_EXTENDS = 16


def _non_finite(data: Any, where: str = "") -> str | None:
    """The first field holding a NaN or an infinity (YAML `.inf`), which no limit may be."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "(top level)"
    if isinstance(data, dict):
        for k, v in data.items():
            found = _non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    if isinstance(data, list):
        for i, v in enumerate(data):
            found = _non_finite(v, f"{where}.{i}")
            if found:
                return found
    return None


def policy_from_mapping(data: Any, origin: str = "<mapping>") -> Policy:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"invalid policy {origin}: top level must be a mapping of sections")
    data = dict(data)
    bad = _non_finite(data)
    if bad:
        raise PolicyError(f"invalid policy {origin}:\n  {bad}: must be a finite number (got "
                          "an infinity or NaN); use null for no limit")  # fmt: skip
    base_name = data.pop("extends", None) if "extends" in data else None
    try:
        if base_name:
            if not isinstance(base_name, str):
                raise PolicyError(f"invalid policy {origin}:\n  extends: must be a preset name or "
                                  f"a file path (got {base_name!r})")  # fmt: skip
            base = _load_base(base_name, origin).model_dump()
            data = _deep_merge(base, data)
        return Policy.model_validate(data)
    except ValidationError as err:
        raise PolicyError(_format_validation(err, origin)) from None


def _load_base(name: str, origin: str) -> Policy:
    chain = _LOADING.get()
    key = name if name in preset_names() else str(Path(name).resolve())
    if key in chain or len(chain) >= MAX_EXTENDS:
        loop = " -> ".join([*chain, key])
        raise PolicyError(f"invalid policy {origin}:\n  extends: a loop ({loop}); a policy may "
                          "not extend itself, directly or through others")  # fmt: skip
    token = _LOADING.set((*chain, key))
    try:
        return load_policy(name)
    finally:
        _LOADING.reset(token)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def load_policy(spec: str | Path | Policy | None = None) -> Policy:
    """A preset name, a YAML file path, or a Policy; None means the default, rl-strict."""
    if isinstance(spec, Policy):
        return spec
    if spec is None:
        spec = "rl-strict"
    spec = str(spec)
    if spec in preset_names():
        return _preset(spec).model_copy(deep=True)
    else:
        path = Path(spec)
        if not path.is_file():
            raise PolicyError(
                f"no policy {spec!r}: not a preset ({', '.join(preset_names())}) nor a readable file"
            )
        origin = str(path)
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise PolicyError(f"invalid policy {origin}: cannot read it ({err.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PolicyError(f"invalid policy {origin}: not UTF-8 text (byte {raw[err.start]:#04x} "
                              f"at offset {err.start}); save it as UTF-8") from None  # fmt: skip
        if "\x00" in text:
            raise PolicyError(f"invalid policy {origin}: holds a NUL byte; it is not a YAML text")
        if not _LOADING.get():  # the outermost file is the first link of its chain
            token = _LOADING.set((str(path.resolve()),))
            try:
                return _parse(text, origin)
            finally:
                _LOADING.reset(token)
    return _parse(text, origin)


def _parse(text: str, origin: str) -> Policy:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        raise PolicyError(f"invalid policy {origin}: not YAML: {err}") from None
    return policy_from_mapping(data, origin)
