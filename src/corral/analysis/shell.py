"""Shell command lines to flat `Command`s, on tree-sitter-bash, undoing the usual obfuscations.

Why a walker of our own over the syntax tree: the rules need argv as bash would build it (quotes
removed, `$IFS` split, variables set earlier in the line substituted) and every command a line runs,
including those inside `$(...)`, `<(...)`, `bash -c`, `eval`, decoded base64, wrappers and script
one-liners. Input that does not parse is walked as far as the tree goes and flagged; nothing here
raises on any input.
"""

from __future__ import annotations

import posixpath
import re
import threading

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

from corral.analysis.decode import PRODUCERS, looks_like_text, produce, unescape_c
from corral.analysis.model import Analysis, Command, Redirect
from corral.analysis.scripts import ScriptFacts, python_facts, regex_facts
from corral.analysis.wrappers import may_wrap, unwrap

LANGUAGE = Language(tree_sitter_bash.language())
MAX_INPUT = 100_000  # characters analysed per command line
MAX_DEPTH = 8  # nested bash -c / eval / decode levels
MAX_NODES = 50_000  # syntax nodes visited per line
MAX_NEST = 150  # syntax nesting depth walked

SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "ash", "mksh", "fish", "busybox", "rbash",
                    "tcsh", "csh", "yash", "pdksh"})  # fmt: skip
_PYTHON_RE = re.compile(r"^(?:python|pypy)(?:\d+(?:\.\d+)?)?$")
_SCRIPT_LANGS = {"perl": "perl", "ruby": "ruby", "node": "node", "nodejs": "node", "deno": "node",
                 "bun": "node", "php": "php", "lua": "lua", "awk": "awk", "gawk": "awk",
                 "mawk": "awk", "nawk": "awk", "irb": "ruby"}  # fmt: skip
_SCRIPT_FLAGS = {"perl": ("-e", "-E"), "ruby": ("-e",), "node": ("-e", "--eval", "-p", "--print"),
                 "php": ("-r",), "lua": ("-e",)}  # fmt: skip
DOWNLOADERS = frozenset({"curl", "wget", "fetch", "aria2c", "lwp-download", "lynx", "http",
                         "https", "xh", "curlie", "invoke-webrequest", "iwr", "nc", "ncat",
                         "netcat", "socat", "tftp", "ftp", "scp", "rsync", "busybox"})  # fmt: skip
_DECODERS = frozenset({"base64", "base32", "basenc", "openssl", "xxd", "rev", "gunzip", "zcat",
                       "gzip", "bunzip2", "bzcat", "bzip2", "xz", "unxz", "xzcat", "zlib-flate",
                       "tr"})  # fmt: skip
_SPLIT_RE = re.compile(r"[ \t\n]+")
_BACKSLASH_RE = re.compile(r"\\(.)", re.S)
_DQ_ESC_RE = re.compile(r'\\([$`"\\\n])')
_EXPANSION_RE = re.compile(
    r"^\$\{(#?)([A-Za-z_][A-Za-z0-9_]*|[0-9]+|[@*#?$!-])(?:(:?[-=+?]|[%#/^,]{1,2}|:)(.*))?\}$", re.S
)
_OUTPUT_OPS = (">", ">>", "&>", "&>>", ">&", ">|", "<>")

_local = threading.local()


def _parser() -> Parser:
    p = getattr(_local, "parser", None)
    if p is None:
        p = _local.parser = Parser(LANGUAGE)
    return p


class _Ctx:
    __slots__ = ("out", "flags", "decoded", "vars", "depth", "origin", "nodes", "in_loop",
                 "pipe_from", "pipe_to", "src", "nest", "procsubs", "pending", "extra_args")  # fmt: skip

    def __init__(self, analysis: Analysis, src: bytes, depth: int, origin: str,
                 vars: dict[str, str] | None = None) -> None:  # fmt: skip
        self.out = analysis.commands
        self.flags = analysis.flags
        self.decoded = analysis.decoded
        self.vars: dict[str, str] = vars if vars is not None else {}
        self.depth = depth
        self.origin = origin
        self.nodes = 0
        self.in_loop = False
        self.pipe_from: list[str] = []
        self.pipe_to: list[str] = []
        self.src = src
        self.nest = 0
        self.procsubs: list[str] = []
        self.pending: set[str] = set()
        self.extra_args: list[str] = []


def analyse(command: str) -> Analysis:
    """All simple commands `command` would run, de-obfuscated; never raises on any input."""
    if not isinstance(command, str):
        command = str(command)
    analysis = Analysis(source=command)
    if len(command) > MAX_INPUT:
        command = command[:MAX_INPUT]
        analysis.flags.add("truncated")
    try:
        if not _fast(command, analysis):
            _script(command, analysis, 0, "shell", {})
    except RecursionError:
        analysis.flags.add("too_deep")
    _mark_downloaded_runs(analysis.commands)
    return analysis


# A fast path for the commonest lines: plain words, '...' and "..." without expansions, joined by
# `|`, `&&`, `||` and `;`. bash reads these exactly as split here, so the parser is skipped; anything
# else (redirections, `$`, backslashes, grouping, comments, keywords, assignments) takes the parser.
# Every repeat below is unambiguous (a name runs to its end, a run of plain characters is one step),
# so the regex never backtracks more than linearly; an unclosed `"$a$a$a...` took exponential time
# when a variable name could end anywhere inside itself.
_FAST_VAR = (
    r"""\$(?:[A-Za-z_][A-Za-z0-9_]*(?![A-Za-z0-9_])|\{[A-Za-z_][A-Za-z0-9_]*\}|[0-9@*#?$!])"""
)
_FAST_DQ = r"""[^"$`\\!]*"""  # inside "...": anything but the end, expansions, escapes, history
_FAST_TOKEN = re.compile(
    r"""[ \t]*(?:(\|\||&&|;|\|)"""
    r"""|(\d?)(>>|>\||>&|<&|&>>|&>|>|<)[ \t]*"""
    r"""|((?:[A-Za-z0-9_./:@%+,=\-^~*?]+|\{\}|\\[^\n]|'[^']*'|"""
    + '"'
    + _FAST_DQ
    + "(?:"
    + _FAST_VAR
    + _FAST_DQ
    + r""")*"|"""
    + _FAST_VAR
    + r""")+))"""
)
_PLAIN_WORDS = r"[A-Za-z0-9_./:@%+,=\-^~*?]+(?:[ \t]+[A-Za-z0-9_./:@%+,=\-^~*?]+)*"
_OP = r"[ \t]*(\|\||&&|;|\|)[ \t]*"  # as the token loop reads them: `||` before `|`
_PLAIN_LINE = re.compile(rf"[ \t]*{_PLAIN_WORDS}(?:{_OP}{_PLAIN_WORDS})*[ \t]*")
_OP_SPLIT = re.compile(_OP)
_FAST_UNQUOTE = re.compile(r"'([^']*)'|\"([^\"]*)\"|\\([^\n])")
_RESERVED = frozenset({"if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done",
                       "case", "esac", "function", "select", "time", "in", "coproc", "!", "{",
                       "}", "[[", "]]", "export", "declare", "local", "readonly", "typeset",
                       "unset"})  # fmt: skip


def _fast(command: str, analysis: Analysis) -> bool:
    """Analyse a line of plain words, simple redirections, pipes and lists without the parser;
    False when it is not one (nothing is recorded then)."""
    # list items -> pipeline stages -> (words, redirects)
    lists: list[list[tuple[list[str], list[Redirect]]]]
    dynamic = False
    if _PLAIN_LINE.fullmatch(command) is not None:
        # the commonest lines: plain words joined by `|`, `&&`, `||`, `;` (no quotes, `$` or
        # redirections); the token loop below would make the same of them, word by word
        if "|" in command or "&" in command or ";" in command:
            parts = _OP_SPLIT.split(command.strip(" \t"))
            lists = [[(parts[0].split(), [])]]
            for k in range(1, len(parts), 2):
                if parts[k] == "|":
                    lists[-1].append((parts[k + 1].split(), []))
                else:
                    lists.append([(parts[k + 1].split(), [])])
        else:
            lists = [[(command.split(), [])]]
    else:
        lists = [[([], [])]]
        pending: tuple[str, str] | None = None  # a redirection waiting for its target
        dynamic = "$" in command
        if dynamic and "IFS" in command:
            return False
        pos, end = 0, len(command.rstrip(" \t"))
        while pos < end:
            m = _FAST_TOKEN.match(command, pos)
            if m is None:
                return False
            pos = m.end()
            op, fd, rop, word = m.groups()
            if pending is not None and not word:
                return False
            if word:
                if "'" in word or '"' in word or "\\" in word:
                    word = _FAST_UNQUOTE.sub(
                        lambda q: next(g for g in q.groups() if g is not None), word
                    )
                if pending is not None:
                    lists[-1][-1][1].append(Redirect(pending[1], word, pending[0] or None))
                    pending = None
                else:
                    lists[-1][-1][0].append(word)
            elif rop:
                pending = (fd, rop)
            elif op == "|":
                lists[-1].append(([], []))
            else:
                lists.append([([], [])])
        if pending is not None:
            return False
    if len(lists) > 1 and lists[-1] == [([], [])]:
        lists.pop()  # a trailing `;`
    for stages in lists:
        for words, _ in stages:
            if not words or words[0] in _RESERVED or "=" in words[0]:
                return False
    if len(lists) == 1 and len(lists[0]) == 1:  # one command
        words, reds = lists[0][0]
        cmd = Command(argv=words, redirects=reds, dynamic=dynamic and any("$" in w for w in words))
        plain = _PLAIN.get(cmd.program)
        if plain is None:
            plain = _plain(cmd.program)
        if plain:  # all `_emit` would do is record it
            analysis.commands.append(cmd)
            return True
    ctx = _Ctx(analysis, b"", 0, "shell", {})
    for stages in lists:
        names = [w[0].rsplit("/", 1)[-1].lower() for w, _ in stages]  # basenames
        out: bytes | None = None
        for i, (words, reds) in enumerate(stages):
            cmd = Command(argv=words, redirects=reds, pipe_from=names[:i], pipe_to=names[i + 1 :],
                          dynamic=dynamic and any("$" in w for w in words))  # fmt: skip
            ctx.pipe_from, ctx.pipe_to = cmd.pipe_from, cmd.pipe_to
            out = _emit(cmd, ctx, out)
    return True


_EXEC_MODE_RE = re.compile(
    r"^(?:[ugoa]*\+[rwXst]*x[rwXst]*|[0-7]?[1357][0-7]{2}|[0-7]?[0-7][1357][0-7]|[0-7]?[0-7]{2}[1357])$"
)
_RUNNERS = SHELLS | {"source", ".", "python", "python3", "perl", "ruby", "node", "php"}


def _download_targets(cmd: Command) -> set[str]:
    """Basenames of files a curl/wget/aria2c command writes."""
    prog, args = cmd.program, cmd.argv[1:]
    out: set[str] = set()
    if prog not in ("curl", "wget", "aria2c", "fetch", "lwp-download"):
        return out
    urls = [a for a in args if "://" in a]
    for i, a in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else ""
        if prog in ("curl", "aria2c") and a in ("-o", "--output", "--out"):
            out.add(nxt)
        elif prog == "curl" and a.startswith("-o") and len(a) > 2 and not a.startswith("--"):
            out.add(a[2:])
        elif prog == "wget" and a in ("-O", "--output-document"):
            out.add(nxt)
        elif prog == "wget" and a.startswith("--output-document="):
            out.add(a.split("=", 1)[1])
        elif prog == "wget" and a.startswith("-O") and len(a) > 2:
            out.add(a[2:])
    if prog == "wget" and not out or prog == "curl" and any(
        a in ("-O", "--remote-name", "--remote-name-all") or re.fullmatch(r"-[a-zA-Z]*O[a-zA-Z]*", a)
        for a in args
    ):  # fmt: skip
        for u in urls:
            path = u.split("?", 1)[0].split("#", 1)[0].rstrip("/")
            if path.count("/") >= 3:
                out.add(path.rsplit("/", 1)[1])
    for r in cmd.redirects:
        if r.writes and not r.target.startswith("/dev/"):
            out.add(r.target)
    return {posixpath.basename(p) for p in out if p and p != "-"}


def _mark_downloaded_runs(commands: list[Command]) -> None:
    """`curl -o x URL && chmod +x x && ./x`: the later commands act on a downloaded file."""
    fetched: set[str] = set()
    for cmd in commands:
        if fetched and cmd.argv:
            base = posixpath.basename(cmd.argv[0])
            prog = cmd.program
            if (
                base in fetched
                and cmd.argv[0] not in ("curl", "wget")
                or prog == "chmod"
                and any(_EXEC_MODE_RE.match(a) for a in cmd.argv[1:])
                and any(posixpath.basename(a) in fetched for a in cmd.argv[1:])
            ):
                cmd.facts.add("exec_downloaded")
            elif prog in _RUNNERS or _PYTHON_RE.match(prog):
                pos = [a for a in cmd.argv[1:] if not a.startswith("-")]
                if pos and posixpath.basename(pos[0]) in fetched:
                    cmd.facts.add("exec_downloaded")
        if cmd.program in ("curl", "wget", "aria2c", "fetch", "lwp-download"):
            fetched |= _download_targets(cmd)


def _script(text: str, analysis: Analysis, depth: int, origin: str, vars: dict[str, str]) -> None:
    if depth > MAX_DEPTH:
        analysis.flags.add("too_deep")
        return
    src = text.encode("utf-8", "surrogateescape")
    tree = _parser().parse(src)
    root = tree.root_node
    if root.has_error:
        analysis.flags.add("parse_error")
    ctx = _Ctx(analysis, src, depth, origin, vars)
    _stmt(root, ctx)


def _sub_script(text: str, ctx: _Ctx, origin: str, share_vars: bool = False) -> None:
    analysis = Analysis(source="")
    analysis.commands = ctx.out
    analysis.flags = ctx.flags
    analysis.decoded = ctx.decoded
    vars = ctx.vars if share_vars else dict(ctx.vars)
    _script(text, analysis, ctx.depth + 1, origin, vars)


def _text(node: Node, ctx: _Ctx) -> str:
    return ctx.src[node.start_byte : node.end_byte].decode("utf-8", "surrogateescape")


# ------------------------------------------------------------------------ statements
def _stmt(node: Node, ctx: _Ctx, stdin: bytes | None = None,
          redirects: list[Redirect] | None = None) -> bytes | None:  # fmt: skip
    """Walk one statement, emitting its commands; return its stdout when that is a known literal."""
    ctx.nodes += 1
    if ctx.nodes > MAX_NODES:
        ctx.flags.add("truncated")
        return None
    if ctx.nest > MAX_NEST:
        ctx.flags.add("too_deep")
        return None
    ctx.nest += 1
    try:
        return _stmt_inner(node, ctx, stdin, redirects)
    finally:
        ctx.nest -= 1


def _stmt_inner(node: Node, ctx: _Ctx, stdin: bytes | None,
                redirects: list[Redirect] | None) -> bytes | None:  # fmt: skip
    t = node.type
    if t == "command":
        return _command(node, ctx, stdin, redirects or [])
    if t == "pipeline":
        return _pipeline([c for c in node.named_children if c.type != "comment"], ctx, stdin,
                         redirects)  # fmt: skip
    if t == "redirected_statement":
        return _redirected(node, ctx, stdin, redirects)
    if t == "variable_assignment":
        _assign(node, ctx, ctx.vars)
        return None
    if t == "declaration_command":
        for c in node.named_children:
            if c.type == "variable_assignment":
                _assign(c, ctx, ctx.vars)
            else:
                _words(c, ctx)
        return None
    if t == "unset_command":
        for c in node.named_children:
            ctx.vars.pop(_text(c, ctx), None)
        return None
    if t in ("for_statement", "c_style_for_statement", "while_statement", "until_statement",
             "select_statement"):  # fmt: skip
        was = ctx.in_loop
        if t == "for_statement":
            var = node.child_by_field_name("variable")
            if var is not None:
                ctx.vars.pop(_text(var, ctx), None)
                # `for h in 10.0.0.{1..254}`: the variable stands for the whole address range, so
                # `curl http://$h:8080` in the body reads as the sweep it is
                items = " ".join(_text(c, ctx) for c in node.named_children
                                 if c.type not in ("do_group", "compound_statement", "variable_name",
                                                   "comment"))  # fmt: skip
                if _ADDRESS_RANGE.fullmatch(items.strip()):
                    ctx.vars[_text(var, ctx)] = items.strip()
        for c in node.named_children:
            if c.type in ("do_group", "compound_statement"):
                ctx.in_loop = True
                _stmt(c, ctx)
                ctx.in_loop = was
            elif c.type not in ("variable_name", "comment"):
                if c.type in ("command_substitution", "process_substitution", "string",
                              "concatenation", "expansion", "simple_expansion", "word"):  # fmt: skip
                    _words(c, ctx)
                else:
                    _stmt(c, ctx)
        return None
    if t in ("word", "string", "raw_string", "concatenation", "number", "simple_expansion",
             "expansion", "ansi_c_string", "arithmetic_expansion", "variable_name",
             "special_variable_name", "comment", "heredoc_body", "heredoc_start", "heredoc_end",
             "test_operator", "regex", "extglob_pattern", "file_descriptor", "string_content"):  # fmt: skip
        if t in ("command_substitution", "string", "concatenation", "expansion"):
            _words(node, ctx)
        return None
    if t in ("command_substitution", "process_substitution"):
        _substitution(node, ctx)
        return None
    if t == "function_definition":
        _function(node, ctx)
        return None
    if t == "ERROR":
        ctx.flags.add("parse_error")
        _error_node(node, ctx)
        return None
    last: bytes | None = None
    saved_vars = ctx.vars
    if t == "subshell":  # assignments in ( ... ) stay there
        ctx.vars = dict(saved_vars)
    kids = node.named_children
    for i, c in enumerate(kids):
        # `a && b > f`: tree-sitter hangs the redirection on the list; it is the last command's
        last = _stmt(c, ctx, None, redirects if t == "list" and i == len(kids) - 1 else None)
    ctx.vars = saved_vars
    if t in ("subshell", "compound_statement") and len(node.named_children) == 1:
        return last
    return None


def _function(node: Node, ctx: _Ctx) -> None:
    """Walk a function's body (it is probably called); a body that pipes the function into itself
    in the background is a fork bomb."""
    name_node = node.child_by_field_name("name")
    body = node.child_by_field_name("body")
    if body is None:
        return
    if name_node is not None:
        name = _text(name_node, ctx)
        pat = re.escape(name)
        if re.search(rf"(?:^|[^\w]){pat}\s*\|\s*{pat}\s*&", _text(body, ctx)):
            bomb = Command(argv=[name], origin=ctx.origin, depth=ctx.depth, facts={"fork_bomb"})
            ctx.out.append(bomb)
    _stmt(body, ctx)


def _error_node(node: Node, ctx: _Ctx) -> None:
    """Broken input: words in a row are taken as a command, statements inside are walked."""
    run: list[Node] = []
    for c in node.named_children:
        if c.type in ("word", "string", "raw_string", "concatenation", "simple_expansion",
                      "expansion", "number", "command_name", "ansi_c_string"):  # fmt: skip
            run.append(c)
            continue
        if run:
            _emit_words(run, ctx)
            run = []
        _stmt(c, ctx)
    if run:
        _emit_words(run, ctx)


def _emit_words(nodes: list[Node], ctx: _Ctx) -> None:
    argv: list[str] = []
    dynamic = False
    for n in nodes:
        words, dyn = _word(n, ctx)
        argv.extend(words)
        dynamic |= dyn
    if argv:
        cmd = Command(argv=argv, origin=ctx.origin, depth=ctx.depth, dynamic=dynamic)
        cmd.facts.add("from_parse_error")
        _emit(cmd, ctx, None)


def _flatten(stages: list[Node]) -> list[tuple[Node, list[Node]]]:
    """`a | b 2>&1 | c` parses as ((a | b) 2>&1) | c: flatten it back into one pipeline, the
    redirect going to the stage it belongs to."""
    out: list[tuple[Node, list[Node]]] = []
    for st in stages:
        if st.type == "redirected_statement" and st.named_children:
            body = st.named_children[0]
            rest = st.named_children[1:]
            if body.type == "pipeline" and all(r.type == "file_redirect" for r in rest):
                inner = _flatten([c for c in body.named_children if c.type != "comment"])
                if inner:
                    last, reds = inner[-1]
                    inner[-1] = (last, reds + list(rest))
                    out.extend(inner)
                    continue
        out.append((st, []))
    return out


def _pipeline(stages: list[Node], ctx: _Ctx, stdin: bytes | None,
              redirects: list[Redirect] | None, before: list[str] | None = None) -> bytes | None:  # fmt: skip
    flat = _flatten(stages)
    names = (before or []) + [_stage_name(s, ctx) for s, _ in flat]
    skip = len(before or [])
    out = stdin
    saved = ctx.pipe_from, ctx.pipe_to
    ins = [r for r in redirects or [] if r.op not in _OUTPUT_OPS]
    outs = [r for r in redirects or [] if r.op in _OUTPUT_OPS]
    for i, (stage, extra) in enumerate(flat):
        ctx.pipe_from = names[: skip + i]
        ctx.pipe_to = names[skip + i + 1 :]
        reds = [_file_redirect(r, ctx) for r in extra]
        reds += (ins if i == 0 else []) + (outs if i == len(flat) - 1 else [])
        out = _stmt(stage, ctx, out, reds or None)
    ctx.pipe_from, ctx.pipe_to = saved
    return out


def _stage_name(node: Node, ctx: _Ctx) -> str:
    while node.type == "redirected_statement" and node.named_children:
        node = node.named_children[0]
    if node.type != "command":
        return node.type
    name = node.child_by_field_name("name")
    if name is None:
        return ""
    words, _ = _word(name.named_children[0] if name.named_children else name, ctx, emit=False)
    return posixpath.basename(words[0]).lower() if words else ""


def _redirected(node: Node, ctx: _Ctx, stdin: bytes | None,
                outer: list[Redirect] | None) -> bytes | None:  # fmt: skip
    body: Node | None = None
    reds: list[Redirect] = list(outer or [])
    tails: list[Node] = []
    extra: list[str] = []
    for c in node.named_children:
        t = c.type
        if t == "file_redirect":
            reds.append(_file_redirect(c, ctx, extra))
        elif t == "heredoc_redirect":
            body_text = ""
            for h in c.named_children:
                if h.type == "heredoc_body":
                    body_text = _text(h, ctx)
                elif h.type == "file_redirect":  # `cat <<'EOF' > f`: the grammar nests `> f` here
                    reds.append(_file_redirect(h, ctx, extra))
                elif h.type not in ("heredoc_start", "heredoc_end"):
                    tails.append(h)
            stdin = body_text.encode("utf-8", "surrogateescape")
            reds.append(Redirect("<<", body_text[:8192]))
        elif t == "herestring_redirect":
            words = [w for n in c.named_children for w in _word(n, ctx)[0]]
            stdin = (" ".join(words) + "\n").encode("utf-8", "surrogateescape")
            reds.append(Redirect("<<<", " ".join(words)))
        elif body is None:
            body = c
        else:
            tails.append(c)
    if extra and body is not None and body.type == "command":
        ctx.extra_args = extra
    out = _stmt(body, ctx, stdin, reds) if body is not None else None
    ctx.extra_args = []
    for tail in tails:
        if tail.type == "pipeline":
            stages = [s for s in tail.named_children if s.type != "comment"]
            saved = ctx.pipe_from
            ctx.pipe_from = [_stage_name(body, ctx)] if body is not None else []
            out = _pipeline(stages, ctx, out, None, ctx.pipe_from)
            ctx.pipe_from = saved
        else:
            out = _stmt(tail, ctx)
    return out


def _file_redirect(node: Node, ctx: _Ctx, extra: list[str] | None = None) -> Redirect:
    """One redirection. tree-sitter hangs the words after a redirection's target on the
    redirection (`ssh > /dev/null -R ... host`); bash passes them as arguments, so they go to
    `extra` for the command to take back."""
    op = ""
    fd: str | None = None
    targets: list[str] = []
    for c in node.children:
        if not c.is_named:
            op = op or c.type
        elif c.type == "ERROR":  # `<>` is not in the grammar: `<` then an ERROR `>`
            if op == "<" and _text(c, ctx).strip() == ">":
                op = "<>"
        elif c.type == "file_descriptor" and not op:
            fd = _text(c, ctx)
        elif not targets:
            targets.extend(_word(c, ctx)[0])
        elif extra is not None and not (c.type == "number" and c.end_byte < node.end_byte
                                         and ctx.src[c.end_byte : c.end_byte + 1] in (b">", b"<")):  # fmt: skip
            extra.extend(_word(c, ctx)[0])
    return Redirect(op or ">", " ".join(targets[:1]), fd)


def _assign(node: Node, ctx: _Ctx, into: dict[str, str]) -> None:
    name_node = node.child_by_field_name("name")
    value_node = node.child_by_field_name("value")
    if name_node is None:
        return
    name = _text(name_node, ctx)
    if value_node is None:
        into[name] = ""
        return
    if value_node.type == "array":
        _words(value_node, ctx)
        return
    words, _ = _word(value_node, ctx, split=False)
    into[name] = " ".join(words)


def _substitution(node: Node, ctx: _Ctx) -> bytes | None:
    """Walk `$(...)`, backticks or `<(...)`; return their output when it is a literal."""
    inner = [c for c in node.named_children if c.type != "comment"]
    saved = ctx.pipe_from, ctx.pipe_to, ctx.vars
    ctx.pipe_from, ctx.pipe_to = [], []
    ctx.vars = dict(ctx.vars)  # a subshell's assignments stay in it
    out: bytes | None = None
    for c in inner:
        out = _stmt(c, ctx)
    if len(inner) != 1:
        out = None
    ctx.pipe_from, ctx.pipe_to, ctx.vars = saved
    return out


# ------------------------------------------------------------------------ words
def _words(node: Node, ctx: _Ctx) -> list[str]:
    out: list[str] = []
    for c in node.named_children if node.type == "array" else [node]:
        out.extend(_word(c, ctx)[0])
    return out


def _word(node: Node, ctx: _Ctx, split: bool = True, emit: bool = True) -> tuple[list[str], bool]:
    """The fields one word expands to, and whether any part of it was not a literal."""
    if node.type == "word":  # the commonest by far: a literal without escapes is itself
        text = _text(node, ctx)
        if "\\" not in text:
            return [text], False
    segs: list[tuple[str, bool]] = []
    dyn = _segments(node, ctx, segs, False, emit)
    if not split or not any(s for _, s in segs):
        return ["".join(t for t, _ in segs)], dyn
    fields: list[str] = []
    cur = ""
    for text, splittable in segs:
        if not splittable:
            cur += text
            continue
        parts = _SPLIT_RE.split(text)
        cur += parts[0]
        for p in parts[1:]:
            if cur:
                fields.append(cur)
            cur = p
    if cur:
        fields.append(cur)
    return fields, dyn


def _segments(node: Node, ctx: _Ctx, segs: list[tuple[str, bool]], quoted: bool,
              emit: bool) -> bool:  # fmt: skip
    t = node.type
    if t == "word" or t == "number":
        text = _text(node, ctx)
        if "\\" in text:
            text = _BACKSLASH_RE.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), text)
        segs.append((text, False))
        return False
    if t == "raw_string":
        segs.append((_text(node, ctx)[1:-1], False))
        return False
    if t == "ansi_c_string":
        segs.append((unescape_c(_text(node, ctx)[2:-1]), False))
        return False
    if t in ("string", "translated_string"):
        dyn = False
        pos = node.start_byte + (2 if t == "translated_string" else 1)
        end = node.end_byte - 1
        for c in node.named_children:
            if c.start_byte > pos:
                segs.append((_dq(ctx.src[pos : c.start_byte].decode("utf-8", "surrogateescape")),
                             False))  # fmt: skip
            if c.type == "string_content":
                segs.append((_dq(_text(c, ctx)), False))
            else:
                dyn |= _segments(c, ctx, segs, True, emit)
            pos = c.end_byte
        if end > pos:
            segs.append((_dq(ctx.src[pos:end].decode("utf-8", "surrogateescape")), False))
        return dyn
    if t == "concatenation":
        dyn = False
        pos = node.start_byte
        for c in node.children:
            if c.start_byte > pos:
                segs.append((ctx.src[pos : c.start_byte].decode("utf-8", "surrogateescape"), False))
            dyn |= _segments(c, ctx, segs, quoted, emit)
            pos = c.end_byte
        return dyn
    if t == "simple_expansion":
        name = _text(node, ctx)[1:]
        return _lookup(name, None, None, node, ctx, segs, quoted)
    if t == "expansion":
        m = _EXPANSION_RE.match(_text(node, ctx))
        if m and not m.group(1):
            return _lookup(m.group(2), m.group(3), m.group(4), node, ctx, segs, quoted)
        segs.append((_text(node, ctx), False))
        return True
    if t in ("command_substitution", "process_substitution"):
        if not emit:
            segs.append((_text(node, ctx), False))
            return True
        first = len(ctx.out)
        out = _substitution(node, ctx)
        if any(c.program in DOWNLOADERS for c in ctx.out[first:]):
            ctx.pending.add(
                "procsub_download" if t == "process_substitution" else "cmdsub_download"
            )
        if t == "process_substitution":
            segs.append(("/dev/fd/63", False))
            if out is not None and looks_like_text(out):
                ctx.decoded.append(out.decode("utf-8", "replace"))
                ctx.procsubs.append(out.decode("utf-8", "replace"))
            return True
        if out is not None and looks_like_text(out):
            segs.append((out.decode("utf-8", "replace").rstrip("\n"), not quoted))
            return False
        segs.append((_text(node, ctx), False))
        return True
    if t == "arithmetic_expansion":
        segs.append((_text(node, ctx), False))
        return True
    # anything else (brace expressions, globs, unexpected nodes): its source text
    segs.append((_text(node, ctx), False))
    return t not in ("brace_expression", "extglob_pattern")


def _dq(text: str) -> str:
    return (
        _DQ_ESC_RE.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), text)
        if "\\" in text
        else text
    )


def _lookup(name: str, op: str | None, arg: str | None, node: Node, ctx: _Ctx,
            segs: list[tuple[str, bool]], quoted: bool) -> bool:  # fmt: skip
    if name == "IFS" and name not in ctx.vars:
        segs.append((" ", not quoted))
        ctx.flags.add("ifs")
        return False
    value = ctx.vars.get(name)
    if value is not None and op in (None, ":-", "-", ":=", "=", ":?", "?"):
        segs.append((value, not quoted))
        ctx.flags.add("variable")
        return False
    if value is None and op in (":-", "-", ":=", "=") and arg is not None and "$" not in arg:
        segs.append((arg.strip("'\""), not quoted))
        return False
    if value is not None and op in ("%", "%%", "#", "##") and name == "IFS":
        segs.append((" ", not quoted))
        return False
    segs.append((_text(node, ctx), False))
    return True


# ------------------------------------------------------------------------ commands
def _command(node: Node, ctx: _Ctx, stdin: bytes | None, redirects: list[Redirect]) -> bytes | None:
    argv: list[str] = []
    env: dict[str, str] = {}
    dynamic = False
    reds = list(redirects)
    saved_ps, ctx.procsubs = ctx.procsubs, []
    saved_pending, ctx.pending = ctx.pending, set()
    extra, ctx.extra_args = ctx.extra_args, []
    for c in node.named_children:
        t = c.type
        if t == "variable_assignment":
            _assign(c, ctx, env)
        elif t == "command_name":
            for n in c.named_children or [c]:
                words, dyn = _word(n, ctx)
                argv.extend(words)
                dynamic |= dyn
        elif t == "file_redirect":
            reds.append(_file_redirect(c, ctx, extra))
        elif t == "herestring_redirect":
            words = [w for n in c.named_children for w in _word(n, ctx)[0]]
            stdin = (" ".join(words) + "\n").encode("utf-8", "surrogateescape")
            reds.append(Redirect("<<<", " ".join(words)))
        elif t in ("comment",):
            continue
        elif t == "subshell":  # tree-sitter's reading of `$(...)`-less `(` after words
            _stmt(c, ctx)
        else:
            words, dyn = _word(c, ctx)
            argv.extend(words)
            dynamic |= dyn
    procsubs, ctx.procsubs = ctx.procsubs, saved_ps
    pending, ctx.pending = ctx.pending, saved_pending
    argv.extend(extra)
    if not argv:
        ctx.vars.update(env)  # `A=b` alone on a line is an assignment
        return None
    cmd = Command(argv=argv, redirects=reds, origin=ctx.origin, depth=ctx.depth, dynamic=dynamic,
                  pipe_from=list(ctx.pipe_from), pipe_to=list(ctx.pipe_to), env=env)  # fmt: skip
    if procsubs:
        cmd.facts.add("procsub")
    cmd.facts |= pending
    return _emit(cmd, ctx, stdin, procsubs)


def _emit(cmd: Command, ctx: _Ctx, stdin: bytes | None,
          procsubs: list[str] | None = None) -> bytes | None:  # fmt: skip
    """Record `cmd` and everything it runs in turn; return its stdout when it is a literal."""
    if ctx.in_loop:
        cmd.facts.add("in_loop")
    prog = cmd.program
    ctx.out.append(cmd)
    if len(ctx.out) > 5000:
        ctx.flags.add("truncated")
        return None
    if cmd.pipe_from and any(p in DOWNLOADERS for p in cmd.pipe_from):
        cmd.facts.add("stdin_download")
    if prog in _EMBEDDING or (cmd.env and _EMBED_ENV.intersection(cmd.env)):
        for script in _embedded(cmd):
            _sub_script(script, ctx, f"{prog} option")
    plain = _PLAIN.get(prog)
    if plain is None:
        plain = _plain(prog)
    if plain:  # runs nothing more and writes nothing knowable: nothing left to do
        return None
    args = cmd.argv[1:]
    # scripts reached by this command -------------------------------------------------
    if prog in SHELLS or prog == "source" or prog == ".":
        _shell_command(cmd, ctx, stdin, procsubs or [])
    elif prog == "eval":
        ctx.flags.add("eval")
        if args:
            _sub_script(" ".join(args), ctx, "eval", share_vars=True)
    elif _PYTHON_RE.match(prog):
        _python_command(cmd, ctx, stdin, procsubs or [])
    elif prog in _SCRIPT_LANGS:
        _lang_command(cmd, _SCRIPT_LANGS[prog], ctx, stdin)
    else:
        inner = unwrap(cmd.argv)
        if inner is not None:
            sub = ctx.depth + 1
            if sub <= MAX_DEPTH:
                if inner.argv:
                    wrapped = Command(argv=inner.argv, redirects=cmd.redirects,
                                      origin=f"wrapper:{prog}", depth=sub, dynamic=cmd.dynamic,
                                      pipe_from=cmd.pipe_from, pipe_to=cmd.pipe_to,
                                      facts=set(cmd.facts))  # fmt: skip
                    saved = ctx.depth
                    ctx.depth = sub
                    out = _emit(wrapped, ctx, stdin, procsubs)
                    ctx.depth = saved
                    return out
                if inner.script:
                    _sub_script(inner.script, ctx, f"wrapper:{prog}")
            else:
                ctx.flags.add("too_deep")
    out = produce(prog, args, stdin)
    if out is not None and prog in _DECODERS:
        ctx.flags.add("decoded")
    return out


_PLAIN: dict[str, bool] = {}
_ADDRESS_RANGE = re.compile(r"(?:\d{1,3}\.){2,3}\{\d+\.\.\d+\}(?:\.\{\d+\.\.\d+\})?")
# Options and variables whose value is a command the program runs (`git -c core.sshCommand=...`,
# `rsync -e ...`, `ssh -o ProxyCommand=...`, `GIT_SSH_COMMAND=...`): the value is analysed too.
_EMBEDDING = frozenset({"git", "rsync", "ssh", "scp", "sftp", "autossh"})
_EMBED_ENV = frozenset({"GIT_SSH_COMMAND", "RSYNC_RSH", "GIT_PROXY_COMMAND", "GIT_SSH"})
_EMBED_OPT = re.compile(r"^(?:core\.sshcommand|core\.gitproxy|proxycommand|localcommand)[= ]",
                        re.IGNORECASE)  # fmt: skip


def _embedded(cmd: Command) -> list[str]:
    out = [cmd.env[k] for k in _EMBED_ENV.intersection(cmd.env or {})]
    args = cmd.argv[1:]
    for i, a in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else ""
        if a in ("-c", "-o") and _EMBED_OPT.match(nxt):
            out.append(re.split(r"[= ]", nxt, maxsplit=1)[1])
        elif a.startswith(("-c", "-o")) and _EMBED_OPT.match(a[2:]):
            out.append(re.split(r"[= ]", a[2:], maxsplit=1)[1])
        elif cmd.program == "rsync" and a in ("-e", "--rsh") and nxt:
            out.append(nxt)
        elif cmd.program == "rsync" and a.startswith("--rsh="):
            out.append(a.split("=", 1)[1])
    return [s for s in out if s.strip()]


def _plain(prog: str) -> bool:
    """Whether `_emit` has nothing to do for `prog` beyond recording it: not a shell, eval, script
    interpreter, wrapper or a program whose output `produce` knows. Memoised per name."""
    plain = not (prog in SHELLS or prog in ("source", ".", "eval") or _PYTHON_RE.match(prog)
                 or prog in _SCRIPT_LANGS or may_wrap(prog) or prog in PRODUCERS
                 or prog in _EMBEDDING)  # fmt: skip
    if len(_PLAIN) < 50_000:
        _PLAIN[prog] = plain
    return plain


def _flag_value(args: list[str], letters: str, longs: tuple[str, ...] = ()) -> str | None:
    """The value after `-c` (also `-lc`, `-ic`) or a long option: where a one-liner's code sits."""
    for i, a in enumerate(args):
        if a in longs and i + 1 < len(args):
            return args[i + 1]
        for lo in longs:
            if a.startswith(lo + "="):
                return a.split("=", 1)[1]
        if len(a) >= 2 and a[0] == "-" and a[1] != "-" and a[1:].isalpha():
            for letter in letters:
                if letter in a[1:]:
                    return args[i + 1] if i + 1 < len(args) else None
    return None


def _shell_command(cmd: Command, ctx: _Ctx, stdin: bytes | None, procsubs: list[str]) -> None:
    args = cmd.argv[1:]
    if cmd.program == "busybox":
        if args and args[0] in SHELLS:
            args = args[1:]
        else:
            inner = Command(argv=args, origin="wrapper:busybox", depth=ctx.depth + 1,
                            redirects=cmd.redirects, pipe_from=cmd.pipe_from)  # fmt: skip
            if args:
                _emit(inner, ctx, stdin, procsubs)
            return
    code = _flag_value(args, "c") if cmd.program not in ("source", ".") else None
    if code is not None:
        cmd.facts.add("shell_c")
        _sub_script(code, ctx, f"{cmd.program} -c")
        return
    positional = [a for a in args if not a.startswith("-")]
    if procsubs:
        cmd.facts.add("procsub_script")
        for text in procsubs:
            _sub_script(text, ctx, "procsub")
    if any(p in DOWNLOADERS for p in cmd.pipe_from) or "stdin_download" in cmd.facts:
        cmd.facts.add("pipe_to_shell")
    if (not positional or positional[0] in ("-", "/dev/stdin")) and stdin is not None:
        text = stdin.decode("utf-8", "replace")
        if any(p not in ("echo", "printf", "cat") for p in cmd.pipe_from) or "<<" not in [
            r.op for r in cmd.redirects
        ]:
            ctx.decoded.append(text)
        _sub_script(text, ctx, "stdin")
    elif not positional and cmd.pipe_from:
        cmd.facts.add("stdin_script")


def _python_command(cmd: Command, ctx: _Ctx, stdin: bytes | None, procsubs: list[str]) -> None:
    args = cmd.argv[1:]
    code = _flag_value(args, "c")
    if code is None:
        positional = [a for a in args if not a.startswith("-")]
        if (not positional or positional[0] == "-") and stdin is not None:
            code = stdin.decode("utf-8", "replace")
        elif procsubs:
            code = procsubs[0]
        elif any(p in DOWNLOADERS for p in cmd.pipe_from):
            cmd.facts.add("pipe_to_shell")
            return
    if code is None:
        return
    _apply_script(cmd, python_facts(code), ctx, "python")


def _lang_command(cmd: Command, lang: str, ctx: _Ctx, stdin: bytes | None) -> None:
    args = cmd.argv[1:]
    code: str | None = None
    if lang == "awk":
        i = 0
        while i < len(args) and args[i].startswith("-"):
            i += 2 if args[i] in ("-F", "-v", "-f") else 1
        code = args[i] if i < len(args) else None
    else:
        flags = _SCRIPT_FLAGS.get(lang, ())
        for i, a in enumerate(args):
            if a in flags and i + 1 < len(args):
                code = args[i + 1]
                break
            if lang in ("perl", "ruby", "node") and a.startswith("-e") and len(a) > 2:
                code = a[2:]  # `ruby -e'code'`: the code joined to its flag
                break
            if (
                a.startswith("-")
                and not a.startswith("--")
                and len(a) > 2
                and a[-1] == "e"
                and lang in ("perl", "ruby")
            ) and i + 1 < len(args):
                code = args[i + 1]
                break
        if code is None and stdin is not None and not [a for a in args if not a.startswith("-")]:
            code = stdin.decode("utf-8", "replace")
        if code is None and any(p in DOWNLOADERS for p in cmd.pipe_from):
            cmd.facts.add("pipe_to_shell")
    if code is None:
        return
    _apply_script(cmd, regex_facts(lang, code), ctx, lang)


def _apply_script(cmd: Command, facts: ScriptFacts, ctx: _Ctx, lang: str) -> None:
    cmd.facts |= facts.facts
    if "py.decode" in facts.facts and ({"py.dynamic_exec", "py.exec"} & facts.facts):
        ctx.flags.add("decoded")
    cmd.hosts.extend(facts.hosts)
    for path, append in facts.writes:
        cmd.redirects.append(Redirect(">>" if append else ">", path))
    for path in facts.removes:
        ctx.out.append(Command(argv=["rm", "-rf", path], origin=lang, depth=ctx.depth + 1))
    for argv in facts.argvs:
        if argv and ctx.depth < MAX_DEPTH:
            sub = Command(argv=[str(a) for a in argv], origin=lang, depth=ctx.depth + 1)
            saved = ctx.depth
            ctx.depth += 1
            _emit(sub, ctx, None)
            ctx.depth = saved
    for script in facts.shell:
        _sub_script(script, ctx, lang)


def analyse_argv(argv: list[str]) -> Analysis:
    """An exec seen by the process sensor: argv is already split; what it runs is still analysed."""
    analysis = Analysis(source=" ".join(argv))
    if not argv:
        return analysis
    ctx = _Ctx(analysis, b"", 0, "exec", {})
    try:
        _emit(Command(argv=[str(a) for a in argv], origin="exec"), ctx, None)
    except RecursionError:
        analysis.flags.add("too_deep")
    return analysis
