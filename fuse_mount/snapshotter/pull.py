"""`imagefs pull`, the pure part: from an imagefs image's manifest and config, the snapshots
containerd must prepare (chain IDs, parents and the labels that make the imagefs snapshotter
provide each layer remotely instead of containerd fetching and applying it).

Chain IDs follow the OCI image spec: chain(L0) = diff_id(L0), chain(Ln) =
sha256(chain(Ln-1) + " " + diff_id(Ln)); an imagefs image's diff_ids are its layer digests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from fuse_mount.snapshotter.remote import (
    LABEL_IMAGEFS_MANIFEST,
    LABEL_IMAGEFS_REF,
    LABEL_TARGET,
)
from imagefs.digest import Digest
from imagefs.errors import FormatError
from imagefs.format import ANNOTATION_LAYER_BLOB, ANNOTATION_LAYER_BOOTSTRAP
from imagefs.oci import Manifest


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
    reference: str, manifest_digest: Digest, manifest: Manifest, config: bytes
) -> list[LayerPrepare]:
    """The Prepare calls that unpack `manifest` through the imagefs snapshotter."""
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
        plan.append(LayerPrepare(f"extract-{i} {chain}", parent, chain, labels))
    return plan
