"""The chunk pipeline: per-job results in submission order, each distinct chunk compressed
once, whole files cut (and read) by the workers exactly as the main thread would cut them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from builder.chunker import ChunkParams, plan_chunks
from builder.pipeline import ChunkPipeline, Chunks, Hashed, Job, ReadWhole, Whole, read_file
from imagefs.config import Config
from imagefs.digest import ChunkDigest
from imagefs.errors import SourceError
from imagefs.format import ChunkCodec

PARAMS = ChunkParams.from_config(Config())


def run(batches: list[list[Job]], threads: int = 3) -> list[tuple[int, list[list[Hashed]]]]:
    pipeline: ChunkPipeline[int] = ChunkPipeline(
        threads=threads, level=3, min_saving=0.05, params=PARAMS, max_pending=2
    )
    results: list[tuple[int, list[list[Hashed]]]] = []
    try:
        for i, batch in enumerate(batches):
            results.extend(pipeline.submit(batch, i))
            assert len(results) >= i - 2  # at most max_pending + 1 batches in flight
        results.extend(pipeline.drain())
        # the first occurrence in order has the stored bytes; release them as the builder does
        seen: set[bytes] = set()
        for _, per_job in results:
            for hashed in per_job:
                for h in hashed:
                    if h.digest not in seen:
                        seen.add(h.digest)
                        assert h.stored.wait()
                        pipeline.release(h.digest)
    finally:
        pipeline.close()
    return results


def test_order_and_single_compression() -> None:
    rng = random.Random(1)
    pieces = [rng.randbytes(rng.randint(1, 5000)) for _ in range(20)]
    batches: list[list[Job]] = [
        [Chunks([memoryview(pieces[(i * 7 + j) % 20]) for j in range(3)]) for _ in range(3)]
        for i in range(30)
    ]
    results = run(batches)
    assert [tag for tag, _ in results] == list(range(30))
    codec = ChunkCodec()
    for tag, per_job in results:
        for job, hashed in zip(batches[tag], per_job, strict=True):
            assert isinstance(job, Chunks)
            assert [h.digest for h in hashed] == [ChunkDigest.of(v).raw for v in job.views]
            assert [h.size for h in hashed] == [len(v) for v in job.views]
    stored = {h.digest: h.stored for _, per_job in results for hs in per_job for h in hs}
    assert len(stored) == 20
    for piece in pieces:
        one = stored[ChunkDigest.of(piece).raw]
        assert one.batch.done.is_set()
    assert codec.encode(pieces[0])  # the codec the workers use is deterministic


def test_workers_cut_and_read_like_the_planner(tmp_path: Path) -> None:
    rng = random.Random(2)
    files = [rng.randbytes(n) for n in (0, 10, 16 * 1024, 300_000, 1_000_000)]
    for i, data in enumerate(files):
        (tmp_path / str(i)).write_bytes(data)
    jobs: list[Job] = [Whole(bytearray(d)) for d in files]
    jobs += [ReadWhole(str(tmp_path / str(i)).encode(), len(d)) for i, d in enumerate(files)]
    [(_, per_job)] = run([jobs], threads=2)
    for data, hashed in zip(files + files, per_job, strict=True):
        expected = [data[o : o + n] for o, n in plan_chunks(data, PARAMS)]
        assert [h.digest for h in hashed] == [ChunkDigest.of(c).raw for c in expected]


def test_read_errors(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"short")
    with pytest.raises(SourceError, match="shrank"):
        read_file(str(tmp_path / "f").encode(), 10)
    with pytest.raises(SourceError, match="cannot read"):
        read_file(str(tmp_path / "missing").encode(), 1)
    with pytest.raises(SourceError):
        run([[ReadWhole(str(tmp_path / "missing").encode(), 3)]])
