"""The rl-rock SDK (`rock.sdk.sandbox.client.Sandbox`), unchanged, against a real `corral serve`."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

pytest.importorskip(
    "rock.sdk.sandbox.client", reason="the clients extra (rl-rock) is not installed"
)

from rock.actions import (  # noqa: E402
    Action,
    Command,
    CreateBashSessionRequest,
    ReadFileRequest,
)
from rock.sdk.sandbox.client import Sandbox  # noqa: E402
from rock.sdk.sandbox.config import SandboxConfig  # noqa: E402

from corral.server.manager import MAX_SESSIONS  # noqa: E402

ROCK = "/apis/envs/sandbox/v1"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def _sandbox(url: str, **config: object) -> Sandbox:
    sb = Sandbox(SandboxConfig(base_url=url, image="python:3.11", startup_timeout=30, **config))
    await sb.start()
    return sb


def _raw(url: str, sid: str) -> dict:
    return httpx.get(f"{url}{ROCK}/get_status", params={"sandbox_id": sid}, timeout=10).json()


async def test_check_modes_and_job_lines(url: str) -> None:
    sb = await _sandbox(url)
    assert (await sb.arun("echo hi")).output == "hi\n"
    with pytest.raises(Exception, match="failed with exit code 3"):
        await sb.arun("(exit 3)")  # check=raise, ROCK's default: Failed, and the SDK raises
    await sb.create_session(CreateBashSessionRequest(session="s", env={"A": "b c"}))
    obs = await sb.run_in_session(Action(command="(exit 3)", session="s", check="silent"))
    assert obs.exit_code == 3
    obs = await sb.run_in_session(Action(command="false", session="s", check="ignore"))
    assert obs.exit_code is None
    # ROCK's bash is interactive: `cmd &` prints `[N] PID`, and that PID answers kill -0
    obs = await sb.run_in_session(Action(command="echo $A; sleep 30 &", session="s"))
    lines = obs.output.splitlines()
    assert lines[0] == "b c" and lines[-1].startswith("[1] ")
    pid = lines[-1].split()[1]
    assert (await sb.run_in_session(Action(command=f"kill -0 {pid}", session="s"))).exit_code == 0
    await sb.run_in_session(Action(command=f"kill {pid}; wait {pid}", session="s", check="silent"))
    with pytest.raises(Exception, match="failed with exit code 1"):
        await sb.run_in_session(Action(command=f"kill -0 {pid}", session="s"))
    await sb.stop()


async def test_nohup_mode_and_execute_script(url: str) -> None:
    sb = await _sandbox(url)
    obs = await sb.arun("echo from-nohup", mode="nohup", wait_timeout=60, wait_interval=5)
    assert obs.exit_code == 0 and obs.output.strip() == "from-nohup", obs
    obs = await sb.process.execute_script("echo scripted; exit 0", wait_timeout=60, wait_interval=5)
    assert obs.exit_code == 0 and "scripted" in obs.output
    listing = (await sb.execute(Command(command=["ls", "/tmp"]))).stdout
    assert not [n for n in listing.split() if n.startswith("script_")], "cleanup did not run"
    await sb.stop()


async def test_files_in_the_private_tmp(url: str, tmp_path: Path) -> None:
    sb = await _sandbox(url)
    local = tmp_path / "payload.sh"
    local.write_text("echo uploaded\n")
    up = await sb.upload_by_path(str(local), "/tmp/dir/payload.sh")
    assert up.success, up.message
    assert (await sb.arun("bash /tmp/dir/payload.sh")).output == "uploaded\n"
    assert (await sb.write_file_by_path("x=1\n", "/tests/conf.sh")).success
    assert (await sb.read_file(ReadFileRequest(path="/tests/conf.sh"))).content == "x=1\n"
    # the agent plants a symlink in /tmp: a transfer through it is refused, the host untouched
    before = Path("/etc/hostname").read_bytes()
    await sb.arun("ln -s /etc /tmp/evil && ln -s /etc/hostname /tmp/h")
    bad = await sb.write_file_by_path("pwned", "/tmp/evil/hostname")
    assert not bad.success and "not a plain directory" in bad.message
    bad = await sb.write_file_by_path("pwned", "/tmp/h")
    assert not bad.success and "symlink" in bad.message
    assert Path("/etc/hostname").read_bytes() == before
    # the SDK's directory upload: a tarball to /tmp, extracted by a nohup command
    (tmp_path / "proj" / "pkg").mkdir(parents=True)
    (tmp_path / "proj" / "pkg" / "m.py").write_text("line1\nline2\nline3\n")
    obs = await sb.fs.upload_dir(tmp_path / "proj", "/workspace/proj", extract_timeout=60)
    assert obs.exit_code == 0, obs
    text = await sb.read_file_by_line_range("/workspace/proj/pkg/m.py", start_line=2)
    assert text.content == "line2\nline3\n"
    bad = await sb.write_file_by_path("pwned", "/etc/motd-corral")
    assert not bad.success and "outside the workspace" in bad.message
    assert not os.path.exists("/etc/motd-corral")
    await sb.stop()


async def test_per_call_sessions_do_not_exhaust_the_sandbox(url: str) -> None:
    sb = await _sandbox(url)
    await sb.create_session(CreateBashSessionRequest(session="bash-1"))
    obs = await sb.run_in_session(Action(command="sleep 60 &", session="bash-1"))
    pid = obs.output.split()[-1]
    for _ in range(MAX_SESSIONS * 3):  # the SDK opens a session per arun and never closes one
        assert (await sb.arun("true")).exit_code == 0
    raw = _raw(url, sb.sandbox_id)
    assert len(raw["result"]["corral"]["sessions"]) <= MAX_SESSIONS + 1
    assert raw["safety"]["events"] == 0 and raw["safety"]["penalty"] == 0.0
    # an SDK-style session with a job still running (its nohup job) was kept, and its job
    assert (
        await sb.run_in_session(Action(command=f"kill -0 {pid}", session="bash-1"))
    ).exit_code == 0
    await sb.stop()


def test_is_alive_of_an_unknown_sandbox_is_false(url: str) -> None:
    body = httpx.get(f"{url}{ROCK}/is_alive", params={"sandbox_id": "sb-nope"}).json()
    assert body["status"] == "Success" and body["result"]["is_alive"] is False
    assert "sb-nope" in body["result"]["message"]


async def test_resources_tokens_restart_and_delete(url: str) -> None:
    sb = await _sandbox(url, memory="512m", cpus=0.5)
    status = await sb.get_status()
    assert (status.memory, status.cpus, status.image) == ("512m", 0.5, "python:3.11")
    big = await _sandbox(url, memory="64g", cpus=64)  # capped at rl-strict's 2 GiB / 1 core
    status = await big.get_status()
    assert (status.memory, status.cpus) == ("2g", 1.0)
    limits = _raw(url, sb.sandbox_id)["result"]["corral"]["limits"]
    if str(limits.get("memory")).startswith(
        "cgroup"
    ):  # the request's 256 MiB is what the kernel holds it to
        small = await _sandbox(url, memory="256m")
        await small.create_session(CreateBashSessionRequest(session="m"))
        obs = await small.run_in_session(Action(
            command="python3 -c 'b = bytearray(400 * 1024 * 1024); print(len(b))'",
            session="m", check="silent"))  # fmt: skip
        assert obs.exit_code != 0 and "419430400" not in obs.output
        obs = await small.run_in_session(Action(
            command="python3 -c 'b = bytearray(100 * 1024 * 1024); print(len(b))'",
            session="m", check="silent"))  # fmt: skip
        assert obs.exit_code == 0 and "104857600" in obs.output
        await small.stop()
    assert await sb._oss.ensure_setup() is False  # no object store: uploads use /upload
    with pytest.raises(Exception, match="stop it before deleting"):
        await sb.delete()
    await sb.stop()
    assert (await sb.is_alive()).is_alive is False
    await sb.restart()
    assert (await sb.is_alive()).is_alive is True
    assert (await sb.arun("echo back")).output == "back\n"
    await sb.stop()
    await sb.delete()
    await big.stop()


async def test_a_rome_act_ends_the_episode_with_its_reason(url: str) -> None:
    sb = await _sandbox(url)
    with pytest.raises(Exception, match="episode ended by corral's policy: tunnel") as err:
        await sb.arun("ssh -R 8080:localhost:22 u@203.0.113.7")
    assert "'terminated': True" in str(err.value)
    assert (await sb.is_alive()).is_alive is False
    with pytest.raises(Exception, match="terminated"):
        await sb.arun("echo after")
    with pytest.raises(Exception, match="ended by corral's policy"):
        await sb.restart()
    await sb.stop()


def test_rock_gem_env_routes(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`rock.sdk.envs.make` (the SDK's GEM env client) against corral's env routes."""
    from rock.sdk.envs import make

    monkeypatch.setenv("ROCK_BASE_URL", url)
    env = make("corral/shell")
    obs, info = env.reset(seed=1)
    assert info["safety"]["terminated"] is False
    obs, reward, term, trunc, info = env.step("echo hi")
    assert obs == "hi\n" and (reward, term) == (0.0, False)
    obs, reward, term, trunc, info = env.step("ssh -R 8080:localhost:22 u@203.0.113.7")
    assert term is True and info["safety"]["terminated"] is True and reward < 0
    env.close()
    with pytest.raises(Exception, match="env_id"):
        make("corral/nope")
