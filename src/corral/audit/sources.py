"""From paths on disk to trajectories: file discovery, work chunks, JSON/JSONL/gzip decoding.

A chunk is the unit of work a worker gets: a whole file, or a line-aligned byte range of a large
plain JSONL file. Workers read their own bytes (local) or get them shipped (Ray), so the driver never
parses JSON. Bad input never stops a run: each undecodable or unrecognised record becomes a
`Malformed` entry naming its file and line (or array item).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from corral.audit import readers
from corral.audit.model import Malformed, MalformedError, Trajectory

TRAJECTORY_SUFFIXES = (".json", ".jsonl", ".ndjson", ".traj")
LINE_SUFFIXES = (".jsonl", ".ndjson")
CHUNK_BYTES = 4 * 1024 * 1024
# A record (a JSONL line, or a whole JSON file) larger than this is skipped with its size, never
# read: decoding and parsing one costs several times its size in memory (`--max-record-mb`).
MAX_RECORD_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Chunk:
    path: str
    start: int = 0
    end: int | None = None
    first_line: int = 1
    size: int = 0
    lines: bool = False  # a byte range of a JSONL file (never a whole JSON document)
    # gzip JSONL only: the lines that start in this range of the *decompressed* stream (end None:
    # to the end). start/end above then stay 0/None: a gzip stream cannot be entered mid-way.
    part: tuple[int, int | None] | None = None
    unpacked: bool = False  # the bytes handed over are already decompressed (see PartReader)
    oversize: bool = False  # one record over the size limit: reported with its size, never read
    # OpenHands V1 per-event files (`<conversation>/events/event-NNNNN.json`): one trajectory read
    # from many files; `path` is their directory, the bytes are the files one per line
    members: tuple[str, ...] = ()
    limit: int = 0  # gzip parts: a line longer than this is skipped as it streams (0: no limit)
    skipped: tuple[tuple[int, int], ...] = ()  # (line, bytes) of lines the reader skipped


def _wanted(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(TRAJECTORY_SUFFIXES)


def _walk(root: Path) -> Iterator[Path]:
    """Wanted files under root, as `Path.rglob` finds them (symlinked files yes, symlinked
    directories not entered, unreadable ones skipped) but with no stat per file: the directory
    entries already say what is a file."""
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.is_file():
                f = Path(entry.path)
                if _wanted(f):
                    yield f


def discover(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named on the command line are taken as they are; directories are walked for
    .json/.jsonl/.ndjson/.traj files (gzipped or not), in sorted order so runs are repeatable."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(_walk(p), key=lambda f: f.parts))
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")
    return found


def _is_lines_file(path: Path) -> bool:
    return path.name.lower().removesuffix(".gz").endswith(LINE_SUFFIXES)


def _grouped_first_line(path: Path) -> bool:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            first = fh.readline(1024 * 1024)
    except (OSError, EOFError, zlib.error):
        return False
    try:
        reader = readers.detect(json.loads(first))
    except ValueError:
        return False
    return reader is not None and reader.GROUPED


def _unpacked_size(path: Path, packed: int) -> int:
    """A gzip file's size once decompressed, from its trailer (ISIZE: exact for one member under
    4 GiB, a hint otherwise), so work is balanced by what a worker must parse, not by disk bytes."""
    if packed < 18:
        return packed
    with path.open("rb") as fh:
        magic = fh.read(2)
        fh.seek(-4, os.SEEK_END)
        isize = int.from_bytes(fh.read(4), "little")
    if magic != b"\x1f\x8b" or isize > packed * 1100:  # not gzip, or no deflate ratio: no hint
        return packed
    return max(isize, packed)


def _line_end(fh: Any, at: int, block: int = 1024 * 1024) -> int:
    """Offset just past the newline ending the line that runs through `at` (EOF if none), found
    block by block so a line of any length is never held in memory."""
    fh.seek(at)
    pos = at
    while True:
        buf = fh.read(block)
        if not buf:
            return pos
        nl = buf.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(buf)


_EVENT_FILE = re.compile(r"^event-(\d+)(?:-[^/]*)?\.json$")
_STATE_FILES = ("base_state.json", "agent_state.json")


def _event_groups(files: list[Path]) -> tuple[list[Path], dict[Path, list[Path]]]:
    """Per-event files of OpenHands V1 conversations, grouped by their `events/` directory (in
    index order); the conversation's state files beside them are not trajectories."""
    groups: dict[Path, list[Path]] = {}
    rest: list[Path] = []
    for f in files:
        if f.parent.name == "events" and _EVENT_FILE.match(f.name):
            groups.setdefault(f.parent, []).append(f)
        else:
            rest.append(f)
    convs = {d.parent for d in groups}
    rest = [f for f in rest if not (f.name in _STATE_FILES and f.parent in convs)]
    for d in groups:
        groups[d].sort(key=lambda f: (int(_EVENT_FILE.match(f.name).group(1)), f.name))  # type: ignore[union-attr]
    return rest, groups


def plan(
    files: Iterable[Path], chunk_bytes: int = CHUNK_BYTES, max_record: int = MAX_RECORD_BYTES
) -> list[Chunk]:
    """Large plain JSONL files are cut at line boundaries so several workers share one file;
    gzip files, JSON documents and grouped event streams (Claude Code) stay whole. A line or a
    JSON document over `max_record` bytes becomes an `oversize` chunk: reported, not read."""
    chunks: list[Chunk] = []
    chunk_bytes = min(chunk_bytes, max_record)  # a line over the limit always spans a cut
    files, groups = _event_groups(list(files))
    for folder, members in groups.items():
        size = sum(m.stat().st_size for m in members)
        chunks.append(Chunk(str(folder), size=size, lines=True,
                            members=tuple(str(m) for m in members)))  # fmt: skip
    for path in files:
        size = path.stat().st_size
        if not _is_lines_file(path) and not path.name.endswith(".gz") and size > max_record:
            chunks.append(Chunk(str(path), size=size, oversize=True))
            continue
        splittable = (
            _is_lines_file(path) and not path.name.endswith(".gz") and size > chunk_bytes
        ) and not _grouped_first_line(path)
        if not splittable and path.name.endswith(".gz"):
            size = _unpacked_size(path, size)
            if _is_lines_file(path) and size > chunk_bytes and not _grouped_first_line(path):
                for lo in range(0, size, chunk_bytes):
                    hi = lo + chunk_bytes if lo + chunk_bytes < size else None
                    part_size = (hi or size) - lo
                    chunks.append(Chunk(str(path), size=part_size, lines=True, part=(lo, hi),
                                        limit=max_record))  # fmt: skip
                continue
        if not splittable:
            chunks.append(Chunk(str(path), size=size, lines=_is_lines_file(path)))
            continue
        with path.open("rb") as fh:
            start, line = 0, 1
            while start < size:
                fh.seek(start)
                block = fh.read(chunk_bytes)
                cut = block.rfind(b"\n")
                end = (
                    size
                    if start + len(block) >= size
                    else start + (cut + 1 if cut >= 0 else len(block))
                )
                if cut < 0 and end < size:  # one line longer than a chunk: extend to its end
                    end = _line_end(fh, start + len(block))
                    over = end - start > max_record
                    chunks.append(Chunk(str(path), start, end, line, end - start, True,
                                        oversize=over))  # fmt: skip
                    line += 1
                    start = end
                    continue
                chunks.append(Chunk(str(path), start, end, line, end - start, True))
                line += block[: end - start].count(b"\n")
                start = end
    return chunks


def load(chunk: Chunk) -> bytes:
    if chunk.members:  # each event file's JSON on one line (JSON whitespace only: same value)
        parts = []
        for m in chunk.members:
            with open(m, "rb") as fh:
                parts.append(fh.read().replace(b"\r", b" ").replace(b"\n", b" "))
        return b"\n".join(parts) + b"\n"
    with open(chunk.path, "rb") as fh:
        fh.seek(chunk.start)
        return fh.read() if chunk.end is None else fh.read(chunk.end - chunk.start)


def _line_start(data: bytes, at: int) -> int:
    """Offset of the first line that starts at or after `at`."""
    if at <= 0:
        return 0
    nl = data.find(b"\n", at - 1)
    return len(data) if nl < 0 else nl + 1


def _slice(data: bytes, part: tuple[int, int | None]) -> tuple[bytes, int]:
    """The lines of a part and the number of its first line."""
    begin = _line_start(data, part[0])
    stop = len(data) if part[1] is None else _line_start(data, part[1])
    return data[begin:stop], data.count(b"\n", 0, begin) + 1


def _gunzip(data: bytes) -> tuple[bytes, str | None]:
    """Everything a gzip stream holds up to where it breaks, and why it broke (None: intact)."""
    try:
        return gzip.decompress(data), None
    except (OSError, EOFError, zlib.error) as err:
        out: list[bytes] = []
        rest = data
        try:
            while rest:
                dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out.append(dec.decompress(rest))
                if not dec.eof:
                    break
                rest = dec.unused_data
        except zlib.error:
            pass
        reason = str(err) or type(err).__name__
        return b"".join(out), f"compressed stream broken ({reason}); records after the cut are lost"


def _text(chunk: Chunk, data: bytes) -> tuple[str, int, str | None]:
    """The chunk's text, the number of its first line, and a damaged-stream error to report once
    (by the part holding the cut) after the intact records before it."""
    first = chunk.first_line
    broken: str | None = None
    if chunk.path.endswith(".gz") and not chunk.unpacked:
        data, broken = _gunzip(data)
        if broken is not None:
            if chunk.part is None or chunk.part[1] is None:
                cut = data.rfind(b"\n") + 1 if chunk.lines else len(data)
                data = data[:cut] if chunk.lines else data
            else:
                broken = None  # an earlier part: its lines are intact, the last part reports
        if chunk.part is not None:
            data, first = _slice(data, chunk.part)
    # surrogateescape: bytes that are not UTF-8 survive the round trip to --keep/--drop unchanged
    return data.decode("utf-8", errors="surrogateescape"), first, broken


class PartReader:
    """Hands out the decompressed lines of successive parts of gzip JSONL files in one pass.

    Runners ask for parts in plan order, so each file is decompressed once, here (zlib in C, a small
    share of the audit's cost), rather than from its start again for every part. A part asked for
    out of order, or a stream that fails, is left to the worker (`trajectories` decompresses and
    cuts the same lines, or reports the file unreadable)."""

    BLOCK = 1024 * 1024
    OUT = 4 * 1024 * 1024  # decompressed per step: a bomb of repeated bytes never lands at once

    def __init__(self) -> None:
        self.path: str | None = None
        self.next_lo = 0
        self.limit = 0

    def read(self, chunk: Chunk) -> tuple[Chunk, bytes | None]:
        assert chunk.part is not None
        lo, hi = chunk.part
        try:
            if lo == 0:
                self._open(chunk.path)
                self.limit = chunk.limit
            elif self.path != chunk.path or self.next_lo != lo:
                return chunk, None
            stop = self._stop(hi)
        except (OSError, EOFError, zlib.error):
            self._close()
            return chunk, None
        data, line = self.buf[:stop], self.line
        self.buf, self.line, self.base = self.buf[stop:], line + data.count(b"\n"), self.base + stop
        self.next_lo = hi or 0
        mine = tuple(s for s in self.skipped if s[0] < self.line)
        self.skipped = [s for s in self.skipped if s[0] >= self.line]
        if hi is None:
            self._close()
        return replace(chunk, first_line=line, unpacked=True, skipped=mine), data

    def _open(self, path: str) -> None:
        self._close()
        self.path, self.fh = path, open(path, "rb")  # noqa: SIM115 (closed in _close)
        self.dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.buf, self.base, self.line, self.done = b"", 0, 1, False
        self.pending = b""  # compressed input not yet decompressed (bounded output per step)
        self.skipping: list[int] | None = None  # [line, bytes so far] of a line being skipped
        self._long: tuple[int, re.Pattern[bytes]] | None = None
        self.skipped: list[tuple[int, int]] = []

    def _close(self) -> None:
        if self.path is not None:
            self.fh.close()
            self.path = None

    def _stop(self, hi: int | None) -> int:
        """Where the first line starting at or after `hi` begins, in `buf` (decompressing on)."""
        while True:
            if hi is not None:
                rel = hi - 1 - self.base
                if rel < 0:
                    return 0
                nl = self.buf.find(b"\n", rel)
                if nl >= 0:
                    return nl + 1
            if self.done:
                return len(self.buf)
            self._more()

    def _more(self) -> None:
        if not self.pending:
            self.pending = self.fh.read(self.BLOCK)
            if not self.pending:
                if not self.dec.eof:
                    raise EOFError("compressed file ended before the end-of-stream marker")
                self.done = True
                if self.skipping is not None:  # the last line, without a newline, was too long
                    self.skipped.append((self.skipping[0], self.skipping[1]))
                    self.skipping = None
                return
        out = self.dec.decompress(self.pending, self.OUT)
        self.pending = self.dec.unconsumed_tail
        if self.dec.eof and self.dec.unused_data:  # another gzip member follows
            self.pending = self.dec.unused_data + self.pending
            self.dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._feed(out)

    def _feed(self, out: bytes) -> None:
        """Append decompressed bytes; a line growing past the limit is dropped as it streams and
        left as an empty line (so line numbers hold), to be reported with its size."""
        if self.skipping is not None:
            nl = out.find(b"\n")
            if nl < 0:
                self.skipping[1] += len(out)
                return
            self.skipping[1] += nl + 1
            self.skipped.append((self.skipping[0], self.skipping[1]))
            self.skipping = None
            out = b"\n" + out[nl + 1 :]
        begin = self.buf.rfind(b"\n") + 1  # the first line the new bytes touch starts here
        self.buf += out
        if not self.limit:
            return
        if self._long is None or self._long[0] != self.limit:
            self._long = (self.limit, re.compile(b"(?m)^[^\n]{%d}" % (self.limit + 1)))
        while (m := self._long[1].search(self.buf, begin)) is not None:
            start = self.buf.rfind(b"\n", 0, m.start()) + 1
            line = self.line + self.buf.count(b"\n", 0, start)
            end = self.buf.find(b"\n", m.end())
            if end < 0:  # still growing: drop what there is and skip the rest as it streams
                self.skipping = [line, len(self.buf) - start]
                self.buf = self.buf[:start]
                return
            self.skipped.append((line, end + 1 - start))
            self.buf = self.buf[:start] + b"\n" + self.buf[end + 1 :]
            begin = start + 1


class _Builder:
    """Turns decoded records into trajectories, grouping line-per-event formats by session."""

    def __init__(self, path: str, forced: ModuleType | None, keep_raw: bool) -> None:
        self.path, self.forced, self.keep_raw = path, forced, keep_raw
        self.name = os.path.basename(path)
        self.hint: ModuleType | None = None
        self.groups: dict[
            tuple[str, str], tuple[ModuleType, list[tuple[int | None, int | None, Any, str]]]
        ] = {}
        self.last_key: dict[str, str] = {}
        self.pending: dict[str, list[tuple[int | None, int | None, Any, str]]] = {}

    def record(
        self, line: int | None, item: int | None, obj: Any, raw: str
    ) -> Iterator[Trajectory | Malformed]:
        reader = self.forced or readers.detect(obj, self.hint)
        if reader is None:
            yield Malformed(self.path, line, item,
                            f"unrecognised record ({readers.describe(obj)}); use --format to force one")  # fmt: skip
            return
        self.hint = reader
        if not reader.GROUPED:
            yield self.build(reader, obj, [(line, item, obj, raw)])
            return
        key = reader.group_key(obj) or self.last_key.get(reader.NAME)
        entry = (line, item, obj, raw)
        if key is None:
            self.pending.setdefault(reader.NAME, []).append(entry)
            return
        self.last_key[reader.NAME] = key
        group = self.groups.setdefault(
            (reader.NAME, key), (reader, self.pending.pop(reader.NAME, []))
        )
        group[1].append(entry)

    def finish(self) -> Iterator[Trajectory | Malformed]:
        for reader, entries in self.groups.values():
            yield from self.build_group(reader, entries)
        for name, entries in self.pending.items():
            yield from self.build_group(readers.BY_NAME[name], entries)

    def build_group(
        self, reader: ModuleType, entries: list[tuple[int | None, int | None, Any, str]]
    ) -> Iterator[Trajectory | Malformed]:
        """A session of line records; a line the reader cannot use costs that line only (reported
        with its own line number), never the session."""
        built = self.build(reader, [e[2] for e in entries], entries)
        if not isinstance(built, Malformed) or len(entries) == 1:
            yield built
            return
        good = []
        for e in entries:
            one = self.build(reader, [e[2]], [e])
            if isinstance(one, Malformed):
                yield one
            else:
                good.append(e)
        if good:
            yield self.build(reader, [e[2] for e in good], good)

    def build(
        self,
        reader: ModuleType,
        record: Any,
        entries: list[tuple[int | None, int | None, Any, str]],
    ) -> Trajectory | Malformed:
        line, item = entries[0][0], entries[0][1]
        try:
            steps = reader.steps(record)
            tid = reader.trajectory_id(record)
        except MalformedError as err:
            return Malformed(self.path, line, item, f"{reader.NAME}: {err}")
        except (AttributeError, TypeError, KeyError, ValueError) as err:
            return Malformed(
                self.path,
                line,
                item,
                f"{reader.NAME}: unexpected shape ({type(err).__name__}: {err})",
            )
        if tid is None:
            tid = (
                f"{self.name}:{line}"
                if line is not None
                else (f"{self.name}[{item}]" if item is not None else self.name)
            )
        raw = (
            [e[3] or json.dumps(e[2], ensure_ascii=False, separators=(",", ":")) for e in entries]
            if self.keep_raw
            else []
        )
        where = getattr(reader, "cwd", None)
        return Trajectory(reader.NAME, tid, self.path, line, item, steps, raw,
                          where(record) if where else None)  # fmt: skip


def trajectories(
    chunk: Chunk, data: bytes, forced: str | None = None, keep_raw: bool = False
) -> Iterator[Trajectory | Malformed]:
    """Every trajectory (or malformed record) in one chunk, in file order."""
    if chunk.members:
        yield from _member_records(chunk, data, forced, keep_raw)
        return
    builder = _Builder(chunk.path, readers.BY_NAME[forced] if forced else None, keep_raw)
    try:
        text, first_line, broken = _text(chunk, data)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        yield Malformed(chunk.path, None, None, f"cannot read: {err}")
        return
    if broken is not None and not chunk.lines:  # half a JSON document: one error, not two
        yield Malformed(chunk.path, None, None, broken)
        return
    if broken is not None:
        yield from _records(chunk, builder, text, first_line)
        yield Malformed(chunk.path, first_line + text.count("\n"), None, broken)
        return
    yield from _records(chunk, builder, text, first_line)


def _member_records(
    chunk: Chunk, data: bytes, forced: str | None, keep_raw: bool
) -> Iterator[Trajectory | Malformed]:
    """A conversation kept as one file per event: the events in index order make one trajectory
    named after the conversation's directory; a bad file is reported by its own name."""
    conv = os.path.dirname(chunk.path.rstrip("/"))
    builder = _Builder(conv, readers.BY_NAME[forced] if forced else readers.openhands_v1, keep_raw)
    text = data.decode("utf-8", errors="surrogateescape")
    for i, raw in enumerate(text.split("\n")[: len(chunk.members)]):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            yield Malformed(chunk.members[i], None, None, f"invalid JSON: {err.msg}")
            continue
        yield from builder.record(None, i, obj, raw)
    for t in builder.finish():
        if isinstance(t, Trajectory) and t.id == f"{builder.name}[{t.item}]":
            t.id, t.item = builder.name, None  # one conversation: its directory names it
        yield t


def _records(
    chunk: Chunk, builder: _Builder, text: str, first_line: int
) -> Iterator[Trajectory | Malformed]:
    if not chunk.lines:
        text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark
        stripped = text.lstrip()
        try:
            doc = json.loads(text) if stripped else None
        except json.JSONDecodeError as err:
            first = stripped.split("\n", 1)[0]
            try:
                json.loads(first)
            except json.JSONDecodeError:
                yield Malformed(
                    chunk.path, err.lineno, None, f"invalid JSON: {err.msg} (column {err.colno})"
                )
                return
        else:
            if doc is None:
                return
            yield from _document(builder, doc)
            yield from builder.finish()
            return
    for offset, raw in enumerate(text.split("\n")):
        line = first_line + offset
        raw = raw.rstrip("\r")
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.removeprefix("\ufeff"))  # kept in `raw`: written back as read
        except json.JSONDecodeError as err:
            yield Malformed(chunk.path, line, None, f"invalid JSON: {err.msg} (column {err.colno})")
            continue
        yield from builder.record(line, None, obj, raw)
    yield from builder.finish()


def _document(builder: _Builder, doc: Any) -> Iterator[Trajectory | Malformed]:
    """A JSON file is one trajectory, or an array of trajectory records."""
    forced = builder.forced
    if forced is not None:
        items_match = isinstance(doc, list) and bool(doc) and forced.sniff(doc[0])
        reader = forced if forced.sniff(doc) or not items_match else None
    else:
        reader = readers.detect(doc)
    if reader is not None and not reader.GROUPED:
        yield builder.build(reader, doc, [(None, None, doc, "")])
        return
    if isinstance(doc, list):
        for i, obj in enumerate(doc):
            yield from builder.record(None, i, obj, "")
        return
    yield from builder.record(None, None, doc, "")
