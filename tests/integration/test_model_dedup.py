"""Models converted against a base with `--dedup-with`: a fine-tune stores little more than
its changed tensors, and re-sharded, reordered and tensor-inserted copies store almost
nothing new, because chunk boundaries fall on tensor boundaries (safetensors and GGUF)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.conftest import Env, Mounter
from tests.support.models import Tensors, gguf_file, model, safetensors_bytes, tensor

# 48 tensors from 4 KiB to 2 MiB (some cut by FastCDC inside, some far below a chunk)
SIZES = [random.Random(3).choice([4096, 65536, 300_000, 1 << 20, 2 << 20]) for _ in range(48)]
BASE = model(SIZES, seed=1)
CHANGED = set(random.Random(4).sample(range(len(BASE)), len(BASE) // 5))  # 20%
FINETUNE = [
    (n, tensor(9000 + i, a.nbytes)) if i in CHANGED else (n, a) for i, (n, a) in enumerate(BASE)
]
EXTRA = ("extra.bias", tensor(777, 65536))


def _write(root: Path, shards: list[Tensors], gguf_tensors: Tensors | None = None) -> str:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "tiny", "layers": 48}\n')
    for i, shard in enumerate(shards):
        data, _ = safetensors_bytes(shard, metadata={"format": "pt"})
        (root / f"model-{i + 1:05}-of-{len(shards):05}.safetensors").write_bytes(data)
    if gguf_tensors is not None:
        gguf_file(root / "model.gguf", gguf_tensors)
    return f"dir:{root}"


def _size(tensors: Tensors) -> int:
    return sum(a.nbytes for _, a in tensors)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("models")
    env = Env(root / "env")
    layout = root / "out"
    env.run("convert", _write(root / "base", [BASE[:24], BASE[24:]], BASE), f"oci:{layout}:base")
    return root, f"oci:{layout}:base"


def _against_base(env: Env, base: tuple[Path, str], name: str, source: str) -> dict[str, int]:
    root, ref = base
    out: dict[str, int] = env.json(
        "convert", source, f"oci:{root / 'out'}:{name}", "--dedup-with", ref
    )
    return out


def test_finetune_stores_its_changed_tensors_only(
    base: tuple[Path, str], imagefs_env: Env, tmp_path: Path
) -> None:
    out = _against_base(
        imagefs_env, base, "ft", _write(tmp_path / "ft", [FINETUNE[:24], FINETUNE[24:]])
    )
    changed = sum(a.nbytes for i, (_, a) in enumerate(FINETUNE) if i in CHANGED)
    headers = 2 * 8192 + 4096  # two safetensors headers and config.json, generously
    # float data barely compresses (zstd saves ~10% on normal float32): stored is near raw
    assert 0.8 * changed <= out["bytes_stored"] <= 1.02 * changed + headers
    assert out["bytes_reused"] >= _size(BASE) - changed


@pytest.mark.parametrize(
    "variant",
    ["resharded", "reordered", "inserted"],
)
def test_repackaged_models_store_almost_nothing_new(
    base: tuple[Path, str], imagefs_env: Env, tmp_path: Path, variant: str
) -> None:
    if variant == "resharded":
        shards = [BASE[:10], BASE[10:30], BASE[30:]]
    elif variant == "reordered":
        shards = [list(reversed(BASE[24:])), list(reversed(BASE[:24]))]
    else:
        shards = [[EXTRA, *BASE[:24]], BASE[24:]]
    out = _against_base(imagefs_env, base, variant, _write(tmp_path / variant, shards))
    size = sum(_size(s) for s in shards)
    new_tensor = EXTRA[1].nbytes if variant == "inserted" else 0
    assert out["bytes_stored"] - new_tensor < 0.01 * size, out


def test_gguf_of_the_same_tensors_dedups(
    base: tuple[Path, str], imagefs_env: Env, tmp_path: Path
) -> None:
    root = tmp_path / "g"
    root.mkdir()
    gguf_file(root / "renamed.gguf", list(reversed(BASE)))  # same tensors, other order
    out = _against_base(imagefs_env, base, "gguf", f"dir:{root}")
    assert out["bytes_stored"] < 0.02 * _size(BASE), out  # the metadata region is new


def test_finetune_reads_back_exactly(
    base: tuple[Path, str], imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    _against_base(
        imagefs_env, base, "ft2", _write(tmp_path / "ft2", [FINETUNE[:24], FINETUNE[24:]])
    )
    m = mount_image(f"oci:{base[0] / 'out'}:ft2")
    loaded = {
        **load_file(str(m.path / "model-00001-of-00002.safetensors")),
        **load_file(str(m.path / "model-00002-of-00002.safetensors")),
    }
    for name, array in FINETUNE:
        assert np.array_equal(loaded[name], array), name
