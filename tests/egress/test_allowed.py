"""Allowed traffic works end to end through the gateway, against real servers on loopback."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from corral.policy.model import EgressRule
from tests.egress.conftest import egress_events, network, wait_for_event

pytestmark = pytest.mark.unprivileged


async def test_curl_and_urllib_over_http(make_sandbox, serve):
    srv = serve()
    sb = await make_sandbox(network("web.test", "127.0.0.1"))
    r = await sb.exec(f"curl -sS http://web.test:{srv.port}/index.html")
    assert r.exit_code == 0 and r.stdout == "hello from loopback\n", r.output
    ev = await wait_for_event(sb, "egress.connection")
    assert ev.action == "allowed" and ev.dst.host == "web.test" and ev.dst.ip == "127.0.0.1"
    assert ev.evidence["bytes_down"] > len("hello from loopback\n") and ev.evidence["bytes_up"] > 0
    assert ev.evidence["duration_s"] >= 0 and ev.argv[0] == "curl" and ev.step == r.step
    r = await sb.exec(
        f'python3 -c "import urllib.request as u; '
        f"print(u.urlopen('http://web.test:{srv.port}/index.html').read().decode(), end='')\""
    )
    assert r.exit_code == 0 and r.stdout == "hello from loopback\n", r.output


async def test_curl_and_urllib_over_https(make_sandbox, serve, tls_context, tls_files):
    srv = serve(tls=tls_context)
    sb = await make_sandbox(network("web.test", "127.0.0.1"))
    await sb.write_file("ca.pem", tls_files["ca"].read_bytes())
    url = f"https://web.test:{srv.port}/index.html"
    r = await sb.exec(f"CURL_CA_BUNDLE=/workspace/ca.pem curl -sS {url}")
    assert r.exit_code == 0 and r.stdout == "hello from loopback\n", r.output
    r = await sb.exec(
        f'SSL_CERT_FILE=/workspace/ca.pem python3 -c "import urllib.request as u; '
        f"print(u.urlopen('{url}').read().decode(), end='')\""
    )
    assert r.exit_code == 0 and r.stdout == "hello from loopback\n", r.output
    ev = await wait_for_event(sb, "egress.connection")
    assert ev.evidence["sni"] == "web.test" and ev.dst.proto == "tls"


async def test_socks5_with_remote_resolution(make_sandbox, serve):
    srv = serve()
    sb = await make_sandbox(network("web.test", "127.0.0.1"))
    r = await sb.exec(f"curl -sS -x socks5h://127.0.0.1:3128 http://web.test:{srv.port}/")
    assert r.exit_code == 0 and "hello" in r.stdout, r.output
    ev = await wait_for_event(sb, "egress.connection")
    assert ev.evidence["via"] == "socks5" and ev.dst.host == "web.test"


def _tiny_wheel(root: Path) -> Path:
    whl = root / "tinypkg-0.1-py3-none-any.whl"
    files = {
        "tinypkg/__init__.py": "VALUE = 1\n",
        "tinypkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
        "tinypkg-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: corral-test\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "tinypkg-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("tinypkg-0.1.dist-info/RECORD", record)
    return whl


async def test_pip_download_from_a_local_index(make_sandbox, serve, tmp_path):
    root = tmp_path / "index"
    (root / "simple" / "tinypkg").mkdir(parents=True)
    whl = _tiny_wheel(root / "simple" / "tinypkg")
    (root / "simple" / "tinypkg" / "index.html").write_text(
        f'<html><body><a href="{whl.name}">{whl.name}</a></body></html>'
    )
    srv = serve(root)
    sb = await make_sandbox(network("pypi.test", "127.0.0.1"))
    r = await sb.exec(
        f"python3 -m pip download --no-cache-dir --disable-pip-version-check -q -d dl "
        f"--index-url http://pypi.test:{srv.port}/simple/ --trusted-host pypi.test tinypkg",
        timeout=60,
    )
    assert r.exit_code == 0, r.output
    assert (sb.workspace / "dl" / whl.name).read_bytes() == whl.read_bytes()
    assert any(e.dst.host == "pypi.test" for e in egress_events(sb, "egress.connection"))


async def test_git_clone_over_http(make_sandbox, serve, tmp_path):
    src = tmp_path / "src"
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(src)], check=True)
    (src / "README").write_text("cloned through corral\n")
    subprocess.run([*git, "-C", str(src), "add", "README"], check=True)
    subprocess.run([*git, "-C", str(src), "commit", "-qm", "one"], check=True)
    www = tmp_path / "git"
    www.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(www / "repo.git")], check=True)
    subprocess.run(["git", "-C", str(www / "repo.git"), "update-server-info"], check=True)
    srv = serve(www)
    sb = await make_sandbox(network(EgressRule(host="git.test", ports=[srv.port]), "127.0.0.1"))
    r = await sb.exec(f"git clone -q http://git.test:{srv.port}/repo.git out && cat out/README")
    assert r.exit_code == 0 and r.stdout == "cloned through corral\n", r.output


async def test_a_name_not_listed_is_refused(make_sandbox, serve):
    srv = serve()
    sb = await make_sandbox(network("127.0.0.1"))
    r = await sb.exec(f"curl -sS -f http://web.test:{srv.port}/")
    assert r.exit_code == 22
    [ev] = egress_events(sb, "egress.not_allowed")
    assert ev.action == "blocked" and ev.dst.host == "web.test"


async def test_an_allowed_name_resolving_to_a_private_address_is_refused(make_sandbox):
    sb = await make_sandbox(network("inside.test"))
    r = await sb.exec("curl -sS -f http://inside.test/")
    assert r.exit_code == 22
    [ev] = egress_events(sb, "probe_internal.address")
    assert ev.category == "probe_internal" and "10.0.0.5" in ev.message
    assert ev.action == "blocked" and ev.dst.ip == "10.0.0.5"  # dev: probe_internal -> alert


async def test_loopback_needs_explicit_listing_even_for_an_allowed_name(make_sandbox, serve):
    srv = serve()
    sb = await make_sandbox(network("web.test"))
    r = await sb.exec(f"curl -sS -f http://web.test:{srv.port}/")
    assert r.exit_code == 22
    [ev] = egress_events(sb, "probe_internal.address")
    assert "loopback" in ev.message
