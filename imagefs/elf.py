"""What an ELF executable needs to start: its program interpreter (PT_INTERP) and the shared
libraries it names (DT_NEEDED). A pure parser over a `read(offset, size)` callable, so it
works on a file inside an image without unpacking it. 64-bit little-endian only (x86-64,
arm64); anything else, or anything malformed, gives no dependencies rather than an error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ = 0, 1, 5, 10
MAX_PHDRS = 256
MAX_DYNAMIC = 4096
MAX_STRING = 4096

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_DYN = struct.Struct("<qQ")


@dataclass(frozen=True, slots=True)
class ElfDeps:
    interpreter: str | None
    needed: tuple[str, ...]


NONE = ElfDeps(None, ())


def _cstring(data: bytes) -> str | None:
    end = data.find(b"\0")
    raw = data if end < 0 else data[:end]
    try:
        return raw.decode() if raw else None
    except UnicodeDecodeError:
        return None


def elf_deps(read: Callable[[int, int], bytes], size: int) -> ElfDeps:
    """The interpreter and DT_NEEDED names of the ELF file of `size` bytes behind `read`."""
    if size < _EHDR.size:
        return NONE
    head = read(0, _EHDR.size)
    if len(head) < _EHDR.size or head[:4] != ELF_MAGIC or head[4] != 2 or head[5] != 1:
        return NONE
    fields = _EHDR.unpack(head)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    if phentsize != _PHDR.size or not 0 < phnum <= MAX_PHDRS or phoff + phnum * 56 > size:
        return NONE
    table = read(phoff, phnum * _PHDR.size)
    if len(table) != phnum * _PHDR.size:
        return NONE
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    interpreter = None
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _, offset, vaddr, _, filesz, _, _ = _PHDR.unpack_from(table, i * _PHDR.size)
        if offset + filesz > size:
            continue
        if p_type == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif p_type == PT_INTERP and 0 < filesz <= MAX_STRING:
            interpreter = _cstring(read(offset, filesz))
        elif p_type == PT_DYNAMIC and filesz:
            dynamic = (offset, min(filesz, MAX_DYNAMIC * _DYN.size))
    if dynamic is None:
        return ElfDeps(interpreter, ())
    raw = read(*dynamic)
    needed_offsets: list[int] = []
    strtab = strsz = None
    for i in range(len(raw) // _DYN.size):
        tag, value = _DYN.unpack_from(raw, i * _DYN.size)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed_offsets.append(value)
        elif tag == DT_STRTAB:
            strtab = value
        elif tag == DT_STRSZ:
            strsz = value
    if strtab is None or not strsz or not needed_offsets:
        return ElfDeps(interpreter, ())
    file_strtab = next((off + strtab - va for va, off, sz in loads if va <= strtab < va + sz), None)
    if file_strtab is None:
        return ElfDeps(interpreter, ())
    strsz = min(strsz, size - file_strtab, 1 << 20)
    strings = read(file_strtab, strsz)
    names = []
    for at in needed_offsets:
        name = _cstring(strings[at : at + MAX_STRING]) if at < len(strings) else None
        if name and "/" not in name:
            names.append(name)
    return ElfDeps(interpreter, tuple(names))
