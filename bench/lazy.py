"""Lazy-start benchmark: cold start of a real image, imagefs against pull + unpack.

On a Debian bookworm + python3 image (built by bench/debian_image.py, cached in bench/out/),
served by Debian's docker-registry, it times from nothing to the exit of
`chroot ROOT python3 -c 'import json'`:

  baseline  skopeo copy (registry -> OCI layout) + umoci unpack + the command
  imagefs   imagefs mount (fresh, empty chunk cache) + the command through the mount

and compares bytes: what imagefs fetched against what the command read, and against the
image's size. Page cache dropped before each run. Two links:

  loopback  the registry on 127.0.0.1
  shaped    the registry in a network namespace behind a veth pair shaped to about
            100 Mbit/s and 20 ms RTT: `tc netem delay 10ms rate 100mbit` on both ends, or,
            where the kernel has no sch_netem, `tc tbf rate 100mbit` on both ends plus
            bench/delay_proxy.py (10 ms each way) in front of the registry.

Targets (shaped link): imagefs cold start <= 0.2 x pull+unpack; bytes fetched <= 3 x bytes
read. Run as root (netns, chroot, drop_caches, FUSE):

    .venv/bin/python bench/lazy.py [--link loopback|shaped|both] [--repeat N] [--keep] [-v]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import debian_image  # a sibling script, not a package

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
IMAGEFS = str(ROOT / ".venv" / "bin" / "imagefs")
REGISTRY_BIN = "/usr/bin/docker-registry"
DELAY_PROXY = Path(__file__).resolve().parent / "delay_proxy.py"
COMMAND = ["python3", "-c", "import json"]
REPO = "deb"
PLAIN_TAG, IMAGEFS_TAG = "plain", "imagefs"

# the shaped link
HOST_IP, NS_IP, PREFIX = "10.231.0.1", "10.231.0.2", 24
ONE_WAY_DELAY_MS = 10
RATE = "100mbit"
TBF_BURST = "32kb"
NS_PORT = 5000

STEP_TIMEOUT_S = 900.0
TARGET_COLD_RATIO = 0.2
TARGET_FETCH_RATIO = 3.0
QUIET_BUSY = 0.25  # wait while other processes use more than this share of all CPUs
QUIET_WAIT_S = 120.0

VERBOSE = False
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# processes


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = STEP_TIMEOUT_S,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    if VERBOSE:
        log("+ " + " ".join(cmd))
    try:
        res = subprocess.run(
            list(cmd),
            env=dict(env) if env is not None else None,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"timed out after {timeout_s:.0f}s: {' '.join(cmd)}") from exc
    except FileNotFoundError as exc:
        raise BenchError(f"not found: {cmd[0]}") from exc
    if check and res.returncode != 0:
        detail = (res.stderr.strip() or res.stdout.strip())[-3000:]
        raise BenchError(f"exited {res.returncode}: {' '.join(cmd)}\n{detail}")
    return res


def timed(cmd: Sequence[str], *, env: Mapping[str, str] | None = None) -> float:
    started = time.perf_counter()
    run(cmd, env=env)
    return time.perf_counter() - started


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _busy_ticks() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def wait_quiet() -> float:
    """Wait (up to QUIET_WAIT_S) until the machine is mostly idle; the busy share seen last."""
    deadline = time.monotonic() + QUIET_WAIT_S
    while True:
        b0, t0 = _busy_ticks()
        time.sleep(0.5)
        b1, t1 = _busy_ticks()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy <= QUIET_BUSY or time.monotonic() > deadline:
            if busy > QUIET_BUSY:
                log(f"warning: machine still {busy:.0%} busy; measuring anyway")
            return busy
        log(f"waiting for a quiet machine ({busy:.0%} busy)")


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
    return total


def iface_rx_bytes(iface: str) -> int:
    return int(Path(f"/sys/class/net/{iface}/statistics/rx_bytes").read_text())


def iface_tx_bytes(iface: str) -> int:
    return int(Path(f"/sys/class/net/{iface}/statistics/tx_bytes").read_text())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------
# links and the registry


@dataclass
class Link:
    name: str
    host: str  # HOST:PORT of the registry, as clients reach it
    iface: str  # where client traffic is counted (rx + tx)
    shaping: str  # human description

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def write_registry_config(root: Path, addr: str) -> Path:
    config = root / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: {addr}\n"
    )
    return config


def spawn(cmd: Sequence[str], logfile: Path) -> subprocess.Popen[bytes]:
    if VERBOSE:
        log("+ " + " ".join(cmd) + " &")
    with logfile.open("ab") as out:
        return subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_registry(url: str, procs: Sequence[subprocess.Popen[bytes]], logfile: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise BenchError(
                    f"{proc.args} exited {proc.returncode}:\n{logfile.read_text()[-2000:]}"
                )
        try:
            with urllib.request.urlopen(url + "/v2/", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"registry at {url} did not answer /v2/ in 20s:\n{logfile.read_text()}")


@contextlib.contextmanager
def loopback_link(work: Path) -> Iterator[Link]:
    root = work / "registry-loopback"
    root.mkdir()
    addr = f"127.0.0.1:{_free_port()}"
    logfile = root / "registry.log"
    proc = None
    try:
        proc = spawn([REGISTRY_BIN, "serve", str(write_registry_config(root, addr))], logfile)
        link = Link("loopback", addr, "lo", "none (loopback)")
        wait_registry(link.url, [proc], logfile)
        yield link
    finally:
        stop(proc)


def _has_netem(iface: str, ns: str | None) -> bool:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    cmd = [*prefix, "tc", "qdisc", "add", "dev", iface, "root", "netem", "delay", "1ms"]
    ok = run(cmd, check=False).returncode == 0
    if ok:
        run([*prefix, "tc", "qdisc", "del", "dev", iface, "root"], check=False)
    return ok


@contextlib.contextmanager
def shaped_link(work: Path, shaper: str) -> Iterator[Link]:
    """A netns behind a veth pair, shaped to RATE and 2 x ONE_WAY_DELAY_MS RTT, with the
    registry inside; always torn down."""
    tag = str(os.getpid())[-7:]
    ns, host_if, ns_if = f"imagefs-bench-{tag}", f"ifsb{tag}h", f"ifsb{tag}n"
    in_use = run(["ip", "-o", "-4", "addr", "show", "to", f"{HOST_IP}/{PREFIX}"]).stdout
    if in_use.strip():
        raise BenchError(
            f"{HOST_IP}/{PREFIX} is already in use (another bench running?):\n{in_use}"
        )
    root = work / "registry-shaped"
    root.mkdir()
    logfile = root / "registry.log"
    procs: list[subprocess.Popen[bytes]] = []
    netns_made = False
    try:
        run(["ip", "netns", "add", ns])
        netns_made = True
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if])
        run(["ip", "link", "set", ns_if, "netns", ns])
        run(["ip", "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", host_if])
        run(["ip", "link", "set", host_if, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{NS_IP}/{PREFIX}", "dev", ns_if])
        run(["ip", "-n", ns, "link", "set", ns_if, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        in_ns = ["ip", "netns", "exec", ns]
        use_netem = shaper == "netem" or (shaper == "auto" and _has_netem(host_if, None))
        if use_netem:
            qdisc = ["netem", "delay", f"{ONE_WAY_DELAY_MS}ms", "rate", RATE]
            run(["tc", "qdisc", "add", "dev", host_if, "root", *qdisc])
            run([*in_ns, "tc", "qdisc", "add", "dev", ns_if, "root", *qdisc])
            shaping = f"tc netem delay {ONE_WAY_DELAY_MS}ms rate {RATE}, both ends"
            addr = f"{NS_IP}:{NS_PORT}"
            procs.append(
                spawn(
                    [*in_ns, REGISTRY_BIN, "serve", str(write_registry_config(root, addr))], logfile
                )
            )
        else:
            qdisc = ["tbf", "rate", RATE, "burst", TBF_BURST, "latency", "200ms"]
            run(["tc", "qdisc", "add", "dev", host_if, "root", *qdisc])
            run([*in_ns, "tc", "qdisc", "add", "dev", ns_if, "root", *qdisc])
            shaping = (
                f"tc tbf rate {RATE} both ends + delay_proxy {ONE_WAY_DELAY_MS} ms each way "
                "(no sch_netem in this kernel)"
            )
            inner = f"127.0.0.1:{NS_PORT + 1}"
            procs.append(
                spawn(
                    [*in_ns, REGISTRY_BIN, "serve", str(write_registry_config(root, inner))],
                    logfile,
                )
            )
            procs.append(
                spawn(
                    [
                        *in_ns,
                        sys.executable,
                        str(DELAY_PROXY),
                        *("--listen", f"{NS_IP}:{NS_PORT}", "--upstream", inner),
                        *("--delay-ms", str(ONE_WAY_DELAY_MS)),
                    ],
                    logfile,
                )
            )
        link = Link("shaped", f"{NS_IP}:{NS_PORT}", host_if, shaping)
        wait_registry(link.url, procs, logfile)
        yield link
    finally:
        for proc in reversed(procs):
            stop(proc)
        if netns_made:
            run(["ip", "netns", "del", ns], check=False)
        if Path(f"/sys/class/net/{host_if}").exists():
            run(["ip", "link", "del", host_if], check=False)


def measure_rtt_ms(host: str, samples: int = 7) -> tuple[float, float]:
    """(first request incl. TCP connect, median of later keep-alive GET /v2/) in ms."""
    hostname, _, port = host.rpartition(":")
    conn = http.client.HTTPConnection(hostname, int(port), timeout=10)
    times = []
    try:
        for _ in range(samples + 1):
            started = time.perf_counter()
            conn.request("GET", "/v2/")
            conn.getresponse().read()
            times.append((time.perf_counter() - started) * 1000)
    finally:
        conn.close()
    return times[0], statistics.median(times[1:])


def measure_throughput(url: str) -> tuple[int, float]:
    """(bytes, seconds) of one GET of `url`, read to the end."""
    started = time.perf_counter()
    total = 0
    with urllib.request.urlopen(url, timeout=STEP_TIMEOUT_S) as resp:
        while chunk := resp.read(1 << 20):
            total += len(chunk)
    return total, time.perf_counter() - started


def get_manifest(link: Link, tag: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{link.url}/v2/{REPO}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


# ---------------------------------------------------------------------------------------------
# imagefs


def imagefs_env(link: Link, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["IMAGEFS_PLAIN_HTTP_REGISTRIES"] = link.host
    env["IMAGEFS_RUN_DIR"] = str(work / "imagefs-run")
    env["IMAGEFS_CACHE_DIR"] = str(work / "imagefs-cache-unused")
    return env


def imagefs_first_working(
    variants: Sequence[Sequence[str]], env: Mapping[str, str]
) -> tuple[Sequence[str], float]:
    """Run the first `imagefs ARGS` variant imagefs accepts (exit 2, a usage error such as
    an unknown reference spelling, moves on to the next); (the args, seconds)."""
    errors = []
    for args in variants:
        cmd = [IMAGEFS, *args]
        started = time.perf_counter()
        res = run(cmd, env=env, check=False)
        seconds = time.perf_counter() - started
        if res.returncode == 0:
            return args, seconds
        errors.append(f"$ {' '.join(cmd)}\nexit {res.returncode}: {res.stderr.strip()[-2000:]}")
        if res.returncode != 2:
            break
    raise BenchError("imagefs failed:\n" + "\n".join(errors))


@contextlib.contextmanager
def imagefs_mounted(
    ref: str, mnt: Path, cache: Path, env: Mapping[str, str], extra: Sequence[str] = ()
) -> Iterator[float]:
    """Mount (timed), yield the mount seconds, always unmount."""
    mnt.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    res = run(
        [IMAGEFS, "mount", ref, str(mnt), "--cache-dir", str(cache), *extra], env=env, check=False
    )
    seconds = time.perf_counter() - started
    mounted = os.path.ismount(mnt)
    try:
        if res.returncode != 0:
            raise BenchError(
                f"exited {res.returncode}: {IMAGEFS} mount {ref} {mnt} --cache-dir {cache}\n"
                + res.stderr.strip()[-3000:]
            )
        yield seconds
    finally:
        if mounted or os.path.ismount(mnt):
            done = run([IMAGEFS, "umount", str(mnt)], env=env, check=False, timeout_s=60)
            if done.returncode != 0:
                log(f"warning: imagefs umount failed ({done.stderr.strip()}); fusermount3 -u -z")
                run(["fusermount3", "-u", "-z", str(mnt)], check=False, timeout_s=60)


def imagefs_stats(mnt: Path, env: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        run([IMAGEFS, "stats", str(mnt), "--json"], env=env, timeout_s=60).stdout
    )
    return data


# ---------------------------------------------------------------------------------------------
# the runs


Row = dict[str, Any]


def traffic(link: Link) -> int:
    return iface_rx_bytes(link.iface) + (0 if link.iface == "lo" else iface_tx_bytes(link.iface))


def baseline_run(link: Link, work: Path, index: int) -> Row:
    tmp = work / f"baseline-{index}"
    tmp.mkdir()
    layout, bundle = tmp / "layout", tmp / "bundle"
    try:
        busy = wait_quiet()
        drop_caches()
        wire0 = traffic(link)
        pull_s = timed(
            [
                *("skopeo", "copy", "--quiet", "--src-tls-verify=false"),
                f"docker://{link.host}/{REPO}:{PLAIN_TAG}",
                f"oci:{layout}:x",
            ]
        )
        wire = traffic(link) - wire0
        unpack_s = timed(["umoci", "unpack", "--image", f"{layout}:x", str(bundle)])
        command_s = timed(["chroot", str(bundle / "rootfs"), *COMMAND])
        return {
            "total_s": pull_s + unpack_s + command_s,
            "fetch_s": pull_s,
            "unpack_s": unpack_s,
            "command_s": command_s,
            "wire_bytes": wire,
            "unpacked_bytes": dir_bytes(bundle / "rootfs"),
            "busy": busy,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def imagefs_run(link: Link, work: Path, index: int, refs: Sequence[str]) -> Row:
    cache, mnt = work / f"imagefs-cache-{index}", work / f"mnt-{index}"
    cache.mkdir()
    env = imagefs_env(link, work)
    try:
        busy = wait_quiet()
        drop_caches()
        wire0 = traffic(link)
        errors = []
        for ref in refs:
            try:
                with imagefs_mounted(ref, mnt, cache, env) as mount_s:
                    command_s = timed(["chroot", str(mnt), *COMMAND])
                    wire = traffic(link) - wire0
                    stats = imagefs_stats(mnt, env)
                break
            except BenchError as err:
                errors.append(str(err))
                if "exited 2:" not in str(err):
                    raise
        else:
            raise BenchError("imagefs mount failed:\n" + "\n".join(errors))
        if VERBOSE:
            log("imagefs stats --json: " + json.dumps(stats, indent=1))
        return {
            "total_s": mount_s + command_s,
            "fetch_s": mount_s,
            "unpack_s": None,
            "command_s": command_s,
            "wire_bytes": wire,
            "stats": stats,
            "ref": ref,
            "busy": busy,
        }
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def pick(runs: Sequence[Row]) -> Row:
    """The run with the median total (the faster middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: float(r["total_s"]))
    return ordered[(len(ordered) - 1) // 2]


def bench_link(
    link: Link, image: debian_image.DebianImage, work: Path, repeat: int, prefetch: bool
) -> dict[str, Any]:
    log(f"[{link.name}] registry at {link.host}; shaping: {link.shaping}")
    connect_ms, rtt_ms = measure_rtt_ms(link.host)
    log(f"[{link.name}] HTTP round trip {rtt_ms:.1f} ms (first, with connect: {connect_ms:.1f} ms)")

    started = time.perf_counter()
    run(
        [
            *("skopeo", "copy", "--quiet", "--dest-tls-verify=false"),
            image.oci_ref,
            f"docker://{link.host}/{REPO}:{PLAIN_TAG}",
        ]
    )
    log(f"[{link.name}] pushed the plain image in {time.perf_counter() - started:.1f}s")
    plain = get_manifest(link, PLAIN_TAG)
    plain_layers = [int(layer["size"]) for layer in plain["layers"]]
    biggest = max(plain["layers"], key=lambda layer: int(layer["size"]))
    nbytes, seconds = measure_throughput(f"{link.url}/v2/{REPO}/blobs/{biggest['digest']}")
    mbit = nbytes * 8 / 1e6 / seconds
    log(f"[{link.name}] one blob GET: {nbytes / 1e6:.1f} MB in {seconds:.2f}s = {mbit:.0f} Mbit/s")

    env = imagefs_env(link, work)
    target_refs = [
        f"docker://{link.host}/{REPO}:{IMAGEFS_TAG}",
        f"{link.host}/{REPO}:{IMAGEFS_TAG}",
    ]
    _, convert_s = imagefs_first_working(
        [["convert", image.oci_ref, ref] for ref in target_refs], env
    )
    log(f"[{link.name}] imagefs convert + push: {convert_s:.1f}s")
    converted = get_manifest(link, IMAGEFS_TAG)
    imagefs_layers = converted["layers"]
    stored = sum(int(layer["size"]) for layer in imagefs_layers)
    if VERBOSE:
        log("imagefs manifest layers: " + json.dumps(imagefs_layers, indent=1))
    mount_refs = [f"{link.host}/{REPO}:{IMAGEFS_TAG}", target_refs[0]]
    prefetch_refs: list[str] = []
    prefetch_paths = 0
    if prefetch:
        # A recorded first run makes the prefetch list, as a CI job would before publishing.
        listing = work / "prefetch.list"
        cache, mnt = work / "imagefs-cache-record", work / "mnt-record"
        cache.mkdir()
        with imagefs_mounted(mount_refs[0], mnt, cache, env, ["--record-access", str(listing)]):
            run(["chroot", str(mnt), *COMMAND])
        shutil.rmtree(cache, ignore_errors=True)
        prefetch_paths = sum(
            1 for line in listing.read_text().splitlines() if line.strip().startswith("/")
        )
        tag = f"{IMAGEFS_TAG}-prefetch"
        run(
            [
                *(IMAGEFS, "convert", "--prefetch-list", str(listing)),
                *(image.oci_ref, f"docker://{link.host}/{REPO}:{tag}"),
            ],
            env=env,
        )
        prefetch_refs = [f"{link.host}/{REPO}:{tag}"]
        log(f"[{link.name}] recorded {prefetch_paths} paths; converted again as {tag}")

    baseline_runs, imagefs_runs, prefetch_runs = [], [], []
    for i in range(repeat):
        log(f"[{link.name}] run {i + 1}/{repeat}: baseline")
        baseline_runs.append(baseline_run(link, work, i))
        log(f"[{link.name}] run {i + 1}/{repeat}: imagefs")
        imagefs_runs.append(imagefs_run(link, work, i, mount_refs))
        if prefetch_refs:
            log(f"[{link.name}] run {i + 1}/{repeat}: imagefs with a prefetch list")
            prefetch_runs.append(imagefs_run(link, work, i, prefetch_refs))
    return {
        "link": link.name,
        "host": link.host,
        "shaping": link.shaping,
        "rtt_ms": rtt_ms,
        "connect_ms": connect_ms,
        "blob_get_mbit": mbit,
        "convert_s": convert_s,
        "plain_layer_bytes": plain_layers,
        "imagefs_stored_bytes": stored,
        "imagefs_layers": len(imagefs_layers),
        "baseline_runs": baseline_runs,
        "imagefs_runs": imagefs_runs,
        "prefetch_runs": prefetch_runs,
        "prefetch_paths": prefetch_paths,
    }


# ---------------------------------------------------------------------------------------------
# output


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print(
            "| "
            + " | ".join(
                (c.ljust(w) if i == 0 else c.rjust(w))
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )


def report(result: dict[str, Any]) -> dict[str, Any]:
    base, lazy = pick(result["baseline_runs"]), pick(result["imagefs_runs"])
    stats = lazy["stats"]
    read, fetched = int(stats["bytes_read"]), int(stats["bytes_fetched"])
    plain_bytes = sum(result["plain_layer_bytes"])
    print(f"\n### {result['link']}: {result['shaping']}\n")
    print(
        f"registry {result['host']}; HTTP round trip {result['rtt_ms']:.1f} ms "
        f"(first request with connect {result['connect_ms']:.1f} ms); one blob GET "
        f"{result['blob_get_mbit']:.0f} Mbit/s; runs: {len(result['baseline_runs'])} each, "
        "median shown"
    )
    print(
        f"image: plain {len(result['plain_layer_bytes'])} gzip layer(s) {plain_bytes:,} B, "
        f"unpacked {base['unpacked_bytes']:,} B in regular files; imagefs "
        f"{result['imagefs_layers']} blobs {result['imagefs_stored_bytes']:,} B "
        f"(convert + push {result['convert_s']:.1f} s)\n"
    )
    headers = [
        "method",
        "total s",
        "mount/pull s",
        "unpack s",
        "command s",
        "bytes transferred",
        "bytes read",
        "wire bytes",
        "x baseline",
    ]
    rows = [
        [
            "pull+unpack (skopeo+umoci)",
            base["total_s"],
            base["fetch_s"],
            base["unpack_s"],
            base["command_s"],
            plain_bytes,
            None,
            base["wire_bytes"],
            1.0,
        ],
    ]
    lazy_rows = [("imagefs lazy", lazy)]
    if result["prefetch_runs"]:
        lazy_rows.append(("imagefs lazy + prefetch list", pick(result["prefetch_runs"])))
    for label, r in lazy_rows:
        rows.append(
            [
                label,
                r["total_s"],
                r["fetch_s"],
                None,
                r["command_s"],
                int(r["stats"]["bytes_fetched"]),
                int(r["stats"]["bytes_read"]),
                r["wire_bytes"],
                r["total_s"] / base["total_s"],
            ]
        )
    print_table(headers, rows)
    cold = lazy["total_s"] / base["total_s"]
    fetch_ratio = fetched / read if read else float("inf")
    ok = {True: "ok", False: "MISSED"}
    print(
        f"\ncold start ratio {cold:.3f} (target <= {TARGET_COLD_RATIO}) "
        f"{ok[cold <= TARGET_COLD_RATIO]}"
    )
    print(
        f"fetched/read {fetch_ratio:.2f} (target <= {TARGET_FETCH_RATIO:g}) "
        f"{ok[fetch_ratio <= TARGET_FETCH_RATIO]}"
    )
    print(
        f"imagefs fetched {fetched / plain_bytes:.1%} of the compressed image, "
        f"{fetched / result['imagefs_stored_bytes']:.1%} of the imagefs blobs; "
        f"{stats.get('requests', '?')} requests, {stats.get('chunks_fetched', '?')} chunks"
    )
    totals_b = ", ".join(f"{r['total_s']:.2f}" for r in result["baseline_runs"])
    totals_i = ", ".join(f"{r['total_s']:.2f}" for r in result["imagefs_runs"])
    print(f"all totals (s): baseline {totals_b}; imagefs {totals_i}")
    if result["prefetch_runs"]:
        pre = pick(result["prefetch_runs"])
        pstats = pre["stats"]
        pread, pfetched = int(pstats["bytes_read"]), int(pstats["bytes_fetched"])
        print(
            f"with a prefetch list ({result['prefetch_paths']} paths recorded by a first "
            f"mount): cold start ratio {pre['total_s'] / base['total_s']:.3f}, fetched/read "
            f"{pfetched / pread if pread else float('inf'):.2f}, "
            f"{pstats.get('prefetch_bytes', '?'):,} B prefetched, "
            f"{pstats.get('requests', '?')} requests; totals (s) "
            + ", ".join(f"{r['total_s']:.2f}" for r in result["prefetch_runs"])
        )
    busiest = max(
        r["busy"]
        for r in [*result["baseline_runs"], *result["imagefs_runs"], *result["prefetch_runs"]]
    )
    if busiest > 0.1:
        print(f"note: the machine was up to {busiest:.0%} busy before a run")
    return {"cold_ratio": cold, "fetch_ratio": fetch_ratio}


# ---------------------------------------------------------------------------------------------


def check_environment(links: Sequence[str]) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root (chroot, drop_caches, FUSE, network namespaces)")
    tools = ["skopeo", "umoci", "chroot", "fusermount3"]
    if "shaped" in links:
        tools += ["ip", "tc"]
    missing = [t for t in tools if shutil.which(t) is None]
    for path in (REGISTRY_BIN, IMAGEFS):
        if not os.access(path, os.X_OK):
            missing.append(path)
    if missing:
        raise BenchError(f"missing: {', '.join(missing)} (run scripts/bootstrap)")


def main(argv: Sequence[str] | None = None) -> int:
    global VERBOSE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--link", choices=["loopback", "shaped", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method (median shown)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--shaper",
        choices=["auto", "netem", "proxy"],
        default="auto",
        help="shaped link: tc netem, or tc tbf + bench/delay_proxy.py (auto: netem if the "
        "kernel has it)",
    )
    parser.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="skip the extra row: imagefs converted with a recorded --prefetch-list",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="commands and raw stats")
    args = parser.parse_args(argv)
    VERBOSE = args.verbose
    links = ["loopback", "shaped"] if args.link == "both" else [args.link]

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="imagefs-lazy-", dir="/tmp"))
    results: list[dict[str, Any]] = []
    try:
        check_environment(links)
        image = debian_image.ensure_image()
        for name in links:
            link_work = work / name
            link_work.mkdir()
            ctx = (
                loopback_link(link_work)
                if name == "loopback"
                else shaped_link(link_work, args.shaper)
            )
            with ctx as link:
                result = bench_link(link, image, link_work, max(1, args.repeat), args.prefetch)
            result.update(report(result))
            results.append(result)
            sys.stdout.flush()
    except (BenchError, debian_image.BuildError) as err:
        log(f"lazy: error: {err}")
        return 1
    except KeyboardInterrupt:
        log("lazy: interrupted")
        return 130
    finally:
        if results:
            out = OUT / "lazy-results.json"
            out.write_text(json.dumps(results, indent=1, default=str))
            log(f"results: {out}")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
