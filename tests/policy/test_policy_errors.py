"""Policies that cannot be used are refused with one line naming the input and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.policy.loader import PolicyError, load_policy


def _write(d: Path, name: str, text: str | bytes) -> Path:
    p = d / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_an_extends_loop_is_named(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.yaml", f"extends: {tmp_path / 'b.yaml'}\n")
    _write(tmp_path, "b.yaml", f"extends: {a}\n")
    with pytest.raises(
        PolicyError, match=r"extends: a loop \(.*a\.yaml -> .*b\.yaml -> .*a\.yaml\)"
    ):
        load_policy(a)


def test_a_policy_extending_itself_is_named(tmp_path: Path) -> None:
    s = _write(tmp_path, "s.yaml", "")
    s.write_text(f"extends: {s}\n")
    with pytest.raises(PolicyError, match="extends: a loop"):
        load_policy(s)


def test_a_chain_without_a_loop_still_loads_and_leaves_no_state(tmp_path: Path) -> None:
    base = _write(tmp_path, "base.yaml", "extends: rl-strict\nlimits: {pids: 64}\n")
    top = _write(tmp_path, "top.yaml", f"extends: {base}\nlimits: {{cpus: 2}}\n")
    for _ in range(2):  # loading the same chain twice is not a loop
        p = load_policy(top)
        assert p.limits.pids == 64 and p.limits.cpus == 2
    assert load_policy(base).limits.pids == 64


def test_non_utf8_policy(tmp_path: Path) -> None:
    p = _write(tmp_path, "latin1.yaml", b"name: caf\xe9\n")
    with pytest.raises(PolicyError, match=r"not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_policy(p)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_infinite_or_nan_numbers_are_refused(tmp_path: Path, value: str) -> None:
    p = _write(tmp_path, "inf.yaml", f"extends: rl-strict\nlimits: {{command_timeout: {value}}}\n")
    with pytest.raises(PolicyError, match="limits.command_timeout: must be a finite number"):
        load_policy(p)


def test_extends_must_be_a_name(tmp_path: Path) -> None:
    p = _write(tmp_path, "x.yaml", "extends: [rl-strict]\n")
    with pytest.raises(PolicyError, match="extends: must be a preset name or a file path"):
        load_policy(p)


def test_nul_bytes(tmp_path: Path) -> None:
    p = _write(tmp_path, "nul.yaml", b"name: a\x00b\n")
    with pytest.raises(PolicyError, match="NUL byte"):
        load_policy(p)
