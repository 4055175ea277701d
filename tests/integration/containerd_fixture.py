"""A private containerd 1.6 (Debian's) with the imagefs snapshotter as its `imagefs` proxy
plugin, per ../shared/containerd-recipe.md: own root, state and sockets in a short temp dir
under /tmp, never the system socket. Everything started here is stopped by PID, every mount
under the temp dir is unmounted, the temp dir is removed, and /run/containerd (where 1.6
leaks shim sockets whatever `state` says) is removed only when this fixture created it.

Also: a tiny two-layer busybox image built with umoci (layer 2 adds /etc/hello.txt) and its
chain IDs, for pulls through the snapshotter."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fuse_mount.snapshotter.state import MetadataStore, Snapshot
from tests.integration.registry_fixture import RunningRegistry

REPO = Path(__file__).resolve().parents[2]
RUN_CONTAINERD = Path("/run/containerd")
LAB_PREFIX = "ifs-ctd-"
# runc (cgroupfs driver) puts `ctr run` containers in /default/<id> of every hierarchy and
# leaves the emptied /default behind
CGROUP_PARENTS = "/sys/fs/cgroup/*/default"
HELLO = "hello from layer 2\n"


# ------------------------------------------------------------------ the test image


def build_busybox_layout(work: Path) -> Path:
    """An OCI layout at work/oci with tag `busybox`: layer 1 is busybox-static and its
    applet links, layer 2 adds /etc/hello.txt (the recipe's image)."""
    layout, bundle = work / "oci", work / "bundle"
    image = f"{layout}:busybox"  # umoci's image syntax: LAYOUT_DIR:TAG

    def umoci(*args: str) -> None:
        res = subprocess.run(["umoci", *args], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"umoci {' '.join(args)} exited {res.returncode}: {res.stderr}")

    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    umoci("unpack", "--image", image, str(bundle))
    rootfs = bundle / "rootfs"
    for d in ("bin", "tmp", "etc", "proc", "sys", "dev"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    applets = subprocess.run(
        [str(rootfs / "bin" / "busybox"), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            with contextlib.suppress(FileExistsError):
                (rootfs / "bin" / applet).symlink_to("busybox")
    umoci("repack", "--image", image, str(bundle))
    shutil.rmtree(bundle)
    umoci("unpack", "--image", image, str(bundle))
    (bundle / "rootfs" / "etc" / "hello.txt").write_text(HELLO)
    umoci("repack", "--image", image, str(bundle))
    shutil.rmtree(bundle)
    umoci(
        "config",
        "--image",
        image,
        *("--config.cmd", "/bin/sh", "--config.cmd", "-c", "--config.cmd", "echo hello"),
        *("--config.env", "PATH=/bin", "--os", "linux", "--architecture", "amd64"),
    )
    return layout


def _blob(layout: Path, digest: str) -> bytes:
    algo, hexd = digest.split(":", 1)
    return (layout / "blobs" / algo / hexd).read_bytes()


def chain_ids(layout: Path, tag: str) -> list[str]:
    """The layers' chain IDs (what containerd names committed snapshots after), bottom up."""
    index = json.loads((layout / "index.json").read_text())
    desc = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    manifest = json.loads(_blob(layout, desc["digest"]))
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    out: list[str] = []
    for diff_id in config["rootfs"]["diff_ids"]:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def push(layout: Path, tag: str, registry: RunningRegistry, repo: str) -> str:
    ref = f"{registry.host}/{repo}:{tag}"
    subprocess.run(
        [
            *("skopeo", "copy", "--quiet", "--dest-tls-verify=false"),
            f"oci:{layout}:{tag}",
            f"docker://{ref}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return ref


# ------------------------------------------------------------------ processes


def _stop_pid(proc: subprocess.Popen[bytes], timeout_s: float = 15) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


def _connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class SnapshotterProcess:
    """`imagefs snapshotter` as a subprocess (python -m cli.main), restartable."""

    socket: Path
    root: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)

    def start(self, timeout_s: float = 30) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = dict(os.environ)
        env.pop("IMAGEFS_CONFIG", None)
        # the lazy mounts it starts for imagefs images: a private cache and run dir
        env["IMAGEFS_CACHE_DIR"] = str(self.root / "cache")
        env["IMAGEFS_RUN_DIR"] = str(self.root / "run")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "cli.main", "--debug", "snapshotter"),
                    *("--address", str(self.socket), "--root", str(self.root)),
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while not _connectable(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"imagefs snapshotter exited {self.proc.returncode}:\n{self.log.read_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"imagefs snapshotter not connectable in {timeout_s}s")
            time.sleep(0.05)

    def kill(self) -> int:
        """SIGKILL (a crash: nothing cleaned up) and wait; returns the exit code."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait(timeout=10)
        self.exit_codes.append(code)
        return code

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        code = _stop_pid(self.proc)
        self.exit_codes.append(code)
        return code

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def snapshots(self) -> list[Snapshot]:
        """What the snapshotter has persisted (its metadata file, read fresh)."""
        return MetadataStore(self.root).snapshots()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class ContainerdLab:
    lab: Path
    registry: RunningRegistry
    snapshotter: SnapshotterProcess
    address: Path
    proc: subprocess.Popen[bytes]

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        res = subprocess.run(
            ["ctr", "--address", str(self.address), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"ctr {' '.join(args)} exited {res.returncode}\n{res.stderr}{res.stdout}\n"
                f"--- containerd log (tail):\n{self.containerd_log()[-3000:]}\n"
                f"--- snapshotter log (tail):\n{self.snapshotter.log_text()[-3000:]}"
            )
        return res

    def run(self, image: str, container_id: str, *command: str) -> subprocess.CompletedProcess[str]:
        """`ctr run --rm` with the imagefs snapshotter and the lab's runc root and fifo dir."""
        return self.ctr(
            *("run", "--rm", "--snapshotter", "imagefs"),
            *("--runc-root", str(self.lab / "runc"), "--fifo-dir", str(self.lab / "fifo")),
            image,
            container_id,
            *command,
        )

    def containerd_log(self) -> str:
        return (self.lab / "logs" / "containerd.log").read_text(errors="replace")


def _config_toml(lab: Path, registry: RunningRegistry) -> str:
    return f"""version = 2
root = "{lab}/root"
state = "{lab}/state"
[grpc]
  address = "{lab}/containerd.sock"
[ttrpc]
  address = "{lab}/containerd.sock.ttrpc"
[debug]
  address = "{lab}/containerd-debug.sock"
  level = "debug"
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
    sandbox_image = "{registry.host}/imagefs/pause:1"
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "imagefs"
      disable_snapshot_annotations = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "{lab}/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "{lab}/opt"
[proxy_plugins]
  [proxy_plugins.imagefs]
    type = "snapshot"
    address = "{lab}/imagefs.sock"
"""


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target.startswith(prefix):
                found.append(target)
    return found


def _pids_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions `text` (the lab's unique path): the shims our
    containerd started."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def _remove_run_containerd() -> None:
    """Remove /run/containerd (which this fixture created), unless another lab's containerd
    (another test session) is still running: then remove only its empty directories."""
    others = _pids_mentioning(f"/tmp/{LAB_PREFIX}")
    if not others:
        shutil.rmtree(RUN_CONTAINERD, ignore_errors=True)
        return
    for dirpath, _dirs, _files in os.walk(RUN_CONTAINERD, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


@contextlib.contextmanager
def run_containerd(registry: RunningRegistry) -> Iterator[ContainerdLab]:
    """Start the imagefs snapshotter, then containerd (in that order: containerd dials the
    proxy plugin lazily, but a pull issued before the socket is connectable times out)."""
    lab = Path(tempfile.mkdtemp(prefix=LAB_PREFIX, dir="/tmp"))
    created_run = not RUN_CONTAINERD.exists()
    cgroups_before = set(glob.glob(CGROUP_PARENTS))
    snap: SnapshotterProcess | None = None
    proc: subprocess.Popen[bytes] | None = None
    lab_obj: ContainerdLab | None = None
    try:
        for d in ("logs", "runc", "fifo", "cni/net.d", "opt"):
            (lab / d).mkdir(parents=True)
        snap = SnapshotterProcess(
            lab / "imagefs.sock", lab / "snapshotter", lab / "logs" / "snapshotter.log"
        )
        snap.start()
        config = lab / "containerd-config.toml"
        config.write_text(_config_toml(lab, registry))
        with (lab / "logs" / "containerd.log").open("wb") as out:
            proc = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        lab_obj = ContainerdLab(lab, registry, snap, lab / "containerd.sock", proc)
        deadline = time.monotonic() + 30
        while lab_obj.ctr("version", check=False, timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{lab_obj.containerd_log()}")
            time.sleep(0.05)
        yield lab_obj
    finally:
        if lab_obj is not None and proc is not None and proc.poll() is None:
            # tasks a failed test left behind: kill and delete them through containerd
            for ns in ("default", "k8s.io"):
                tasks = lab_obj.ctr("-n", ns, "tasks", "ls", "-q", check=False, timeout=20)
                for task in tasks.stdout.split():
                    lab_obj.ctr("-n", ns, "tasks", "kill", "-s", "KILL", task, check=False)
                    lab_obj.ctr("-n", ns, "tasks", "rm", "-f", task, check=False, timeout=20)
                ctrs = lab_obj.ctr("-n", ns, "containers", "ls", "-q", check=False, timeout=20)
                for ctr_id in ctrs.stdout.split():
                    lab_obj.ctr("-n", ns, "containers", "rm", ctr_id, check=False, timeout=20)
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
            raise RuntimeError(f"mounts left under {lab}, not removing it: {left}")
        shutil.rmtree(lab, ignore_errors=True)
        if created_run:
            _remove_run_containerd()
        for cgroup in set(glob.glob(CGROUP_PARENTS)) - cgroups_before:
            with contextlib.suppress(OSError):  # only an empty cgroup can be removed
                os.rmdir(cgroup)
