"""The containerd API stubs (Snapshots; Images, Content and Leases for `imagefs pull`),
generated at install time into `_gen/` by scripts/gen_protos.py (scripts/bootstrap runs it).
They are imported here, through importlib, as untyped modules, so nothing else depends on
generated code being typed."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from imagefs.errors import ImagefsError

_PKG = "fuse_mount.snapshotter._gen.containerd"


class StubsMissingError(ImagefsError):
    """The generated gRPC stubs are missing or do not match the installed grpcio/protobuf."""


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"{_PKG}.{name}")
    except ImportError as exc:
        raise StubsMissingError(
            f"the containerd API stubs ({_PKG}.{name}) cannot be imported: {exc}; "
            "run scripts/bootstrap (it runs scripts/gen_protos.py)"
        ) from exc


def snapshots_pb2() -> Any:
    """containerd.services.snapshots.v1 messages (PrepareSnapshotRequest, Info, Kind, ...)."""
    return _load("services.snapshots.v1.snapshots_pb2")


def snapshots_pb2_grpc() -> Any:
    """containerd.services.snapshots.v1 service glue (add_SnapshotsServicer_to_server, stub)."""
    return _load("services.snapshots.v1.snapshots_pb2_grpc")


def mount_pb2() -> Any:
    """containerd.types.Mount."""
    return _load("types.mount_pb2")


def descriptor_pb2() -> Any:
    """containerd.types.Descriptor (an image's target)."""
    return _load("types.descriptor_pb2")


def images_pb2() -> Any:
    """containerd.services.images.v1 messages (Image, CreateImageRequest, ...)."""
    return _load("services.images.v1.images_pb2")


def images_pb2_grpc() -> Any:
    """containerd.services.images.v1 service glue (ImagesStub)."""
    return _load("services.images.v1.images_pb2_grpc")


def content_pb2() -> Any:
    """containerd.services.content.v1 messages (WriteContentRequest, WriteAction, Info, ...)."""
    return _load("services.content.v1.content_pb2")


def content_pb2_grpc() -> Any:
    """containerd.services.content.v1 service glue (ContentStub)."""
    return _load("services.content.v1.content_pb2_grpc")


def leases_pb2() -> Any:
    """containerd.services.leases.v1 messages (CreateRequest, DeleteRequest)."""
    return _load("services.leases.v1.leases_pb2")


def leases_pb2_grpc() -> Any:
    """containerd.services.leases.v1 service glue (LeasesStub)."""
    return _load("services.leases.v1.leases_pb2_grpc")


def empty_pb2() -> Any:
    """google.protobuf.Empty (the answer of Commit, Remove and Cleanup)."""
    return importlib.import_module("google.protobuf.empty_pb2")


def field_mask_pb2() -> Any:
    """google.protobuf.FieldMask (UpdateSnapshotRequest.update_mask)."""
    return importlib.import_module("google.protobuf.field_mask_pb2")
