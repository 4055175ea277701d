"""`imagefs dedup`: how much a set of images shares, at the level of chunks and at the level
of whole OCI layers, side by side.

The core (`dedup_report`) is pure: it takes what each image references (`ImageFacts`) and
returns the figures. `facts_of_bootstrap` reads the facts out of a decoded bootstrap (no
chunk data); `gather_facts` is the thin shell that fetches a manifest and, for an imagefs
image, its bootstrap.

Chunks are the same when their digests are (blake3 of the uncompressed bytes); a chunk that
two images store with different compression counts at its smallest stored size, since a
registry sharing chunks would keep one copy. Layers are the same when their digests are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from imagefs.digest import ChunkDigest, Digest
from imagefs.format import Bootstrap, is_imagefs_manifest, load_bootstrap, parse_imagefs_manifest
from imagefs.image import ImageStore, OpenedImage
from imagefs.oci import Manifest

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class ChunkSize:
    size: int  # uncompressed
    stored_size: int  # as stored in its blob (compressed or raw)


@dataclass(frozen=True, slots=True)
class ChunkFacts:
    """What an imagefs image's files reference: each distinct chunk once, and the file bytes."""

    chunks: Mapping[ChunkDigest, ChunkSize]
    logical_bytes: int  # sum of regular file sizes (each inode once; duplicates included)
    bootstrap_bytes: int  # the bootstrap blob, as stored


@dataclass(frozen=True, slots=True)
class ImageFacts:
    name: str
    manifest_digest: Digest
    layers: Mapping[Digest, int]  # the manifest's layer blobs: digest -> size
    chunks: ChunkFacts | None  # None: a plain OCI image (layer figures only)


@dataclass(frozen=True, slots=True)
class ImageDedup:
    name: str
    manifest_digest: str
    layers: int
    layer_bytes: int
    shared_layer_bytes: int  # of its layers' bytes, those another image of the set also has
    own_layer_bytes: int
    # chunk figures; None for a plain OCI image
    logical_bytes: int | None = None
    chunks: int | None = None
    unique_chunk_bytes: int | None = None  # its distinct chunks, uncompressed
    stored_bytes: int | None = None  # its distinct chunks, as stored
    shared_bytes: int | None = None  # uncompressed bytes of its chunks another image also has
    own_bytes: int | None = None  # uncompressed bytes of chunks no other image has
    bootstrap_bytes: int | None = None

    @property
    def imagefs(self) -> bool:
        return self.chunks is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "manifest_digest": self.manifest_digest,
            "imagefs": self.imagefs,
            "logical_bytes": self.logical_bytes,
            "chunks": self.chunks,
            "unique_chunk_bytes": self.unique_chunk_bytes,
            "stored_bytes": self.stored_bytes,
            "shared_bytes": self.shared_bytes,
            "own_bytes": self.own_bytes,
            "bootstrap_bytes": self.bootstrap_bytes,
            "layers": self.layers,
            "layer_bytes": self.layer_bytes,
            "shared_layer_bytes": self.shared_layer_bytes,
            "own_layer_bytes": self.own_layer_bytes,
        }


@dataclass(frozen=True, slots=True)
class DedupReport:
    images: tuple[ImageDedup, ...]
    # chunk level, over the imagefs images of the set
    total_logical_bytes: int
    total_chunks: int  # distinct chunks over the set
    total_unique_chunk_bytes: int  # the union of distinct chunks, uncompressed
    total_stored_bytes: int  # the union of distinct chunks, as stored: a chunk-sharing registry
    sum_stored_bytes: int  # each image's stored bytes added up: no sharing between images
    total_bootstrap_bytes: int
    # layer level, over every image of the set
    total_layer_bytes: int  # each image's layers added up
    union_layer_bytes: int  # the union of layer blobs: a registry sharing whole layers
    # the layer union of the imagefs images only, to compare with the chunk figures
    imagefs_union_layer_bytes: int

    @property
    def saving_vs_layers(self) -> float | None:
        """The fraction of bytes a registry sharing chunks saves over one sharing whole layers,
        for the imagefs images of the set: 1 - (chunks stored + bootstraps) / layer union.
        None without imagefs images."""
        if not self.imagefs_union_layer_bytes:
            return None
        chunked = self.total_stored_bytes + self.total_bootstrap_bytes
        return 1.0 - chunked / self.imagefs_union_layer_bytes

    def to_json(self) -> dict[str, Any]:
        saving = self.saving_vs_layers
        return {
            "images": [i.to_json() for i in self.images],
            "total_logical_bytes": self.total_logical_bytes,
            "total_chunks": self.total_chunks,
            "total_unique_chunk_bytes": self.total_unique_chunk_bytes,
            "total_stored_bytes": self.total_stored_bytes,
            "sum_stored_bytes": self.sum_stored_bytes,
            "total_bootstrap_bytes": self.total_bootstrap_bytes,
            "total_layer_bytes": self.total_layer_bytes,
            "union_layer_bytes": self.union_layer_bytes,
            "imagefs_union_layer_bytes": self.imagefs_union_layer_bytes,
            "saving_vs_layers": None if saving is None else round(saving, 4),
        }


def _holders(keys: Iterable[Iterable[K]]) -> dict[K, int]:
    """How many of the given key sets hold each key."""
    count: dict[K, int] = {}
    for ks in keys:
        for k in ks:
            count[k] = count.get(k, 0) + 1
    return count


def dedup_report(facts: Sequence[ImageFacts]) -> DedupReport:
    """The dedup figures of a set of images (pure)."""
    chunk_holders = _holders(f.chunks.chunks for f in facts if f.chunks is not None)
    layer_holders = _holders(f.layers for f in facts)
    union_chunks: dict[ChunkDigest, ChunkSize] = {}
    union_layers: dict[Digest, int] = {}
    imagefs_layers: dict[Digest, int] = {}
    images = []
    logical = sum_stored = boot_bytes = 0
    for f in facts:
        for d, size in f.layers.items():
            union_layers[d] = max(size, union_layers.get(d, 0))
        layer_bytes = sum(f.layers.values())
        shared_layers = sum(s for d, s in f.layers.items() if layer_holders[d] > 1)
        layer_figures = {
            "layers": len(f.layers),
            "layer_bytes": layer_bytes,
            "shared_layer_bytes": shared_layers,
            "own_layer_bytes": layer_bytes - shared_layers,
        }
        if f.chunks is None:
            images.append(ImageDedup(f.name, str(f.manifest_digest), **layer_figures))
            continue
        imagefs_layers.update(f.layers)
        for cd, c in f.chunks.chunks.items():
            have = union_chunks.get(cd)
            if have is None or c.stored_size < have.stored_size:
                union_chunks[cd] = c
        unique = sum(c.size for c in f.chunks.chunks.values())
        stored = sum(c.stored_size for c in f.chunks.chunks.values())
        shared = sum(c.size for cd, c in f.chunks.chunks.items() if chunk_holders[cd] > 1)
        logical += f.chunks.logical_bytes
        sum_stored += stored
        boot_bytes += f.chunks.bootstrap_bytes
        images.append(
            ImageDedup(
                f.name,
                str(f.manifest_digest),
                **layer_figures,
                logical_bytes=f.chunks.logical_bytes,
                chunks=len(f.chunks.chunks),
                unique_chunk_bytes=unique,
                stored_bytes=stored,
                shared_bytes=shared,
                own_bytes=unique - shared,
                bootstrap_bytes=f.chunks.bootstrap_bytes,
            )
        )
    return DedupReport(
        images=tuple(images),
        total_logical_bytes=logical,
        total_chunks=len(union_chunks),
        total_unique_chunk_bytes=sum(c.size for c in union_chunks.values()),
        total_stored_bytes=sum(c.stored_size for c in union_chunks.values()),
        sum_stored_bytes=sum_stored,
        total_bootstrap_bytes=boot_bytes,
        total_layer_bytes=sum(sum(f.layers.values()) for f in facts),
        union_layer_bytes=sum(union_layers.values()),
        imagefs_union_layer_bytes=sum(union_layers[d] for d in imagefs_layers),
    )


# ---------------------------------------------------------------------------------------------
# Gathering the facts (the bootstrap only; never chunk data)


def layer_sizes(manifest: Manifest) -> dict[Digest, int]:
    """The manifest's layer blobs (a layer listed twice counts once)."""
    return {layer.digest: layer.size for layer in manifest.layers}


def chunk_facts(boot: Bootstrap, bootstrap_bytes: int) -> ChunkFacts:
    """The distinct chunks the bootstrap's files reference, and the files' bytes."""
    referenced: set[int] = set()
    logical = 0
    for index in range(boot.inode_count):
        node = boot.inode(index)
        if node.is_reg:
            logical += node.size
            first, count = boot.file_extent(index)
            referenced.update(boot.refs[first : first + count])
    chunks: dict[ChunkDigest, ChunkSize] = {}
    for ci in referenced:
        c = boot.chunk(ci)
        have = chunks.get(c.digest)
        if have is None or c.stored_size < have.stored_size:
            chunks[c.digest] = ChunkSize(c.size, c.stored_size)
    return ChunkFacts(chunks, logical, bootstrap_bytes)


def facts_of_opened(name: str, opened: OpenedImage) -> ImageFacts:
    """The facts of an opened imagefs image (from its bootstrap and manifest)."""
    return ImageFacts(
        name,
        opened.manifest_descriptor.digest,
        layer_sizes(opened.image.manifest),
        chunk_facts(opened.bootstrap, opened.image.bootstrap.size),
    )


def gather_facts(
    name: str, store: ImageStore, platform: Mapping[str, str] | None = None
) -> ImageFacts:
    """Fetch IMAGE's manifest and, for an imagefs image, its bootstrap: nothing else.

    A plain OCI image (no bootstrap layer) gets layer figures only."""
    desc, manifest = store.resolve_manifest(platform)
    if not is_imagefs_manifest(manifest):
        return ImageFacts(name, desc.digest, layer_sizes(manifest), None)
    image = parse_imagefs_manifest(manifest)
    boot = load_bootstrap(store.read_blob(image.bootstrap.digest))
    return ImageFacts(
        name, desc.digest, layer_sizes(manifest), chunk_facts(boot, image.bootstrap.size)
    )
