"""Tool calls to shell commands: the one place that knows what agent tool names mean.

Shell tools give their command as is. File-writing tools (editors, Write/Edit, OpenHands write/edit,
apply_patch) become a synthetic shell command the rule engine already understands:

    cat > 'PATH' <<'CORRAL_EOF'          (create / overwrite)
    cat >> 'PATH' <<'CORRAL_EOF'         (edit, insert, str_replace)
    <new content>
    CORRAL_EOF

so a write into `tests/` is seen as the redirection it amounts to (reward tampering), and a cron line
or an ssh key in the content stays visible. Python tools become `python3 -c '<code>'` so the engine's
`python -c` analysis applies. Tools that only read (view, Read, Grep, browse) yield nothing.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from corral.audit.model import Command

SHELL_TOOLS = frozenset({
    "bash", "shell", "execute_bash", "run", "terminal", "run_command", "execute_command", "exec",
    "exec_command", "run_shell_command", "shell_exec", "execute_shell", "run_terminal_cmd",
    "container.exec", "local_shell", "cmd", "bash_tool", "sh", "command", "run_bash",
    "bash_command", "shell_command", "execute_command_line",
})  # fmt: skip
EDITOR_TOOLS = frozenset({
    "str_replace_editor", "str_replace_based_edit_tool", "text_editor", "file_editor", "edit_file",
    "write_file", "create_file", "write", "edit", "multiedit", "notebookedit", "write_to_file",
    "replace_in_file", "insert",
})  # fmt: skip
PYTHON_TOOLS = frozenset({"python", "execute_ipython_cell", "ipython", "run_python", "python_exec",
                          "run_ipython", "code_interpreter"})  # fmt: skip
PATCH_TOOLS = frozenset({"apply_patch", "patch"})

_COMMAND_KEYS = ("command", "cmd", "commands", "script", "code", "input", "shell_command",
                 "keystrokes")  # fmt: skip
_PATH_KEYS = ("path", "file_path", "filename", "file", "target_file", "notebook_path", "filepath")
_CONTENT_KEYS = ("file_text", "content", "new_str", "new_string", "new_source", "text",
                 "code_edit", "contents")  # fmt: skip
_READ_ONLY = frozenset({"view", "read", "undo_edit", "view_range"})
_OVERWRITE = frozenset({"create", "write", "overwrite"})
_PATCH_FILE = re.compile(r"^\*\*\* (?:Add|Update|Delete) File: (.+)$", re.MULTILINE)
_DIFF_FILE = re.compile(r"^\+\+\+ (?:b/)?(\S+)", re.MULTILINE)


_JSON_FIELD = re.compile(r'"([A-Za-z_]+)"\s*:\s*"((?:[^"\\]|\\.)*)(?:"|$)', re.DOTALL)


def parse_arguments(arguments: Any) -> Any:
    """Arguments arrive as an object or as a JSON string (OpenAI chat). A string that is not valid
    JSON (models emit raw newlines, cut-off or doubled objects) is salvaged field by field, so its
    command is still read; a string with no object in it stays as it is."""
    if isinstance(arguments, str):
        text = arguments.strip()
        if text.startswith(("{", "[")):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                pass
            try:
                return json.loads(text, strict=False)  # raw control characters inside strings
            except json.JSONDecodeError:
                pass
            fields: dict[str, Any] = {}
            for key, raw in _JSON_FIELD.findall(text):
                try:
                    fields.setdefault(key, json.loads(f'"{raw}"', strict=False))
                except json.JSONDecodeError:
                    fields.setdefault(key, raw)
            return fields or arguments
    return arguments


# Actions written as text by agents without native tool calling.
_FUNCTION_TAG = re.compile(r"<function=([\w.\-]+)>(.*?)(?:</function>|$)", re.DOTALL)
_PARAM_TAG = re.compile(r"<parameter=([\w\-]+)>\n?(.*?)\n?</parameter>", re.DOTALL)
_EXECUTE_TAG = re.compile(r"<execute_(bash|ipython|python)>\n?(.*?)</execute_\1>|<execute>\n?(.*?)"
                          r"</execute>", re.DOTALL)  # fmt: skip
_FENCE = re.compile(r"```(mswea_bash_command|bash|sh|shell|console)[ \t]*\n(.*?)\n?```", re.DOTALL)
_JUPYTER_BANG = re.compile(r"^\s*!(.+)$", re.MULTILINE)
_CELL_MAGIC = re.compile(r"^\s*%%(?:bash|sh|script (?:ba)?sh)\s*\n(.*)", re.DOTALL)


def text_commands(text: str) -> list[Command]:
    """Commands an assistant message carries as text: `<function=NAME><parameter=K>V</parameter>`
    (SWE-smith, SWE-play, OpenHands' non-native calling), CodeAct `<execute_bash>` /
    `<execute_ipython>` / `<execute>`, and fenced ```bash / ```mswea_bash_command blocks (mini-swe-agent,
    AgentTuning's `Act: bash`). Python cells become `python3 -c`; their `!cmd` lines and `%%bash`
    cells are shell."""
    if not text or ("<" not in text and "```" not in text and "keystrokes" not in text):
        return []
    out: list[Command] = []
    if "keystrokes" in text:
        out.extend(_terminus_json(text))
    for name, body in _FUNCTION_TAG.findall(text):
        args = {k: v for k, v in _PARAM_TAG.findall(body)}
        out.extend(commands_for_tool(name, args))
    for lang, body, plain in _EXECUTE_TAG.findall(text):
        if lang == "bash":
            out.append(Command(body, "execute_bash"))
        else:
            out.extend(python_cell(body or plain, "execute_ipython"))
    if not out:
        out.extend(Command(body, "bash") for _, body in _FENCE.findall(text) if body.strip())
    return out


def _terminus_json(text: str) -> list[Command]:
    """Terminus (Harbor/Terminal-Bench) answers as JSON: `{"analysis", "plan", "commands":
    [{"keystrokes", "duration"}], "task_complete"}` (terminus-1: `is_blocking`, `timeout_sec`).
    The keystrokes are typed into a shell; a trailing newline runs them."""
    start = text.find("{")
    if start < 0:
        return []
    try:
        doc, _ = json.JSONDecoder(strict=False).raw_decode(text[start:])
    except json.JSONDecodeError:
        doc = parse_arguments(text[start:])
        found = doc.get("keystrokes") if isinstance(doc, dict) else None
        return [Command(found, "keystrokes")] if isinstance(found, str) and found.strip() else []
    cmds = doc.get("commands") if isinstance(doc, dict) else None
    if not isinstance(cmds, list):
        return []
    return [Command(c["keystrokes"], "keystrokes") for c in cmds
            if isinstance(c, dict) and isinstance(c.get("keystrokes"), str) and c["keystrokes"].strip()]  # fmt: skip


def python_cell(code: str, tool: str) -> list[Command]:
    """A Jupyter/IPython cell: `%%bash` cells and `!cmd` lines are shell, the rest is Python."""
    if not code.strip():
        return []
    magic = _CELL_MAGIC.match(code)
    if magic:
        return [Command(magic.group(1), tool)]
    out = [Command(m.strip(), tool) for m in _JUPYTER_BANG.findall(code)]
    py = _JUPYTER_BANG.sub("", code)
    if py.strip():
        out.append(Command(f"python3 -c {shlex.quote(py)}", tool, True))
    return out


def argv_to_command(value: Any) -> str | None:
    """A command given as argv (Codex local_shell) is joined with shell quoting."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return shlex.join(value)
    return None


def file_write(path: str, content: str, *, append: bool, tool: str) -> Command:
    delim = "CORRAL_EOF"
    while delim in content:
        delim += "_"
    op = ">>" if append else ">"
    body = content if content.endswith("\n") or not content else content + "\n"
    return Command(f"cat {op} {shlex.quote(path)} <<'{delim}'\n{body}{delim}", tool, True)


def _first(args: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in args and args[k] is not None:
            return args[k]
    return None


def _editor(name: str, args: dict[str, Any]) -> list[Command]:
    sub = str(args.get("command") or args.get("action") or "").lower()
    if sub in _READ_ONLY:
        return []
    path = _first(args, _PATH_KEYS)
    if not isinstance(path, str) or not path:
        return []
    edits = args.get("edits")
    if isinstance(edits, list):  # Claude Code MultiEdit
        text = "\n".join(str(e.get("new_string", "")) for e in edits if isinstance(e, dict))
        cmd = file_write(path, text, append=True, tool=name)
        cmd.mode = "replace"
        return [cmd]
    content = _first(args, _CONTENT_KEYS)
    content = content if isinstance(content, str) else ""
    overwrite = sub in _OVERWRITE or (
        not sub and name.lower() in {"write", "write_file", "create_file", "write_to_file"}
    )
    cmd = file_write(path, content, append=not overwrite, tool=name)
    replaces = sub in ("str_replace", "replace", "edit") or any(
        k in args for k in ("old_str", "old_string", "old_text", "search")
    )
    cmd.mode = "create" if overwrite else ("replace" if replaces else "insert")
    return [cmd]


def _patch(name: str, text: str) -> list[Command]:
    paths = _PATCH_FILE.findall(text) or _DIFF_FILE.findall(text)
    return [file_write(p.strip(), text, append=True, tool=name) for p in paths]


def commands_for_tool(name: str, arguments: Any) -> list[Command]:
    """The shell commands (real or synthetic) one tool call amounts to."""
    key = (name or "").strip().lower()
    args = parse_arguments(arguments)
    if key in SHELL_TOOLS:
        if isinstance(args, dict):
            cmd = argv_to_command(_first(args, _COMMAND_KEYS))
        else:
            cmd = argv_to_command(args)
        return [Command(cmd, name)] if cmd and cmd.strip() else []
    if key in EDITOR_TOOLS and isinstance(args, dict):
        return _editor(name, args)
    if key in PYTHON_TOOLS:
        code = (
            _first(args, ("code", "input", "source", "script")) if isinstance(args, dict) else args
        )
        return python_cell(code, name) if isinstance(code, str) else []
    if key in PATCH_TOOLS:
        text = _first(args, ("input", "patch", "diff")) if isinstance(args, dict) else args
        return _patch(name, text) if isinstance(text, str) else []
    return []


def _windowed(head: str, text: str, current: str | None) -> list[Command]:
    """SWE-agent's windowed editor writes into the file `open`/`create` made current:
    `edit N:M` + lines + `end_of_edit` (0.x), `edit 'search' 'replace'` (1.x), `insert N` + lines +
    `end_of_insert` or `insert 'text' [N]`, `append` likewise. Each is a synthetic file write."""
    if current is None:
        return []
    first, _, body = text.partition("\n")
    if body:
        for end in ("end_of_edit", "end_of_insert", "end_of_append"):
            body = body.removesuffix(end).rstrip("\n") if body.rstrip().endswith(end) else body
        content = body
    else:
        try:
            argv = shlex.split(first)
        except ValueError:
            argv = first.split()
        rest = argv[1:]
        content = rest[1] if head == "edit" and len(rest) >= 2 else rest[0] if rest else ""
    cmd = file_write(current, content, append=True, tool=f"swe_agent.{head}")
    cmd.mode = "replace" if head == "edit" else "insert"
    return [cmd]


def swe_agent_action(action: str, state: dict[str, str] | None = None) -> list[Command]:
    """SWE-agent actions are command lines; its editor tools are parsed back into file writes.
    `state` carries the file the windowed editor has open from one step to the next."""
    text = action.strip()
    if not text:
        return []
    state = {} if state is None else state
    head = text.split(None, 1)[0]
    if head in ("open", "create") and len(text.split("\n", 1)[0].split()) >= 2:
        target = text.split("\n", 1)[0].split()[1].strip("\"'")
        state["file"] = target
        if head == "create":
            return [file_write(target, "", append=False, tool="create")]
        return []
    if head in ("edit", "insert", "append"):
        return _windowed(head, text, state.get("file"))
    if head in ("str_replace_editor", "edit_file"):
        try:
            argv = shlex.split(text)
        except ValueError:
            return [Command(text, "bash")]
        if len(argv) < 3:
            return []
        args: dict[str, Any] = {"command": argv[1], "path": argv[2]}
        rest = argv[3:]
        for i, tok in enumerate(rest):
            if tok.startswith("--") and i + 1 < len(rest):
                args[tok[2:]] = rest[i + 1]
        return _editor(head, args)
    if head in ("submit", "exit", "exit_forfeit", "open", "goto", "scroll_up", "scroll_down",
                "find_file", "search_dir", "search_file", "filemap"):  # fmt: skip
        return []
    return [Command(text, "bash")]
