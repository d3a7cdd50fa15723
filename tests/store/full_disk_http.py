"""Run inside a private mount namespace whose CORRAL_HOME is a small tmpfs (see test_faults.py):
`corral serve` with the disk filled under it; print what the HTTP API answered as one JSON object."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROCK = "/apis/envs/sandbox/v1"


def fill(path: Path) -> str:
    """Write `path` until the disk refuses; its error."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as err:
        return err.strerror or str(err)
    finally:
        os.close(fd)


def main(home: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "full-disk-" + "t" * 20
    env = {**os.environ, "CORRAL_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "corral.cli.main", "serve", "--port", str(port),
                             "--policy", "dev"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    out: dict = {}
    try:
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        for _ in range(600):
            try:
                if c.get("/apis/corral/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        sid = c.post(f"{ROCK}/start", json={}).json()["result"]["sandbox_id"]
        run = {"sandbox_id": sid, "command": "echo one"}
        out["first"] = c.post(f"{ROCK}/run_in_session", json=run).json()["result"]["output"]
        filler = home / "filler"
        out["fill_error"] = fill(filler)
        r = c.post(f"{ROCK}/run_in_session", json={**run, "command": "touch ran-while-full"})
        out["full_status"], out["full_message"] = r.status_code, r.json()["message"]
        out["ran"] = c.post(
            f"{ROCK}/execute", json={"sandbox_id": sid, "command": "ls"}
        ).status_code
        filler.unlink()
        r = c.post(f"{ROCK}/run_in_session", json={**run, "command": "ls; echo two"})
        out["after"] = r.json()["result"]["output"]
        c.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(os.environ["CORRAL_HOME"]))))
