"""Typed digests: `ChunkDigest` (blake3-256 of a chunk's uncompressed bytes) and `Digest`
(an OCI content digest such as ``sha256:<hex>``). No bare str/bytes identifiers cross modules."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import blake3

from imagefs.errors import FormatError

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, order=True)
class ChunkDigest:
    """blake3-256 of a chunk's uncompressed bytes (32 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise FormatError(f"chunk digest must be 32 bytes, got {len(self.raw)}")

    @classmethod
    def of(cls, data: bytes | memoryview) -> ChunkDigest:
        return cls(blake3.blake3(data).digest())

    @classmethod
    def parse(cls, text: str) -> ChunkDigest:
        body = text.removeprefix("blake3:")
        if not _HEX64.fullmatch(body):
            raise FormatError(f"not a blake3 chunk digest: {text!r}")
        return cls(bytes.fromhex(body))

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        return "blake3:" + self.raw.hex()


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """An OCI content digest; imagefs writes and accepts ``sha256`` only."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        if self.algorithm != "sha256" or not _HEX64.fullmatch(self.hex):
            raise FormatError(f"unsupported or malformed digest: {self.algorithm}:{self.hex}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        if not isinstance(text, str) or ":" not in text:
            raise FormatError(f"malformed digest: {text!r}")
        algorithm, _, hexpart = text.partition(":")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes | memoryview) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    @classmethod
    def from_raw(cls, raw: bytes) -> Digest:
        return cls("sha256", raw.hex())

    @property
    def raw(self) -> bytes:
        return bytes.fromhex(self.hex)

    @property
    def short(self) -> str:
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"
