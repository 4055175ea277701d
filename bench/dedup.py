"""Storage benchmark: what a corpus of image and model versions costs to store, three ways.

  gzip OCI   gzip tar layers shared by layer digest, as a registry stores them: the sum of
             the distinct layer blob sizes over the corpus
  imagefs    every version converted into one OCI layout per group, each conversion with
             `--chunk-index DIR` (one persistent chunk dictionary per group), so later
             versions reference the chunks earlier ones stored: the distinct data blobs and
             bootstraps the imagefs manifests reference
  casync     `casync make --store=STORE INDEX.caidx TREE` of every version's tree into one
             store per group: the bytes of the store's chunk files plus the index files

The corpus (everything cached under bench/out/dedup/):

  A. Debian images (bench/dedup_debian.py): v1 = bookworm minbase + python3 (the image of
     bench/debian_image.py), v2 = v1 + a layer with /opt/app (stacked), rebuild = the same
     package set debootstrapped again (new mtimes, new layer digests), rebuild-less = minbase
     + python3,less. The "rebuilt" series is v1, rebuild, rebuild-less.
  B. Models (bench/dedup_models.py): base (4 safetensors shards), finetune (20% of the
     tensors changed), resharded (3 shards), reordered, inserted (a tensor at the front),
     gguf (the base tensors in one GGUF file). Each is one gzip layer in its OCI form.

Targets: over the rebuilt Debian versions imagefs <= casync and <= 0.5 x gzip OCI; over
the models imagefs <= casync, and each variant's unchanged tensors deduplicated to < 1%
new bytes. Prints tables and writes bench/out/dedup-results.json. Run as root:

    .venv/bin/python bench/dedup.py [--only images|models] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import convert as cv
import debian_image as deb
import dedup_debian as dd
import dedup_models as dm

OUT = cv.OUT
DEDUP = dd.DEDUP_OUT
RESULTS = OUT / "dedup-results.json"
BLOB_MT = "application/vnd.imagefs.blob.v1"  # format 1.0; now an annotated OCI tar layer
BOOTSTRAP_MT = "application/vnd.imagefs.bootstrap.v1+zstd"
BLOB_ANNOTATION = "containerd.io/snapshot/imagefs.blob"
BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/imagefs.bootstrap"
REBUILT = ("v1", "rebuild", "rebuild-less")
STACKED = ("v1", "v2")
MODEL_EPOCH = 1_700_000_000
Row = dict[str, Any]


@dataclass
class Version:
    name: str
    oci_ref: str  # the gzip OCI image (oci:LAYOUT:TAG)
    layers: list[tuple[str, int]]  # its layers: (digest, compressed size)
    tree: Path  # what casync chunks
    source: str  # what imagefs converts
    logical_bytes: int  # regular file bytes in the tree (hard links once)
    files: int
    tensors: int = 0
    changed_bytes: int = 0  # models: bytes of tensors the base does not hold
    imagefs: dict[str, Any] = field(default_factory=dict)
    casync: dict[str, Any] = field(default_factory=dict)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tree_bytes(tree: Path) -> tuple[int, int]:
    seen: set[tuple[int, int]] = set()
    total = files = 0
    for path in tree.rglob("*"):
        st = path.lstat()
        if not path.is_file() or path.is_symlink() or (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_size
        files += 1
    return total, files


def manifest_of(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return json.loads(_blob(layout, desc["digest"]).read_text())
    raise RuntimeError(f"tag {tag} not in {layout}")


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algo / hexdigest


def oci_layers(layout: Path, tag: str) -> list[tuple[str, int]]:
    return [(x["digest"], int(x["size"])) for x in manifest_of(layout, tag)["layers"]]


# ---------------------------------------------------------------------------------------------
# corpus


def debian_versions(errors: list[str]) -> list[Version]:
    """v1, rebuild, rebuild-less, v2 (conversion order: the rebuilt series first)."""
    out: dict[str, Version] = {}

    def make(name: str, layout: Path, tag: str, tree: Path) -> Version:
        nbytes, files = tree_bytes(tree)
        return Version(
            name,
            f"oci:{layout}:{tag}",
            oci_layers(layout, tag),
            tree,
            f"oci:{layout}:{tag}",
            nbytes,
            files,
        )

    try:
        layout, tag = dd.ensure_v1()
        out["v1"] = make("v1", layout, tag, deb.ensure_rootfs())
    except (deb.BuildError, OSError, RuntimeError) as err:
        errors.append(f"v1 (debootstrap minbase + python3): {err}")

    def rebuilt(name: str, include: str) -> Version:
        layout, tag, tree = dd.ensure_rebuilt(name, include)
        return make(name, layout, tag, tree)

    with ThreadPoolExecutor(2) as pool:  # two debootstraps at once, ~3 minutes each
        futures = {
            "rebuild": pool.submit(rebuilt, "rebuild", "python3"),
            "rebuild-less": pool.submit(rebuilt, "rebuild-less", "python3,less"),
        }
        for name, fut in futures.items():
            try:
                out[name] = fut.result()
            except (deb.BuildError, OSError, RuntimeError) as err:
                errors.append(f"{name}: {err}")
    if "v1" in out:
        try:
            v1 = out["v1"]
            layout, tag = dd.ensure_v1()
            layout2, tag2, tree2 = dd.ensure_v2(layout, tag, v1.tree)
            out["v2"] = make("v2", layout2, tag2, tree2)
        except (deb.BuildError, OSError, RuntimeError) as err:
            errors.append(f"v2 (v1 + /opt/app layer): {err}")
        else:
            if out["v2"].layers[0] != v1.layers[0]:
                errors.append("v2 does not share v1's layer digest (umoci repacked it?)")
    return [out[n] for n in ("v1", "rebuild", "rebuild-less", "v2") if n in out]


def _model_layer(tree: Path) -> bytes:
    """A deterministic uncompressed tar of a model directory (sorted, root, fixed mtime)."""
    buf = io.BytesIO()
    with tarfile.TarFile(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(tree.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(tree)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = MODEL_EPOCH
            info.mode = 0o755 if path.is_dir() else 0o644
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def model_oci(tree: Path, layout: Path, tag: str) -> list[tuple[str, int]]:
    """Pack `tree` as a one-layer gzip OCI image (pigz -n -6, or gzip with mtime 0)."""
    if deb.layout_has_tag(layout, tag):
        return oci_layers(layout, tag)
    shutil.rmtree(layout, ignore_errors=True)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    raw = _model_layer(tree)
    tar_path = layout / "layer.tar"
    gz_path = layout / "layer.tar.gz"
    tar_path.write_bytes(raw)
    cv.gzip_file(tar_path, gz_path)
    digest = cv.sha256_file(gz_path)
    gz_path.rename(_blob(layout, digest))
    tar_path.unlink()
    size = _blob(layout, digest).stat().st_size
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    config_desc = cv._put_blob(layout, cv._canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": size,
            }
        ],
    }
    manifest_desc = cv._put_blob(layout, cv._canonical(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_bytes(cv._canonical(index))
    (layout / "oci-layout").write_bytes(cv._canonical({"imageLayoutVersion": "1.0.0"}))
    return [(digest, size)]


def model_versions() -> list[Version]:
    variants = dm.ensure_models(DEDUP / "models")
    out = []
    for v in variants:
        layout = DEDUP / "models-oci" / v.name
        layers = model_oci(v.path, layout, v.name)
        nbytes, files = tree_bytes(v.path)
        out.append(
            Version(
                v.name,
                f"oci:{layout}:{v.name}",
                layers,
                v.path,
                f"dir:{v.path}",
                nbytes,
                files,
                v.tensors,
                v.changed_bytes,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# storing


def imagefs_store(versions: Sequence[Version], work: Path) -> Path:
    """Convert every version, in order, into one layout with one chunk index."""
    layout, index = work / "imagefs-layout", work / "imagefs-chunk-index"
    shutil.rmtree(layout, ignore_errors=True)
    shutil.rmtree(index, ignore_errors=True)
    for v in versions:
        cmd = [
            *cv.IMAGEFS,
            "convert",
            v.source,
            f"oci:{layout}:{v.name}",
            "--chunk-index",
            str(index),
            "--json",
        ]
        log("+ " + " ".join(cmd))
        started = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
        result = json.loads(res.stdout)
        manifest = manifest_of(layout, v.name)
        v.imagefs = {
            **result,
            "wall_s": round(time.perf_counter() - started, 2),
            "data_blobs": [
                (x["digest"], int(x["size"]))
                for x in manifest["layers"]
                if x.get("annotations", {}).get(BLOB_ANNOTATION) == "true"
                or x["mediaType"] == BLOB_MT
            ],
            "bootstraps": [
                (x["digest"], int(x["size"]))
                for x in manifest["layers"]
                if x.get("annotations", {}).get(BOOTSTRAP_ANNOTATION) == "true"
                or x["mediaType"] == BOOTSTRAP_MT
            ],
        }
        v.imagefs["bootstrap_bytes"] = sum(s for _, s in v.imagefs["bootstraps"])
    return layout


CAIDX_HEADER = 48 + 16  # CaFormatIndex + CaFormatTable header
CAIDX_ITEM = 40  # offset (u64) + chunk id (32 bytes)
CAIDX_TAIL = 40


def caidx_chunks(caidx: Path) -> list[str]:
    data = caidx.read_bytes()
    n = (len(data) - CAIDX_HEADER - CAIDX_TAIL) // CAIDX_ITEM
    return [
        data[CAIDX_HEADER + i * CAIDX_ITEM + 8 : CAIDX_HEADER + (i + 1) * CAIDX_ITEM].hex()
        for i in range(n)
    ]


def chunk_file_bytes(store: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_size for p in store.rglob("*.cacnk")}


def casync_store(versions: Sequence[Version], work: Path) -> Path:
    store, indexes = work / "casync-store", work / "casync-indexes"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(indexes, ignore_errors=True)
    indexes.mkdir(parents=True)
    before = 0
    for v in versions:
        caidx = indexes / f"{v.name}.caidx"
        cmd = ["casync", "make", f"--store={store}", str(caidx), str(v.tree)]
        log("+ " + " ".join(cmd))
        started = time.perf_counter()
        cv.run(cmd)
        after = sum(chunk_file_bytes(store).values())
        v.casync = {
            "index": str(caidx),
            "index_bytes": caidx.stat().st_size,
            "new_bytes": after - before,
            "chunks": len(caidx_chunks(caidx)),
            "wall_s": round(time.perf_counter() - started, 2),
        }
        before = after
    return store


# ---------------------------------------------------------------------------------------------
# totals


def totals(label: str, versions: Sequence[Version], casync_chunks: dict[str, int]) -> Row:
    layers = {d: s for v in versions for d, s in v.layers}
    data = {d: s for v in versions for d, s in v.imagefs.get("data_blobs", [])}
    boots = {d: s for v in versions for d, s in v.imagefs.get("bootstraps", [])}
    chunks = {c for v in versions if v.casync for c in caidx_chunks(Path(v.casync["index"]))}
    missing = [c for c in chunks if c not in casync_chunks]
    if missing:
        raise RuntimeError(f"{len(missing)} chunks of the casync indexes not in the store")
    row: Row = {
        "series": label,
        "versions": len(versions),
        "logical": sum(v.logical_bytes for v in versions),
        "gzip_oci": sum(layers.values()),
        "imagefs_data": sum(data.values()),
        "imagefs_bootstraps": sum(boots.values()),
        "casync_chunks": sum(casync_chunks[c] for c in chunks),
        "casync_indexes": sum(v.casync.get("index_bytes", 0) for v in versions),
    }
    row["imagefs"] = row["imagefs_data"] + row["imagefs_bootstraps"]
    row["casync"] = row["casync_chunks"] + row["casync_indexes"]
    row["imagefs/gzip"] = row["imagefs"] / row["gzip_oci"] if row["gzip_oci"] else None
    row["imagefs/casync"] = row["imagefs"] / row["casync"] if row["casync"] else None
    row["casync/gzip"] = row["casync"] / row["gzip_oci"] if row["gzip_oci"] else None
    return row


def mb(n: int | None) -> float | None:
    return None if n is None else n / 1e6


def mb_row(row: Row) -> Row:
    return {k: (mb(v) if isinstance(v, int) and k != "versions" else v) for k, v in row.items()}


def run_group(
    group: str, versions: list[Version], work: Path, subsets: dict[str, Sequence[str]]
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    imagefs_store(versions, work)
    imagefs_s = time.perf_counter() - started
    started = time.perf_counter()
    store = casync_store(versions, work)
    casync_s = time.perf_counter() - started
    chunks = chunk_file_bytes(store)
    rows = [totals(f"{group}: all", versions, chunks)]
    by_name = {v.name: v for v in versions}
    for label, names in subsets.items():
        if all(n in by_name for n in names):
            rows.append(totals(f"{group}: {label}", [by_name[n] for n in names], chunks))
    du = subprocess.run(["du", "-sb", str(store)], capture_output=True, text=True, check=False)
    return {
        "rows": rows,
        "imagefs_seconds": round(imagefs_s, 1),
        "casync_seconds": round(casync_s, 1),
        "casync_store_du_sb": int(du.stdout.split()[0]) if du.returncode == 0 else None,
    }


# ---------------------------------------------------------------------------------------------
# report


def print_inputs(title: str, versions: Sequence[Version]) -> None:
    rows = []
    for v in versions:
        i, c = v.imagefs, v.casync
        rows.append(
            {
                "version": v.name,
                "files": v.files,
                "logical MB": mb(v.logical_bytes),
                "layers": len(v.layers),
                "gzip layers MB": mb(sum(s for _, s in v.layers)),
                "imagefs new data MB": mb(i.get("bytes_stored")),
                "bootstrap MB": mb(i.get("bootstrap_bytes")),
                "chunks reused": i.get("chunks_reused"),
                "convert s": i.get("wall_s"),
                "casync new MB": mb(c.get("new_bytes")),
                "caidx MB": mb(c.get("index_bytes")),
                "casync s": c.get("wall_s"),
            }
        )
    cols = list(rows[0]) if rows else []
    cv.print_table(title, [(c, c) for c in cols], rows)


TOTAL_COLS = [
    ("series", "series"),
    ("versions", "versions"),
    ("logical MB", "logical"),
    ("gzip OCI MB", "gzip_oci"),
    ("imagefs data MB", "imagefs_data"),
    ("imagefs bootstraps MB", "imagefs_bootstraps"),
    ("imagefs MB", "imagefs"),
    ("casync chunks MB", "casync_chunks"),
    ("casync indexes MB", "casync_indexes"),
    ("casync MB", "casync"),
    ("imagefs/gzip", "imagefs/gzip"),
    ("imagefs/casync", "imagefs/casync"),
    ("casync/gzip", "casync/gzip"),
]


def model_new_bytes(versions: Sequence[Version]) -> list[Row]:
    """Per variant: the new bytes each way. `excess` is what the unchanged tensors cost: for
    imagefs the uncompressed bytes not reused (bytes_in - bytes_reused) minus the changed
    tensors' bytes, for casync the store growth minus the changed tensors' share at the
    base's compression ratio; both as a percentage of the unchanged bytes."""
    base = versions[0]
    casync_ratio = base.casync["new_bytes"] / base.logical_bytes
    rows = []
    for v in versions[1:]:
        i, c = v.imagefs, v.casync
        unchanged = v.logical_bytes - v.changed_bytes
        imagefs_new_logical = i["bytes_in"] - i["bytes_reused"]
        imagefs_excess = max(0, imagefs_new_logical - v.changed_bytes)
        casync_excess = max(0, c["new_bytes"] - round(v.changed_bytes * casync_ratio))
        rows.append(
            {
                "variant": v.name,
                "logical MB": mb(v.logical_bytes),
                "tensors": v.tensors,
                "changed MB": mb(v.changed_bytes),
                "imagefs new MB": mb(i["bytes_stored"] + i["bootstrap_bytes"]),
                "imagefs new %": 100 * (i["bytes_stored"] + i["bootstrap_bytes"]) / v.logical_bytes,
                "imagefs excess %": 100 * imagefs_excess / unchanged,
                "casync new MB": mb(c["new_bytes"] + c["index_bytes"]),
                "casync new %": 100 * (c["new_bytes"] + c["index_bytes"]) / v.logical_bytes,
                "casync excess %": 100 * casync_excess / unchanged,
                "casync excess KiB/tensor": casync_excess / 1024 / v.tensors,
                "_imagefs_excess": imagefs_excess,
                "_casync_excess": casync_excess,
            }
        )
    return rows


def check(label: str, ok: bool, detail: str) -> dict[str, Any]:
    print(f"{'ok    ' if ok else 'MISSED'}  {label}: {detail}")
    return {"target": label, "ok": ok, "detail": detail}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("images", "models"), help="run one group only")
    parser.add_argument(
        "--keep", action="store_true", help="keep the imagefs layouts and casync stores"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    groups: dict[str, dict[str, Any]] = {}
    corpus: dict[str, list[Version]] = {}
    errors: list[str] = []
    if args.only in (None, "images"):
        log("building the Debian versions (debootstrap + umoci; cached)")
        versions = debian_versions(errors)
        if versions:
            corpus["images"] = versions
            groups["images"] = run_group(
                "debian", versions, DEDUP / "work-images", {"rebuilt": REBUILT, "stacked": STACKED}
            )
    if args.only in (None, "models"):
        log("generating the model versions (cached)")
        versions = model_versions()
        corpus["models"] = versions
        groups["models"] = run_group("models", versions, DEDUP / "work-models", {})

    print(f"imagefs dedup benchmark: {' '.join(cv.IMAGEFS)}; casync default chunking")
    print("sizes in MB (10^6 bytes); casync = its chunk files + indexes (du -sb in the JSON)")
    for err in errors:
        print(f"\nBUILD FAILED: {err}")
    titles = {"images": "Debian images", "models": "Models"}
    for name, versions in corpus.items():
        print_inputs(f"{titles[name]}: versions in store order (new bytes each added)", versions)
    all_rows = [r for g in groups.values() for r in g["rows"]]
    if len(groups) == 2:
        whole = {
            k: groups["images"]["rows"][0][k] + groups["models"]["rows"][0][k]
            for k in (
                "versions",
                "logical",
                "gzip_oci",
                "imagefs_data",
                "imagefs_bootstraps",
                "imagefs",
                "casync_chunks",
                "casync_indexes",
                "casync",
            )
        }
        whole["series"] = "total (both groups)"
        whole["imagefs/gzip"] = whole["imagefs"] / whole["gzip_oci"]
        whole["imagefs/casync"] = whole["imagefs"] / whole["casync"]
        whole["casync/gzip"] = whole["casync"] / whole["gzip_oci"]
        all_rows.append(whole)
    cv.print_table("Stored bytes per series", TOTAL_COLS, [mb_row(r) for r in all_rows])
    for name, g in groups.items():
        chunk_bytes = g["rows"][0]["casync_chunks"]
        print(
            f"\n{name}: casync store on disk (du -sb) {mb(g['casync_store_du_sb']) or 0:.1f} MB, "
            f"its chunk files {mb(chunk_bytes):.1f} MB (the rest: one directory per chunk "
            f"prefix); imagefs convert {g['imagefs_seconds']} s, casync make "
            f"{g['casync_seconds']} s"
        )
    new_rows: list[Row] = []
    if "models" in corpus:
        new_rows = model_new_bytes(corpus["models"])
        cols = [(k, k) for k in new_rows[0] if not k.startswith("_")] if new_rows else []
        cv.print_table(
            "Models: new bytes per variant (after the ones above it; % of the variant)",
            cols,
            new_rows,
        )
        print(
            "\nexcess = new bytes beyond the changed tensors, % of the unchanged bytes "
            "(imagefs: uncompressed bytes not reused; casync: store growth minus the changed "
            "tensors at the base's compression ratio)"
        )
        if new_rows:
            worst = max(new_rows, key=lambda r: r["casync excess KiB/tensor"])
            print(
                f"casync (64 KiB average chunks, no tensor alignment) loses up to "
                f"{worst['casync excess KiB/tensor']:.0f} KiB per tensor ({worst['variant']}: "
                "every tensor boundary moved), about one chunk per changed boundary"
            )

    print()
    checks = []
    by_series = {r["series"]: r for r in all_rows}
    reb = by_series.get("debian: rebuilt")
    if reb:
        checks.append(
            check(
                "debian rebuilt: imagefs <= casync",
                reb["imagefs"] <= reb["casync"],
                f"{mb(reb['imagefs']):.1f} MB vs {mb(reb['casync']):.1f} MB",
            )
        )
        checks.append(
            check(
                "debian rebuilt: imagefs <= 0.5 x gzip OCI",
                reb["imagefs"] <= 0.5 * reb["gzip_oci"],
                f"{mb(reb['imagefs']):.1f} MB = {reb['imagefs/gzip']:.2f} x "
                f"{mb(reb['gzip_oci']):.1f} MB",
            )
        )
    elif "images" in corpus or args.only in (None, "images"):
        checks.append(check("debian rebuilt", False, "not measured (a build failed)"))
    mod = by_series.get("models: all")
    if mod:
        checks.append(
            check(
                "models: imagefs <= casync",
                mod["imagefs"] <= mod["casync"],
                f"{mb(mod['imagefs']):.1f} MB vs {mb(mod['casync']):.1f} MB",
            )
        )
        for r in new_rows:
            checks.append(
                check(
                    f"models {r['variant']}: unchanged tensors < 1% new bytes (imagefs)",
                    r["imagefs excess %"] < 1.0,
                    f"{r['imagefs excess %']:.3f}% (casync {r['casync excess %']:.1f}%, "
                    f"{r['casync excess KiB/tensor']:.0f} KiB per tensor)",
                )
            )
    elapsed = time.perf_counter() - started
    print(f"\ntook {elapsed:.0f} s")

    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "imagefs": cv.IMAGEFS,
        "seconds": round(elapsed, 1),
        "errors": errors,
        "groups": {
            name: {
                **groups[name],
                "versions": [
                    {k: (str(x) if isinstance(x, Path) else x) for k, x in v.__dict__.items()}
                    for v in versions
                ],
            }
            for name, versions in corpus.items()
        },
        "totals": all_rows,
        "model_new_bytes": new_rows,
        "checks": checks,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {RESULTS}")
    if not args.keep:
        for name in corpus:
            shutil.rmtree(DEDUP / f"work-{name}", ignore_errors=True)
    return 0 if all(c["ok"] for c in checks) and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
