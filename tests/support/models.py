"""Model files for tests: float32 tensors from fixed seeds, written as safetensors (in any
tensor order, which `safetensors.numpy.save` does not offer: it sorts by name) and as GGUF
(with `gguf.GGUFWriter`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np

Tensors = list[tuple[str, np.ndarray]]


def tensor(seed: int, nbytes: int) -> np.ndarray:
    """A float32 vector of `nbytes` bytes (a multiple of 4) from `seed`."""
    return np.random.default_rng(seed).standard_normal(nbytes // 4, dtype=np.float32)


def model(sizes: Sequence[int], seed: int = 0, prefix: str = "layer") -> Tensors:
    return [(f"{prefix}.{i}.weight", tensor(seed * 1000 + i, n)) for i, n in enumerate(sizes)]


def safetensors_bytes(
    tensors: Tensors, metadata: dict[str, str] | None = None, gap: int = 0
) -> tuple[bytes, list[tuple[int, int]]]:
    """A safetensors file holding `tensors` in the order given (with `gap` zero bytes after
    each), and each tensor's absolute (begin, end) in it."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    relative = []
    for name, array in tensors:
        n = array.nbytes
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + n],
        }
        relative.append((offset, offset + n))
        offset += n + gap
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # as safetensors pads it
    data_start = 8 + len(raw)
    parts = [len(raw).to_bytes(8, "little"), raw]
    for _, array in tensors:
        parts.append(array.tobytes())
        parts.append(bytes(gap))
    extents = [(data_start + b, data_start + e) for b, e in relative]
    return b"".join(parts), extents


def gguf_file(path: Path, tensors: Tensors, *, vocab: int = 1000, alignment: int = 0) -> bytes:
    """Write a GGUF file holding `tensors` in the order given, a vocabulary of `vocab`
    tokens among its key/values; its bytes."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("test model")
    writer.add_context_length(2048)
    if alignment:
        writer.add_custom_alignment(alignment)
    writer.add_token_list([f"token-{i}" for i in range(vocab)])
    writer.add_token_scores([float(i) for i in range(vocab)])
    for name, array in tensors:
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def gguf_extents(path: Path) -> tuple[int, list[tuple[str, int, int]]]:
    """(data section start, [(name, begin, end)]) as gguf's own reader sees the file."""
    reader = gguf.GGUFReader(str(path))
    out = [
        (t.name, int(t.data_offset), int(t.data_offset) + int(t.n_bytes)) for t in reader.tensors
    ]
    return int(reader.data_offset), out
