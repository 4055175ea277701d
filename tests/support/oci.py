"""Write test images: OCI image layouts and classic `docker save` archives from layer blobs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zstandard

Compression = Literal["gzip", "zstd", "none"]

MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

LAYER_MEDIA_TYPES: dict[Compression, str] = {
    "gzip": MEDIA_TYPE_LAYER_GZIP,
    "zstd": MEDIA_TYPE_LAYER_ZSTD,
    "none": MEDIA_TYPE_LAYER_TAR,
}

#: Fixed creation time written into configs and archive members (2023-11-14T22:13:20Z).
FIXED_EPOCH = 1700000000
FIXED_CREATED = "2023-11-14T22:13:20Z"


def sha256_digest(data: bytes) -> str:
    """Return ``sha256:<hex>`` of *data*."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(tar: bytes, compression: Compression) -> bytes:
    """Compress an uncompressed tar deterministically (gzip header mtime 0, fixed levels)."""
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(tar)
    if compression == "none":
        return tar
    raise ValueError(f"unknown compression {compression!r}")


def decompress(blob: bytes, media_type: str) -> bytes:
    """Undo :func:`compress` according to an OCI layer *media_type*."""
    if media_type == MEDIA_TYPE_LAYER_GZIP:
        return gzip.decompress(blob)
    if media_type == MEDIA_TYPE_LAYER_ZSTD:
        return zstandard.ZstdDecompressor().decompress(blob)
    if media_type == MEDIA_TYPE_LAYER_TAR:
        return blob
    raise ValueError(f"unknown layer media type {media_type!r}")


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class LayerBlob:
    """One layer as stored in an image: the (compressed) blob, its media type and diff_id."""

    data: bytes
    media_type: str
    diff_id: str  # "sha256:<hex>" of the uncompressed tar

    @classmethod
    def from_tar(cls, tar: bytes, compression: Compression = "gzip") -> LayerBlob:
        return cls(compress(tar, compression), LAYER_MEDIA_TYPES[compression], sha256_digest(tar))

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def compression(self) -> Compression:
        for name, media_type in LAYER_MEDIA_TYPES.items():
            if media_type == self.media_type:
                return name
        raise ValueError(f"unknown layer media type {self.media_type!r}")

    def tar(self) -> bytes:
        """Return the uncompressed tar, checking it against :attr:`diff_id`."""
        tar = decompress(self.data, self.media_type)
        if sha256_digest(tar) != self.diff_id:
            raise ValueError(f"layer {self.digest} does not match its diff_id {self.diff_id}")
        return tar


@dataclass(frozen=True)
class ImageRef:
    """What :func:`write_oci_layout` wrote for one tag."""

    layout: Path
    tag: str
    manifest_digest: str
    manifest: bytes
    config_digest: str
    config: bytes

    @property
    def umoci_image(self) -> str:
        """The ``--image`` argument umoci expects: ``<layout>:<tag>``."""
        return f"{self.layout}:{self.tag}"

    @property
    def skopeo_ref(self) -> str:
        """A skopeo/containers-image transport reference: ``oci:<layout>:<tag>``."""
        return f"oci:{self.layout}:{self.tag}"


def image_config(
    diff_ids: list[str],
    *,
    config_extra: dict[str, Any] | None = None,
    architecture: str = "amd64",
    os_: str = "linux",
) -> dict[str, Any]:
    """Build an image config. *config_extra* keys override top-level keys, except ``config``,
    whose dict is merged key by key into the default runtime config."""
    runtime: dict[str, Any] = {
        "Cmd": ["/bin/sh"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/",
    }
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": os_,
        "created": FIXED_CREATED,
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [
            {"created": FIXED_CREATED, "created_by": f"imagefs test layer {i}"}
            for i in range(len(diff_ids))
        ],
    }
    for key, value in (config_extra or {}).items():
        if key == "config" and isinstance(value, dict):
            runtime.update(value)
        else:
            config[key] = value
    return config


def _write_blob(blobs_dir: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    path = blobs_dir / digest.removeprefix("sha256:")
    if not path.exists():
        path.write_bytes(data)
    return digest


def write_oci_layout(
    root: Path,
    layers: list[LayerBlob],
    *,
    tag: str = "latest",
    config_extra: dict[str, Any] | None = None,
    architecture: str = "amd64",
    os_: str = "linux",
) -> ImageRef:
    """Write (or add to) an OCI image layout at *root* and tag the new manifest *tag*.

    Existing manifests in ``index.json`` are kept, except one already carrying the same tag,
    which is replaced (its blobs stay, as with other tools)."""
    config = image_config(
        [layer.diff_id for layer in layers],
        config_extra=config_extra,
        architecture=architecture,
        os_=os_,
    )
    return _write_oci_image(root, layers, config, tag=tag)


def _write_oci_image(
    root: Path, layers: list[LayerBlob], config_obj: dict[str, Any], *, tag: str
) -> ImageRef:
    architecture = str(config_obj.get("architecture", "amd64"))
    os_ = str(config_obj.get("os", "linux"))
    root.mkdir(parents=True, exist_ok=True)
    blobs_dir = root / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_bytes(_canonical_json({"imageLayoutVersion": "1.0.0"}))

    for layer in layers:
        _write_blob(blobs_dir, layer.data)
    config = _canonical_json(config_obj)
    config_digest = _write_blob(blobs_dir, config)
    manifest = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_CONFIG,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        }
    )
    manifest_digest = _write_blob(blobs_dir, manifest)

    index_path = root / "index.json"
    index: dict[str, Any]
    if index_path.exists():
        index = json.loads(index_path.read_bytes())
    else:
        index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []}
    index["manifests"] = [
        desc
        for desc in index.get("manifests", [])
        if desc.get("annotations", {}).get(REF_NAME_ANNOTATION) != tag
    ]
    index["manifests"].append(
        {
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest),
            "platform": {"architecture": architecture, "os": os_},
            "annotations": {REF_NAME_ANNOTATION: tag},
        }
    )
    index_path.write_bytes(_canonical_json(index))
    return ImageRef(root, tag, manifest_digest, manifest, config_digest, config)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = FIXED_EPOCH
    info.uname = info.gname = ""
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    else:
        info.mode = 0o644
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_docker_archive(
    path: Path,
    layers: list[LayerBlob],
    *,
    repo_tag: str = "sample:latest",
    config_extra: dict[str, Any] | None = None,
    architecture: str = "amd64",
    os_: str = "linux",
) -> Path:
    """Write a classic (pre-containerd) ``docker save`` tarball to *path*.

    Layers are stored uncompressed as ``<id>/layer.tar`` where ``<id>`` is a chain id over the
    diff_ids (like Docker's v1 ids, distinct for identical layers at different depths); the
    config is ``<config hex>.json``; ``manifest.json`` and ``repositories`` name *repo_tag*."""
    diff_ids = [layer.diff_id for layer in layers]
    config = _canonical_json(
        image_config(diff_ids, config_extra=config_extra, architecture=architecture, os_=os_)
    )
    config_name = sha256_digest(config).removeprefix("sha256:") + ".json"

    members: dict[str, bytes | None] = {config_name: config}
    layer_paths: list[str] = []
    parent = ""
    for layer in layers:
        layer_id = hashlib.sha256(f"{parent} {layer.diff_id}".encode()).hexdigest()
        v1: dict[str, Any] = {"id": layer_id, "created": FIXED_CREATED}
        if parent:
            v1["parent"] = parent
        members[f"{layer_id}/"] = None
        members[f"{layer_id}/VERSION"] = b"1.0"
        members[f"{layer_id}/json"] = _canonical_json(v1)
        members[f"{layer_id}/layer.tar"] = layer.tar()
        layer_paths.append(f"{layer_id}/layer.tar")
        parent = layer_id

    repo, _, tag = repo_tag.rpartition(":")
    if not repo or "/" in tag:
        raise ValueError(f"repo_tag must be 'name:tag', got {repo_tag!r}")
    members["manifest.json"] = _canonical_json(
        [{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_paths}]
    )
    members["repositories"] = _canonical_json({repo: {tag: parent}})

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            _add_member(tar, name, members[name])
    path.write_bytes(buf.getvalue())
    return path


def _read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def read_manifest(layout: Path, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(manifest, config)`` of the manifest tagged *tag* in an OCI layout."""
    index = _read_json(layout / "index.json")
    for desc in index.get("manifests", []):
        if desc.get("annotations", {}).get(REF_NAME_ANNOTATION) == tag:
            manifest = _read_json(_blob_path(layout, desc["digest"]))
            config = _read_json(_blob_path(layout, manifest["config"]["digest"]))
            return manifest, config
    raise KeyError(f"tag {tag!r} not found in {layout}/index.json")


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def read_layers(layout: Path, tag: str) -> list[LayerBlob]:
    """The layer blobs of *tag*, lowest first, with diff_ids from its config."""
    manifest, config = read_manifest(layout, tag)
    diff_ids: list[str] = config["rootfs"]["diff_ids"]
    return [
        LayerBlob(_blob_path(layout, desc["digest"]).read_bytes(), desc["mediaType"], diff_id)
        for desc, diff_id in zip(manifest["layers"], diff_ids, strict=True)
    ]


def recompress_layout(
    src: Path, tag: str, dst: Path, compression: Compression = "gzip"
) -> ImageRef:
    """Copy image *tag* of layout *src* to layout *dst* with every layer recompressed.

    Diff_ids, hence the unpacked tree, stay the same; the config keeps every other field."""
    _, config = read_manifest(src, tag)
    layers = [LayerBlob.from_tar(layer.tar(), compression) for layer in read_layers(src, tag)]
    return _write_oci_image(dst, layers, config, tag=tag)
