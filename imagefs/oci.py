"""OCI image-spec objects (descriptors, manifests, indexes, image configs) as frozen
dataclasses, parsed with validation and serialised canonically; and the OCI image layout
on disk (`oci:PATH[:TAG]`) as a blob store with atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from imagefs.digest import Digest
from imagefs.errors import FormatError, NotFoundError, SourceError, TargetError, UsageError

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = frozenset({MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
INDEX_TYPES = frozenset({MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_LIST})
REF_NAME = "org.opencontainers.image.ref.name"

LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON for documents imagefs writes (fixed key order as given)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except RecursionError:
        raise FormatError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a > 4300-digit integer
        raise FormatError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FormatError(f"{what} is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, Any] | None = None
    artifact_type: str | None = None

    @classmethod
    def of(cls, media_type: str, data: bytes, **annotations: str) -> Descriptor:
        return cls(media_type, Digest.of(data), len(data), dict(annotations))

    @classmethod
    def parse(cls, value: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(value, dict):
            raise FormatError(f"{what} is not an object")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise FormatError(f"{what} lacks mediaType or digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FormatError(f"{what} has an invalid size")
        annotations = value.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise FormatError(f"{what} has invalid annotations")
        platform = value.get("platform")
        if platform is not None and not isinstance(platform, dict):
            raise FormatError(f"{what} has an invalid platform")
        artifact_type = value.get("artifactType")
        return cls(
            media_type,
            Digest.parse(digest),
            size,
            annotations,
            platform,
            artifact_type if isinstance(artifact_type, str) else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest)}
        out["size"] = self.size
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform:
            out["platform"] = dict(self.platform)
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    """An OCI (or Docker v2) image manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes, media_type: str | None = None) -> Manifest:
        doc = parse_json(data, "manifest")
        mt = doc.get("mediaType") or media_type or MEDIA_TYPE_OCI_MANIFEST
        if not isinstance(mt, str):
            raise FormatError("manifest mediaType is not a string")
        if mt not in MANIFEST_TYPES:
            raise FormatError(f"not an image manifest: media type {mt}")
        if doc.get("schemaVersion") != 2:
            raise FormatError("manifest schemaVersion is not 2")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise FormatError("manifest has no layers list")
        subject = doc.get("subject")
        annotations = doc.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise FormatError("manifest annotations are invalid")
        return cls(
            mt,
            Descriptor.parse(doc.get("config"), "manifest config"),
            tuple(Descriptor.parse(x, "manifest layer") for x in layers),
            Descriptor.parse(subject, "manifest subject") if subject is not None else None,
            {str(k): str(v) for k, v in annotations.items()},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        out["config"] = self.config.to_json()
        out["layers"] = [layer.to_json() for layer in self.layers]
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass(frozen=True, slots=True)
class Index:
    manifests: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, data: bytes) -> Index:
        doc = parse_json(data, "image index")
        manifests = doc.get("manifests")
        if doc.get("schemaVersion") != 2 or not isinstance(manifests, list):
            raise FormatError("image index is malformed")
        return cls(tuple(Descriptor.parse(m, "index entry") for m in manifests))

    def encode(self) -> bytes:
        return canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_OCI_INDEX,
                "manifests": [m.to_json() for m in self.manifests],
            }
        )


def current_platform() -> dict[str, str]:
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    return {"os": "linux", "architecture": arch}


def parse_platform(text: str) -> dict[str, str]:
    """`OS/ARCH[/VARIANT]` (as `--platform` takes it) as an OCI platform mapping."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise UsageError(f"platform {text!r} must be OS/ARCH[/VARIANT], e.g. linux/amd64")
    out = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


def select_platform(index: Index, platform: Mapping[str, str] | None = None) -> Descriptor:
    """Pick the manifest for `platform` (default: this machine) from an index."""
    want = dict(platform or current_platform())
    candidates = [m for m in index.manifests if m.media_type in MANIFEST_TYPES]
    for m in candidates:
        p = m.platform or {}
        if all(p.get(k) == v for k, v in want.items()):
            return m
    if len(candidates) == 1 and not candidates[0].platform:
        return candidates[0]
    raise NotFoundError(f"no manifest for platform {want.get('os')}/{want.get('architecture')}")


# ---------------------------------------------------------------------------------------------
# OCI image layout on disk


def _check_hex(digest: Digest) -> str:
    return digest.hex  # Digest validates algorithm and hex form on construction


class OciLayout:
    """An OCI image layout directory: `oci-layout`, `index.json`, `blobs/sha256/<hex>`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def open(cls, root: Path) -> OciLayout:
        layout = cls(root)
        marker = layout.root / "oci-layout"
        if not marker.is_file():
            raise NotFoundError(f"{root} is not an OCI image layout (no oci-layout file)")
        doc = parse_json(marker.read_bytes(), f"{marker}")
        if not str(doc.get("imageLayoutVersion", "")).startswith("1."):
            raise FormatError(f"{marker}: unsupported imageLayoutVersion")
        return layout

    @classmethod
    def create(cls, root: Path) -> OciLayout:
        layout = cls(root)
        (layout.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        marker = layout.root / "oci-layout"
        if not marker.exists():
            _atomic_write(marker, canonical_json({"imageLayoutVersion": "1.0.0"}))
        if not (layout.root / "index.json").exists():
            _atomic_write(layout.root / "index.json", Index(()).encode())
        return layout

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / _check_hex(digest)

    def has_blob(self, digest: Digest) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: Digest, *, verify: bool = True) -> bytes:
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is missing from {self.root}") from None
        except OSError as exc:
            raise SourceError(f"cannot read blob {digest}: {exc.strerror}") from None
        if verify and Digest.of(data) != digest:
            from imagefs.errors import IntegrityError

            raise IntegrityError(f"blob {digest} in {self.root} does not match its digest")
        return data

    def open_blob(self, digest: Digest) -> BinaryIO:
        try:
            return self.blob_path(digest).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is missing from {self.root}") from None

    def write_blob(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        path = self.blob_path(digest)
        if not path.exists():
            _atomic_write(path, data)
        return digest

    @contextlib.contextmanager
    def blob_writer(self) -> Iterator[BlobFileWriter]:
        """Stream a blob into the layout; it appears under its digest only on success."""
        blobs = self.root / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=blobs)
        writer = BlobFileWriter(os.fdopen(fd, "wb"), Path(tmp))
        try:
            yield writer
            writer.finish(self)
        finally:
            writer.abort()

    def index(self) -> Index:
        path = self.root / "index.json"
        try:
            return Index.parse(path.read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"{self.root} has no index.json") from None

    def resolve(self, tag: str | None) -> Descriptor:
        """The index entry for `tag` (or the only entry when tag is None)."""
        manifests = self.index().manifests
        if tag is None:
            if len(manifests) == 1:
                return manifests[0]
            tags = sorted(m.annotations.get(REF_NAME, "?") for m in manifests)
            raise NotFoundError(
                f"{self.root} holds {len(manifests)} images; name one with :TAG "
                f"({', '.join(tags) or 'none'})"
            )
        for m in manifests:
            if m.annotations.get(REF_NAME) == tag:
                return m
        raise NotFoundError(f"tag {tag!r} not found in {self.root}")

    def resolve_manifest(
        self, tag: str | None, platform: Mapping[str, str] | None = None
    ) -> tuple[Descriptor, Manifest]:
        desc = self.resolve(tag)
        if desc.media_type in INDEX_TYPES:
            desc = select_platform(Index.parse(self.read_blob(desc.digest)), platform)
        if desc.media_type not in MANIFEST_TYPES:
            raise FormatError(f"{desc.digest} is a {desc.media_type}, not an image manifest")
        return desc, Manifest.parse(self.read_blob(desc.digest), desc.media_type)

    def set_tag(self, desc: Descriptor, tag: str) -> None:
        """Point `tag` at `desc` in index.json (replacing an older entry), atomically."""
        kept = [m for m in self.index().manifests if m.annotations.get(REF_NAME) != tag]
        entry = Descriptor(
            desc.media_type, desc.digest, desc.size, {**desc.annotations, REF_NAME: tag}
        )
        _atomic_write(self.root / "index.json", Index((*kept, entry)).encode())


class BlobFileWriter:
    """A blob being streamed to a temporary file; hashes as it writes."""

    def __init__(self, file: BinaryIO, tmp: Path) -> None:
        self._file = file
        self._tmp = tmp
        self._hash = hashlib.sha256()
        self.size = 0
        self.digest: Digest | None = None

    def write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def finish(self, layout: OciLayout) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.digest = Digest("sha256", self._hash.hexdigest())
        path = layout.blob_path(self.digest)
        if path.exists():
            self._tmp.unlink()
        else:
            os.replace(self._tmp, path)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise TargetError(f"cannot write {path}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class LayoutRef:
    """`oci:PATH[:TAG]`: an image in an OCI image layout on disk."""

    path: Path
    tag: str | None

    @classmethod
    def parse(cls, text: str) -> LayoutRef:
        if not text.startswith("oci:"):
            raise FormatError(f"not an OCI layout reference (expected oci:PATH[:TAG]): {text}")
        body = text[4:]
        path, sep, tag = body.rpartition(":")
        if not sep or "/" in tag or not path:
            path, tag = body, ""
        if not path:
            raise FormatError(f"OCI layout reference has no path: {text}")
        return cls(Path(path), tag or None)

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")
