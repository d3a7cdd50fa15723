"""The wording of request errors, shared by the app's handlers and ROCK's envelope (`rock.py`).

One spelling for every face of `corral serve`: a validation error names the field (`body
(character 14)` for a JSON syntax error, `env.K` for a nested one), and a body that is not UTF-8
JSON says so instead of Starlette's "There was an error parsing the body". ROCK's routes answer the
same words with HTTP 200 `Failed` (and the status in `X-Corral-Status`); the others with the status.
"""

from __future__ import annotations

import errno
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException


def field_name(loc: tuple[Any, ...]) -> str:
    """The field a validation error is about, as a client spells it."""
    if len(loc) == 2 and loc[0] == "body" and isinstance(loc[1], int):  # a JSON syntax error
        return f"body (character {loc[1]})"
    if loc and loc[0] in ("body", "query", "form", "path", "header", "cookie"):
        loc = loc[1:]  # where it came from; a field may itself be called `path`
    return ".".join(str(p) for p in loc) or "body"


def invalid_request(err: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    """A one-line message naming every field at fault, and the per-field detail."""
    detail = [{"field": field_name(tuple(e.get("loc", ()))), "message": e.get("msg"),
               "type": e.get("type")} for e in err.errors()]  # fmt: skip
    msg = "invalid request: " + "; ".join(f"{d['field']}: {d['message']}" for d in detail)
    return msg, detail


def http_error_message(err: HTTPException) -> str:
    """Starlette's own errors (an unknown path, a body that cannot be parsed) in corral's words."""
    msg = str(err.detail)
    if err.status_code == 400 and "parsing the body" in msg:
        msg = "body: cannot be read as JSON (not UTF-8 text, or not JSON)"
    return msg


def os_error_status(err: OSError) -> tuple[int, str]:
    """An OS error of a request (a path too long, a full disk) as an HTTP status and a message."""
    what = f"{err.strerror or err}" + (f": {str(err.filename)[:120]!r}" if err.filename else "")
    if err.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EINVAL,
                     errno.EEXIST):  # fmt: skip
        return 400, f"path: {what}"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return 507, f"the server is out of disk space ({what}); free some and retry"
    if err.errno == errno.EFBIG:
        return 413, f"file too large for the sandbox's limit ({what})"
    return 500, f"the server could not do it: {what}"
