"""Macros (Falco's): named conditions in packs, referenced by rules, replaced by a later pack or by
the policy's `rules.macros` (the shipped `user_known_*` hooks); every mistake refused at load on one
line naming the rule or macro; the on-disk cache carries them; the docs' example runs as written."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli.main import app
from corral.policy.loader import policy_from_mapping
from corral.rules import RuleEngine, RulePackError
from corral.rules import cache as rules_cache
from corral.rules.gate import make_gate

ROOT = Path(__file__).resolve().parents[2]
CPU = {"kind": "cpu_sustained", "comm": "render-farm", "exe": "/w/render-farm"}


def _pol(**rules: object):  # type: ignore[no-untyped-def]
    return policy_from_mapping({"extends": "rl-strict", "rules": rules})


def _ids(findings: list) -> list[str]:  # type: ignore[type-arg]
    return [f.rule for f in findings]


def _pack(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


HEAD = "pack: t\ncategory: policy\n"


def _rule(when: str, match: str = "command", rid: str = "policy.t_rule") -> str:
    return (f"  - id: {rid}\n    severity: low\n    description: d\n    match: {match}\n"
            f"    when: {when}\n")  # fmt: skip


# ------------------------------------------------------------------ what macros do
def test_a_rule_built_on_macros_fires_as_written(tmp_path: Path) -> None:
    eng = RuleEngine.load(_pack(tmp_path, HEAD + (
        "macros:\n"
        "  - {macro: archiver, match: command, when: {program: [tar, zip]}}\n"
        "  - {macro: keys_archive, match: command, when: {macro: archiver, args: ['\\.ssh']}}\n"
        "  - {macro: user_known_backups, match: command}\n"
        "rules:\n" + _rule("{macro: keys_archive, not: [{macro: user_known_backups}]}"))))  # fmt: skip
    assert _ids(eng.check_command("tar czf k.tgz ~/.ssh")) == ["policy.t_rule"]
    assert _ids(eng.check_command("tar czf s.tgz src")) == []
    assert _ids(eng.check_command("cp -r ~/.ssh /tmp")) == []
    # expanded at load: the rule is indexed by the macro's programs like a plain `program:` rule
    assert eng.rule("policy.t_rule").when["program"] == ["tar", "zip"]  # type: ignore[union-attr]


def test_a_clashing_key_is_anded_not_overwritten(tmp_path: Path) -> None:
    eng = RuleEngine.load(_pack(tmp_path, HEAD + (
        "macros:\n  - {macro: m, match: command, when: {args: ['^-R$']}}\n"
        "rules:\n" + _rule("{program: [ssh], args: ['203\\.0\\.113'], macro: m}"))))  # fmt: skip
    assert _ids(eng.check_command("ssh -R 1:a:2 203.0.113.5")) == ["policy.t_rule"]
    assert _ids(eng.check_command("ssh 203.0.113.5")) == []
    assert _ids(eng.check_command("ssh -R 1:a:2 host.test")) == []
    ev = RuleEngine.load(_pack(tmp_path, HEAD + (
        "macros:\n  - {macro: e, match: event, when: {dst.port: {gte: 1000}}}\n"
        "rules:\n" + _rule("{kind: connections, dst.port: {lt: 4000}, macro: e}", "event"))))  # fmt: skip
    assert _ids(ev.match_event({"kind": "connections", "dst": {"port": 3333}})) == ["policy.t_rule"]
    assert _ids(ev.match_event({"kind": "connections", "dst": {"port": 80}})) == []
    assert _ids(ev.match_event({"kind": "connections", "dst": {"port": 8080}})) == []


def test_a_later_pack_replaces_a_shipped_macro(tmp_path: Path) -> None:
    site = _pack(tmp_path, "pack: site\nmacros:\n  - macro: user_known_cpu_workloads\n"
                 "    match: event\n    when: {comm: {in: [render-farm]}}\n")  # fmt: skip
    eng = RuleEngine.for_policy(_pol(packs=[str(site)]))
    slow = {**CPU, "cpu": {"corroborated": False, "long": False}}
    assert _ids(eng.match_event(slow)) == []
    assert "mining.cpu_sustained" in _ids(RuleEngine.default().match_event(slow))


def test_user_known_cpu_workloads_spares_cpu_alone_never_corroboration() -> None:
    eng = RuleEngine.for_policy(
        _pol(macros={"user_known_cpu_workloads": {"comm": {"in": ["render-farm"]}}})
    )
    alone = {**CPU, "cpu": {"corroborated": False, "long": False}}
    long = {**CPU, "cpu": {"corroborated": False, "long": True}}
    pooled = {**CPU, "cpu": {"corroborated": True, "long": False}}
    assert eng.match_event(alone) == [] and eng.match_event(long) == []
    assert _ids(eng.match_event(pooled)) == ["mining.cpu_corroborated"]
    other = {**long, "comm": "render-farm2"}
    assert _ids(eng.match_event(other)) == ["mining.cpu_corroborated"]
    default = RuleEngine.default()
    assert _ids(default.match_event(alone)) == ["mining.cpu_sustained"]
    assert _ids(default.match_event(long)) == ["mining.cpu_corroborated"]


def test_user_known_internal_hosts_at_the_gate_with_a_list() -> None:
    pol = _pol(lists={"lab": [r"(^|//|@)10\.1\.2\.3([:/]|$)"]},
               macros={"user_known_internal_hosts": {"any": [
                   {"args": ["$lab"]}, {"redirect": r"^/dev/tcp/10\.1\.2\.3/"}]}})  # fmt: skip
    eng = RuleEngine.for_policy(pol)
    assert "probe_internal.internal_host" not in _ids(eng.check_command("curl http://10.1.2.3/x"))
    assert "probe_internal.internal_host" in _ids(eng.check_command("curl http://10.1.2.33/x"))
    assert "probe_internal.dev_tcp_probe" not in _ids(
        eng.check_command("echo > /dev/tcp/10.1.2.3/22"))  # fmt: skip
    assert "probe_internal.dev_tcp_probe" in _ids(eng.check_command("echo > /dev/tcp/10.1.2.4/22"))
    gate = make_gate(pol)
    assert gate("curl http://10.1.2.3:8080/health", None, 1).verdict == "allow"  # type: ignore[arg-type, union-attr]
    assert gate("curl http://10.0.0.5:8080/admin", None, 1).verdict != "allow"  # type: ignore[arg-type, union-attr]


def test_user_known_internal_destinations_for_the_gateway() -> None:
    fact = {"source": "egress", "kind": "egress_attempt", "via": "raw",
            "dst": {"ip": "10.0.0.5", "port": 5432, "proto": "tcp", "class": "private"}}  # fmt: skip
    pol = _pol(
        macros={"user_known_internal_destinations": {"dst.ip": "10.0.0.5", "dst.port": 5432}}
    )
    assert "probe_internal.address" not in _ids(RuleEngine.for_policy(pol).match_event(fact))
    assert "probe_internal.address" in _ids(RuleEngine.default().match_event(fact))
    other = {**fact, "dst": {**fact["dst"], "port": 22}}
    assert "probe_internal.address" in _ids(RuleEngine.for_policy(pol).match_event(other))


def test_exceptions_may_name_macros(tmp_path: Path) -> None:
    site = _pack(tmp_path, "pack: site\nmacros:\n  - {macro: our_jump, match: command,"
                 " when: {last_arg: 'bastion\\.example\\.org$'}}\n")  # fmt: skip
    pol = _pol(packs=[str(site)], exceptions=[{"rule": "tunnel.ssh_remote_forward",
                                               "when": {"macro": "our_jump"}}])  # fmt: skip
    eng = RuleEngine.for_policy(pol)
    assert "tunnel.ssh_remote_forward" not in _ids(
        eng.check_command("ssh -R 8080:localhost:22 bastion.example.org"))  # fmt: skip
    assert "tunnel.ssh_remote_forward" in _ids(eng.check_command("ssh -R 8080:localhost:22 x.test"))


# ------------------------------------------------------------------ refused at load
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            HEAD + "rules:\n" + _rule("{macro: nowhere}"),
            r"^rule policy\.t_rule \(.*p\.yaml\): no macro 'nowhere' is defined$",
        ),
        (
            HEAD + "macros:\n  - {macro: a, match: command, when: {macro: b}}\n"
            "  - {macro: b, match: command, when: {any: [{macro: a}]}}\n",
            r"^macro [ab] \(.*p\.yaml\): macro cycle a -> b -> a$",
        ),
        (
            HEAD + "macros:\n  - {macro: a, match: command, when: {macro: a}}\n",
            r"macro cycle a -> a$",
        ),
        (
            HEAD + "macros:\n  - {macro: a, match: command, when: {program: [x]}}\n"
            "  - {macro: a, match: command, when: {program: [y]}}\n",
            r"p\.yaml: macro a is defined twice$",
        ),
        (
            HEAD
            + "macros:\n  - macro: a\n    match: event\n    when: {kind: exec}\n    when: {kind: gpu_use}\n",
            r"p\.yaml macro a: duplicate key 'when' \(line 7\)$",
        ),
        (
            HEAD + "macros:\n  - {macro: a, match: event, when: {cpu.corroborate: true}}\n",
            r"p\.yaml macro a: .*unknown event field 'cpu\.corroborate'",
        ),
        (
            HEAD + "macros:\n  - {macro: a, match: event, when: {kind: mining}}\n",
            r"p\.yaml macro a: .*unknown fact kind mining",
        ),
        (
            HEAD + "macros:\n  - {macro: a, match: command, when: {programs: [x]}}\n",
            r"p\.yaml macro a: .*programs: unknown field",
        ),
        (
            HEAD + "macros:\n  - {macro: a, match: event, when: {kind: exec}}\n"
            "rules:\n" + _rule("{macro: a}"),
            r"rule policy\.t_rule .*macro a is a event condition, not a command one",
        ),
        (HEAD + "macros:\n  - {macro: Bad-Name, match: command}\n", r"macro Bad-Name: macro:"),
    ],
    ids=[
        "undefined",
        "cycle",
        "self-cycle",
        "duplicate-macro",
        "duplicate-key",
        "unknown-field",
        "unknown-kind",
        "unknown-command-key",
        "wrong-language",
        "bad-name",
    ],  # fmt: skip
)
def test_pack_mistakes_are_refused_on_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RulePackError) as err:
        RuleEngine.load(_pack(tmp_path, text))
    assert "\n" not in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            {"macros": {"user_known_cpu_jobs": {"comm": "x"}}},
            r"rules\.macros\.user_known_cpu_jobs: no macro 'user_known_cpu_jobs' in the packs",
        ),
        (
            {"macros": {"user_known_cpu_workloads": {"cpu.nope": 1}}},
            r"rules\.macros\.user_known_cpu_workloads: .*unknown event field 'cpu\.nope'",
        ),
        (
            {"macros": {"user_known_internal_hosts": {"argz": ["x"]}}},
            r"rules\.macros\.user_known_internal_hosts: when\.argz: unknown field",
        ),
        (
            {"macros": {"user_known_internal_hosts": {"macro": "user_known_internal_hosts"}}},
            r"macro cycle user_known_internal_hosts -> user_known_internal_hosts",
        ),
        ({"macros": {"user_known_internal_hosts": {"args": ["$nolist"]}}}, "no list 'nolist'"),
        (
            {"exceptions": [{"rule": "tunnel.ssh_remote_forward", "when": {"macro": "nope"}}]},
            r"rule tunnel\.ssh_remote_forward\): no macro 'nope'",
        ),
    ],
    ids=[
        "unknown-macro",
        "unknown-fact",
        "unknown-key",
        "cycle",
        "unknown-list",
        "exception-macro",
    ],
)
def test_policy_mistakes_are_refused_naming_the_macro(rules: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(RulePackError) as err:
        RuleEngine.for_policy(_pol(**rules))
    assert "\n" not in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def test_check_refuses_a_bad_macro_with_exit_3(tmp_path: Path) -> None:
    pol = _pack(tmp_path, "extends: rl-strict\nrules:\n  macros: {user_known_nothing: {comm: x}}\n")
    out = CliRunner().invoke(app, ["check", "--policy", str(pol), "ls"])
    assert out.exit_code == 3 and "user_known_nothing" in out.output


# ------------------------------------------------------------------ the on-disk cache
def test_the_cache_holds_the_macros_and_hashes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_CACHE", str(tmp_path))
    rules_cache.load_default.cache_clear()
    try:
        parsed = rules_cache.load_default()
        names = [m.macro for m, _ in parsed[3]]
        assert "user_known_cpu_workloads" in names and "stratum_port" in names
        [path] = list(tmp_path.glob("rules-*.pickle"))
        with open(path, "rb") as f:
            stored = pickle.load(f)  # noqa: S301 - the file this test just had written
        assert [m.macro for m, _ in stored[4]] == names
        rules_cache.load_default.cache_clear()
        again = rules_cache.load_default()  # read back from the file
        assert [m.macro for m, _ in again[3]] == names and os.path.exists(path)
        # a pack that differs only in a macro is another cache entry
        files = rules_cache.pack_files()[:1]
        text = files[0].read_bytes()
        other = text + b"\nmacros:\n  - {macro: x, match: command}\n"
        assert rules_cache.content_key(files, [text]) != rules_cache.content_key(files, [other])
    finally:
        rules_cache.load_default.cache_clear()


def test_a_cache_without_macros_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_CACHE", str(tmp_path))
    rules_cache.load_default.cache_clear()
    try:
        rules_cache.load_default()
        [path] = list(tmp_path.glob("rules-*.pickle"))
        with open(path, "rb") as f:
            fmt, rules, sources, rep, _ = pickle.load(f)  # noqa: S301
        with open(path, "wb") as f:
            pickle.dump((fmt, rules, sources, rep), f)  # an older layout under the same name
        os.chmod(path, 0o600)
        rules_cache.load_default.cache_clear()
        assert rules_cache.load_default()[3]  # parsed again, macros and all
    finally:
        rules_cache.load_default.cache_clear()


# ------------------------------------------------------------------ the documented example
def test_the_docs_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "docs" / "rules.md").read_text()
    example = text[text.index("### Example") :]
    files = re.findall(r"`([\w.-]+\.yaml)`:\n\n```yaml\n(.*?)```", example, re.S)
    assert [n for n, _ in files] == ["policy.yaml", "site-rules.yaml", "fixtures.yaml"]
    for name, body in files:
        (tmp_path / name).write_text(body)
    console = re.search(r"```console\n(.*?)```", example, re.S).group(1)  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path)
    steps = re.findall(r"^\$ corral (.*)\n((?:[^$].*\n)*)", console, re.M)
    assert len(steps) == 2
    for args, expected in steps:
        out = CliRunner().invoke(app, shlex.split(args))
        assert out.exit_code == 0, out.output
        assert out.output.strip() == expected.strip()
    # and without the policy the example's first fixture would fail: the tuning is what passes it
    out = CliRunner().invoke(app, ["rules", "test", "fixtures.yaml", "-q"])
    assert out.exit_code == 1 and "probe_internal.internal_host" in out.output


def test_the_gateway_judges_with_the_policys_macros_and_exceptions() -> None:
    """The gateway's per-fact views of the engine keep the policy's tuning (they once dropped
    exceptions, and the gateway used the shipped packs whatever the policy said)."""
    from types import SimpleNamespace

    from corral.egress.gateway import Egress

    fact = {"source": "egress", "kind": "egress_attempt", "via": "raw",
            "dst": {"ip": "10.0.0.5", "port": 5432, "proto": "tcp", "class": "private"}}  # fmt: skip
    ssh = {**fact, "dst": {**fact["dst"], "port": 22}}
    pol = _pol(macros={"user_known_internal_destinations": {"dst.port": 5432}},
               exceptions=[{"rule": "probe_internal.address", "when": {"dst.ip": "10.0.0.9"}}])  # fmt: skip
    gw = Egress()
    gw.sandbox = SimpleNamespace(policy=pol)  # type: ignore[assignment]
    judge = lambda f: _ids(gw._engine_for(f)[0].match_event(f))  # noqa: E731
    assert "probe_internal.address" not in judge(fact)
    assert "probe_internal.address" in judge(ssh)
    assert "probe_internal.address" not in judge({**ssh, "dst": {**ssh["dst"], "ip": "10.0.0.9"}})


def test_rules_macros_lists_the_hooks_a_policy_can_fill_in() -> None:
    out = CliRunner().invoke(app, ["rules", "macros", "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["macro"]: r for r in map(json.loads, out.stdout.splitlines())}
    hooks = [n for n in rows if n.startswith("user_known_")]
    assert len(hooks) >= 5 and all(rows[n]["when"] is None for n in hooks)
    assert rows["stratum_port"]["when"] == {"dst.port": {"in": [3333, 4444, 5555, 7777, 14444,
                                                                14433, 45700]}}  # fmt: skip
    # every hook is referenced by some shipped rule (expanded: it shows as the never-condition)
    packs = "".join(p.read_text() for p in rules_cache.pack_files())
    assert all(packs.count(f"macro: {n}") >= 2 for n in hooks)  # defined, and used
