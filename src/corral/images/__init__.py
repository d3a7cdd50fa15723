"""Task images: an OCI/docker image or a root filesystem as a sandbox's root (see store.py)."""

from corral.images.config import ImageConfig
from corral.images.errors import ImageError
from corral.images.store import Image, ImageStore

__all__ = ["Image", "ImageConfig", "ImageError", "ImageStore"]
