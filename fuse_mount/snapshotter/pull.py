"""`imagefs pull`: make an imagefs image runnable by a containerd (`ctr run --snapshotter
imagefs`) without containerd fetching any layer, like stargz's `ctr-remote image rpull`.

The pure part (`pull_plan`): from an imagefs image's manifest and config, the snapshots
containerd must prepare (chain IDs, parents and the labels that make the imagefs snapshotter
provide each layer remotely instead of containerd fetching and applying it). Chain IDs
follow the OCI image spec: chain(L0) = diff_id(L0), chain(Ln) = sha256(chain(Ln-1) + " " +
diff_id(Ln)); an imagefs image's diff_ids are its layer digests.

The I/O part (`pull_image` over a `ContainerdClient`): under a lease, the config and the
manifest into containerd's content store (the manifest labelled so GC keeps the config), a
Prepare per layer through containerd's snapshots service that the imagefs snapshotter
answers ALREADY_EXISTS (containerd adopts its committed snapshot), then the image record;
the config and the image carry `containerd.io/gc.ref.snapshot.<snapshotter>` = the top
chain ID, as containerd's unpacker sets it, so GC keeps the snapshots.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from fuse_mount.snapshotter import protos
from fuse_mount.snapshotter.remote import (
    LABEL_IMAGEFS_MANIFEST,
    LABEL_IMAGEFS_REF,
    LABEL_TARGET,
)
from imagefs.digest import Digest
from imagefs.errors import FormatError, ImagefsError, MountError, NotFoundError
from imagefs.format import ANNOTATION_LAYER_BLOB, ANNOTATION_LAYER_BOOTSTRAP, parse_imagefs_manifest
from imagefs.image import ImageStore
from imagefs.oci import Descriptor, Manifest
from registry.reference import Reference, parse_reference


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


@dataclass(frozen=True, slots=True)
class LayerPrepare:
    key: str  # the active snapshot's key ("extract-<n> <chain id>", as containerd names it)
    parent: str  # the parent chain ID ("" for the first layer)
    chain_id: str
    labels: dict[str, str]


def pull_plan(
    reference: str,
    manifest_digest: Digest,
    manifest: Manifest,
    config: bytes,
    nonce: str = "",
) -> list[LayerPrepare]:
    """The Prepare calls that unpack `manifest` through the imagefs snapshotter; `nonce`
    makes the active snapshots' keys unique to one pull (as containerd's are)."""
    try:
        doc = json.loads(config)
        diff_ids = doc["rootfs"]["diff_ids"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise FormatError("the image config has no rootfs.diff_ids") from None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(manifest.layers):
        raise FormatError("the image config's diff_ids do not match the manifest's layers")
    chains = chain_ids([str(d) for d in diff_ids])
    plan = []
    for i, (layer, chain) in enumerate(zip(manifest.layers, chains, strict=True)):
        labels = {
            LABEL_TARGET: chain,
            LABEL_IMAGEFS_REF: reference,
            LABEL_IMAGEFS_MANIFEST: str(manifest_digest),
        }
        for key in (ANNOTATION_LAYER_BLOB, ANNOTATION_LAYER_BOOTSTRAP):
            if layer.annotations.get(key):
                labels[key] = layer.annotations[key]
        parent = chains[i - 1] if i else ""
        key = f"extract-{nonce}-{i} {chain}" if nonce else f"extract-{i} {chain}"
        plan.append(LayerPrepare(key, parent, chain, labels))
    return plan


# ------------------------------------------------------------------ containerd's API (I/O)

LABEL_GC_CONTENT_CONFIG = "containerd.io/gc.ref.content.config"
LABEL_GC_CONTENT_LAYER = "containerd.io/gc.ref.content.l.{}"
LABEL_GC_SNAPSHOT = "containerd.io/gc.ref.snapshot.{}"
LABEL_GC_EXPIRE = "containerd.io/gc.expire"
CONTENT_CHUNK = 1 << 20  # containerd accepts messages up to 16 MiB
LEASE_EXPIRY_S = 3600  # a pull that dies leaves a lease containerd's GC drops after this


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: str  # "active", "view" or "committed"
    labels: dict[str, str]


class AlreadyExistsError(ImagefsError):
    """containerd answered ALREADY_EXISTS (handled inside ContainerdClient)."""


class ContainerdClient:
    """The few calls of containerd's gRPC API (images, content, leases, snapshots) that
    `imagefs pull` needs, in one namespace; inside `lease()` every call also names the
    lease, so what is created is kept until the lease is deleted."""

    def __init__(self, address: str, namespace: str = "default", timeout_s: float = 60) -> None:
        from fuse_mount.snapshotter.server import socket_path

        self.address = str(socket_path(address))
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.lease_id: str | None = None
        self._channel = grpc.insecure_channel(f"unix:{self.address}")
        self._images: Any = protos.images_pb2_grpc().ImagesStub(self._channel)
        self._content: Any = protos.content_pb2_grpc().ContentStub(self._channel)
        self._leases: Any = protos.leases_pb2_grpc().LeasesStub(self._channel)
        self._snapshots: Any = protos.snapshots_pb2_grpc().SnapshotsStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ContainerdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metadata(self) -> list[tuple[str, str]]:
        md = [("containerd-namespace", self.namespace)]
        if self.lease_id is not None:
            md.append(("containerd-lease", self.lease_id))
        return md

    def _call(self, what: str, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata(), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: grpc.RpcError) -> ImagefsError:
        call: Any = exc  # the errors grpc raises are also grpc.Call (code, details)
        code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
        details = (call.details() if hasattr(call, "details") else None) or str(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return MountError(f"cannot reach containerd at {self.address}: {what}: {details}")
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFoundError(f"containerd: {what}: {details}")
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return AlreadyExistsError(f"containerd: {what}: {details}")
        return MountError(f"containerd: {what}: {details}")

    # ------------------------------------------------------------------ leases

    @contextmanager
    def lease(self, expiry_s: float = LEASE_EXPIRY_S) -> Iterator[str]:
        """A lease held for the block (deleted at its end; it expires by itself if this
        process dies), named by every call made meanwhile."""
        pb = protos.leases_pb2()
        lease_id = f"imagefs-pull-{time.time_ns()}-{os.getpid()}"
        expires = datetime.now(UTC) + timedelta(seconds=expiry_s)
        labels = {LABEL_GC_EXPIRE: expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        self._call(
            "create lease", self._leases.Create, pb.CreateRequest(id=lease_id, labels=labels)
        )
        self.lease_id = lease_id
        delete = pb.DeleteRequest(id=lease_id)
        try:
            yield lease_id
        except BaseException:
            self.lease_id = None
            with suppress(ImagefsError):  # the first error is the one to report
                self._call("delete lease", self._leases.Delete, delete)
            raise
        self.lease_id = None
        self._call("delete lease", self._leases.Delete, delete)

    # ------------------------------------------------------------------ content

    def write_content(self, digest: Digest, data: bytes, labels: Mapping[str, str]) -> bool:
        """Store `data` (verified against `digest`) with `labels`; False if it was there
        already (then `labels` are set on it). The writer protocol: the first message names
        the ingest ref and the expected digest and size (ALREADY_EXISTS if the blob is
        there), WRITE messages append at `offset`, COMMIT verifies and adds the labels."""
        pb = protos.content_pb2()
        ref = f"imagefs-pull-{digest}-{time.time_ns()}"  # concurrent pulls never share one
        chunks = [data[i : i + CONTENT_CHUNK] for i in range(0, len(data), CONTENT_CHUNK)]
        requests = [
            pb.WriteContentRequest(action=pb.STAT, ref=ref, total=len(data), expected=str(digest))
        ]
        for i, chunk in enumerate(chunks[:-1]):
            requests.append(
                pb.WriteContentRequest(
                    action=pb.WRITE, ref=ref, offset=i * CONTENT_CHUNK, data=chunk
                )
            )
        last = chunks[-1] if chunks else b""
        requests.append(
            pb.WriteContentRequest(
                action=pb.COMMIT,
                ref=ref,
                offset=(len(chunks) - 1) * CONTENT_CHUNK if chunks else 0,
                data=last,
                total=len(data),
                expected=str(digest),
                labels=dict(labels),
            )
        )
        try:
            responses = list(
                self._content.Write(
                    iter(requests), metadata=self._metadata(), timeout=self.timeout_s
                )
            )
        except grpc.RpcError as exc:
            err = self._error(f"write {digest}", exc)
            if not isinstance(err, AlreadyExistsError):
                raise err from None
            if labels:
                self.update_content_labels(digest, labels)
            return False
        if not responses or responses[-1].digest != str(digest):
            raise MountError(f"containerd: write {digest}: the commit was not acknowledged")
        return True

    def update_content_labels(self, digest: Digest, labels: Mapping[str, str]) -> None:
        """Set `labels` on a blob, leaving its other labels alone."""
        pb = protos.content_pb2()
        request = pb.UpdateRequest(info=pb.Info(digest=str(digest), labels=dict(labels)))
        request.update_mask.paths.extend(f"labels.{k}" for k in labels)
        self._call(f"label {digest}", self._content.Update, request)

    # ------------------------------------------------------------------ images

    def put_image(self, name: str, target: Descriptor, labels: Mapping[str, str]) -> bool:
        """Create image `name` -> `target`, or replace it (its target and labels) if it
        exists; True if it was created."""
        pb = protos.images_pb2()
        desc = protos.descriptor_pb2().Descriptor(
            media_type=target.media_type,
            digest=str(target.digest),
            size=target.size,
            annotations=dict(target.annotations),
        )
        image = pb.Image(name=name, labels=dict(labels), target=desc)
        try:
            self._call(
                f"create image {name}", self._images.Create, pb.CreateImageRequest(image=image)
            )
        except AlreadyExistsError:
            self._call(
                f"update image {name}", self._images.Update, pb.UpdateImageRequest(image=image)
            )
            return False
        return True

    def image_target(self, name: str) -> str | None:
        """The digest image `name` points at, or None if there is no such image."""
        pb = protos.images_pb2()
        try:
            res = self._call(f"get image {name}", self._images.Get, pb.GetImageRequest(name=name))
        except NotFoundError:
            return None
        return str(res.image.target.digest)

    # ------------------------------------------------------------------ snapshots

    def stat_snapshot(self, snapshotter: str, key: str) -> SnapshotInfo | None:
        pb = protos.snapshots_pb2()
        try:
            res = self._call(
                f"stat snapshot {key}",
                self._snapshots.Stat,
                pb.StatSnapshotRequest(snapshotter=snapshotter, key=key),
            )
        except NotFoundError:
            return None
        kinds = {pb.ACTIVE: "active", pb.VIEW: "view", pb.COMMITTED: "committed"}
        info = res.info
        return SnapshotInfo(
            info.name, info.parent, kinds.get(info.kind, "unknown"), dict(info.labels)
        )

    def prepare_snapshot(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str]
    ) -> bool:
        """Prepare an active snapshot; False when containerd answers ALREADY_EXISTS (the
        target named by `containerd.io/snapshot.ref` exists, or the snapshotter made it)."""
        pb = protos.snapshots_pb2()
        request = pb.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels)
        )
        try:
            self._call(f"prepare snapshot {key!r}", self._snapshots.Prepare, request)
        except AlreadyExistsError:
            return False
        return True

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        pb = protos.snapshots_pb2()
        self._call(
            f"remove snapshot {key!r}",
            self._snapshots.Remove,
            pb.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
        )


# ------------------------------------------------------------------ imagefs pull


@dataclass(frozen=True, slots=True)
class PulledLayer:
    chain_id: str
    digest: str
    status: str  # "remote": the snapshotter provided it now; "present": it was there


@dataclass(frozen=True, slots=True)
class PullResult:
    image: str  # the image's name in containerd
    manifest_digest: str
    config_digest: str
    chain_id: str  # the top layer's: the snapshot containers are prepared on
    layers: tuple[PulledLayer, ...]
    created: bool  # a new image record (else an existing one was updated)
    seconds: float


def containerd_image_name(reference: Reference) -> str:
    """The image name containerd (and `ctr run`) uses for a reference."""
    text = str(reference)
    prefix = "registry-1.docker.io/"
    return "docker.io/" + text[len(prefix) :] if text.startswith(prefix) else text


def pull_image(
    reference: str,
    store: ImageStore,
    client: ContainerdClient,
    snapshotter: str = "imagefs",
    platform: Mapping[str, str] | None = None,
) -> PullResult:
    """Make imagefs image `reference` runnable by containerd (`ctr run --snapshotter
    imagefs`) without containerd fetching a layer: its manifest and config into the
    content store, every layer as a snapshot the imagefs snapshotter provides remotely
    (ALREADY_EXISTS), and the image record, all under one lease."""
    start = time.monotonic()
    ref = parse_reference(reference)
    desc, manifest = store.resolve_manifest(platform)
    parse_imagefs_manifest(manifest)  # FormatError for anything but an imagefs image
    raw_manifest = store.read_manifest(desc)
    config = store.read_blob(manifest.config.digest)
    plan = pull_plan(str(ref), desc.digest, manifest, config, nonce=f"{time.time_ns()}")
    gc_snapshot = {LABEL_GC_SNAPSHOT.format(snapshotter): plan[-1].chain_id}
    manifest_labels = {LABEL_GC_CONTENT_CONFIG: str(manifest.config.digest)}
    for i, layer in enumerate(manifest.layers):
        manifest_labels[LABEL_GC_CONTENT_LAYER.format(i)] = str(layer.digest)
    layers: list[PulledLayer] = []
    with client.lease():
        client.write_content(manifest.config.digest, config, gc_snapshot)
        client.write_content(desc.digest, raw_manifest, manifest_labels)
        for step, layer in zip(plan, manifest.layers, strict=True):
            layers.append(_unpack_layer(client, snapshotter, step, str(layer.digest), reference))
        name = containerd_image_name(ref)
        created = client.put_image(name, desc, gc_snapshot)
    return PullResult(
        name,
        str(desc.digest),
        str(manifest.config.digest),
        plan[-1].chain_id,
        tuple(layers),
        created,
        time.monotonic() - start,
    )


def _unpack_layer(
    client: ContainerdClient, snapshotter: str, step: LayerPrepare, digest: str, reference: str
) -> PulledLayer:
    """One layer's snapshot, as containerd's unpacker makes it: there already, or provided
    by the snapshotter (Prepare answers ALREADY_EXISTS and containerd adopts it)."""
    existing = client.stat_snapshot(snapshotter, step.chain_id)
    if existing is not None and existing.kind == "committed":
        return PulledLayer(step.chain_id, digest, "present")
    if client.prepare_snapshot(snapshotter, step.key, step.parent, step.labels):
        client.remove_snapshot(snapshotter, step.key)
        raise MountError(
            f"{reference}: snapshotter {snapshotter!r} did not provide layer {digest} "
            "remotely (it prepared an empty snapshot instead); is it the imagefs snapshotter?"
        )
    adopted = client.stat_snapshot(snapshotter, step.chain_id)
    if adopted is None or adopted.kind != "committed":
        raise MountError(
            f"{reference}: containerd reports layer {digest} as provided, but snapshot "
            f"{step.chain_id} is not committed in snapshotter {snapshotter!r}"
        )
    return PulledLayer(step.chain_id, digest, "remote")
