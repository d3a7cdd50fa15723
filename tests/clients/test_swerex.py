"""SWE-ReX's `RemoteRuntime`, unchanged, against a corral sandbox served by a real `corral serve`."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytest.importorskip("swerex.runtime.remote", reason="the clients extra (swe-rex) is not installed")

from swerex.exceptions import (  # noqa: E402
    CommandTimeoutError,
    NonZeroExitCodeError,
    SessionDoesNotExistError,
    SessionExistsError,
    SwerexException,
)
from swerex.runtime.abstract import (  # noqa: E402
    BashAction,
    CloseBashSessionRequest,
    Command,
    CreateBashSessionRequest,
    ReadFileRequest,
    UploadRequest,
    WriteFileRequest,
)
from swerex.runtime.remote import RemoteRuntime  # noqa: E402

from corral.server.swerex import PREFIX  # noqa: E402


def _runtime(url: str) -> RemoteRuntime:
    started = httpx.post(f"{url}{PREFIX}/start", timeout=30).json()
    return RemoteRuntime(host=started["url"], auth_token=started["auth_token"], timeout=10)


async def test_remote_runtime_calls(url: str, tmp_path: Path) -> None:
    rt = _runtime(url)
    assert (await rt.is_alive()).is_alive
    await rt.create_session(CreateBashSessionRequest())
    with pytest.raises(SessionExistsError):
        await rt.create_session(CreateBashSessionRequest())
    obs = await rt.run_in_session(BashAction(command="cd /tmp && X=5 && echo $X"))
    assert obs.output == "5" and obs.exit_code == 0
    obs = await rt.run_in_session(BashAction(command="echo $X; pwd"))
    assert obs.output == "5\n/tmp"
    with pytest.raises(NonZeroExitCodeError, match="exit code 3"):
        await rt.run_in_session(BashAction(command="(exit 3)"))
    obs = await rt.run_in_session(BashAction(command="(exit 3)", check="silent"))
    assert obs.exit_code == 3
    obs = await rt.run_in_session(BashAction(command="false", check="ignore"))
    assert obs.exit_code is None
    with pytest.raises(CommandTimeoutError):
        await rt.run_in_session(BashAction(command="sleep 30", timeout=0.5))
    with pytest.raises(SessionDoesNotExistError):
        await rt.run_in_session(BashAction(command="true", session="nope"))
    res = await rt.execute(Command(command=["sh", "-c", "echo out; echo err >&2; exit 2"]))
    assert (res.stdout, res.stderr, res.exit_code) == ("out\n", "err\n", 2)
    with pytest.raises(NonZeroExitCodeError):
        await rt.execute(Command(command="exit 2", shell=True, check=True))
    with pytest.raises(CommandTimeoutError):
        await rt.execute(Command(command="sleep 30", shell=True, timeout=0.5))
    await rt.write_file(WriteFileRequest(path="/workspace/a/b.txt", content="hello"))
    assert (await rt.read_file(ReadFileRequest(path="/workspace/a/b.txt"))).content == "hello"
    with pytest.raises(FileNotFoundError):
        await rt.read_file(ReadFileRequest(path="/workspace/missing.txt"))
    (tmp_path / "repo" / "pkg").mkdir(parents=True)
    (tmp_path / "repo" / "pkg" / "m.py").write_text("X = 1\n")
    (tmp_path / "one.txt").write_text("1")
    await rt.upload(
        UploadRequest(source_path=str(tmp_path / "repo"), target_path="/workspace/repo")
    )
    await rt.upload(
        UploadRequest(source_path=str(tmp_path / "one.txt"), target_path="/tmp/one.txt")
    )
    obs = await rt.run_in_session(BashAction(command="cat /workspace/repo/pkg/m.py /tmp/one.txt"))
    assert obs.output == "X = 1\n1"
    await rt.close_session(CloseBashSessionRequest())
    with pytest.raises(SessionDoesNotExistError):
        await rt.run_in_session(BashAction(command="true"))
    await rt.close()
    assert not (await rt.is_alive()).is_alive


async def test_the_api_key_is_required(url: str) -> None:
    started = httpx.post(f"{url}{PREFIX}/start", timeout=30).json()
    wrong = RemoteRuntime(host=started["url"], auth_token="wrong", timeout=10)
    assert not (await wrong.is_alive()).is_alive
    with pytest.raises(Exception, match="401"):
        await wrong.create_session(CreateBashSessionRequest())
    await RemoteRuntime(host=started["url"], auth_token=started["auth_token"]).close()


async def test_a_rome_act_raises_with_its_reason(url: str) -> None:
    rt = _runtime(url)
    await rt.create_session(CreateBashSessionRequest())
    with pytest.raises(SwerexException, match="episode ended by corral's policy: tunnel"):
        await rt.run_in_session(BashAction(command="ssh -R 8080:localhost:22 u@203.0.113.7"))
    assert not (await rt.is_alive()).is_alive
    with pytest.raises(SwerexException, match="terminated"):
        await rt.execute(Command(command="true", shell=True))
