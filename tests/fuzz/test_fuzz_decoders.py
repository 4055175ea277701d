"""Fuzzing of every decoder of untrusted bytes (hypothesis): the bootstrap, a blob's chunk table
and footer, tar layers (gzip, zstd, plain), and OCI manifests and indexes. Inputs are random
bytes, the seed corpus in `tests/fuzz/corpus/<target>/` (replayed on every run) and mutations
of valid seeds built by the real builder: bit flips, truncations, splices, inserted and
overwritten bytes, and for tars rewritten header fields with a correct checksum.

Property: an input ends in an `ImagefsError` or a valid result; nothing else escapes, no input
takes longer than `EXAMPLE_SECONDS` (an alarm), and none makes the decoder allocate more than
`PEAK_BYTES` (tracemalloc; a stored bootstrap may add what its bytes can really decode to,
never what its header claims); `test_declared_sizes_are_not_allocated` runs hostile size
claims under an address-space limit. A failing input is saved under IMAGEFS_FUZZ_SAVE
(default /tmp/imagefs-fuzz-crashes/<target>/): once fixed, add it to the corpus.

`IMAGEFS_FUZZ_EXAMPLES=N` runs N examples per target instead of the CI budget (500)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagefs.errors import FormatError, ImagefsError
from imagefs.format import load_bootstrap
from tests.conftest import Reliability
from tests.fuzz import seeds

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
EXAMPLES = int(os.environ.get("IMAGEFS_FUZZ_EXAMPLES", "0") or 0) or 500
EXAMPLE_SECONDS = 10
# allocation never grows with a size the input merely claims; only a stored bootstrap, which
# is decompressed whole, may grow with the input (a zstd frame decodes to < 43691x its size)
PEAK_BYTES = 64 << 20
PEAK_PER_INPUT_BYTE = 128 * 1024 // 3 + 1
SAVE = Path(os.environ.get("IMAGEFS_FUZZ_SAVE", "/tmp/imagefs-fuzz-crashes"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the per-example bound is EXAMPLE_SECONDS, enforced by an alarm
    database=None,
    derandomize=False,
    suppress_health_check=list(HealthCheck),
)
EXPECTED = "ImagefsError or a valid result; no other exception, no hang, bounded memory"


class Hang(AssertionError):
    pass


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"one input took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Input(bytes):
    """Input bytes with a short repr (hypothesis prints failing examples)."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes: {bytes(self[:48])!r}...>"


def save(target: str, data: bytes) -> Path:
    path = SAVE / target / f"crash-{hashlib.sha256(data).hexdigest()[:16]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class Runner:
    """Runs a driver on inputs: counts them, bounds time and tracks peak allocation; a
    failing input is saved under IMAGEFS_FUZZ_SAVE/<target>/ for the corpus."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.drive = seeds.DRIVERS[target]
        self.count = 0

    def __call__(self, data: bytes) -> None:
        try:
            self._run(bytes(data))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; input saved as {save(self.target, data)}") from exc

    def _run(self, data: bytes) -> None:
        self.count += 1
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            with time_bound(EXAMPLE_SECONDS):
                self.drive(data)
        except ImagefsError:
            pass
        except Hang:
            raise
        except Exception as exc:
            raise AssertionError(f"{type(exc).__name__} escaped: {exc}") from exc
        peak = tracemalloc.get_traced_memory()[1] - base
        bound = PEAK_BYTES + (PEAK_PER_INPUT_BYTE * len(data) if self.target == "bootstrap" else 0)
        assert peak < bound, f"{peak} bytes allocated for a {len(data)}-byte input"


@pytest.fixture
def traced() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


# ---------------------------------------------------------------------------------------------
# strategies


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A seed with 1-4 mutations: bit flips, truncation, splice, inserted / overwritten /
    deleted bytes, a u32/u64 overwritten with an edge value."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 6))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == 0 and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            data = data[: draw(st.integers(0, len(data)))]
        elif op == 2:
            other = draw(st.sampled_from(pool))
            cut = draw(st.integers(0, len(other)))
            data = data[:at] + other[cut:]
        elif op == 3:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == 4:
            piece = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(piece)] = piece
        elif op == 5:
            del data[at : at + draw(st.integers(1, 64))]
        else:
            edge = draw(st.sampled_from([0, 1, 7, 8, 0x7F, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            width = draw(st.sampled_from([4, 8]))
            value = edge if width == 4 else edge | draw(st.sampled_from([0, 1 << 40, 1 << 63]))
            data[at : at + width] = value.to_bytes(width, "little")
    return bytes(data)


def inputs(target: str) -> st.SearchStrategy[bytes]:
    pool = seeds.fresh_seeds(target) + seeds.corpus_inputs(target)
    return st.one_of(st.binary(max_size=2048), mutated(pool), mutated(pool)).map(Input)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@st.composite
def json_mutations(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A seed document with 1-3 values (at any depth) replaced by arbitrary JSON, or keys
    removed: wrong types where the parser expects strings, lists and objects."""
    doc = json.loads(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 3))):
        node: Any = doc
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, (dict, list)) and child and draw(st.booleans()):
                node = child
                continue
            if isinstance(node, dict) and draw(st.integers(0, 4)) == 0:
                del node[key]
            else:
                node[key] = draw(JSON)
            break
    return Input(json.dumps(doc).encode())


def json_inputs(target: str) -> st.SearchStrategy[bytes]:
    pool = seeds.fresh_seeds(target)
    return st.one_of(inputs(target), json_mutations(pool), json_mutations(pool))


_OCTAL_FIELDS = ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (329, 8), (337, 8))


@st.composite
def tar_header_mutations(draw: st.DrawFn) -> bytes:
    """A plain tar with one header field rewritten (octal fields, type flag, names, magic),
    the checksum recomputed so the header is taken seriously; maybe compressed."""
    from tests.support.oci import compress

    raw = [blob for mt, blob in seeds.layer_seeds() if mt.endswith(".tar")]
    tar = bytearray(draw(st.sampled_from(raw)))
    headers = [m.offset for m in seeds.tar_members(bytes(tar))]
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.sampled_from(headers))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            off, width = draw(st.sampled_from(_OCTAL_FIELDS))
            text = draw(
                st.one_of(
                    st.text("01234567 -+_\0x", max_size=width),
                    st.sampled_from(["-1", "77777777777", "-0", "+7", "1_0", " 8"]),
                )
            ).encode()[:width]
            field = text.ljust(width, b"\0")
            if draw(st.booleans()):  # base-256
                field = bytes([0x80 | draw(st.integers(0, 0x7F))]) + draw(
                    st.binary(min_size=width - 1, max_size=width - 1)
                )
            tar[at + off : at + off + width] = field
        elif kind == 1:
            tar[at + 156] = draw(st.sampled_from(b"0123456789gxLKSDAVMNz\0"))
        elif kind == 2:
            name = draw(st.binary(max_size=100))
            tar[at : at + 100] = name.ljust(100, b"\0")
        else:
            tar[at + 257 : at + 265] = draw(st.sampled_from([b"ustar\x0000", b"ustar  \x00"]))
        chk = sum(tar[at : at + 148]) + 256 + sum(tar[at + 156 : at + 512])
        tar[at + 148 : at + 156] = b"%06o\0 " % chk
    compression = draw(st.sampled_from(["none", "gzip", "zstd"]))
    return Input(seeds.encode_layer_input(None, compress(bytes(tar), compression)))  # type: ignore[arg-type]


PAX_KEYS = (
    "mtime",
    "size",
    "uid",
    "gid",
    "path",
    "linkpath",
    "GNU.sparse.map",
    "GNU.sparse.size",
    "GNU.sparse.numblocks",
    "GNU.sparse.offset",
    "GNU.sparse.numbytes",
    "GNU.sparse.major",
    "GNU.sparse.minor",
    "GNU.sparse.name",
    "GNU.sparse.realsize",
    "SCHILY.xattr.user.a",
    "LIBARCHIVE.xattr.user.b",
    "hdrcharset",
)


@st.composite
def pax_layers(draw: st.DrawFn) -> bytes:
    """A PAX tar whose extended headers carry hostile values (numbers out of range, NaN,
    inf, 5000-digit integers, broken sparse maps and xattrs)."""
    import io

    headers = draw(
        st.dictionaries(
            st.sampled_from(PAX_KEYS),
            st.one_of(
                st.sampled_from(
                    ["nan", "inf", "-inf", "1e400", "1" * 5000, "-1", "0,1,2", "1,x", "", "=="]
                ),
                st.text(max_size=20),
            ),
            min_size=1,
            max_size=4,
        )
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("file")
        info.size = 5
        info.pax_headers = headers
        with contextlib.suppress(Exception):  # tarfile refuses some values itself
            tar.addfile(info, io.BytesIO(b"hello"))
    return Input(seeds.encode_layer_input(None, buf.getvalue()))


# ---------------------------------------------------------------------------------------------
# the fuzz targets


def replay(run: Runner, target: str) -> None:
    for data in seeds.fresh_seeds(target) + seeds.corpus_inputs(target):
        run(data)


def fuzz(target: str, strategy: st.SearchStrategy[bytes]) -> int:
    run = Runner(target)
    replay(run, target)

    @FUZZ
    @given(strategy)
    def check(data: bytes) -> None:
        run(data)

    check()
    return run.count


@pytest.mark.reliability(
    "fuzz", "bootstrap decoder: random, mutated and corpus bootstraps (zstd as stored)", EXPECTED
)
def test_fuzz_bootstrap_stored(reliability: Reliability, traced: None) -> None:
    reliability.record(inputs=fuzz("bootstrap", inputs("bootstrap")))


@pytest.mark.reliability(
    "fuzz",
    "bootstrap decoder, validate() and every lazy accessor: random and mutated raw bootstraps",
    EXPECTED,
)
def test_fuzz_bootstrap_raw(reliability: Reliability, traced: None) -> None:
    reliability.record(inputs=fuzz("bootstrap-raw", inputs("bootstrap-raw")))


@pytest.mark.reliability(
    "fuzz", "blob footer and chunk table: random and mutated data blobs", EXPECTED
)
def test_fuzz_blob_table(reliability: Reliability, traced: None) -> None:
    reliability.record(inputs=fuzz("blob", inputs("blob")))


@pytest.mark.reliability(
    "fuzz",
    "tar layer reader: random and mutated gzip / zstd / plain layers, rewritten tar headers, "
    "hostile PAX headers",
    EXPECTED,
)
def test_fuzz_layer(reliability: Reliability, traced: None) -> None:
    strategy = st.one_of(inputs("layer"), tar_header_mutations(), pax_layers())
    reliability.record(inputs=fuzz("layer", strategy))


@pytest.mark.reliability(
    "fuzz",
    "image manifest parsing (OCI / imagefs): random, mutated and re-typed manifests",
    EXPECTED,
)
def test_fuzz_manifest(reliability: Reliability, traced: None) -> None:
    reliability.record(inputs=fuzz("manifest", json_inputs("manifest")))


@pytest.mark.reliability(
    "fuzz", "image index and descriptor parsing: random, mutated and re-typed indexes", EXPECTED
)
def test_fuzz_index(reliability: Reliability, traced: None) -> None:
    reliability.record(inputs=fuzz("index", json_inputs("index")))


@pytest.mark.reliability(
    "fuzz",
    "bootstrap validate() on a crafted bootstrap whose 2000 directories share one run of "
    "2000 entries (quadratic walk)",
    "FormatError in well under a second; no hang",
)
def test_validate_refuses_shared_records(reliability: Reliability) -> None:
    from imagefs.format import compress_bootstrap

    stored = compress_bootstrap(seeds.shared_runs_bootstrap(2000, 2000))
    assert len(stored) < 32 * 1024  # a small blob...
    boot = load_bootstrap(stored)
    with time_bound(EXAMPLE_SECONDS), pytest.raises(FormatError, match="share"):
        boot.validate()  # ...that took ~25 s to walk before validate() checked the runs
    reliability.record(inputs=1)


# ---------------------------------------------------------------------------------------------
# declared sizes are refused, not allocated: hostile claims under an address-space limit

_LIMITED = textwrap.dedent(
    """
    import gzip, io, resource, struct, sys, tarfile
    import zstandard
    from imagefs.errors import ImagefsError
    from tests.fuzz import seeds

    def frame_claiming(size):
        # a zstd frame header claiming `size` bytes of content, then a short raw block
        header = bytes([0x28, 0xB5, 0x2F, 0xFD, 0xE0]) + struct.pack("<Q", size)
        return header + (1 | (4 << 3)).to_bytes(3, "little") + b"x" * 4  # last raw block

    def tar_then_zeros(n):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("a")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        comp = zstandard.ZstdCompressor(level=1).compressobj()
        parts = [comp.compress(buf.getvalue())]
        block = bytes(1 << 20)
        for _ in range(n >> 20):
            parts.append(comp.compress(block))
        parts.append(comp.flush())
        return seeds.encode_layer_input(None, b"".join(parts))

    cases = [
        ("bootstrap", frame_claiming((4 << 30) - 1)),
        ("bootstrap", frame_claiming(3 << 30)),
        ("bootstrap", frame_claiming(1 << 62)),
        ("layer", tar_then_zeros(int(sys.argv[1]) << 20)),
        ("manifest", b"[" * 200000),
        ("manifest", b'{"a":' + b"9" * 100000 + b"}"),
    ]
    for target in seeds.TARGETS:
        cases += [(target, data) for data in seeds.corpus_inputs(target)]
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    limit = vm + (int(sys.argv[1]) << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    for target, data in cases:
        try:
            seeds.DRIVERS[target](data)
        except ImagefsError:
            pass
        except BaseException as exc:
            print(f"{target} {data[:40]!r} ({len(data)} bytes): {type(exc).__name__}: {exc}")
            sys.exit(1)
    print(len(cases))
    """
)


@pytest.mark.reliability(
    "fuzz",
    "hostile size claims (a bootstrap frame claiming 4 GiB, a layer ending in 2x the memory "
    "limit of zeros, deep or huge JSON) under an address-space limit",
    "ImagefsError without allocating the claimed size",
)
def test_declared_sizes_are_not_allocated(reliability: Reliability) -> None:
    repo = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [sys.executable, "-c", _LIMITED, "256"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    reliability.record(inputs=int(res.stdout.split()[-1]))
