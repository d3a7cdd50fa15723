"""Who is calling `corral serve`: bearer tokens, tenants and who may touch which sandbox.

A token is required by default. The admin token comes from `--token-file FILE`, the `CORRAL_TOKEN`
environment variable, or `$CORRAL_HOME/serve.token` (made at first start, mode 0600, printed once).
`--tenants FILE` adds one token per tenant (lines `NAME TOKEN`). A request carries its token as
`Authorization: Bearer <token>` or ROCK's `XRL-Authorization: Bearer <token>` (a bare token too).

Sandboxes, episodes and approvals belong to the tenant whose token made them; another tenant gets 403
on every route (so it cannot read, run in, approve into or stop them); the admin sees all. The tenant
of the request travels in a context variable set by the app-wide dependency, so the lookups in the
manager and the route modules enforce ownership without each route taking a parameter. Code that
runs outside any request (the idle reaper, shutdown) has no tenant and is not restricted.
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

TOKEN_FILE_NAME = "serve.token"
MIN_TOKEN_LEN = 16
ADMIN = "admin"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class AuthError(Exception):
    """401 (no or unknown token) or 403 (another tenant's sandbox); the message says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TokenSetupError(ValueError):
    """`corral serve` cannot set up its tokens; the message names the file or option and the fix."""


@dataclass(frozen=True)
class Tenant:
    name: str
    admin: bool = False


TENANT: contextvars.ContextVar[Tenant | None] = contextvars.ContextVar(
    "corral_tenant", default=None
)


@dataclass
class Tokens:
    """Token -> tenant. `open` (--no-auth): every request is the admin, no token asked for."""

    by_token: dict[str, Tenant] = field(default_factory=dict)
    open: bool = False

    def who(self, token: str | None) -> Tenant | None:
        if self.open:
            return Tenant(ADMIN, admin=True)
        if not token:
            return None
        found = None
        for known, tenant in self.by_token.items():  # compare all: no early exit on a match
            if hmac.compare_digest(known.encode(), token.encode()):
                found = tenant
        return found


def token_of(request: Request) -> str | None:
    """The token a request carries, from `Authorization: Bearer` or ROCK's `XRL-Authorization`."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    xrl = request.headers.get("xrl-authorization", "").strip()
    if xrl:
        scheme, _, value = xrl.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else xrl
    return None


def dependency(tokens: Tokens):  # type: ignore[no-untyped-def]  # noqa: ANN201 - a FastAPI dependency
    """The app-wide dependency: 401 without a known token; sets the request's tenant."""

    async def require_token(request: Request) -> Tenant:
        token = token_of(request)
        tenant = tokens.who(token)
        if tenant is None:
            if token is None:
                raise AuthError(401, "no token: send `Authorization: Bearer <token>` (the token is "
                                "in $CORRAL_HOME/serve.token on the server, or what --token-file / "
                                "CORRAL_TOKEN set)")  # fmt: skip
            raise AuthError(401, "unknown token: check the token (server: $CORRAL_HOME/serve.token, "
                            "--token-file, CORRAL_TOKEN or --tenants)")  # fmt: skip
        TENANT.set(tenant)
        request.state.tenant = tenant
        return tenant

    return require_token


def current() -> Tenant | None:
    return TENANT.get()


def owner_name() -> str | None:
    """The owner to record on a new sandbox or episode: the calling tenant (None outside requests)."""
    t = TENANT.get()
    return t.name if t is not None else None


def may_use(owner: str | None) -> bool:
    t = TENANT.get()
    return t is None or t.admin or owner == t.name


def check_owner(owner: str | None, what: str) -> None:
    """403 unless the calling tenant owns `what` (or is the admin, or no request is calling)."""
    if not may_use(owner):
        raise AuthError(403, f"{what} belongs to another tenant: use the token that started it")


# ---------------------------------------------------------------- setting the tokens up (CLI)
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_token(path: Path, what: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TokenSetupError(f"{what} {path}: cannot read it ({err.strerror})") from None
    try:
        token = raw.decode().strip()
    except UnicodeDecodeError:
        raise TokenSetupError(f"{what} {path}: not UTF-8 text") from None
    _check_token(token, f"{what} {path}")
    return token


def _check_token(token: str, what: str) -> None:
    if len(token) < MIN_TOKEN_LEN:
        raise TokenSetupError(f"{what}: a token needs at least {MIN_TOKEN_LEN} characters "
                              "(make one: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")  # fmt: skip
    if any(c.isspace() or not c.isprintable() for c in token):
        raise TokenSetupError(f"{what}: a token cannot hold spaces or control characters")


def _others_can_read(path: Path) -> bool:
    return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def admin_token(home: Path, token_file: Path | None, env_token: str | None) -> tuple[str, str]:
    """The admin token and a line for the operator (printing the token only when it was just made)."""
    if token_file is not None:
        token = _read_token(token_file, "--token-file")
        note = f"admin token from {token_file}"
        if _others_can_read(token_file):
            note += f" (warning: others can read it: chmod 600 {token_file})"
        return token, note
    if env_token is not None:
        _check_token(env_token.strip(), "CORRAL_TOKEN")
        return env_token.strip(), "admin token from CORRAL_TOKEN"
    path = home / TOKEN_FILE_NAME
    if path.exists():
        if _others_can_read(path):
            raise TokenSetupError(f"{path}: others can read the admin token: chmod 600 {path}")
        return _read_token(path, "token file"), f"admin token in {path}"
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        raise TokenSetupError(f"{path}: cannot create the token file ({err.strerror}); "
                              "set CORRAL_HOME to a writable folder or pass --token-file") from None  # fmt: skip
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, (f"made an admin token, saved in {path} (mode 0600); it is shown only this "
                   f"once:\n  {token}\nclients send `Authorization: Bearer <token>` (corral.client "
                   "reads CORRAL_TOKEN)")  # fmt: skip


def tenant_tokens(path: Path) -> dict[str, Tenant]:
    """`--tenants FILE`: one `NAME TOKEN` per line; `#` starts a comment."""
    try:
        text = path.read_bytes().decode()
    except OSError as err:
        raise TokenSetupError(f"--tenants {path}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError:
        raise TokenSetupError(f"--tenants {path}: not UTF-8 text") from None
    out: dict[str, Tenant] = {}
    names: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"--tenants {path} line {n}"
        if len(parts) != 2:
            raise TokenSetupError(f"{where}: expected `NAME TOKEN`, got {len(parts)} field(s)")
        name, token = parts
        if not _NAME.match(name) or name == ADMIN:
            raise TokenSetupError(f"{where}: tenant name {name!r} must be letters, digits, _.@- "
                                  f"(at most 64) and not {ADMIN!r}")  # fmt: skip
        _check_token(token, where)
        if name in names:
            raise TokenSetupError(f"{where}: tenant {name!r} is listed twice")
        if token in out:
            raise TokenSetupError(f"{where}: this token is already {out[token].name!r}'s")
        names.add(name)
        out[token] = Tenant(name)
    if not out:
        raise TokenSetupError(f"--tenants {path}: no `NAME TOKEN` lines")
    return out


def setup(home: Path, *, host: str, no_auth: bool, token_file: Path | None,
          tenants_file: Path | None, env_token: str | None) -> tuple[Tokens, list[str]]:  # fmt: skip
    """The server's tokens and what to tell the operator; TokenSetupError when it cannot serve."""
    if no_auth:
        if not is_loopback(host):
            raise TokenSetupError(f"--no-auth is only accepted with a loopback --host (127.0.0.1, "
                                  f"::1), not {host!r}: anyone who reaches the port could run "
                                  "commands; drop --no-auth and give clients the token")  # fmt: skip
        if token_file or tenants_file:
            raise TokenSetupError("--no-auth cannot be combined with --token-file or --tenants")
        return Tokens(open=True), ["warning: --no-auth: any local process can use every sandbox"]
    token, note = admin_token(home, token_file, env_token)
    by_token = {token: Tenant(ADMIN, admin=True)}
    notes = [note]
    if tenants_file is not None:
        tenants = tenant_tokens(tenants_file)
        if token in tenants:
            raise TokenSetupError(f"--tenants {tenants_file}: the admin token is also "
                                  f"{tenants[token].name!r}'s: give the admin its own")  # fmt: skip
        by_token.update(tenants)
        notes.append(f"{len(tenants)} tenant(s) from {tenants_file}")
        if _others_can_read(tenants_file):
            notes.append(f"warning: others can read the tenant tokens: chmod 600 {tenants_file}")
    return Tokens(by_token), notes
