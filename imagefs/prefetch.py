"""Background prefetch of an image's prefetch list: the listed files' chunks, fetched in
large batches through the normal chunk source (so the cache fills and neighbouring chunks of
one blob coalesce into few range reads), in list order, until done or stopped."""

from __future__ import annotations

import logging
import threading

from imagefs.digest import ChunkDigest
from imagefs.format import ChunkRef
from imagefs.view import FileSystemView

log = logging.getLogger(__name__)

BATCH_BYTES = 16 << 20  # uncompressed chunk bytes requested per get_chunks call


def run_prefetch(
    view: FileSystemView, stop: threading.Event, *, batch_bytes: int = BATCH_BYTES
) -> int:
    """Fetch the chunks of the bootstrap's prefetch list; returns the chunk count prefetched.

    Never raises: a failed batch is logged and skipped (reads fetch on their own)."""
    boot = view.bootstrap
    seen: set[ChunkDigest] = set()
    batch: list[ChunkRef] = []
    size = 0
    done = 0

    def flush() -> None:
        nonlocal batch, size, done
        if batch and not stop.is_set():
            try:
                view.chunks.get_chunks(batch)
            except Exception as exc:  # a read will retry and report it
                log.warning("prefetch batch failed: %s", exc)
            else:
                view.stats.add(prefetch_chunks=len(batch), prefetch_bytes=size)
                done += len(batch)
        batch, size = [], 0

    for index in boot.prefetch:
        if stop.is_set():
            break
        try:
            if not boot.inode(index).is_reg:
                continue
            placed = list(boot.file_chunks(index))
        except Exception as exc:
            log.warning("prefetch of inode %d skipped: %s", index, exc)
            continue
        for _, ref in placed:
            if ref.digest in seen:
                continue
            seen.add(ref.digest)
            batch.append(ref)
            size += ref.size
            if size >= batch_bytes:
                flush()
    flush()
    return done
