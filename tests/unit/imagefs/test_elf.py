"""`elf_deps` on ELF files built byte by byte: interpreter and DT_NEEDED through the PT_LOAD
mapping of DT_STRTAB; anything malformed gives no dependencies, never an exception."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from imagefs.elf import NONE, ElfDeps, elf_deps


def build_elf(interp: bytes | None, needed: list[bytes], *, vaddr: int = 0x400000) -> bytes:
    """A minimal 64-bit LE ELF: header, 3 program headers, then interp, strtab, dynamic."""
    phnum = 3
    data_at = 64 + 56 * phnum
    interp_blob = (interp + b"\0") if interp else b""
    strtab = b"\0" + b"".join(n + b"\0" for n in needed)
    offsets, at = [], 1
    for n in needed:
        offsets.append(at)
        at += len(n) + 1
    strtab_at = data_at + len(interp_blob)
    dyn_at = strtab_at + len(strtab)
    dyn = b"".join(struct.pack("<qQ", 1, o) for o in offsets)
    dyn += struct.pack("<qQ", 5, vaddr + strtab_at) + struct.pack("<qQ", 10, len(strtab))
    dyn += struct.pack("<qQ", 0, 0)
    size = dyn_at + len(dyn)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0, vaddr, vaddr, size, size, 0x1000)  # PT_LOAD
    if interp:
        ph += struct.pack("<IIQQQQQQ", 3, 4, data_at, 0, 0, len(interp_blob), len(interp_blob), 1)
    else:
        ph += struct.pack("<IIQQQQQQ", 6, 4, 0, 0, 0, 0, 0, 8)  # PT_PHDR: ignored
    ph += struct.pack("<IIQQQQQQ", 2, 6, dyn_at, 0, 0, len(dyn), len(dyn), 8)  # PT_DYNAMIC
    return ehdr + ph + interp_blob + strtab + dyn


def deps(data: bytes) -> ElfDeps:
    return elf_deps(lambda off, n: data[off : off + n], len(data))


def test_interpreter_and_needed_libraries() -> None:
    elf = build_elf(b"/lib64/ld-linux-x86-64.so.2", [b"libselinux.so.1", b"libc.so.6"])
    assert deps(elf) == ElfDeps("/lib64/ld-linux-x86-64.so.2", ("libselinux.so.1", "libc.so.6"))


def test_a_library_without_interpreter() -> None:
    assert deps(build_elf(None, [b"libc.so.6"], vaddr=0)) == ElfDeps(None, ("libc.so.6",))


def test_not_elf_or_not_64_bit_little_endian() -> None:
    elf = build_elf(b"/lib/ld.so", [b"libc.so.6"])
    assert deps(b"#!/bin/sh\necho hi\n" + bytes(100)) == NONE
    assert deps(elf[:4] + b"\x01" + elf[5:]) == NONE  # 32-bit
    assert deps(elf[:5] + b"\x02" + elf[6:]) == NONE  # big-endian
    assert deps(elf[:40]) == NONE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 600))
def test_garbage_and_truncations_never_raise(noise: bytes, cut: int) -> None:
    elf = build_elf(b"/lib/ld.so", [b"liba.so", b"libb.so"])
    for data in (noise, elf[:cut], elf[:cut] + noise, b"\x7fELF\x02\x01" + noise):
        result = deps(data)
        assert isinstance(result, ElfDeps)
