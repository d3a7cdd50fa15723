"""Commands that run another command: `sudo`, `env`, `nohup`, `timeout`, `xargs`, `find -exec`, ...

Each entry says which options take a value, so the wrapped argv is found without guessing. A wrapper
that takes the command as one string (`watch`, `su -c`, `tmux new`) hands back a shell script instead.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Unwrapped:
    argv: list[str] | None = None  # the wrapped command as argv
    script: str | None = None  # or as a shell string


@dataclass(frozen=True, slots=True)
class _Spec:
    value_opts: frozenset[str] = frozenset()  # options that take the next word as value
    positional: int = 0  # plain words before the command (timeout DURATION, chroot DIR)
    assignments: bool = False  # NAME=value words may precede the command (env)


def _spec(value_opts: str = "", positional: int = 0, assignments: bool = False) -> _Spec:
    return _Spec(frozenset(value_opts.split()), positional, assignments)


SPECS: dict[str, _Spec] = {
    "sudo": _spec("-u -g -h -p -C -D -r -t -T -U --user --group --host --prompt --chdir"),
    "doas": _spec("-u -C"),
    "env": _spec("-u -C --unset --chdir", assignments=True),
    "nohup": _spec(),
    "timeout": _spec("-s -k --signal --kill-after", positional=1),
    "setsid": _spec(),
    "screen": _spec("-S -c -e -h -p -t -T -Logfile -r -x -R"),
    "stdbuf": _spec("-i -o -e --input --output --error"),
    "nice": _spec("-n --adjustment"),
    "ionice": _spec("-c -n -p -t --class --classdata"),
    "chrt": _spec("-T -P -D", positional=1),
    "taskset": _spec("", positional=1),
    "time": _spec("-f -o --format --output"),
    "command": _spec(),
    "exec": _spec("-a"),
    "builtin": _spec(),
    "xargs": _spec(
        "-a -d -E -e -I -i -L -l -n -P -s --arg-file --delimiter --max-args "
        "--max-procs --max-lines --replace"
    ),  # fmt: skip
    "strace": _spec("-o -e -p -s -u -E -a -b -I -O -S -X -P"),
    "ltrace": _spec("-o -e -p -s -u -a -n"),
    "chroot": _spec("--userspec --groups", positional=1),
    "proxychains": _spec("-f"),
    "proxychains4": _spec("-f"),
    "torsocks": _spec("-u -p -a -P"),
    "tsocks": _spec(),
    "busybox": _spec(),
    "nsenter": _spec("-t --target -S -G --setuid --setgid"),
    "unshare": _spec("--map-user --map-group --setgroups --propagation"),
    "runuser": _spec("-u -g -G --user --group"),
    "firejail": _spec(),
    "caffeinate": _spec("-t -w"),
    "faketime": _spec("-f", positional=1),
    "catchsegv": _spec(),
    "unbuffer": _spec(),
    "systemd-run": _spec("-u -p -E --unit --property --setenv --description --slice -M"),
    "daemonize": _spec("-a -c -e -o -p -l -u -E"),
    "start-stop-daemon": _spec(),
    "sshpass": _spec("-p -f -d -P"),  # hands a password to the ssh (or scp, rsync) it runs
    "ssh-agent": _spec("-a -E -t -P"),
}
_STRING_WRAPPERS = {"watch", "su", "script", "tmux", "flock", "ssh"}
_SSH_VALUE_FLAGS = frozenset("BbcDEeFIiJLlmOopQRSWw")
_TIMEOUT_ALIASES = {"gtimeout": "timeout", "sudoedit": "sudo"}


def may_wrap(name: str) -> bool:
    """Whether `unwrap` can return anything for a command whose lower-cased basename is `name`
    (False lets the analysis skip it for the commonest commands)."""
    name = _TIMEOUT_ALIASES.get(name, name)
    return name in SPECS or name in _STRING_WRAPPERS or name in ("find", "start-stop-daemon")


def unwrap(argv: list[str]) -> Unwrapped | None:
    """The command a wrapper runs, or None when argv[0] is not a wrapper or wraps nothing."""
    if not argv:
        return None
    name = posixpath.basename(argv[0]).lower()
    name = _TIMEOUT_ALIASES.get(name, name)
    if name == "find":
        return _find_exec(argv)
    if name in _STRING_WRAPPERS:
        return _string_wrapper(name, argv)
    if name == "start-stop-daemon":
        return _after_separator(argv)
    spec = SPECS.get(name)
    if spec is None:
        return None
    if name == "command" and any(a in ("-v", "-V") for a in argv[1:2]):
        return None
    if name == "env":
        for i, a in enumerate(argv[1:], 1):
            if a in ("-S", "--split-string") and i + 1 < len(argv):
                return Unwrapped(script=" ".join(argv[i + 1 :]))
            if a.startswith("-S") and len(a) > 2:
                return Unwrapped(script=" ".join([a[2:], *argv[i + 1 :]]))
    rest = _skip_options(argv[1:], spec)
    return Unwrapped(argv=rest) if rest else None


def _skip_options(words: list[str], spec: _Spec) -> list[str]:
    i, n = 0, len(words)
    positional = spec.positional
    while i < n:
        w = words[i]
        if w == "--":
            i += 1
            break
        if w.startswith("-") and len(w) > 1:
            opt = w.split("=", 1)[0]
            if opt in spec.value_opts and "=" not in w:
                i += 2
                continue
            if (
                w[1] != "-"
                and len(w) > 2
                and w[1:].isalpha()
                and "-" + w[-1] in spec.value_opts
                and w not in spec.value_opts
            ):  # `-dmS name`: a cluster ending in a value option
                i += 2
                continue
            i += 1
            continue
        if spec.assignments and "=" in w and not w.startswith("="):
            i += 1
            continue
        if positional:
            positional -= 1
            i += 1
            continue
        break
    while positional and i < n:  # `timeout -- 5 cmd`
        positional -= 1
        i += 1
    return words[i:]


def _after_separator(argv: list[str]) -> Unwrapped | None:
    if "--" in argv:
        rest = argv[argv.index("--") + 1 :]
        return Unwrapped(argv=rest) if rest else None
    for i, a in enumerate(argv):
        if a in ("-x", "--exec", "-a", "--startas") and i + 1 < len(argv):
            return Unwrapped(argv=[argv[i + 1]])
    return None


def _find_exec(argv: list[str]) -> Unwrapped | None:
    for i, a in enumerate(argv):
        if a in ("-exec", "-execdir", "-ok", "-okdir"):
            inner = []
            for w in argv[i + 1 :]:
                if w in (";", "+", "\\;"):
                    break
                inner.append(w)
            return Unwrapped(argv=inner) if inner else None
    return None


def _ssh_remote(args: list[str]) -> Unwrapped | None:
    """`ssh [options] host command...`: the command runs on the remote host, and what it does there
    (a miner, a crontab, a metadata fetch) is the agent's doing all the same."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        for j, ch in enumerate(a[1:], 1):  # getopt clusters: -fNR 2222:x:22, -p2222
            if ch in _SSH_VALUE_FLAGS:
                if j == len(a) - 1:
                    i += 1
                break
        i += 1
    rest = args[i + 1 :]  # args[i] is the destination
    return Unwrapped(script=" ".join(rest)) if rest else None


def _string_wrapper(name: str, argv: list[str]) -> Unwrapped | None:
    args = argv[1:]
    if name == "ssh":
        return _ssh_remote(args)
    if name in ("su", "script", "flock"):
        for i, a in enumerate(args):
            if a in ("-c", "--command") and i + 1 < len(args):
                return Unwrapped(script=args[i + 1])
            if a.startswith("--command="):
                return Unwrapped(script=a.split("=", 1)[1])
        if name == "flock" and len(args) >= 2:
            rest = [a for a in args if not a.startswith("-")]
            return Unwrapped(argv=rest[1:]) if len(rest) > 1 else None
        return None
    if name == "watch":
        i = 0
        while i < len(args) and args[i].startswith("-"):
            i += 2 if args[i] in ("-n", "--interval", "-q", "--equexit") else 1
        rest = args[i:]
        return Unwrapped(script=" ".join(rest)) if rest else None
    if name == "tmux":
        if not args:
            return None
        sub = args[0]
        if sub in ("new", "new-session", "new-window", "neww", "split-window", "splitw",
                   "respawn-pane", "run-shell", "run"):  # fmt: skip
            positionals = []
            i = 1
            while i < len(args):
                a = args[i]
                if a.startswith("-") and len(a) == 2 and a[1] in "stcnxyFeEfl":
                    i += 2
                    continue
                if a.startswith("-"):
                    i += 1
                    continue
                positionals.append(a)
                i += 1
            return Unwrapped(script=" ".join(positionals)) if positionals else None
        if sub in ("send-keys", "send"):
            keys = [a for a in args[1:] if not a.startswith("-") and a not in ("Enter", "C-m")]
            if keys and len(keys) > 1:
                keys = keys[1:] if "-t" in args else keys
            return Unwrapped(script=" ".join(keys)) if keys else None
    return None
