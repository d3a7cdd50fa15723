"""Tokens and tenants of `corral serve`, against real servers on loopback.

No token: 401 on every route. Tenant B on tenant A's sandbox, episode or approval: 403 on every
route, and nothing of A's changed. The admin sees all. The token is made at first start (0600,
printed once); --no-auth only on loopback; TLS with --ssl-certfile/--ssl-keyfile.
"""

from __future__ import annotations

import os
import secrets
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.client import CorralAPIError, CorralClient
from tests.server.conftest import AUTH, TOKEN, serve

ROCK = "/apis/envs/sandbox/v1"
APPROVALS = "/apis/corral/v1/approvals"
ENV = "/apis/corral/v1/env"
ASKED = "echo 'def test_ok(): pass' > test_x.py && echo wrote"
ALICE = "alice-" + secrets.token_urlsafe(20)
BOB = "bob-" + secrets.token_urlsafe(20)
# routes anyone may read without a token: the API's description only
OPEN = {("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc")}  # fmt: skip


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """dev policy (asks a person about writing a test file), admin TOKEN, tenants alice and bob."""
    home = tmp_path_factory.mktemp("tenants-home")
    f = home / "tenants.txt"
    f.write_text(f"# name token\nalice {ALICE}\nbob   {BOB}  # the other tenant\n")
    f.chmod(0o600)
    with serve(home, "--policy", "dev", "--tenants", str(f)) as s:
        yield s


def _client(s: dict[str, object], token: str | None) -> httpx.Client:
    return httpx.Client(base_url=str(s["url"]), timeout=20, trust_env=False,
                        headers=_h(token) if token else {})  # fmt: skip


def _routes(s: dict[str, object]) -> list[tuple[str, str]]:
    paths = httpx.get(str(s["url"]) + "/openapi.json").json()["paths"]
    return [(m.upper(), p) for p, ops in paths.items() for m in ops]


def test_no_token_or_a_wrong_one_is_401_on_every_route(tenants: dict[str, object]) -> None:
    routes = _routes(tenants)
    assert len(routes) >= 20
    for bad in (None, "not-a-token-" + secrets.token_urlsafe(8)):
        with _client(tenants, bad) as c:
            for method, path in routes:
                url = path.replace("{approval_id}", "ap-0")
                r = c.request(method, url, json={} if method == "POST" else None)
                assert r.status_code == 401, (method, path, bad, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert "token" in r.json()["message"]
    # the description of the API is public, nothing else
    assert httpx.get(str(tenants["url"]) + "/openapi.json").status_code == 200


def test_both_header_forms_are_accepted(tenants: dict[str, object]) -> None:
    url = str(tenants["url"]) + "/apis/corral/v1/health"
    for headers in ({"Authorization": f"Bearer {ALICE}"}, {"XRL-Authorization": f"Bearer {ALICE}"},
                    {"XRL-Authorization": ALICE}, {"authorization": f"bearer {BOB}"}):  # fmt: skip
        assert httpx.get(url, headers=headers).status_code == 200, headers
    assert httpx.get(url, headers={"Authorization": f"Basic {ALICE}"}).status_code == 401


def _pending(c: httpx.Client, sid: str) -> dict:
    r = c.post(f"{ROCK}/run_in_session", json={"sandbox_id": sid, "command": ASKED})
    assert r.status_code == 202, r.text
    return r.json()["result"]["pending"]


def test_another_tenant_gets_403_on_every_route(tenants: dict[str, object]) -> None:
    with _client(tenants, ALICE) as a, _client(tenants, BOB) as b, _client(tenants, TOKEN) as adm:
        sid = a.post(f"{ROCK}/start", json={}).json()["result"]["sandbox_id"]
        assert a.post(f"{ROCK}/write_file", json={"sandbox_id": sid, "path": "secret.txt",
                                                  "content": "alice's"}).status_code == 200  # fmt: skip
        assert a.post(f"{ROCK}/create_session", json={"sandbox_id": sid,
                                                      "session": "s1"}).status_code == 200  # fmt: skip
        ap = _pending(a, sid)
        ep = a.post(f"{ENV}/reset", json={"task": {}}).json()["result"]["episode_id"]
        sb = {"sandbox_id": sid}
        tried = {
            ("GET", f"{ROCK}/is_alive"): lambda: b.get(f"{ROCK}/is_alive", params=sb),
            ("GET", f"{ROCK}/get_status"): lambda: b.get(f"{ROCK}/get_status", params=sb),
            ("POST", f"{ROCK}/execute"): lambda: b.post(f"{ROCK}/execute",
                                                        json={**sb, "command": "cat secret.txt"}),
            ("POST", f"{ROCK}/run_in_session"): lambda: b.post(f"{ROCK}/run_in_session",
                                                               json={**sb, "command": "id"}),
            ("POST", f"{ROCK}/create_session"): lambda: b.post(f"{ROCK}/create_session",
                                                               json={**sb, "session": "b"}),
            ("POST", f"{ROCK}/close_session"): lambda: b.post(f"{ROCK}/close_session",
                                                              json={**sb, "session": "s1"}),
            ("POST", f"{ROCK}/read_file"): lambda: b.post(f"{ROCK}/read_file",
                                                          json={**sb, "path": "secret.txt"}),
            ("POST", f"{ROCK}/write_file"): lambda: b.post(f"{ROCK}/write_file",
                                                           json={**sb, "path": "secret.txt",
                                                                 "content": "bob's"}),
            ("POST", f"{ROCK}/upload"): lambda: b.post(f"{ROCK}/upload",
                                                       data={**sb, "target_path": "secret.txt"},
                                                       files={"file": ("x", b"bob's")}),
            ("POST", f"{ROCK}/stop"): lambda: b.post(f"{ROCK}/stop", json=sb),
            ("GET", f"{APPROVALS}/{{approval_id}}"): lambda: b.get(f"{APPROVALS}/{ap['id']}"),
            ("POST", f"{APPROVALS}/{{approval_id}}"): lambda: b.post(
                f"{APPROVALS}/{ap['id']}", json={"decision": "approve", "by": "bob"}),
            ("POST", f"{ENV}/step"): lambda: b.post(f"{ENV}/step",
                                                    json={"episode_id": ep, "action": "ls"}),
            ("POST", f"{ENV}/close"): lambda: b.post(f"{ENV}/close", json={"episode_id": ep}),
            ("POST", f"{ENV}/reset"): lambda: b.post(f"{ENV}/reset", json={"episode_id": ep}),
        }  # fmt: skip
        for (method, path), call in tried.items():
            r = call()
            assert r.status_code == 403, (method, path, r.text)
            assert "another tenant" in r.json()["message"]
        # every route that names a sandbox, an episode or an approval was tried: a new one must be
        # added here (and be refused) before this passes
        global_routes = {("GET", "/apis/corral/v1/health"), ("POST", f"{ROCK}/start"),
                         ("POST", f"{ROCK}/start_async"), ("POST", "/run_code"),
                         ("GET", APPROVALS)}  # fmt: skip
        untried = set(_routes(tenants)) - set(tried) - global_routes
        assert not untried, f"routes with no tenant test: {sorted(untried)}"
        # bob sees none of alice's approvals; the list of all is alice's and the admin's
        assert b.get(APPROVALS, params={"status": "all"}).json()["result"] == []
        assert [x["id"] for x in a.get(APPROVALS).json()["result"]] == [ap["id"]]
        assert ap["id"] in [x["id"] for x in adm.get(APPROVALS).json()["result"]]
        # nothing of alice's changed: still alive, file intact, approval pending, episode open
        assert a.get(f"{ROCK}/is_alive", params=sb).json()["result"]["is_alive"] is True
        assert a.get(f"{APPROVALS}/{ap['id']}").json()["result"]["status"] == "pending"
        a.post(f"{APPROVALS}/{ap['id']}", json={"decision": "deny", "by": "alice"})
        got = a.post(f"{ROCK}/read_file", json={**sb, "path": "secret.txt"}).json()["result"]
        assert got["content"] == "alice's"
        assert a.post(f"{ENV}/step", json={"episode_id": ep, "action": "true"}).status_code == 200
        # the admin sees and stops everything
        assert adm.get(f"{ROCK}/get_status", params=sb).status_code == 200
        assert adm.post(f"{ENV}/close", json={"episode_id": ep}).status_code == 200
        assert adm.post(f"{ROCK}/stop", json=sb).status_code == 200


def test_tenants_own_what_they_start(tenants: dict[str, object]) -> None:
    with CorralClient(str(tenants["url"]), token=BOB) as bob, \
            CorralClient(str(tenants["url"]), token=ALICE) as alice:  # fmt: skip
        sid = bob.start()["result"]["sandbox_id"]
        assert bob.execute(sid, "echo mine")["result"]["stdout"] == "mine\n"
        with CorralClient(str(tenants["url"]), token=TOKEN) as admin:  # each counts its own
            counts = [c.health()["result"]["sandboxes"] for c in (alice, bob, admin)]
        assert counts[1] >= 1 and counts[0] + counts[1] == counts[2]
        with pytest.raises(CorralAPIError) as err:
            alice.execute(sid, "echo theirs")
        assert err.value.status_code == 403
        bob.stop(sid)


def test_token_made_at_first_start_0600_and_printed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with serve(home, token=None, ready_token=None) as s:
        f = home / "serve.token"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        token = f.read_text().strip()
        assert len(token) >= 32
        log = (home / "serve.log").read_text()
        assert token in log and str(f) in log
        # a client on this host finds it there (no CORRAL_TOKEN set)
        monkeypatch.delenv("CORRAL_TOKEN")
        monkeypatch.setenv("CORRAL_HOME", str(home))
        with CorralClient(str(s["url"])) as c:
            assert c.health()["status"] == "Success"
    with serve(home, token=None, ready_token=token):
        log = (home / "serve.log").read_text()
        assert token not in log and str(home / "serve.token") in log
    assert (home / "serve.token").read_text().strip() == token


def _serve_fails(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    e = dict(os.environ, CORRAL_HOME=str(home))
    e.pop("CORRAL_TOKEN", None)
    e.update(env or {})
    src = str(Path(__file__).resolve().parents[2] / "src")
    e["PYTHONPATH"] = src
    p = subprocess.run([sys.executable, "-m", "corral.cli.main", "serve", "--port", "9", *args],
                       env=e, capture_output=True, text=True, timeout=60)  # fmt: skip
    return p.returncode, p.stderr


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--no-auth", "--host", "0.0.0.0"], None, "only accepted with a loopback --host"),
        (["--token-file", "/nonexistent/token"], None, "--token-file /nonexistent/token"),
        ([], {"CORRAL_TOKEN": "short"}, "CORRAL_TOKEN: a token needs at least 16"),
        (["--ssl-certfile", "/nonexistent.pem"], None, "--ssl-keyfile go together"),
        (["--log-level", "bogus"], None, "--log-level must be one of"),
    ],
)
def test_bad_auth_setup_is_refused_with_exit_2(tmp_path: Path, args: list[str],
                                               env: dict[str, str] | None, needle: str) -> None:  # fmt: skip
    code, err = _serve_fails(tmp_path, *args, env=env)
    assert code == 2, err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "serve.token").exists() or args[:1] != ["--no-auth"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("alice\n", "line 1: expected `NAME TOKEN`"),
        (f"alice {ALICE}\nalice {BOB}\n", "line 2: tenant 'alice' is listed twice"),
        (f"alice {ALICE}\nbob {ALICE}\n", "line 2: this token is already 'alice'"),
        (f"admin {ALICE}\n", "line 1: tenant name 'admin'"),
        ("# nothing\n", "no `NAME TOKEN` lines"),
        (f"alice {TOKEN}\n", "the admin token is also 'alice'"),
    ],
)
def test_bad_tenants_file_names_the_line(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "tenants"
    f.write_text(content)
    code, err = _serve_fails(tmp_path, "--tenants", str(f), env={"CORRAL_TOKEN": TOKEN})
    assert code == 2 and needle in err, err


def test_an_others_readable_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "serve.token").write_text(secrets.token_urlsafe(32))
    (tmp_path / "serve.token").chmod(0o644)
    code, err = _serve_fails(tmp_path)
    assert code == 2 and "chmod 600" in err, err


def test_no_auth_on_loopback_warns_and_asks_no_token(tmp_path: Path) -> None:
    with serve(tmp_path, "--no-auth", token=None, ready_token=None) as s:
        assert "warning: --no-auth" in (tmp_path / "serve.log").read_text()
        r = httpx.post(str(s["url"]) + f"{ROCK}/start", json={})
        assert r.status_code == 200, r.text
        sid = r.json()["result"]["sandbox_id"]
        assert (
            httpx.post(str(s["url"]) + f"{ROCK}/stop", json={"sandbox_id": sid}).status_code == 200
        )
    assert not (tmp_path / "serve.token").exists()


def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(cert))
    with serve(tmp_path, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
               scheme="https", verify=ctx) as s:  # fmt: skip
        assert str(s["url"]).startswith("https://")
        with CorralClient(str(s["url"]), verify=ctx) as c:
            assert c.health()["status"] == "Success"
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port gets nothing
            httpx.get(str(s["url"]).replace("https", "http") + "/apis/corral/v1/health",
                      headers=AUTH, timeout=5)  # fmt: skip
