"""The image store's one error: which image, and why, in one line."""

from __future__ import annotations


class ImageError(Exception):
    """An image that cannot be used: unknown, corrupt, for another architecture, a full cache
    disk, an unreachable registry. `str()` names the image and the cause."""

    def __init__(self, image: str, cause: str, kind: str = "other") -> None:
        self.image = image
        self.cause = cause
        self.kind = kind
        super().__init__(f"image {image!r}: {cause}" if image else cause)
