"""Issue 11's scale acceptance through `corral serve`: 300 sandboxes open at once from 4 tenants,
every command's exit code and output right, each tenant's sandboxes its own."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.server.conftest import serve

ROCK = "/apis/envs/sandbox/v1"
TENANTS = {f"t{i}": f"tenant-token-{i}-" + "x" * 24 for i in range(4)}
PER_TENANT = 75


@pytest.mark.slow
@pytest.mark.unprivileged
async def test_300_sandboxes_from_4_tenants_all_answer_right(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    f = home / "tenants.txt"
    f.write_text("".join(f"{name} {tok}\n" for name, tok in TENANTS.items()))
    f.chmod(0o600)
    with serve(home, "--policy", "dev", "--tenants", str(f)) as s:
        gate = asyncio.Semaphore(16)

        async def one(client: httpx.AsyncClient, i: int) -> tuple[str, dict]:
            async with gate:
                r = await client.post(f"{ROCK}/start", json={"image": "python:3.11"})
                body = r.json()
                assert r.status_code == 200 and body["status"] == "Success", body
                return body["result"]["sandbox_id"], body

        clients = {name: httpx.AsyncClient(base_url=str(s["url"]), timeout=120, trust_env=False,
                                           headers={"Authorization": f"Bearer {tok}"})
                   for name, tok in TENANTS.items()}  # fmt: skip
        try:
            started = await asyncio.gather(*(one(c, i) for c in clients.values()
                                             for i in range(PER_TENANT)))  # fmt: skip
            ids = [sid for sid, _ in started]
            assert len(set(ids)) == len(TENANTS) * PER_TENANT
            owners = [name for name in clients for _ in range(PER_TENANT)]

            async def run(k: int) -> dict:
                async with gate:
                    c = clients[owners[k]]
                    r = await c.post(f"{ROCK}/execute", json={
                        "sandbox_id": ids[k], "command": ["sh", "-c", f"echo {k}; exit {k % 7}"]})  # fmt: skip
                    return r.json()

            answers = await asyncio.gather(*(run(k) for k in range(len(ids))))
            wrong = [(k, a) for k, a in enumerate(answers)
                     if (a.get("result") or {}).get("exit_code") != k % 7
                     or (a.get("result") or {}).get("stdout") != f"{k}\n"]  # fmt: skip
            assert not wrong, wrong[:3]
            # a tenant never reaches another's sandbox, even at this load
            other = await clients["t1"].post(f"{ROCK}/execute",
                                             json={"sandbox_id": ids[0], "command": "true"})  # fmt: skip
            assert other.status_code == 403
            await asyncio.gather(*(clients[owners[k]].post(f"{ROCK}/stop", json={"sandbox_id": ids[k]})
                                   for k in range(len(ids))))  # fmt: skip
        finally:
            for c in clients.values():
                await c.aclose()
