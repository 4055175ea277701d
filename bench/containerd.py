"""containerd cold-start benchmark: an imagefs image through CRI against a full pull into
containerd's overlayfs snapshotter.

On the Debian bookworm + python3 image (bench/debian_image.py, cached in bench/out/), it
times, through a private containerd 1.6 and its CRI plugin, from nothing to the exit of
`python3 -c 'import json'` in a host-network pod:

  PullImage + RunPodSandbox + CreateContainer + StartContainer + wait for exit

  overlayfs  the plain image (pushed with skopeo); CRI `snapshotter = "overlayfs"`: containerd
             fetches the whole layer and unpacks it
  imagefs    the image converted with `imagefs convert`; CRI `snapshotter = "imagefs"`, the
             `imagefs snapshotter` as containerd's proxy plugin: it provides the layers, the
             container reads through the image's lazy mount

Every run starts from a fresh lab: a new containerd root and state, a new snapshotter root
(so an empty imagefs chunk cache), the sandbox (pause) image pulled before timing, then the
page cache dropped. containerd 1.6's CRI snapshotter is global, so each method has its own
lab. Bytes transferred come from the registry's access log (response bytes of the requests
made during the timed part) and from the interface counters (wire bytes).

The links are bench/lazy.py's: `loopback` (registry on 127.0.0.1) and `shaped` (registry in a
network namespace behind a veth pair at about 100 Mbit/s and 20 ms RTT). Target (shaped link):
imagefs cold start <= 0.25 x overlayfs. Run as root:

    .venv/bin/python bench/containerd.py [--link loopback|shaped|both] [--repeat N] [-v]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

import debian_image  # noqa: E402  (a sibling script, not a package)
import lazy  # noqa: E402
from lazy import BenchError, Link, log, run  # noqa: E402

from tests.integration.containerd_fixture import (  # noqa: E402
    CGROUP_PARENTS,
    LAB_PREFIX,
    RUN_CONTAINERD,
    SnapshotterProcess,
    _mounts_under,
    _pids_mentioning,
    _remove_run_containerd,
    _stop_pid,
    build_busybox_layout,
)
from tests.support.cri import CriClient, CriError  # noqa: E402

OUT = ROOT / "bench" / "out"
IMAGEFS = lazy.IMAGEFS
COMMAND = ["python3", "-c", "import json"]
REPO = "deb"
PLAIN_TAG, IMAGEFS_TAG = "plain", "imagefs"
SANDBOX_REPO, SANDBOX_TAG = "imagefs/pause", "1"
REF_NAME = "org.opencontainers.image.ref.name"
TARGET_COLD_RATIO = 0.25
EXIT_TIMEOUT_S = 600.0
PULL_TIMEOUT_S = 900.0
METHODS = ("overlayfs", "imagefs")
PHASES = ("pull_s", "runpod_s", "create_s", "start_s", "exit_s")

# the registry's access log (gorilla combined format): "METHOD URI PROTO" STATUS BYTES "REF" "UA"
ACCESS = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"')

Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# the containerd lab


def config_toml(lab: Path, link: Link, snapshotter: str) -> str:
    """The recipe's containerd 1.6 config, with CRI's global snapshotter `snapshotter`, the
    lab's certs.d for the registry and, for imagefs, the proxy plugin."""
    proxy = ""
    if snapshotter == "imagefs":
        proxy = (
            "[proxy_plugins]\n"
            "  [proxy_plugins.imagefs]\n"
            '    type = "snapshot"\n'
            f'    address = "{lab}/imagefs.sock"\n'
        )
    return f"""version = 2
root = "{lab}/root"
state = "{lab}/state"
[grpc]
  address = "{lab}/containerd.sock"
[ttrpc]
  address = "{lab}/containerd.sock.ttrpc"
[debug]
  address = "{lab}/containerd-debug.sock"
  level = "info"
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
    sandbox_image = "{link.host}/{SANDBOX_REPO}:{SANDBOX_TAG}"
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "{snapshotter}"
      disable_snapshot_annotations = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "{lab}/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "{lab}/certs.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "{lab}/opt"
{proxy}"""


def hosts_toml(host: str) -> str:
    return (
        f'server = "http://{host}"\n\n'
        f'[host."http://{host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


@dataclass
class Lab:
    path: Path
    socket: Path
    snapshotter: SnapshotterProcess | None
    proc: subprocess.Popen[bytes]

    def log_tail(self, n: int = 3000) -> str:
        text = f"--- containerd log (tail):\n{_tail(self.path / 'logs' / 'containerd.log', n)}"
        if self.snapshotter is not None:
            text += f"\n--- snapshotter log (tail):\n{self.snapshotter.log_text()[-n:]}"
        return text


def _tail(path: Path, n: int) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as exc:
        return f"({exc})"


def _ctr(lab: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
    return subprocess.run(
        ["ctr", "--address", str(lab / "containerd.sock"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@contextlib.contextmanager
def containerd_lab(link: Link, snapshotter: str) -> Iterator[Lab]:
    """A private containerd (and, for imagefs, the imagefs snapshotter first) in a fresh temp
    dir; everything stopped by PID, mounts under the dir unmounted, the dir removed, and
    /run/containerd removed when this lab created it (as tests/integration does)."""
    lab = Path(tempfile.mkdtemp(prefix=LAB_PREFIX, dir="/tmp"))
    created_run = not RUN_CONTAINERD.exists()
    cgroups_before = set(glob.glob(CGROUP_PARENTS))
    snap: SnapshotterProcess | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        for d in ("logs", "cni/net.d", "opt", f"certs.d/{link.host}"):
            (lab / d).mkdir(parents=True)
        (lab / "certs.d" / link.host / "hosts.toml").write_text(hosts_toml(link.host))
        if snapshotter == "imagefs":
            # SnapshotterProcess passes on this process's environment (to its mounts too)
            os.environ["IMAGEFS_PLAIN_HTTP_REGISTRIES"] = link.host
            snap = SnapshotterProcess(
                lab / "imagefs.sock", lab / "snapshotter", lab / "logs" / "snapshotter.log"
            )
            snap.start()
        config = lab / "containerd-config.toml"
        config.write_text(config_toml(lab, link, snapshotter))
        with (lab / "logs" / "containerd.log").open("wb") as out:
            proc = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while _ctr(lab, "version", timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    "containerd did not start:\n" + _tail(lab / "logs" / "containerd.log", 3000)
                )
            time.sleep(0.05)
        yield Lab(lab, lab / "containerd.sock", snap, proc)
    finally:
        if proc is not None and proc.poll() is None:
            tasks = _ctr(lab, "-n", "k8s.io", "tasks", "ls", "-q").stdout.split()
            for task in tasks:
                _ctr(lab, "-n", "k8s.io", "tasks", "kill", "-s", "KILL", task)
                _ctr(lab, "-n", "k8s.io", "tasks", "rm", "-f", task)
        if proc is not None:
            _stop_pid(proc)
        spared = {snap.proc.pid} if snap is not None and snap.proc is not None else set()
        for pid in set(_pids_mentioning(str(lab) + "/")) - spared:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if snap is not None and snap.proc is not None:
            _stop_pid(snap.proc)
        for target in reversed(_mounts_under(lab)):
            if subprocess.run(["umount", target], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True)
        left = _mounts_under(lab)
        if left:
            log(f"warning: mounts left under {lab}, not removing it: {left}")
        else:
            shutil.rmtree(lab, ignore_errors=True)
        if created_run:
            _remove_run_containerd()
        for cgroup in set(glob.glob(CGROUP_PARENTS)) - cgroups_before:
            with contextlib.suppress(OSError):
                os.rmdir(cgroup)


# ---------------------------------------------------------------------------------------------
# images


def push_sandbox_image(work: Path, link: Link) -> str:
    """The offline pause image the labs' sandbox_image names: the fixture's busybox image
    running `sleep`, pushed to the link's registry."""
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "oci"
    if not (layout / "index.json").exists():
        build_busybox_layout(work)
        run(
            [
                *("umoci", "config", "--image", f"{layout}:busybox", "--tag", "pause"),
                *("--config.cmd", "/bin/sleep", "--config.cmd", "2147483647"),
            ]
        )
    ref = f"{link.host}/{SANDBOX_REPO}:{SANDBOX_TAG}"
    run(
        [
            *("skopeo", "copy", "--quiet", "--dest-tls-verify=false"),
            f"oci:{layout}:pause",
            f"docker://{ref}",
        ]
    )
    return ref


def registry_log(work: Path, link: Link) -> Path:
    return work / f"registry-{link.name}" / "registry.log"


def registry_bytes(logfile: Path, offset: int) -> dict[str, Any]:
    """Response bytes of the requests logged after byte `offset`, by user agent family."""
    with logfile.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    total, requests, ranged = 0, 0, 0
    by_agent: dict[str, int] = {}
    for line in text.splitlines():
        m = ACCESS.search(line)
        if m is None or m.group(1) not in ("GET", "HEAD"):
            continue
        _method, _uri, status, size, agent = m.groups()
        nbytes = 0 if size == "-" else int(size)
        family = agent.split("/", 1)[0] or "-"
        total += nbytes
        requests += 1
        ranged += status == "206"
        by_agent[family] = by_agent.get(family, 0) + nbytes
    return {"bytes": total, "requests": requests, "ranged": ranged, "by_agent": by_agent}


def image_mount_stats(lab: Lab) -> dict[str, Any] | None:
    """`imagefs stats` of the snapshotter's image mount, if there is exactly one."""
    if lab.snapshotter is None:
        return None
    images = lab.snapshotter.root / "images"
    mounts = [p for p in images.iterdir() if os.path.ismount(p)] if images.is_dir() else []
    if len(mounts) != 1:
        log(f"warning: {len(mounts)} image mounts under {images}; no imagefs stats")
        return None
    env = {**os.environ, "IMAGEFS_RUN_DIR": str(lab.snapshotter.root / "run")}
    res = run([IMAGEFS, "stats", str(mounts[0]), "--json"], env=env, timeout_s=60, check=False)
    if res.returncode != 0:
        log(f"warning: imagefs stats failed: {res.stderr.strip()[-500:]}")
        return None
    stats: dict[str, Any] = json.loads(res.stdout)
    return stats


# ---------------------------------------------------------------------------------------------
# one cold start


def cold_start(link: Link, work: Path, method: str, image_ref: str, sandbox_ref: str) -> Row:
    busy = lazy.wait_quiet()
    logfile = registry_log(work, link)
    with containerd_lab(link, method) as lab, CriClient(lab.socket) as cri:
        pod_id = ctr_id = None
        try:
            cri.version()
            cri.pull(sandbox_ref, timeout_s=PULL_TIMEOUT_S)  # not part of the measured image
            lazy.drop_caches()
            offset = logfile.stat().st_size
            wire0 = lazy.traffic(link)
            t0 = time.perf_counter()
            cri.pull(image_ref, timeout_s=PULL_TIMEOUT_S)
            t1 = time.perf_counter()
            pod_id = cri.run_pod(f"bench-{method}", lab.path / "pod-logs")
            t2 = time.perf_counter()
            ctr_id = cri.create(pod_id, None, "cmd", image_ref, COMMAND, "cmd.log")
            t3 = time.perf_counter()
            cri.start(ctr_id)
            t4 = time.perf_counter()
            code = cri.wait_exit(ctr_id, EXIT_TIMEOUT_S, poll_s=0.01)
            t5 = time.perf_counter()
            wire = lazy.traffic(link) - wire0
            time.sleep(0.3)  # let the registry flush its access log lines
            reg = registry_bytes(logfile, offset)
            output = cri.logs(lab.path / "pod-logs" / "cmd.log")
            if code != 0:
                raise BenchError(f"{method}: the command exited {code}: {output}")
            stats = image_mount_stats(lab)
        except (CriError, TimeoutError) as err:
            raise BenchError(f"{method}: {err}\n{lab.log_tail()}") from err
        finally:
            with contextlib.suppress(CriError):
                if ctr_id is not None:
                    cri.stop_container(ctr_id)
                    cri.remove_container(ctr_id)
            with contextlib.suppress(CriError):
                if pod_id is not None:
                    cri.stop_pod(pod_id)
                    cri.remove_pod(pod_id)
    return {
        "total_s": t5 - t0,
        "pull_s": t1 - t0,
        "runpod_s": t2 - t1,
        "create_s": t3 - t2,
        "start_s": t4 - t3,
        "exit_s": t5 - t4,
        "registry_bytes": reg["bytes"],
        "registry_requests": reg["requests"],
        "registry_ranged": reg["ranged"],
        "registry_by_agent": reg["by_agent"],
        "wire_bytes": wire,
        "stats": stats,
        "busy": busy,
    }


def bench_link(
    link: Link, image: debian_image.DebianImage, work: Path, repeat: int
) -> dict[str, Any]:
    log(f"[{link.name}] registry at {link.host}; shaping: {link.shaping}")
    connect_ms, rtt_ms = lazy.measure_rtt_ms(link.host)
    log(f"[{link.name}] HTTP round trip {rtt_ms:.1f} ms (first, with connect: {connect_ms:.1f} ms)")
    sandbox_ref = push_sandbox_image(work.parent / "busybox", link)
    run(
        [
            *("skopeo", "copy", "--quiet", "--dest-tls-verify=false"),
            image.oci_ref,
            f"docker://{link.host}/{REPO}:{PLAIN_TAG}",
        ]
    )
    plain = lazy.get_manifest(link, PLAIN_TAG)
    plain_layers = [int(layer["size"]) for layer in plain["layers"]]
    started = time.perf_counter()
    run(
        [IMAGEFS, "convert", image.oci_ref, f"{link.host}/{REPO}:{IMAGEFS_TAG}"],
        env=lazy.imagefs_env(link, work),
    )
    convert_s = time.perf_counter() - started
    converted = lazy.get_manifest(link, IMAGEFS_TAG)
    stored = sum(int(layer["size"]) for layer in converted["layers"])
    log(f"[{link.name}] pushed the plain image; imagefs convert + push {convert_s:.1f}s")
    refs = {
        "overlayfs": f"{link.host}/{REPO}:{PLAIN_TAG}",
        "imagefs": f"{link.host}/{REPO}:{IMAGEFS_TAG}",
    }
    runs: dict[str, list[Row]] = {m: [] for m in METHODS}
    for i in range(repeat):
        for method in METHODS:
            log(f"[{link.name}] run {i + 1}/{repeat}: {method}")
            row = cold_start(link, work, method, refs[method], sandbox_ref)
            log(
                f"[{link.name}]   total {row['total_s']:.2f}s (pull {row['pull_s']:.2f}s), "
                f"registry {row['registry_bytes']:,} B, wire {row['wire_bytes']:,} B"
            )
            runs[method].append(row)
    return {
        "link": link.name,
        "host": link.host,
        "shaping": link.shaping,
        "rtt_ms": rtt_ms,
        "connect_ms": connect_ms,
        "command": COMMAND,
        "refs": refs,
        "plain_layer_bytes": plain_layers,
        "imagefs_stored_bytes": stored,
        "imagefs_layers": len(converted["layers"]),
        "convert_s": convert_s,
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------
# output


def medians(rows: Sequence[Row]) -> Row:
    keys = ["total_s", *PHASES, "registry_bytes", "wire_bytes"]
    return {k: statistics.median(float(r[k]) for r in rows) for k in keys}


def report(result: dict[str, Any]) -> dict[str, Any]:
    base, lazy_m = medians(result["runs"]["overlayfs"]), medians(result["runs"]["imagefs"])
    plain_bytes = sum(result["plain_layer_bytes"])
    n = len(result["runs"]["overlayfs"])
    print(f"\n### {result['link']}: {result['shaping']}\n")
    print(
        f"registry {result['host']}; HTTP round trip {result['rtt_ms']:.1f} ms (first request "
        f"with connect {result['connect_ms']:.1f} ms); containerd 1.6 CRI, host-network pod, "
        f"`{' '.join(COMMAND)}`; {n} run(s) each, median of each column shown"
    )
    print(
        f"image: plain {len(result['plain_layer_bytes'])} gzip layer(s) {plain_bytes:,} B; "
        f"imagefs {result['imagefs_layers']} blobs {result['imagefs_stored_bytes']:,} B "
        f"(convert + push {result['convert_s']:.1f} s)\n"
    )
    headers = [
        "method",
        "total s",
        "pull s",
        "runpod s",
        "create s",
        "start s",
        "exit s",
        "registry bytes",
        "wire bytes",
        "x overlayfs",
    ]
    rows = []
    for label, m in (("overlayfs (full pull)", base), ("imagefs (lazy)", lazy_m)):
        rows.append(
            [
                label,
                m["total_s"],
                m["pull_s"],
                m["runpod_s"],
                m["create_s"],
                m["start_s"],
                m["exit_s"],
                int(m["registry_bytes"]),
                int(m["wire_bytes"]),
                m["total_s"] / base["total_s"],
            ]
        )
    lazy.print_table(headers, rows)
    cold = lazy_m["total_s"] / base["total_s"]
    ok = {True: "ok", False: "MISSED"}
    verdict = ok[cold <= TARGET_COLD_RATIO]
    print(f"\ncold start ratio {cold:.3f} (target <= {TARGET_COLD_RATIO}) {verdict}")
    print(
        f"bytes ratio (registry) {lazy_m['registry_bytes'] / max(1.0, base['registry_bytes']):.3f}"
    )
    for method in METHODS:
        totals = ", ".join(f"{r['total_s']:.2f}" for r in result["runs"][method])
        print(f"all totals (s), {method}: {totals}")
    stats = [r["stats"] for r in result["runs"]["imagefs"] if r.get("stats")]
    if stats:
        s = stats[len(stats) // 2]
        print(
            f"imagefs mount (a middle run): read {int(s.get('bytes_read', 0)):,} B, fetched "
            f"{int(s.get('bytes_fetched', 0)):,} B in {s.get('requests', '?')} requests"
        )
    busiest = max(r["busy"] for rs in result["runs"].values() for r in rs)
    if busiest > 0.1:
        print(f"note: the machine was up to {busiest:.0%} busy before a run")
    return {"cold_ratio": cold, "medians": {"overlayfs": base, "imagefs": lazy_m}}


# ---------------------------------------------------------------------------------------------


def check_environment(links: Sequence[str]) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root (containerd, drop_caches, FUSE, network namespaces)")
    tools = ["skopeo", "umoci", "containerd", "ctr", "runc", "fusermount3"]
    if "shaped" in links:
        tools += ["ip", "tc"]
    missing = [t for t in tools if shutil.which(t) is None]
    for path in (lazy.REGISTRY_BIN, IMAGEFS):
        if not os.access(path, os.X_OK):
            missing.append(path)
    if missing:
        raise BenchError(f"missing: {', '.join(missing)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--link", choices=["loopback", "shaped", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (medians)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--shaper",
        choices=["auto", "netem", "proxy"],
        default="auto",
        help="shaped link: as bench/lazy.py (auto: netem if the kernel has it)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print commands")
    args = parser.parse_args(argv)
    lazy.VERBOSE = args.verbose
    links = ["loopback", "shaped"] if args.link == "both" else [args.link]

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="imagefs-ctdbench-", dir="/tmp"))
    results: list[dict[str, Any]] = []
    try:
        check_environment(links)
        image = debian_image.ensure_image()
        for name in links:
            link_work = work / name
            link_work.mkdir()
            ctx = (
                lazy.loopback_link(link_work)
                if name == "loopback"
                else lazy.shaped_link(link_work, args.shaper)
            )
            with ctx as link:
                result = bench_link(link, image, link_work, max(1, args.repeat))
            result.update(report(result))
            results.append(result)
            sys.stdout.flush()
    except (BenchError, debian_image.BuildError, RuntimeError) as err:
        log(f"containerd bench: error: {err}")
        return 1
    except KeyboardInterrupt:
        log("containerd bench: interrupted")
        return 130
    finally:
        if results:
            out = OUT / "containerd-results.json"
            out.write_text(json.dumps(results, indent=1, default=str))
            log(f"results: {out}")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
