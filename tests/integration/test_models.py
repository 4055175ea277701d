"""A model directory end to end: `imagefs convert dir:` cuts its safetensors shards and GGUF
file tensor by tensor; `imagefs mount` prefetches every model header in the background, and
a loader reading one tensor (safetensors' `safe_open`, over mmap) fetches little more than
that tensor's chunks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import safetensors

from imagefs.config import Config
from imagefs.image import open_image, open_store
from imagefs.tensors import tensor_layout
from tests.conftest import Env, Mounter
from tests.support.models import gguf_file, model, safetensors_bytes

KIB = 1024
MIB = 1024 * KIB
# the tensor read is followed by a small one only: the view's sequential readahead (4 MiB)
# would otherwise fetch the start of the next tensor too, as it should for a full load
SHARD_SIZES = [
    8 * MIB,
    4 * KIB,
    6 * MIB,
    4 * KIB,
    16 * KIB,
    5 * MIB + 12,
    4 * KIB,
    8 * MIB,
    300 * KIB,
]


def _model_dir(root: Path) -> dict[str, bytes]:
    root.mkdir()
    files: dict[str, bytes] = {}
    for shard in (1, 2, 3):
        tensors = model(SHARD_SIZES, seed=shard, prefix=f"shard{shard}")
        name = f"model-0000{shard}-of-00003.safetensors"
        files[name], _ = safetensors_bytes(tensors, {"format": "pt"})
    for name, data in files.items():
        (root / name).write_bytes(data)
    files["model.gguf"] = gguf_file(root / "model.gguf", model([4 * KIB, 3 * MIB]), vocab=20_000)
    files["config.json"] = json.dumps({"architectures": ["Test"], "hidden_size": 64}).encode()
    (root / "config.json").write_bytes(files["config.json"])
    return files


def test_model_dir_headers_prefetched_and_one_tensor_read(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    files = _model_dir(tmp_path / "model")
    target = f"oci:{tmp_path / 'out'}"
    imagefs_env.run("convert", f"dir:{tmp_path / 'model'}", target)

    opened = open_image(open_store(target), Config(cache_dir=tmp_path / "cache"))
    boot = opened.bootstrap
    index = {path.decode(): ino - 1 for path, ino in opened.view.walk()}
    headers: dict[str, int] = {}  # name -> header end
    header_bytes = 0
    for name, data in files.items():
        layout = tensor_layout(name.encode(), lambda n, data=data: data[:n], len(data))
        if layout is None:
            continue
        headers[name] = layout.header_end
        chunks = list(boot.file_chunks(index[name], 0, layout.header_end))
        if name.endswith(".safetensors"):  # the header is exactly one chunk
            assert [(o, r.size) for o, r in chunks] == [(0, layout.header_end)]
        header_bytes += sum(r.size for _, r in chunks)
    assert len(headers) == 4
    total = sum(len(d) for d in files.values())

    m = mount_image(target)
    deadline = time.monotonic() + 20
    stats = m.stats()
    while stats["prefetch_bytes"] < header_bytes and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = m.stats()
    time.sleep(0.3)  # nothing more should come
    stats = m.stats()
    assert stats["prefetch_bytes"] >= header_bytes, stats
    assert stats["prefetch_bytes"] < header_bytes + 256 * KIB, stats  # headers, not tensors
    assert stats["bytes_fetched"] < total // 10, stats

    # one tensor of one shard, read the way loaders do (mmap)
    shard = "model-00002-of-00003.safetensors"
    wanted = "shard2.7.weight"  # 8 MiB, in the middle of the file
    expected = dict(model(SHARD_SIZES, seed=2, prefix="shard2"))[wanted]
    n = headers[shard] - 8
    doc = json.loads(files[shard][8 : 8 + n])
    begin, end = (headers[shard] + o for o in doc[wanted]["data_offsets"])
    stored = sum(r.stored_size for _, r in boot.file_chunks(index[shard], begin, end))
    before = m.stats()["bytes_fetched"]
    with safetensors.safe_open(str(m.path / shard), "numpy") as f:
        assert sorted(f.keys()) == sorted(doc.keys() - {"__metadata__"})
        got = f.get_tensor(wanted)
    assert np.array_equal(got, expected)
    time.sleep(0.3)  # let readahead the read started land before measuring
    fetched = m.stats()["bytes_fetched"] - before
    print(f"tensor {end - begin} B, stored {stored}, fetched {fetched}, of {len(files[shard])}")
    # the tensor's chunks, and at most the kernel's mmap read-around (1 MiB) and a chunk
    # on either side beyond them: no readahead from the header read at offset 0
    assert stored <= fetched <= stored + 5 * MIB // 2, (fetched, stored)
    assert fetched < 0.4 * len(files[shard])
