"""Synthetic model versions for bench/dedup.py (fixed seeds, numpy + gguf).

A small decoder-shaped model (embeddings, N layers of attention + MLP projections in float16,
norms and the LM head in float32) and the versions a model hub sees of it:

    base        4 safetensors shards + model.safetensors.index.json + config.json
    finetune    the same files with ~20% of the tensors changed (every 5th tensor)
    resharded   the same tensors split into 3 shards instead of 4
    reordered   the same tensors in another order (shuffled, fixed seed), 4 shards
    inserted    one new tensor at the front of the first shard, the rest as in base
    gguf        one GGUF file of the base tensors

Written under bench/out/dedup/models/<variant>/ and reused while the generator version holds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GEN_VERSION = 1
LAYERS = 12
HIDDEN = 384
MLP = 1024
VOCAB = 6000
SHARDS = 4
FINETUNE_EVERY = 5  # every 5th tensor changes in the fine-tune (20%)
VARIANTS = ("base", "finetune", "resharded", "reordered", "inserted", "gguf")
_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}

Tensors = list[tuple[str, np.ndarray]]


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path
    logical_bytes: int  # bytes of the files in the directory
    tensors: int  # tensors in it
    changed_bytes: int  # bytes of tensors whose data base does not hold


def _shapes() -> list[tuple[str, tuple[int, ...], type]]:
    out: list[tuple[str, tuple[int, ...], type]] = [
        ("model.embed_tokens.weight", (VOCAB, HIDDEN), np.float16)
    ]
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (HIDDEN,), np.float32),
            (f"{p}.self_attn.q_proj.weight", (HIDDEN, HIDDEN), np.float16),
            (f"{p}.self_attn.k_proj.weight", (HIDDEN // 2, HIDDEN), np.float16),
            (f"{p}.self_attn.v_proj.weight", (HIDDEN // 2, HIDDEN), np.float16),
            (f"{p}.self_attn.o_proj.weight", (HIDDEN, HIDDEN), np.float16),
            (f"{p}.post_attention_layernorm.weight", (HIDDEN,), np.float32),
            (f"{p}.mlp.gate_proj.weight", (MLP, HIDDEN), np.float16),
            (f"{p}.mlp.up_proj.weight", (MLP, HIDDEN), np.float16),
            (f"{p}.mlp.down_proj.weight", (HIDDEN, MLP), np.float16),
        ]
    out += [
        ("model.norm.weight", (HIDDEN,), np.float32),
        ("lm_head.weight", (VOCAB, HIDDEN), np.float32),
    ]
    return out


def _array(seed: int, shape: tuple[int, ...], dtype: type, scale: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if len(shape) == 1:  # norms: around 1
        return (1.0 + rng.standard_normal(shape, dtype=np.float32) * 0.01).astype(dtype)
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype)


def base_tensors() -> Tensors:
    return [(name, _array(i, shape, dt)) for i, (name, shape, dt) in enumerate(_shapes())]


def finetune_tensors(base: Tensors) -> tuple[Tensors, int]:
    out: Tensors = []
    changed = 0
    for i, (name, arr) in enumerate(base):
        if i % FINETUNE_EVERY == 1:
            delta = _array(10_000 + i, arr.shape, np.float32, scale=0.001)
            arr = (arr.astype(np.float32) + delta).astype(arr.dtype)
            changed += arr.nbytes
        out.append((name, arr))
    return out, changed


def safetensors_bytes(tensors: Tensors, metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file with the tensors in the order given (safetensors' own writer
    sorts them)."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, arr in tensors:
        header[name] = {
            "dtype": _DTYPES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return b"".join([len(raw).to_bytes(8, "little"), raw, *(a.tobytes() for _, a in tensors)])


def _split(tensors: Tensors, shards: int) -> list[Tensors]:
    """Contiguous shards of about equal bytes."""
    total = sum(a.nbytes for _, a in tensors)
    out: list[Tensors] = [[] for _ in range(shards)]
    acc = 0
    for name, arr in tensors:
        k = min(shards - 1, acc * shards // total)
        out[k].append((name, arr))
        acc += arr.nbytes
    return [s for s in out if s]


def write_safetensors_model(dest: Path, shards: Sequence[Tensors]) -> None:
    dest.mkdir(parents=True)
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{n:05d}.safetensors"
        (dest / fname).write_bytes(safetensors_bytes(shard))
        for name, arr in shard:
            weight_map[name] = fname
            total += arr.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": MLP,
        "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB,
        "torch_dtype": "float16",
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_gguf(dest: Path, tensors: Tensors) -> None:
    import gguf

    dest.mkdir(parents=True)
    writer = gguf.GGUFWriter(str(dest / "model.gguf"), "llama")
    writer.add_name("dedup bench model")
    writer.add_context_length(2048)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    for name, arr in tensors:
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ensure_models(root: Path) -> list[Variant]:
    """Every variant under `root`, generated when missing or from another generator."""
    marker = root / "variants.json"
    try:
        data = json.loads(marker.read_text())
        if data.get("gen") == GEN_VERSION:
            return [Variant(**{**v, "path": Path(v["path"])}) for v in data["variants"]]
    except (OSError, ValueError):
        pass
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    base = base_tensors()
    rng = np.random.default_rng(7)
    fine, fine_changed = finetune_tensors(base)
    reordered = [base[i] for i in rng.permutation(len(base))]
    extra = ("model.extra_proj.weight", _array(99_999, (HIDDEN, HIDDEN), np.float16))
    inserted = _split(base, SHARDS)
    inserted[0] = [extra, *inserted[0]]
    plans: dict[str, tuple[list[Tensors] | None, int]] = {
        "base": (_split(base, SHARDS), 0),
        "finetune": (_split(fine, SHARDS), fine_changed),
        "resharded": (_split(base, 3), 0),
        "reordered": (_split(reordered, SHARDS), 0),
        "inserted": (inserted, extra[1].nbytes),
        "gguf": (None, 0),
    }
    variants = []
    for name in VARIANTS:
        shards, changed = plans[name]
        dest = root / name
        if shards is None:
            write_gguf(dest, base)
            count = len(base)
        else:
            write_safetensors_model(dest, shards)
            count = sum(len(s) for s in shards)
        variants.append(Variant(name, dest, _dir_bytes(dest), count, changed))
    marker.write_text(
        json.dumps(
            {
                "gen": GEN_VERSION,
                "variants": [{**v.__dict__, "path": str(v.path)} for v in variants],
            },
            indent=2,
        )
        + "\n"
    )
    return variants
