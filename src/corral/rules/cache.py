"""The shipped rule packs and reputation data, parsed once per content and kept on disk.

Parsing eleven YAML packs and validating them costs more than everything else `corral run -- true`
does (about 150 ms with the pure-Python YAML parser), and every call parsed them again. The parsed,
validated rules, macros and reputation data are pickled under `$CORRAL_CACHE` (default
`$CORRAL_HOME/cache`), named by a hash of the packs' and the data file's bytes and of the versions
that shape the objects (corral, Python, pydantic): an edited pack, an upgrade or another Python
gets a new file, so a stale cache is never read. Only what the packs compile to in memory
(predicates, regexes) is built per process.

The cache is an optimisation, never a source of truth: a file that is missing, unreadable, not
owned by this user, writable by others, or not what we wrote is ignored and the packs are parsed.
The sandbox never sees it (the supervisor's home is hidden inside), so an agent cannot poison it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import stat
import sys
import tempfile
from importlib import resources
from pathlib import Path

from corral.rules.reputation import Reputation
from corral.rules.schema import Macro, Rule

FORMAT = 2  # 2: macros beside the rules
_PREFIX = "rules-"


def cache_dir() -> Path:
    env = os.environ.get("CORRAL_CACHE")
    if env:
        return Path(env)
    from corral.store.paths import corral_home

    return corral_home() / "cache"


def pack_files() -> list[Path]:
    root = resources.files("corral.rules").joinpath("packs")
    return sorted(Path(str(root)).glob("*.yaml"))


def reputation_file() -> Path:
    return Path(str(resources.files("corral.rules").joinpath("data/reputation.yaml")))


def _versions() -> bytes:
    import pydantic

    from corral import __version__

    return f"{FORMAT}|{__version__}|{sys.version}|{pydantic.VERSION}".encode()


def content_key(files: list[Path], texts: list[bytes]) -> str:
    """Hash of every input's name and bytes, and of what shapes the pickled objects."""
    h = hashlib.sha256(_versions())
    for f, data in zip(files, texts, strict=True):
        h.update(b"\0" + f.name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:32]


Parsed = tuple[list[Rule], dict[str, str], Reputation, list[tuple[Macro, str]]]


def _read_trusted(path: Path) -> Parsed | None:
    """The cached objects, or None if the file is absent or not one we can trust."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        try:
            data = pickle.load(f)  # noqa: S301 - our own file, checked above
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            return None
    if not (isinstance(data, tuple) and len(data) == 5 and data[0] == FORMAT):
        return None
    _, rules, sources, rep, macros = data
    if not (isinstance(rules, list) and all(isinstance(r, Rule) for r in rules)
            and isinstance(sources, dict) and isinstance(rep, Reputation)
            and isinstance(macros, list)
            and all(isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], Macro)
                    and isinstance(m[1], str) for m in macros)):  # fmt: skip
        return None
    return rules, sources, rep, macros


def _write(path: Path, parsed: Parsed) -> None:
    """Atomically (a reader sees the old file or the whole new one); old generations removed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump((FORMAT, *parsed), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    for old in path.parent.glob(_PREFIX + "*.pickle"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()


def _parse(files: list[Path], texts: list[bytes], rep_text: bytes) -> Parsed:
    from corral.rules.engine import parse_pack_full
    from corral.rules.reputation import _parse as parse_reputation

    rules: list[Rule] = []
    sources: dict[str, str] = {}
    macros: list[tuple[Macro, str]] = []
    for f, data in zip(files, texts, strict=True):
        got, defs = parse_pack_full(data.decode(), str(f))
        for rule in got:
            rules.append(rule)
            sources[rule.id] = str(f)
        macros += [(m, str(f)) for m in defs]
    rep = parse_reputation(rep_text.decode(), "corral/rules/data/reputation.yaml")
    return rules, sources, rep, macros


@functools.lru_cache(maxsize=1)
def load_default() -> Parsed:
    """The shipped packs' rules, their source files, the reputation data and the packs' macros
    (with their files, in load order): from the cache when
    its key matches the files' bytes, else parsed (and the cache written, where it can be)."""
    files = [*pack_files(), reputation_file()]
    texts = [f.read_bytes() for f in files]
    path = cache_dir() / f"{_PREFIX}{content_key(files, texts)}.pickle"
    hit = _read_trusted(path)
    if hit is not None:
        return hit
    parsed = _parse(files[:-1], texts[:-1], texts[-1])
    with contextlib.suppress(OSError, pickle.PicklingError):
        _write(path, parsed)
    return parsed
