"""Policies: presets load, bad files are refused with the field named, nothing runs."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.policy import Policy, PolicyError, load_policy, preset_names
from corral.policy.loader import policy_from_mapping


def test_presets_exist_and_load() -> None:
    assert set(preset_names()) >= {"rl-strict", "dev", "observe"}
    strict = load_policy(None)
    assert strict.name == "rl-strict"
    assert strict.network.egress == "deny" and strict.network.allow == []
    assert strict.gpu.allowed is False
    assert "tests" in strict.filesystem.protected
    assert strict.limits.enforcement == "strict"
    assert load_policy("observe").observe_only is True
    assert load_policy("dev").gate.ask == "callback"


def test_file_extends_a_preset(tmp_path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("extends: rl-strict\nname: mine\nlimits: {memory: 512MiB, pids: 32}\n")
    p = load_policy(f)
    assert p.name == "mine" and p.limits.memory == 512 * 1024**2 and p.limits.pids == 32
    assert p.limits.cpus == 1.0  # the rest comes from the preset
    assert p.filesystem.protected == load_policy("rl-strict").filesystem.protected


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ("filesystem: {workspace: {mode: rwx}}", "filesystem.workspace.mode", "'rw' or 'ro'"),
        ("limits: {memory: lots}", "limits.memory", "not a size"),
        ("limits: {pids: 0}", "limits.pids", "greater than or equal to 1"),
        ("network: {egres: deny}", "network.egres", "unknown field"),
        ("filesystem: {protected: [a/../../up]}", "filesystem.protected", "without '..'"),
        ("responses: {mining: explode}", "responses.mining", "'alert', 'block', 'kill' or"),
        ("network: {allow: [{host: x, ports: [70000]}]}", "network.allow.0.ports.0", "less than"),
        ("gpu: yes", "gpu", "valid dictionary"),
    ],
)
def test_bad_policy_names_the_field(tmp_path, text: str, field: str, hint: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(f)
    msg = str(info.value)
    assert f"  {field}:" in msg and hint in msg and str(f) in msg


def test_not_yaml_and_missing_file(tmp_path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("limits: [unclosed")
    with pytest.raises(PolicyError, match="not YAML"):
        load_policy(f)
    with pytest.raises(PolicyError, match="not a preset"):
        load_policy(tmp_path / "missing.yaml")


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=12,
)
sections = st.dictionaries(
    st.sampled_from(["filesystem", "network", "limits", "gpu", "responses", "gate", "name", "x"]),
    yaml_values,
    max_size=4,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(sections)
def test_any_mapping_gives_a_policy_or_a_policy_error(data: dict) -> None:
    """Adversarial policy files never crash the loader with anything but PolicyError."""
    try:
        p = policy_from_mapping(yaml.safe_load(yaml.safe_dump(data)), "<fuzz>")
    except PolicyError as err:
        assert str(err).startswith("invalid policy <fuzz>")
    else:
        assert isinstance(p, Policy)


def test_null_limits_mean_no_limit(tmp_path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("extends: rl-strict\nlimits: {memory: null, cpus: null, file_size: null}\n")
    p = load_policy(f)
    assert (p.limits.memory, p.limits.cpus, p.limits.file_size) == (None, None, None)


def test_duplicate_keys_are_refused(tmp_path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("limits: {pids: 10}\nlimits: {memory: 1GiB}\n")
    with pytest.raises(PolicyError, match="duplicate key 'limits'"):
        load_policy(f)
