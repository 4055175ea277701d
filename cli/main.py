"""The `imagefs` command: thin click commands that parse, build the config, call one service
function and render text or `--json`. One error handler turns `ImagefsError` into a
one-line message and its exit code (a traceback only with `--debug`)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from imagefs import config as config_mod
from imagefs.chunks import LmdbChunkCache
from imagefs.config import Config
from imagefs.errors import ImagefsError, UsageError


def _emit(as_json: bool, data: dict[str, Any], text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        text()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextmanager
def _progress(
    label: str, total: int | None, enabled: bool
) -> Iterator[Callable[[int, int | None], None]]:
    """A rich progress bar on stderr (only on a terminal); yields `update(done, total)`."""
    if not enabled or not sys.stderr.isatty():

        def nothing(done: int, total: int | None = None) -> None:
            return None

        yield nothing
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)

        def update(done: int, new_total: int | None = None) -> None:
            bar.update(task, completed=done, total=new_total if new_total else None)

        yield update


@contextmanager
def _counting_progress(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar fed by increments: yields `step(nbytes)`."""
    done = 0
    with _progress(label, total, enabled) as update:

        def step(n: int) -> None:
            nonlocal done
            done += n
            update(done, total)

        yield step


def _config(ctx_obj: dict[str, Any], **overrides: Any) -> Config:
    return config_mod.load(file=ctx_obj.get("config_file"), overrides=overrides)


def _creds(text: str | None) -> Any:
    from registry.credentials import parse_creds

    return parse_creds(text) if text else None


def _platform(text: str | None) -> dict[str, str] | None:
    from imagefs.oci import parse_platform

    return parse_platform(text) if text else None


def _store(image: str, cfg: Config, creds: str | None = None) -> Any:
    """The `ImageStore` for IMAGE: an OCI layout (oci:PATH[:TAG]) or a registry reference."""
    from imagefs.image import open_store
    from registry.store import is_registry_ref, open_registry_store

    if is_registry_ref(image):
        return open_registry_store(image, cfg, _creds(creds))
    return open_store(image)


def _creds_option(name: str, envvar: str, what: str) -> Callable[[Any], Any]:
    return click.option(
        name,
        envvar=envvar,
        metavar="USER:PASSWORD",
        help=f"Credentials for {what} (or ${envvar}; default: the docker config).",
    )


_platform_option = click.option(
    "--platform", metavar="OS/ARCH[/VARIANT]", help="Image of a multi-platform index to use."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (default: $IMAGEFS_CONFIG or /etc/imagefs/config.toml).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="imagefs")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, debug: bool) -> None:
    """imagefs: lazily mounted, chunk-deduplicated container images and models."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="imagefs: %(levelname)s %(name)s: %(message)s",
    )


# ---------------------------------------------------------------------------------------------
# convert


@cli.command()
@click.argument("source")
@click.argument("target")
@click.option("--min-chunk", "min_chunk_bytes", help="FastCDC minimum chunk size (e.g. 16KiB).")
@click.option("--avg-chunk", "avg_chunk_bytes", help="FastCDC average chunk size (e.g. 64KiB).")
@click.option("--max-chunk", "max_chunk_bytes", help="FastCDC maximum chunk size (e.g. 256KiB).")
@click.option("--zstd-level", type=int, help="zstd level for chunks (default 3).")
@click.option("--threads", "convert_threads", type=int, help="Worker threads (0: one per CPU).")
@click.option(
    "--prefetch-list",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File of absolute image paths (one a line) to prefetch on mount, in order.",
)
@click.option(
    "--dedup-with",
    "dedup_with",
    multiple=True,
    metavar="IMAGE",
    help="An imagefs image whose chunks are referenced, not stored again (repeatable).",
)
@click.option(
    "--chunk-index",
    type=click.Path(file_okay=False, path_type=Path),
    help="Persistent chunk dictionary (LMDB dir) used and updated by this conversion.",
)
@_creds_option("--src-creds", "IMAGEFS_SRC_CREDS", "a registry SOURCE")
@_creds_option("--dest-creds", "IMAGEFS_DEST_CREDS", "a registry TARGET")
@_platform_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def convert(
    obj: dict[str, Any],
    /,
    source: str,
    target: str,
    as_json: bool,
    prefetch_list: Path | None,
    src_creds: str | None,
    dest_creds: str | None,
    platform: str | None,
    dedup_with: tuple[str, ...],
    chunk_index: Path | None,
    **opts: Any,
) -> None:
    """Convert SOURCE into an imagefs image at TARGET.

    SOURCE: oci:PATH[:TAG], docker-archive:PATH, dir:PATH, or a registry reference
    ([docker://]HOST/REPO[:TAG|@DIGEST]). TARGET: oci:PATH[:TAG] or a registry reference;
    a registry gets every blob first and the manifest last.
    """
    from builder.convert import convert as run_convert
    from imagefs.pathlist import read_path_list
    from registry.store import is_registry_ref, open_registry_store, open_registry_target

    cfg = _config(obj, **opts)
    prefetch = read_path_list(prefetch_list) if prefetch_list is not None else []
    src: Any = source
    dest: Any = target
    if is_registry_ref(source):
        src = open_registry_store(source, cfg, _creds(src_creds))
    dedup = [_store(image, cfg, src_creds) for image in dedup_with]
    if is_registry_ref(target):
        from registry.reference import parse_reference

        here = parse_reference(target).registry
        mount_from = tuple(
            ref.repository
            for ref in (parse_reference(i) for i in dedup_with if is_registry_ref(i))
            if ref.registry == here
        )
        dest = open_registry_target(target, cfg, _creds(dest_creds), mount_from)
    with _progress("converting", None, not as_json) as update:
        result = run_convert(
            src,
            dest,
            cfg,
            progress=update,
            prefetch_paths=prefetch,
            platform=_platform(platform),
            dedup_with=dedup,
            chunk_index=chunk_index,
            open_store=lambda ref: _store(ref, cfg, src_creds),
        )
    data = {
        "manifest_digest": str(result.manifest_digest),
        "target": result.target,
        "bytes_in": result.bytes_in,
        "chunks_total": result.chunks_total,
        "chunks_unique": result.chunks_unique,
        "bytes_stored": result.bytes_stored,
        "blobs": result.blobs,
        "chunks_reused": result.chunks_reused,
        "bytes_reused": result.bytes_reused,
        "external_blobs": result.external_blobs,
        "seconds": round(result.seconds, 3),
        "mb_per_s": round(result.bytes_in / 1e6 / result.seconds, 1) if result.seconds else 0,
    }
    _emit(
        as_json,
        data,
        lambda: click.echo(
            f"{result.target} {result.manifest_digest}\n"
            f"  {_human(result.bytes_in)} in, {result.chunks_total} chunks "
            f"({result.chunks_unique} unique), {_human(result.bytes_stored)} stored in "
            f"{result.blobs} blob(s), {result.seconds:.2f}s ({data['mb_per_s']} MB/s)"
        ),
    )


# ---------------------------------------------------------------------------------------------
# copy


@cli.command()
@click.argument("source")
@click.argument("target")
@_creds_option("--src-creds", "IMAGEFS_SRC_CREDS", "a registry SOURCE")
@_creds_option("--dest-creds", "IMAGEFS_DEST_CREDS", "a registry TARGET")
@_platform_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def copy(
    obj: dict[str, Any],
    source: str,
    target: str,
    src_creds: str | None,
    dest_creds: str | None,
    platform: str | None,
    as_json: bool,
) -> None:
    """Copy an image from SOURCE to TARGET as it is (no re-chunking).

    Each is oci:PATH[:TAG] or a registry reference. Blobs the target holds are skipped;
    within one registry, blobs are mounted from the source repository instead of uploaded;
    the manifest is written last.
    """
    from builder.refs import parse_target
    from imagefs.copy import copy_image
    from imagefs.target import layout_target
    from registry.reference import parse_reference
    from registry.store import is_registry_ref, open_registry_target

    cfg = _config(obj)
    store = _store(source, cfg, src_creds)
    with contextlib.ExitStack() as stack:
        if is_registry_ref(target):
            mount_from: tuple[str, ...] = ()
            if is_registry_ref(source):
                src_ref, dest_ref = parse_reference(source), parse_reference(target)
                if src_ref.registry == dest_ref.registry:
                    mount_from = (src_ref.repository,)
            dest: Any = open_registry_target(target, cfg, _creds(dest_creds), mount_from)
            name = target
        else:
            ref = parse_target(target)
            dest = stack.enter_context(layout_target(ref.path, ref.tag))
            name = str(ref)
        with _counting_progress("copying", 0, not as_json) as step:
            result = copy_image(store, dest, platform=_platform(platform), progress=step)
    data = {
        "manifest_digest": str(result.manifest_digest),
        "target": name,
        "blobs_copied": result.blobs_copied,
        "blobs_skipped": result.blobs_skipped,
        "bytes_copied": result.bytes_copied,
    }
    _emit(
        as_json,
        data,
        lambda: click.echo(
            f"{name} {result.manifest_digest}\n  {result.blobs_copied} blob(s) copied "
            f"({_human(result.bytes_copied)}), {result.blobs_skipped} already there"
        ),
    )


# ---------------------------------------------------------------------------------------------
# mount / umount / stats


def _open(
    image: str,
    cfg: Config,
    *,
    node_cache: LmdbChunkCache | None,
    creds: str | None = None,
    platform: str | None = None,
) -> Any:
    from imagefs.image import open_image

    return open_image(
        _store(image, cfg, creds), cfg, cache=node_cache, platform=_platform(platform)
    )


@cli.command()
@click.argument("image")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--foreground", is_flag=True, help="Stay attached until unmounted.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Node-wide chunk cache directory (default /var/lib/imagefs/cache).",
)
@click.option("--allow-other", is_flag=True, help="Let other users see the mount.")
@click.option("--suid", is_flag=True, help="Honour set-user-ID bits (default: nosuid).")
@click.option("--dev", is_flag=True, help="Honour device files (default: nodev).")
@click.option(
    "--record-access",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the paths of opened files, in first-access order, to this file.",
)
@_creds_option("--creds", "IMAGEFS_CREDS", "the registry")
@_platform_option
@click.pass_obj
def mount(
    obj: dict[str, Any],
    image: str,
    mountpoint: Path,
    foreground: bool,
    cache_dir: Path | None,
    allow_other: bool,
    suid: bool,
    dev: bool,
    record_access: Path | None,
    creds: str | None,
    platform: str | None,
) -> None:
    """Mount IMAGE read-only at MOUNTPOINT, fetching chunks lazily.

    IMAGE: oci:PATH[:TAG] or a registry reference ([docker://]HOST/REPO[:TAG|@DIGEST]).
    Only the manifest and the bootstrap are fetched up front; file reads fetch the chunks
    they need with Range requests, through the node-wide chunk cache.
    """
    from fuse_mount import mount as mount_mod

    cfg = _config(obj, cache_dir=cache_dir)
    if not mountpoint.is_dir():
        raise UsageError(f"mountpoint {mountpoint} is not a directory")
    if mount_mod.is_mounted(mountpoint):
        raise UsageError(f"{mountpoint} is already a mount point")
    if record_access is not None:
        record_access = record_access.absolute()
        if not record_access.parent.is_dir():
            raise UsageError(f"cannot record accesses to {record_access}: no such directory")

    def serve() -> None:
        # the cache is closed on unmount, which writes the last batch of access stamps
        with LmdbChunkCache(cfg.cache_dir, cfg.cache_max_bytes) as node_cache:
            opened = _open(image, cfg, node_cache=node_cache, creds=creds, platform=platform)
            mount_mod.serve(
                opened,
                mountpoint,
                cfg,
                allow_other=allow_other,
                describe=image,
                record_access=record_access,
                suid=suid,
                dev=dev,
            )

    if foreground:
        serve()
        return
    pid = mount_mod.spawn_background(
        serve,
        mountpoint,
        cfg,
        title=f"imagefs mount {image} {mountpoint}",
        debug=bool(obj.get("debug")),
    )
    click.echo(f"mounted {image} at {mountpoint} (pid {pid})", err=True)


@cli.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--lazy", is_flag=True, help="Detach now, clean up when no longer busy.")
@click.pass_obj
def umount(obj: dict[str, Any], mountpoint: Path, lazy: bool) -> None:
    """Unmount an imagefs MOUNTPOINT."""
    from fuse_mount.mount import unmount

    unmount(mountpoint, lazy=lazy, config=_config(obj))


@cli.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
@click.pass_obj
def stats(obj: dict[str, Any], mountpoint: Path, as_json: bool) -> None:
    """Counters of a running mount: bytes read vs fetched, chunks, cache hits, requests."""
    from fuse_mount.mount import query

    data = query(mountpoint, _config(obj))

    def text() -> None:
        click.echo(f"{data['mountpoint']}  {data['image']}  (pid {data['pid']})")
        keys = ("bytes_read", "bytes_fetched", "chunks_fetched", "cache_hits", "requests")
        for key in (*keys, "prefetch_chunks", "prefetch_bytes"):
            value = data.get(key, 0)
            shown = _human(value) if key.startswith("bytes") else str(value)
            click.echo(f"  {key:15} {shown}")

    _emit(as_json, data, text)


# ---------------------------------------------------------------------------------------------
# snapshotter


@cli.command()
@click.option(
    "--address",
    required=True,
    metavar="SOCKET",
    help="Unix socket to serve on (PATH or unix://PATH): containerd's proxy_plugins address.",
)
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory holding the snapshots and their metadata.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (overrides the global --config).",
)
@click.option(
    "--metrics-address",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics (mounts, bytes fetched, cache hits, latency, errors).",
)
@click.pass_obj
def snapshotter(
    obj: dict[str, Any],
    address: str,
    root: Path,
    config_file: Path | None,
    metrics_address: str | None,
) -> None:
    """Serve containerd's Snapshots API on SOCKET until SIGTERM/SIGINT.

    Configure containerd with `[proxy_plugins.imagefs] type = "snapshot"
    address = "SOCKET"`; images are then pulled and run with `--snapshotter imagefs`.
    """
    from fuse_mount.snapshotter.remote import ImagefsRemoteLayers, ImageMounts, default_spawner
    from fuse_mount.snapshotter.server import serve

    if config_file is not None:
        obj = {**obj, "config_file": config_file}
    cfg = _config(obj)  # validate the configuration before listening
    # imagefs images: one lazy mount per image under ROOT/images, in its own process
    images = root.absolute() / "images"
    mounts = ImageMounts(images, default_spawner(None, obj.get("config_file")))
    if metrics_address:
        from fuse_mount.mount import query
        from fuse_mount.snapshotter.metrics import serve_metrics

        serve_metrics(metrics_address, images, lambda path: query(path, cfg))
    serve(address, root, remote=ImagefsRemoteLayers(mounts))


# ---------------------------------------------------------------------------------------------
# pull


@cli.command()
@click.argument("reference")
@click.option(
    "--address",
    required=True,
    envvar="CONTAINERD_ADDRESS",
    metavar="SOCKET",
    help="containerd's gRPC socket (PATH or unix://PATH; or $CONTAINERD_ADDRESS).",
)
@click.option(
    "--namespace",
    default="default",
    show_default=True,
    envvar="CONTAINERD_NAMESPACE",
    help="containerd namespace (or $CONTAINERD_NAMESPACE).",
)
@click.option(
    "--snapshotter",
    "snapshotter_name",
    default="imagefs",
    show_default=True,
    help="Name of the imagefs snapshotter's proxy plugin in containerd's config.",
)
@_creds_option("--creds", "IMAGEFS_CREDS", "the registry")
@_platform_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def pull(
    obj: dict[str, Any],
    reference: str,
    address: str,
    namespace: str,
    snapshotter_name: str,
    creds: str | None,
    platform: str | None,
    as_json: bool,
) -> None:
    """Make imagefs image REFERENCE runnable by containerd, fetching no layer.

    Like `ctr-remote image rpull`: the manifest and config go into containerd's content
    store, every layer becomes a snapshot the imagefs snapshotter provides lazily, and the
    image is recorded, so `ctr run --snapshotter imagefs REFERENCE ID` works. REFERENCE:
    [docker://]HOST/REPO[:TAG|@DIGEST] of an image made by `imagefs convert`.
    """
    from fuse_mount.snapshotter.pull import ContainerdClient, pull_image
    from registry.store import is_registry_ref, open_registry_store

    if not is_registry_ref(reference):
        raise UsageError(f"{reference} is not a registry reference (HOST/REPO[:TAG|@DIGEST])")
    cfg = _config(obj)
    store = open_registry_store(reference, cfg, _creds(creds))
    try:
        with ContainerdClient(address, namespace) as client:
            result = pull_image(
                reference, store, client, snapshotter_name, platform=_platform(platform)
            )
    finally:
        store.close()
    data = {
        "image": result.image,
        "manifest_digest": result.manifest_digest,
        "config_digest": result.config_digest,
        "chain_id": result.chain_id,
        "namespace": namespace,
        "snapshotter": snapshotter_name,
        "created": result.created,
        "layers": [
            {"digest": layer.digest, "chain_id": layer.chain_id, "status": layer.status}
            for layer in result.layers
        ],
        "seconds": round(result.seconds, 3),
    }
    _emit(
        as_json,
        data,
        lambda: click.echo(
            f"{result.image} {result.manifest_digest}\n  {len(result.layers)} layer(s) "
            f"provided by snapshotter {snapshotter_name} (no layer fetched), "
            f"namespace {namespace}, {result.seconds:.2f}s"
        ),
    )


# ---------------------------------------------------------------------------------------------
# cache


@cli.group()
def cache() -> None:
    """The node-wide chunk cache: stats, gc, clear."""


_cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Node-wide chunk cache directory (default /var/lib/imagefs/cache).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _open_cache(obj: dict[str, Any], cache_dir: Path | None) -> LmdbChunkCache:
    cfg = _config(obj, cache_dir=cache_dir)
    return LmdbChunkCache(cfg.cache_dir, cfg.cache_max_bytes)


@cache.command("stats")
@_cache_dir_option
@_json_option
@click.pass_obj
def cache_stats(obj: dict[str, Any], cache_dir: Path | None, as_json: bool) -> None:
    """Entries, bytes stored, cap and map size of the chunk cache."""
    with _open_cache(obj, cache_dir) as node_cache:
        data: dict[str, Any] = {"path": str(node_cache.path), **node_cache.stats()}

    def text() -> None:
        click.echo(f"{data['path']}")
        click.echo(f"  entries    {data['entries']}")
        click.echo(
            f"  stored     {_human(data['bytes'])} of {_human(data['max_bytes'])} "
            f"({100 * data['bytes'] / max(1, data['max_bytes']):.1f}%)"
        )
        click.echo(f"  map        {_human(data['used_bytes'])} used of {_human(data['map_bytes'])}")

    _emit(as_json, data, text)


@cache.command("gc")
@_cache_dir_option
@click.option("--max-bytes", help="Evict down to this size (e.g. 2GiB; default: the cap).")
@_json_option
@click.pass_obj
def cache_gc(
    obj: dict[str, Any], cache_dir: Path | None, max_bytes: str | None, as_json: bool
) -> None:
    """Evict least-recently-used chunks down to the cap (or --max-bytes)."""
    target = None
    if max_bytes is not None:
        target = _config(obj, cache_max_bytes=max_bytes).cache_max_bytes
    with _open_cache(obj, cache_dir) as node_cache:
        freed = node_cache.gc(target)
        data: dict[str, Any] = {"path": str(node_cache.path), **freed, **node_cache.stats()}
    _emit(
        as_json,
        data,
        lambda: click.echo(
            f"evicted {data['evicted_entries']} chunks ({_human(data['freed_bytes'])}); "
            f"{data['entries']} chunks ({_human(data['bytes'])}) remain in {data['path']}"
        ),
    )


@cache.command("clear")
@_cache_dir_option
@_json_option
@click.pass_obj
def cache_clear(obj: dict[str, Any], cache_dir: Path | None, as_json: bool) -> None:
    """Remove every chunk from the cache (safe while mounts are using it)."""
    with _open_cache(obj, cache_dir) as node_cache:
        data: dict[str, Any] = {"path": str(node_cache.path), **node_cache.clear()}
    _emit(
        as_json,
        data,
        lambda: click.echo(
            f"removed {data['evicted_entries']} chunks ({_human(data['freed_bytes'])}) "
            f"from {data['path']}"
        ),
    )


# ---------------------------------------------------------------------------------------------
# unpack / check / inspect


@cli.command()
@click.argument("image")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_creds_option("--creds", "IMAGEFS_CREDS", "the registry")
@_platform_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def unpack(
    obj: dict[str, Any],
    image: str,
    directory: Path,
    as_json: bool,
    creds: str | None,
    platform: str | None,
) -> None:
    """Write the whole tree of IMAGE into DIRECTORY (new or empty), with all metadata."""
    from imagefs.unpack import unpack as run_unpack

    cfg = _config(obj)
    opened = _open(image, cfg, node_cache=None, creds=creds, platform=platform)
    total = sum(
        opened.bootstrap.inode(i).size
        for i in range(opened.bootstrap.inode_count)
        if opened.bootstrap.inode(i).is_reg
    )
    with _counting_progress("unpacking", total, not as_json) as step:
        result = run_unpack(opened.view, directory, progress=step)
    data = {
        "target": result.target,
        "entries": result.entries,
        "bytes_written": result.bytes_written,
    }
    _emit(
        as_json,
        data,
        lambda: click.echo(
            f"unpacked {result.entries} entries, {_human(result.bytes_written)} into {directory}"
        ),
    )


@cli.command()
@click.argument("image")
@_creds_option("--creds", "IMAGEFS_CREDS", "the registry")
@_platform_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def check(
    obj: dict[str, Any], image: str, as_json: bool, creds: str | None, platform: str | None
) -> None:
    """Decode everything in IMAGE and verify every chunk; exit non-zero on any problem."""
    from imagefs.errors import IntegrityError
    from imagefs.inspect import check_image

    cfg = _config(obj)
    opened = _open(image, cfg, node_cache=None, creds=creds, platform=platform)
    total = sum(c.size for c in opened.bootstrap.chunks())
    with _counting_progress("verifying", total, not as_json) as step:
        result = check_image(opened, progress=step)
    data = {
        "ok": result.ok,
        "manifest_digest": result.manifest_digest,
        "inodes": result.inodes,
        "blobs": result.blobs,
        "chunks_verified": result.chunks_verified,
        "bytes_verified": result.bytes_verified,
        "problems": list(result.problems),
    }
    _emit(
        as_json,
        data,
        lambda: click.echo(
            f"{'ok' if result.ok else 'FAILED'}: {result.inodes} inodes, {result.blobs} blobs, "
            f"{result.chunks_verified} chunks ({_human(result.bytes_verified)}) verified"
            + "".join(f"\n  problem: {p}" for p in result.problems[:20])
        ),
    )
    if not result.ok:
        raise IntegrityError(
            f"{image}: {len(result.problems)} problem(s); first: {result.problems[0]}"
        )


@cli.command()
@click.argument("image")
@_creds_option("--creds", "IMAGEFS_CREDS", "the registry")
@_platform_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def inspect(
    obj: dict[str, Any], image: str, as_json: bool, creds: str | None, platform: str | None
) -> None:
    """Files, bytes, chunks, unique chunks, dedup ratio and blobs of IMAGE."""
    from imagefs.inspect import inspect_image

    info = inspect_image(
        _open(image, _config(obj), node_cache=None, creds=creds, platform=platform)
    )

    def text() -> None:
        click.echo(f"manifest   {info.manifest_digest}")
        click.echo(
            f"files      {info.files} ({info.hardlinked_files} hard-linked), "
            f"{info.directories} dirs, {info.symlinks} symlinks, {info.other} other"
        )
        click.echo(f"bytes      {_human(info.bytes)} in files")
        click.echo(
            f"chunks     {info.chunks} references, {info.unique_chunks} unique "
            f"({_human(info.unique_bytes)}), dedup ratio {info.dedup_ratio:.2f}"
        )
        click.echo(
            f"stored     {_human(info.stored_bytes)} in {len(info.blobs)} blob(s), "
            f"bootstrap {_human(info.bootstrap_bytes)}"
        )
        for b in info.blobs:
            click.echo(
                f"  blob {b.digest[:19]}  {_human(b.size):>10}  {b.chunks_stored} chunks stored, "
                f"{b.chunks} referenced ({b.references} references), "
                f"{100 * b.referenced_fraction:.1f}% of its bytes referenced"
            )

    _emit(as_json, info.to_json(), text)


# ---------------------------------------------------------------------------------------------
# dedup


@cli.command()
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True)
@_creds_option("--creds", "IMAGEFS_CREDS", "the registry")
@_platform_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def dedup(
    obj: dict[str, Any],
    images: tuple[str, ...],
    as_json: bool,
    creds: str | None,
    platform: str | None,
) -> None:
    """What a set of images shares: chunk level beside whole-layer level.

    For each IMAGE: the bytes its files hold, its distinct chunks (uncompressed and as
    stored), how much of that another IMAGE also holds (shared) or none does (own), and the
    same for its OCI layers; for the set: the union a registry stores when it shares chunks
    and when it shares whole layers. Only manifests and bootstraps are fetched. A plain
    OCI image gets layer figures only.
    """
    from imagefs.dedup import dedup_report, gather_facts

    cfg = _config(obj)
    plat = _platform(platform)
    report = dedup_report([gather_facts(i, _store(i, cfg, creds), plat) for i in images])

    def text() -> None:
        def size(n: int | None) -> str:
            return "-" if n is None else _human(n)

        head = ("image", "files", "chunks", "stored", "shared", "own", "layers", "layers shared")
        rows = [
            (
                i.name,
                size(i.logical_bytes),
                size(i.unique_chunk_bytes),
                size(i.stored_bytes),
                size(i.shared_bytes),
                size(i.own_bytes),
                size(i.layer_bytes),
                size(i.shared_layer_bytes),
            )
            for i in report.images
        ]
        rows.append(
            (
                "set",
                size(report.total_logical_bytes),
                size(report.total_unique_chunk_bytes),
                size(report.total_stored_bytes),
                "",
                "",
                size(report.union_layer_bytes),
                "",
            )
        )
        widths = [max(len(r[c]) for r in (head, *rows)) for c in range(len(head))]
        for r in (head, *rows):
            cells = [r[0].ljust(widths[0])] + [
                v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
            ]
            click.echo("  ".join(cells).rstrip())
        click.echo("set: files added up; chunks, stored and layers as unions (shared ones once)")
        saving = report.saving_vs_layers
        if saving is not None:
            chunked = report.total_stored_bytes + report.total_bootstrap_bytes
            click.echo(
                f"registry bytes for the imagefs images: {_human(chunked)} sharing chunks "
                f"(bootstraps included), {_human(report.imagefs_union_layer_bytes)} sharing "
                f"whole layers: saving vs layers {100 * saving:.1f}%"
            )

    _emit(as_json, report.to_json(), text)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI with the one error handler."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="imagefs", standalone_mode=False)
    except ImagefsError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"imagefs: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("imagefs: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"imagefs: {exc.format_message()}", err=True)
        sys.exit(UsageError.exit_code if exc.exit_code == 2 else exc.exit_code)
    except KeyboardInterrupt:
        click.echo("imagefs: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(
            f"imagefs: internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for a traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
