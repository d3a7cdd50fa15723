"""The external tools the image store drives (skopeo, umoci, tar), and what their failures mean.

skopeo fetches and converts every image transport into an OCI layout (verifying each blob's digest
on the way), umoci unpacks a layout into a root filesystem (as an ordinary user with `--rootless`,
which gives the user every file); tar handles bare root filesystems. Their stderr is turned into one
cause a person can act on.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from corral.images.errors import ImageError

_NET = re.compile(
    r"dial tcp|no such host|connection refused|network is unreachable|i/o timeout|"
    r"TLS handshake|lookup [^ ]+ on|server misbehaving|temporary failure in name resolution|"
    r"no route to host|pinging container registry",
    re.IGNORECASE,
)
_UNKNOWN = re.compile(
    r"manifest unknown|name unknown|not found|repository does not exist|requested access to the "
    r"resource is denied|no such image|does not match any|no descriptor found",
    re.IGNORECASE,
)
_CORRUPT = re.compile(
    r"unexpected EOF|invalid tar header|archive/tar|gzip: invalid|invalid checksum|"
    r"digest did not match|does not match digest|Digest did not match|invalid character|"
    r"unexpected end of JSON|not a valid|is not a tar|parsing|no such file or directory|"
    r"invalid argument|zstd|magic number",
    re.IGNORECASE,
)
_FULL = re.compile(r"no space left on device|disk quota exceeded", re.IGNORECASE)


def require(tool: str, package: str | None = None) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ImageError(
            "", f"{tool} is not installed (sudo apt-get install -y {package or tool}, or "
            "`make install`)",
        )  # fmt: skip
    return found


def classify(stderr: str) -> str:
    """The kind of a tool's failure: full, network, unknown, corrupt or other."""
    if _FULL.search(stderr):
        return "full"
    if _NET.search(stderr):
        return "network"
    if _UNKNOWN.search(stderr):
        return "unknown"
    if _CORRUPT.search(stderr):
        return "corrupt"
    return "other"


def last_line(stderr: str) -> str:
    """The tool's own last word, shortened: the detail after corral's cause."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else "no message"
    text = re.sub(r'^time="[^"]*" level=\w+ msg="?', "", text).rstrip('"')
    return text[:300]


def run(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
