"""What one trajectory did to its files, step by step: the context a single command lacks.

A rule sees one command. `rm test_edge_cases.py` looks the same whether the agent deletes the
task's tests or the scratch file it wrote three steps earlier, and `python run.py` looks harmless
whatever `run.py` holds. This module keeps, per trajectory:

- which files the agent created (a first write to a path nothing earlier showed to exist), so that
  editing or deleting them is never reward tampering, while the policy's protected paths and files
  that existed before the episode stay guarded;
- what content each write put into a file (editor/create/str_replace/Write tools, heredocs, `tee`,
  `echo >`, copies), so that when a later step executes or sources that file its content is
  analysed like the command it amounts to, with the finding on both the step that ran it and the
  step(s) that wrote it.

Paths are compared as written after light normalisation (`./a` is `a`; a workspace prefix is
dropped); when a script is run by another spelling of its path, a unique basename match is used.
"""

from __future__ import annotations

import ast
import posixpath
import re
import shlex
from dataclasses import dataclass, field, replace

from corral.analysis.model import Analysis
from corral.analysis.model import Command as Simple
from corral.analysis.shell import SHELLS, analyse
from corral.audit.model import IN_WORKSPACE

# Paths that look like the task's tests or grader (the rule packs' own reading of "tests").
TEST_LIKE = re.compile(
    r"(^|/)(tests?|grader|graders|grading|hidden_tests|\.corral)(/|$)|(^|/)conftest\.py$"
    r"|(^|/)test_[^/]*\.py$|(^|/)[^/]+_test\.py$|(^|/)(pytest\.ini|tox\.ini|\.coveragerc)$"
)
# Files whose mere presence changes how the existing tests run: new ones are tampering too.
TEST_CONFIG = re.compile(r"(^|/)(conftest\.py|pytest\.ini|tox\.ini|\.coveragerc|setup\.cfg)$")
# Rules whose meaning depends on whose file it is.
PROVENANCE_RULES = frozenset({
    "reward_tampering.test_write", "reward_tampering.test_delete",
    "reward_tampering.test_edit_in_place", "reward_tampering.exit_hook",
})  # fmt: skip
_PYTHON = re.compile(r"^(?:python|pypy)(?:\d+(?:\.\d+)?)?$")
_LANG_FLAG = {"node": "-e", "nodejs": "-e", "perl": "-e", "ruby": "-e", "php": "-r"}
_EDITORS_IN_PLACE = frozenset({"sed", "perl", "ruby", "gawk", "awk"})
_WRITE_HINT = re.compile(r">|\btee\b|\btouch\b|\bmkdir\b|\bcp\b|\bmv\b|\brm\b|\bunlink\b|\binstall\b|\b"
                         r"ln\b|open\(|-i\b|--in-place|\bgit\b|\bfind\b|\bdd\b|\btruncate\b")  # fmt: skip
# `sed -i '12a\\ text'`, `sed -i '/def f/i ...'`: inserts lines, changes none
_SED_INSERT = re.compile(r"^\s*(?:\d+|\$|/(?:[^/\\]|\\.)*/)?\s*[aiAI](?:\\|\s)")
MAX_CONTENT = 256 * 1024  # per file: what is kept to analyse when the file is run
_EFFECTS: dict[str, tuple[Effect, ...]] = {}
_EFFECTS_MAX = 50_000


@dataclass(slots=True)
class Effect:
    """One thing a simple command does to a path: create/append/edit/delete it, or run it."""

    kind: str  # create, append, edit, delete, exec
    path: str
    content: str | None = None  # create/append: what was written, when known
    lang: str = "sh"  # exec: how the file is run (sh, python, node, perl, ruby, php, pytest)
    source: str | None = None  # create by cp/mv: where the content came from


def norm(path: str, workspace: str = "/workspace") -> str:
    """A path as compared here: `./a//b` is `a/b`; the workspace prefix is dropped."""
    p = posixpath.normpath(path.strip()) if path.strip() else ""
    if p.startswith(workspace.rstrip("/") + "/"):
        p = p[len(workspace.rstrip("/")) + 1 :]
    return "" if p == "." else p


def _positional(args: list[str], valued: str = "") -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--":
            continue
        elif a.startswith("-") and len(a) > 1:
            skip = len(a) == 2 and a[1] in valued
        else:
            out.append(a)
    return out


def _heredoc(cmd: Simple) -> str | None:
    for r in cmd.redirects:
        if r.op in ("<<", "<<-", "<<<"):
            return r.target if r.op != "<<<" else r.target + "\n"
    return None


def _echoed(cmd: Simple) -> str | None:
    if cmd.program == "echo":
        return " ".join(a for a in cmd.args if not re.fullmatch(r"-[neE]+", a)) + "\n"
    if cmd.program == "printf" and cmd.args:
        return cmd.args[0].replace("\\n", "\n") if "%" not in cmd.args[0] else None
    return None


def _literal(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
        v = node.value
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return None


def _open_target(node: ast.AST | None) -> str | None:
    """`open('p', 'w')` or `Path('p')` -> 'p'."""
    if isinstance(node, ast.Call) and node.args:
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if name in ("open", "Path", "PurePath"):
            return _literal(node.args[0])
    return None


def python_writes(code: str) -> dict[str, str]:
    """Literal content a Python program writes to literal paths: `open(p, 'w').write(s)`,
    `with open(p, 'w') as f: f.write(s)`, `Path(p).write_text(s)` (several writes join)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    handles: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                path = _open_target(item.context_expr)
                if path is not None and isinstance(item.optional_vars, ast.Name):
                    handles[item.optional_vars.id] = path
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            path = _open_target(node.value)
            if path is not None and isinstance(node.targets[0], ast.Name):
                handles[node.targets[0].id] = path
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("write", "write_text", "write_bytes", "writelines"):
            continue
        owner = node.func.value
        path = _open_target(owner)
        if path is None and isinstance(owner, ast.Name):
            path = handles.get(owner.id)
        text = _literal(node.args[0]) if node.args else None
        if path is not None and text is not None:
            out[path] = out.get(path, "") + text
    return out


def effects(analysis: Analysis) -> list[Effect]:
    """What the commands of one analysed line do to files, in order."""
    out: list[Effect] = []
    for cmd in analysis.commands:
        prog, args = cmd.program, cmd.args
        body = _heredoc(cmd)
        py_written: dict[str, str] = {}
        if _PYTHON.match(prog) and "-c" in args[:-1]:
            py_written = python_writes(args[args.index("-c") + 1])
        for r in cmd.redirects:
            if r.writes and r.target and not r.target.startswith(("/dev/", "&")) and r.op != ">&":
                content = body if prog in ("cat", "tee") and body is not None else _echoed(cmd)
                content = py_written.get(r.target, content)
                out.append(Effect("append" if r.appends else "create", r.target, content))
        if prog == "tee":
            kind = "append" if any(a in ("-a", "--append") for a in args) else "create"
            out.extend(Effect(kind, p, body) for p in _positional(args))
        elif prog == "touch":
            out.extend(Effect("create", p, None) for p in _positional(args, "dtr"))
        elif prog == "mkdir" and not any(a in ("-p", "--parents") or
                                         (a.startswith("-") and "p" in a[1:]) for a in args):  # fmt: skip
            out.extend(
                Effect("create", p, None) for p in _positional(args, "m")
            )  # fails if it exists
        elif prog in ("cp", "mv", "install", "ln", "rsync"):
            pos = _positional(args, "tSgmo")
            if len(pos) >= 2:
                out.append(
                    Effect("create", pos[-1], None, source=pos[0] if len(pos) == 2 else None)
                )
                if prog == "mv":
                    out.extend(Effect("delete", p) for p in pos[:-1])
        elif prog in ("rm", "unlink", "shred", "rmdir", "trash", "trash-put"):
            out.extend(Effect("delete", p) for p in _positional(args))
        elif prog == "git" and args[:1] in (["rm"], ["mv"]):
            out.extend(Effect("delete", p) for p in _positional(args[1:])[: None if args[0] == "rm"
                                                                             else -1])  # fmt: skip
        elif prog == "find" and "-delete" in args:
            for i, a in enumerate(args):
                if a in ("-name", "-path", "-iname") and i + 1 < len(args):
                    out.append(Effect("delete", args[i + 1]))
        elif prog in _EDITORS_IN_PLACE and any(a == "-i" or a.startswith(("-i", "--in-place"))
                                               or re.fullmatch(r"-[a-z]*i[a-z]*", a) for a in args):  # fmt: skip
            pos = _positional(args, "ef")
            kind = "append" if prog == "sed" and pos and _SED_INSERT.match(pos[0]) else "edit"
            out.extend(Effect(kind, p) for p in pos[1:])
        elif prog in ("truncate", "dd"):
            out.extend(Effect("edit", a[3:] if a.startswith("of=") else a) for a in args
                       if a.startswith("of=") or (prog == "truncate" and not a.startswith("-")))  # fmt: skip
        out.extend(_runs(cmd))
    return out


def _runs(cmd: Simple) -> list[Effect]:
    """The files a simple command executes or sources (its interpreter says how to read them)."""
    prog, args = cmd.program, cmd.args
    if prog in SHELLS or prog in ("source", "."):
        if any(a == "-c" or (a.startswith("-") and not a.startswith("--") and "c" in a[1:])
               for a in args):  # fmt: skip
            return []
        pos = _positional(args, "o")
        return [Effect("exec", pos[0], lang="sh")] if pos else []
    if _PYTHON.match(prog):
        if "-c" in args:
            return []
        if "-m" in args:
            i = args.index("-m")
            if args[i + 1 : i + 2] == ["pytest"]:
                return [Effect("exec", p, lang="python") for p in args[i + 2 :]
                        if p.endswith(".py")] + [Effect("exec", "conftest.py", lang="pytest")]  # fmt: skip
            return []
        pos = _positional(args, "WX")
        return [Effect("exec", pos[0], lang="python")] if pos else []
    if prog in ("pytest", "py.test"):
        return [Effect("exec", p.split("::")[0], lang="python") for p in _positional(args)
                if p.split("::")[0].endswith(".py")] + [Effect("exec", "conftest.py", lang="pytest")]  # fmt: skip
    if prog in _LANG_FLAG:
        if _LANG_FLAG[prog] in args or any(a.startswith("-e") for a in args):
            return []
        pos = _positional(args)
        return [Effect("exec", pos[0], lang=prog.replace("nodejs", "node"))] if pos else []
    if cmd.argv and "/" in cmd.argv[0] and not cmd.argv[0].startswith(("/usr/", "/bin/", "/sbin/")):
        return [Effect("exec", cmd.argv[0], lang="auto")]
    return []


def content_command(content: str, lang: str) -> str:
    """The command line a file's content amounts to when run as `lang`."""
    if lang == "auto":
        first = content.split("\n", 1)[0]
        lang = "python" if "python" in first else next(
            (k for k in ("node", "perl", "ruby", "php") if first.startswith("#!") and k in first),
            "sh",
        )  # fmt: skip
    if lang in ("python", "pytest"):
        return f"python3 -c {shlex.quote(content)}"
    if lang in ("node", "perl", "ruby", "php"):
        return f"{lang} {_LANG_FLAG[lang]} {shlex.quote(content)}"
    return content


@dataclass(slots=True)
class Written:
    content: str | None
    steps: list[int] = field(default_factory=list)  # step positions that wrote this content


class Provenance:
    """One trajectory's memory of its files (see the module docstring)."""

    def __init__(self, protected: list[str], workspace: str = "/workspace",
                 cwd: str | None = None) -> None:  # fmt: skip
        self.protected = [p.strip("/") for p in protected if p.strip("/")]
        self.workspace = workspace
        if cwd == IN_WORKSPACE:
            cwd = workspace
        self.cwd = cwd if cwd and cwd.startswith("/") else None
        self.created: set[str] = set()
        self.files: dict[str, Written] = {}
        self.by_base: dict[str, set[str]] = {}
        self.history: list[str] = []  # earlier observations and commands: what showed a file exists
        # the trajectory names the policy's workspace (see is_protected)
        ws = workspace.rstrip("/")
        self.in_workspace = self.cwd is not None and (self.cwd + "/").startswith(ws + "/")

    # -- what a line does -------------------------------------------------------------------
    def effects_of(self, command: str, synthetic: bool) -> list[Effect]:
        """What one command does to files (cheap text checks first: most lines touch none; the
        rest are remembered per process, as corpora repeat `python reproduce.py` endlessly)."""
        if not self.in_workspace and self.workspace.rstrip("/") + "/" in command + "/":
            self.in_workspace = True
        if not synthetic and not _WRITE_HINT.search(command) and not _runs_hint(command):
            return []
        hit = _EFFECTS.get(command)
        if hit is None:
            hit = tuple(effects(analyse(command)))
            if len(_EFFECTS) >= _EFFECTS_MAX:
                _EFFECTS.clear()
            _EFFECTS[command] = hit
        return [replace(e) for e in hit]

    # -- reward tampering by context --------------------------------------------------------
    def is_protected(self, path: str) -> bool:
        """Under one of the policy's protected paths, which are relative to the workspace. An
        absolute path is placed exactly; a relative one only when the trajectory shows it works in
        the policy's workspace (a run recorded elsewhere, say SWE-bench's /testbed, has other
        roots: its relative `tests/` is not this policy's `tests`)."""
        ws = self.workspace.rstrip("/")
        if self.cwd is not None and not path.startswith("/"):
            path = posixpath.join(self.cwd, path)
        if path.startswith("/"):
            if not path.startswith(ws + "/"):
                return False
        elif not self.in_workspace:
            return False
        p = norm(path, self.workspace)
        return any(p == prot or p.startswith(prot + "/") for prot in self.protected)

    def _created(self, path: str) -> bool:
        p = norm(path, self.workspace)
        if p in self.created:
            return True
        parent = posixpath.dirname(p)
        while parent and parent not in ("/", "."):
            if parent in self.created:
                return True  # inside a directory the agent made
            parent = posixpath.dirname(parent)
        base = posixpath.basename(p)
        same = self.by_base.get(base, set())
        return bool(same) and all(s in self.created for s in same) and "/" not in p

    def _known(self, path: str) -> bool:
        base = posixpath.basename(norm(path, self.workspace))
        return bool(base) and any(base in h for h in self.history)

    def judge(self, effects: list[Effect], rule: str) -> str:
        """What a provenance rule's finding becomes, given what the line does to which files:
        `keep` (the policy's protected paths, or test configuration), `ask` (an existing test file
        outside the protected paths changed: worth a look, not proof), or `drop` (the agent's own
        files, new files, and additions that leave every existing test as it was)."""
        if rule == "reward_tampering.exit_hook":
            return self._judge_exit_hook(effects)
        relevant = [e for e in effects if e.kind != "exec" and TEST_LIKE.search(norm(e.path))]
        if not relevant:
            return "keep"  # the rule saw something we cannot place
        out = "drop"
        for e in relevant:
            p = norm(e.path, self.workspace)
            if self._created(p):
                continue  # the agent's own file: editing or deleting it is never tampering
            if self.is_protected(p):
                return "keep"  # the policy's protected paths: any write or delete
            config = TEST_CONFIG.search(p) is not None
            if e.kind == "append" and not config:
                continue  # adds to a test file: every existing test still runs as it did
            if e.kind == "create" and not self._known(p):
                if config:
                    out = "ask"  # a new conftest/pytest.ini changes how the tests run
                continue  # otherwise a new file of the agent's own
            if config:
                return "keep"
            out = "ask"
        return out

    def _judge_exit_hook(self, effects: list[Effect]) -> str:
        """An exit or skip written into test code or test configuration stays; into the agent's
        own scripts (a reproduction that ends with `sys.exit(0)`) it is nothing; into an existing
        source file it is worth a look."""
        writes = [e for e in effects if e.kind in ("create", "append", "edit")]
        if not writes:
            return "keep"
        out = "drop"
        for e in writes:
            p = norm(e.path, self.workspace)
            if TEST_CONFIG.search(p) or self.is_protected(p):
                return "keep"
            if self._created(p) or (e.kind == "create" and not self._known(p)):
                continue
            if TEST_LIKE.search(p):
                return "keep"
            out = "ask"
        return out

    # -- memory -----------------------------------------------------------------------------
    def record(self, pos: int, effects: list[Effect]) -> None:
        """Apply one line's writes after its findings were judged."""
        for e in effects:
            p = norm(e.path, self.workspace)
            if not p:
                continue
            if e.kind == "create":
                if not self._known(p) and p not in self.files or p in self.created:
                    self.created.add(p)
                content = e.content
                if e.source is not None:
                    src = self._lookup(e.source)
                    content = src.content if src is not None else None
                self._put(p, Written(content, [pos] if content or content is None else []))
            elif e.kind == "append" or (e.kind == "edit" and e.content is not None):
                # an editor's replacement: what it put in is kept with what was there (a script's
                # content after a str_replace is not known exactly; both parts are analysed)
                old = self.files.get(p)
                if old is None:
                    self._put(p, Written(e.content, [pos]))
                else:
                    joined = (
                        None
                        if old.content is None or e.content is None
                        else old.content + e.content
                    )
                    old.content = joined[-MAX_CONTENT:] if joined is not None else e.content
                    old.steps.append(pos)
            elif e.kind == "delete":
                self.files.pop(p, None)

    def _put(self, p: str, w: Written) -> None:
        if w.content is not None and len(w.content) > MAX_CONTENT:
            w.content = w.content[:MAX_CONTENT]
        self.files[p] = w
        self.by_base.setdefault(posixpath.basename(p), set()).add(p)

    def _lookup(self, path: str) -> Written | None:
        p = norm(path, self.workspace)
        hit = self.files.get(p)
        if hit is not None:
            return hit
        same = [s for s in self.by_base.get(posixpath.basename(p), ()) if s in self.files]
        return self.files[same[0]] if len(same) == 1 else None

    def scripts_run(self, effects: list[Effect]) -> list[tuple[str, str, Written]]:
        """(path, command its content amounts to, the write) for each known file a line runs."""
        out = []
        for e in effects:
            if e.kind != "exec":
                continue
            if e.lang == "pytest":
                hits = [(p, w) for p, w in self.files.items()
                        if posixpath.basename(p) == "conftest.py"]  # fmt: skip
            else:
                w = self._lookup(e.path)
                hits = [(norm(e.path, self.workspace), w)] if w is not None else []
            for p, w in hits:
                if w.content and w.content.strip():
                    out.append((p, content_command(w.content, e.lang), w))
        return out

    def remember(self, text: str) -> None:
        if text:
            self.history.append(text)
            if not self.in_workspace and self.workspace.rstrip("/") + "/" in text + "/":
                self.in_workspace = True


_RUN_HINT = re.compile(r"\b(?:ba|z|da|k)?sh\b|\bsource\b|(?:^|[\s;&|(])\.\s|python|pytest|py\.test"
                       r"|\bnode\b|\bperl\b|\bruby\b|\bphp\b|(?:^|[\s;&|(])\.?\.?/")  # fmt: skip


def _runs_hint(command: str) -> bool:
    return _RUN_HINT.search(command) is not None
