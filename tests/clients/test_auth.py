"""Clients that can send a token, against a `corral serve` that asks for one (where the service's
token authentication is present): the rl-rock SDK through its `extra_headers`, and SWE-ReX's
`RemoteRuntime` through the per-sandbox `X-API-Key` that `/swerex/start` hands out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.conftest import HAS_AUTH
from tests.server.conftest import serve

pytestmark = [
    pytest.mark.skipif(not HAS_AUTH, reason="this corral serve asks for no token"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    from tests.server import conftest

    with serve(tmp_path_factory.mktemp("serve-auth")) as s:
        yield str(s["url"]), conftest.TOKEN  # type: ignore[attr-defined]


async def test_rock_sdk_sends_its_token(guarded: tuple[str, str]) -> None:
    pytest.importorskip("rock.sdk.sandbox.client")
    from rock.sdk.sandbox.client import Sandbox
    from rock.sdk.sandbox.config import SandboxConfig

    url, token = guarded
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises a bare Exception
        await Sandbox(SandboxConfig(base_url=url, startup_timeout=10)).start()
    sb = Sandbox(SandboxConfig(base_url=url, startup_timeout=30,
                               extra_headers={"XRL-Authorization": f"Bearer {token}"}))  # fmt: skip
    await sb.start()
    assert (await sb.arun("echo ok")).output == "ok\n"
    await sb.stop()


async def test_swerex_uses_the_per_sandbox_key(guarded: tuple[str, str], tmp_path: Path) -> None:
    pytest.importorskip("swerex.runtime.remote")
    from swerex.runtime.abstract import BashAction, CreateBashSessionRequest
    from swerex.runtime.remote import RemoteRuntime

    url, token = guarded
    assert httpx.post(f"{url}/apis/corral/v1/swerex/start").status_code == 401
    started = httpx.post(f"{url}/apis/corral/v1/swerex/start",
                         headers={"Authorization": f"Bearer {token}"}).json()  # fmt: skip
    rt = RemoteRuntime(host=started["url"], auth_token=started["auth_token"], timeout=10)
    await rt.create_session(CreateBashSessionRequest())
    assert (await rt.run_in_session(BashAction(command="echo ok"))).output == "ok"
    await rt.close()
