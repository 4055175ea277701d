"""A small CRI v1 (Kubernetes Container Runtime Interface) client for the integration tests,
standing in for crictl, which Debian does not package.

The gRPC stubs are generated from the project's own minimal `cri_api.proto` (beside this file;
public CRI v1 names and field numbers, package `runtime.v1`) with grpc_tools.protoc, at first
use, into a cache directory under the system temp dir keyed by the sha256 of the proto and the
grpcio-tools and protobuf versions. Generation happens once per process (under a lock) and is
safe across processes: each generator writes into its own temp dir and renames it into place
(an atomic rename; a loser of the race just uses the winner's copy). The generated modules are
imported under a private package name, without touching sys.path, as untyped modules; the
client turns their messages into the small dataclasses below.

    with CriClient(lab.lab / "containerd.sock") as cri, cri.pod("p", log_dir) as pod_id:
        ctr = cri.create(pod_id, None, "c", image_ref, ["cat", "/etc/hello.txt"], "c.log")
        cri.start(ctr)
        assert cri.wait_exit(ctr, 30) == 0
        print(cri.logs(log_dir / "c.log"))
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

PROTO = Path(__file__).resolve().with_name("cri_api.proto")
_MODULE = "cri_api"  # the proto's file stem: cri_api_pb2, cri_api_pb2_grpc
_GEN_LOCK = threading.Lock()
_STUBS: dict[str, Stubs] = {}

DEFAULT_TIMEOUT_S = 30.0
PULL_TIMEOUT_S = 180.0
RUNTIME_API_VERSION = "v1"


# ------------------------------------------------------------------ stub generation


@dataclass(frozen=True)
class Stubs:
    """The generated modules: `pb2` (messages, enums) and `grpc` (RuntimeServiceStub, ...)."""

    pb2: Any
    grpc: Any
    package: str  # the private import name they live under
    directory: Path  # where the generated files are


def cache_root() -> Path:
    return Path(tempfile.gettempdir()) / "imagefs-cri-stubs"


def stubs_key(proto: Path = PROTO) -> str:
    """What the generated code depends on: the proto text and the generator and runtime
    versions (generated code hard-checks both)."""
    h = hashlib.sha256()
    h.update(proto.read_bytes())
    for dist in ("grpcio-tools", "protobuf", "grpcio"):
        h.update(f"\0{dist}={importlib.metadata.version(dist)}".encode())
    return h.hexdigest()[:24]


def _generate(proto: Path, package: str, final: Path) -> None:
    """protoc into a private temp dir next to `final`, then rename it into place."""
    protoc: Any = importlib.import_module("grpc_tools.protoc")  # untyped
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=final.parent))
    try:
        src, out = work / "src", work / "out"
        (src / package).mkdir(parents=True)
        (out / package).mkdir(parents=True)
        shutil.copyfile(proto, src / package / f"{_MODULE}.proto")
        args = [
            "grpc_tools.protoc",
            f"-I{src}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            f"{package}/{_MODULE}.proto",
        ]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"grpc_tools.protoc failed ({code}) on {proto}")
        (out / package / "__init__.py").write_text('"""Generated CRI v1 stubs."""\n')
        try:
            os.rename(out / package, final)
        except OSError:
            if not final.is_dir():  # not "another process won the race"
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _import_package(package: str, directory: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        package, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the generated CRI stubs from {directory}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    spec.loader.exec_module(module)
    return module


def load_stubs(proto: Path = PROTO, root: Path | None = None) -> Stubs:
    """The CRI stubs for `proto`, generated into `root` (default: cache_root()) if missing."""
    key = stubs_key(proto)
    with _GEN_LOCK:
        if key in _STUBS:
            return _STUBS[key]
        package = f"imagefs_cri_{key}"  # no leading "_": the grpc module would name-mangle it
        directory = (root or cache_root()) / package
        if not (directory / "__init__.py").is_file():
            _generate(proto, package, directory)
        if package not in sys.modules:
            _import_package(package, directory)
        stubs = Stubs(
            pb2=importlib.import_module(f"{package}.{_MODULE}_pb2"),
            grpc=importlib.import_module(f"{package}.{_MODULE}_pb2_grpc"),
            package=package,
            directory=directory,
        )
        _STUBS[key] = stubs
        return stubs


# ------------------------------------------------------------------ results


class CriError(RuntimeError):
    """A CRI call failed: which RPC, the gRPC status code and the runtime's message."""

    def __init__(self, method: str, code: grpc.StatusCode | None, details: str) -> None:
        name = code.name if code is not None else "UNKNOWN"
        super().__init__(f"CRI {method} failed: {name}: {details}")
        self.method = method
        self.code = code
        self.details = details


@dataclass(frozen=True)
class RuntimeVersion:
    version: str
    runtime_name: str
    runtime_version: str
    runtime_api_version: str


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class ContainerInfo:
    """What ContainerStatus says about one container."""

    id: str
    name: str
    state: str  # CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN
    exit_code: int
    reason: str
    message: str
    image: str
    image_ref: str
    log_path: str
    started_at: int  # ns since the epoch, 0 when not started
    finished_at: int  # ns since the epoch, 0 while running


def parse_cri_log(text: str, stream: str | None = None) -> str:
    """The text of a CRI log file: lines `TIMESTAMP STREAM TAG CONTENT` where TAG is `F` (a
    full line) or `P` (a partial line, continued by the next line of that stream). `stream`
    ("stdout" or "stderr") keeps one stream only."""
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            raise ValueError(f"not a CRI log line: {line!r}")
        _timestamp, which, tag = parts[:3]
        content = parts[3] if len(parts) == 4 else ""
        if stream is not None and which != stream:
            continue
        flags = tag.split(":")
        out.append(content if "P" in flags else content + "\n")
    return "".join(out)


# ------------------------------------------------------------------ the client


class CriClient:
    """Blocking CRI v1 client over a unix socket; every call has a deadline."""

    def __init__(self, socket_path: str | os.PathLike[str], timeout_s: float = DEFAULT_TIMEOUT_S):
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self.stubs = load_stubs()
        self.pb2: Any = self.stubs.pb2
        self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
        self._runtime: Any = self.stubs.grpc.RuntimeServiceStub(self._channel)
        self._images: Any = self.stubs.grpc.ImageServiceStub(self._channel)
        self._pod_configs: dict[str, Any] = {}

    # lifecycle

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, stub: Any, method: str, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return getattr(stub, method)(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            # the RpcError a stub raises is also a grpc.Call (code(), details())
            code_fn, details_fn = getattr(exc, "code", None), getattr(exc, "details", None)
            code = code_fn() if callable(code_fn) else None
            details = (details_fn() if callable(details_fn) else None) or str(exc)
            raise CriError(method, code, details) from exc

    # runtime

    def version(self) -> RuntimeVersion:
        resp = self._call(
            self._runtime, "Version", self.pb2.VersionRequest(version=RUNTIME_API_VERSION)
        )
        return RuntimeVersion(
            resp.version, resp.runtime_name, resp.runtime_version, resp.runtime_api_version
        )

    def status(self) -> dict[str, Condition]:
        """The runtime's conditions by type (RuntimeReady, NetworkReady)."""
        resp = self._call(self._runtime, "Status", self.pb2.StatusRequest())
        return {
            c.type: Condition(c.type, c.status, c.reason, c.message) for c in resp.status.conditions
        }

    # images

    def pull(self, image: str, timeout_s: float = PULL_TIMEOUT_S) -> str:
        """PullImage; returns the image ref the runtime resolved (an image ID)."""
        req = self.pb2.PullImageRequest(image=self.pb2.ImageSpec(image=image))
        resp = self._call(self._images, "PullImage", req, timeout_s)
        return str(resp.image_ref)

    def image_id(self, image: str) -> str | None:
        """ImageStatus: the image's ID, or None when the runtime does not have it."""
        req = self.pb2.ImageStatusRequest(image=self.pb2.ImageSpec(image=image))
        resp = self._call(self._images, "ImageStatus", req)
        return str(resp.image.id) if resp.HasField("image") and resp.image.id else None

    def remove_image(self, image: str) -> None:
        req = self.pb2.RemoveImageRequest(image=self.pb2.ImageSpec(image=image))
        self._call(self._images, "RemoveImage", req)

    # pod sandboxes

    def pod_config(
        self, name: str, log_dir: str | os.PathLike[str], namespace: str = "imagefs-test"
    ) -> Any:
        """A PodSandboxConfig on the host network (NamespaceMode NODE: no CNI needed). No
        hostname: runc cannot set one without a private UTS namespace."""
        pb2 = self.pb2
        return pb2.PodSandboxConfig(
            metadata=pb2.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace=namespace),
            log_directory=str(log_dir),
            linux=pb2.LinuxPodSandboxConfig(
                security_context=pb2.LinuxSandboxSecurityContext(
                    namespace_options=pb2.NamespaceOption(network=pb2.NODE)
                )
            ),
        )

    def run_pod(self, name: str, log_dir: str | os.PathLike[str]) -> str:
        """RunPodSandbox (host network); returns the pod sandbox ID."""
        config = self.pod_config(name, log_dir)
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        resp = self._call(
            self._runtime, "RunPodSandbox", self.pb2.RunPodSandboxRequest(config=config), 120
        )
        pod_id = str(resp.pod_sandbox_id)
        self._pod_configs[pod_id] = config
        return pod_id

    def stop_pod(self, pod_id: str) -> None:
        req = self.pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id)
        self._call(self._runtime, "StopPodSandbox", req, 60)

    def remove_pod(self, pod_id: str) -> None:
        req = self.pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        self._call(self._runtime, "RemovePodSandbox", req, 60)
        self._pod_configs.pop(pod_id, None)

    @contextlib.contextmanager
    def pod(self, name: str, log_dir: str | os.PathLike[str]) -> Iterator[str]:
        """run_pod, and always StopPodSandbox + RemovePodSandbox (which also removes the pod's
        containers). A cleanup failure is raised unless the body already failed, in which case
        it is attached to that exception as a note."""
        pod_id = self.run_pod(name, log_dir)
        body_error: BaseException | None = None
        try:
            yield pod_id
        except BaseException as exc:
            body_error = exc
            raise
        finally:
            cleanup_error: CriError | None = None
            for step in (self.stop_pod, self.remove_pod):
                try:
                    step(pod_id)
                except CriError as exc:
                    cleanup_error = cleanup_error or exc
            if cleanup_error is not None:
                if body_error is None:
                    raise cleanup_error
                body_error.add_note(f"and cleaning up pod {pod_id} failed: {cleanup_error}")

    # containers

    def create(
        self,
        pod_id: str,
        pod_config: Any | None,
        name: str,
        image: str,
        command: Sequence[str],
        log_path: str,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        linux: Any | None = None,
    ) -> str:
        """CreateContainer in `pod_id`; `pod_config` None means the config run_pod used.
        `log_path` is relative to the pod's log directory. Returns the container ID."""
        pb2 = self.pb2
        sandbox_config = pod_config if pod_config is not None else self._pod_configs[pod_id]
        config = pb2.ContainerConfig(
            metadata=pb2.ContainerMetadata(name=name),
            image=pb2.ImageSpec(image=image),
            command=list(command),
            args=list(args),
            envs=[pb2.KeyValue(key=k, value=v) for k, v in (env or {}).items()],
            log_path=log_path,
        )
        if linux is not None:
            config.linux.CopyFrom(linux)
        req = pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config
        )
        resp = self._call(self._runtime, "CreateContainer", req, 60)
        return str(resp.container_id)

    def start(self, container_id: str) -> None:
        req = self.pb2.StartContainerRequest(container_id=container_id)
        self._call(self._runtime, "StartContainer", req, 60)

    def container_status(self, container_id: str) -> ContainerInfo:
        req = self.pb2.ContainerStatusRequest(container_id=container_id)
        s = self._call(self._runtime, "ContainerStatus", req).status
        return ContainerInfo(
            id=s.id,
            name=s.metadata.name,
            state=self.pb2.ContainerState.Name(s.state),
            exit_code=s.exit_code,
            reason=s.reason,
            message=s.message,
            image=s.image.image,
            image_ref=s.image_ref,
            log_path=s.log_path,
            started_at=s.started_at,
            finished_at=s.finished_at,
        )

    def wait_exit(self, container_id: str, timeout_s: float, poll_s: float = 0.05) -> int:
        """Poll ContainerStatus until the container has exited; its exit code."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.container_status(container_id)
            if info.state == "CONTAINER_EXITED":
                return info.exit_code
            if time.monotonic() > deadline:
                raise TimeoutError(f"container {container_id} did not exit in {timeout_s}s: {info}")
            time.sleep(poll_s)

    def stop_container(self, container_id: str, grace_s: int = 0) -> None:
        req = self.pb2.StopContainerRequest(container_id=container_id, timeout=grace_s)
        self._call(self._runtime, "StopContainer", req, grace_s + 60)

    def remove_container(self, container_id: str) -> None:
        req = self.pb2.RemoveContainerRequest(container_id=container_id)
        self._call(self._runtime, "RemoveContainer", req, 60)

    # logs

    @staticmethod
    def logs(log_path: str | os.PathLike[str], stream: str | None = None) -> str:
        """The text a container wrote, from its CRI log file (absolute path, e.g.
        pod log_dir / container log_path, or ContainerInfo.log_path)."""
        return parse_cri_log(Path(log_path).read_text(errors="replace"), stream)
