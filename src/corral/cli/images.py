"""`corral images list|pull|import|rm|prune`: the task image cache under $CORRAL_HOME/images.

Exit 0 on success, 1 when an image cannot be used or removed (unknown, corrupt, other architecture,
full cache disk, registry not reachable, in use), each with a one-line error naming the image.
"""

from __future__ import annotations

import json
import time

import typer

images_app = typer.Typer(help="Task images: import, pull, list and remove.", no_args_is_help=True)
FAILED = 1


def register(app: typer.Typer) -> None:
    app.add_typer(images_app, name="images")


def _store():  # type: ignore[no-untyped-def]
    from corral.images import ImageStore

    return ImageStore()


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"corral: {err}", err=True)
    return typer.Exit(FAILED)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GiB"


def _row(img) -> dict:  # type: ignore[no-untyped-def]
    return {"id": img.id, "names": img.names, "kind": img.kind, "size": img.size,
            "created": img.created, "architecture": img.config.architecture,
            "working_dir": img.config.working_dir, "source": img.source}  # fmt: skip


@images_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="one JSON object per image")) -> None:
    """The images in the cache, newest first."""
    imgs = _store().list()
    if as_json:
        for img in imgs:
            typer.echo(json.dumps(_row(img)))
        return
    if not imgs:
        typer.echo("no images (corral images import PATH | corral images pull REF)")
        return
    typer.echo(f"{'ID':12}  {'SIZE':>9}  {'CREATED':19}  {'KIND':14}  NAMES")
    for img in imgs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(img.created))
        names = ", ".join(img.names) or "<none>"
        typer.echo(f"{img.short_id:12}  {_human(img.size):>9}  {when:19}  {img.kind:14}  {names}")


def _add(source: str, name: str | None, pull: bool) -> None:
    from corral.images import ImageError

    store = _store()
    try:
        img = store.pull(source, name) if pull else store.add(source, name)
    except ImageError as err:
        raise _fail(err) from None
    typer.echo(f"{img.id}  {_human(img.size)}  {', '.join(img.names)}")


@images_app.command("pull")
def pull(
    ref: str = typer.Argument(..., help="registry reference (docker.io/library/python:3.11)"),
    name: str | None = typer.Option(None, "--name", help="another name for it"),
) -> None:
    """Pull an image from a registry (skopeo) and unpack it into the cache (umoci)."""
    _add(ref, name, pull=True)


@images_app.command("import")
def import_(
    source: str = typer.Argument(
        ..., help="OCI layout dir[:tag], docker save / OCI archive, rootfs dir or tarball"
    ),
    name: str | None = typer.Option(None, "--name", help="a name to use it by"),
) -> None:
    """Import a local image into the cache (unpacked once, shared read-only)."""
    _add(source, name, pull=False)


@images_app.command("rm")
def rm(refs: list[str] = typer.Argument(..., help="names or ids")) -> None:
    """Remove images (refused while a sandbox runs on one)."""
    from corral.images import ImageError

    store = _store()
    failed = False
    for ref in refs:
        try:
            img = store.rm(ref)
        except ImageError as err:
            typer.echo(f"corral: {err}", err=True)
            failed = True
            continue
        typer.echo(f"removed {img.id}")
    if failed:
        raise typer.Exit(FAILED)


@images_app.command("prune")
def prune(
    everything: bool = typer.Option(False, "--all", help="every image not in use, named or not"),
) -> None:
    """Remove unnamed images and what interrupted imports left behind."""
    for gone in _store().prune(everything):
        typer.echo(f"removed {gone}")
