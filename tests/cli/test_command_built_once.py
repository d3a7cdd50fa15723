"""The click command behind a served call is built once per process (the fork server's, before it
forks), with its parameters' coercion, and a call through it behaves as through a fresh app."""

from __future__ import annotations

import pytest

from corral.cli import main as cli_main


def test_the_command_is_built_once_and_warmed_without_running(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cmd = cli_main.command("check")
    assert cli_main.command("check") is cmd
    cli_main.warm_command("check", ["--json", "xmrig -o pool.example:3333"])  # parsed, not judged
    sub = cmd.commands["check"]
    coerced = [p for p in sub.params if getattr(p, "_runtime_param", None) is not None]
    assert coerced, [p.name for p in sub.params]
    assert capsys.readouterr() == ("", "")  # no verdict printed: nothing ran


def test_calls_through_the_kept_command_each_parse_their_own_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for cmd, code in (("ls -la /tmp", 0), ("xmrig -o pool.example:3333", 2), ("ls", 0)):
        with pytest.raises(SystemExit) as exit_:
            cli_main.main(["check", "--json", cmd])
        assert exit_.value.code == code, (cmd, capsys.readouterr())
        assert cmd in capsys.readouterr().out
