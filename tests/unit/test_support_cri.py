"""tests/support/cri.py: the minimal CRI v1 proto compiles, and its messages encode exactly as
the public CRI v1 API's do (package, names and field numbers), so a wrong number fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import cri
from tests.support.cri import CriClient, load_stubs, parse_cri_log


@pytest.fixture(scope="module")
def pb2() -> Any:
    return load_stubs().pb2


def test_stubs_generated_once_into_keyed_cache() -> None:
    first, second = load_stubs(), load_stubs()
    assert first is second
    assert first.directory.name == f"imagefs_cri_{cri.stubs_key()}"
    for name in ("__init__.py", "cri_api_pb2.py", "cri_api_pb2_grpc.py", "cri_api_pb2.pyi"):
        assert (first.directory / name).is_file(), name


def test_generation_into_fresh_root_and_reuse(tmp_path: Path) -> None:
    """A separate process generates into an empty root (rename into place); a second process
    finds and imports the same directory without regenerating."""
    script = (
        "import sys; from pathlib import Path; from tests.support.cri import load_stubs; "
        "s = load_stubs(root=Path(sys.argv[1])); "
        "print(s.directory, s.pb2.VersionRequest(version='v1').SerializeToString().hex())"
    )
    repo = Path(__file__).resolve().parents[2]
    outs = [
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.split()
        for _ in range(2)
    ]
    assert outs[0] == outs[1]
    assert outs[0][1] == "0a027631"
    assert [p.name for p in tmp_path.iterdir()] == [Path(outs[0][0]).name]  # no temp dirs left


def test_services_and_methods(pb2: Any) -> None:
    desc = pb2.DESCRIPTOR
    assert desc.package == "runtime.v1"
    runtime = desc.services_by_name["RuntimeService"]
    assert runtime.full_name == "runtime.v1.RuntimeService"
    assert set(runtime.methods_by_name) == {
        "Version",
        "Status",
        "RunPodSandbox",
        "StopPodSandbox",
        "RemovePodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "RemoveContainer",
        "ContainerStatus",
    }
    images = desc.services_by_name["ImageService"]
    assert set(images.methods_by_name) == {"PullImage", "RemoveImage", "ImageStatus"}
    assert runtime.methods_by_name["RunPodSandbox"].input_type.full_name == (
        "runtime.v1.RunPodSandboxRequest"
    )


def test_version_request_bytes(pb2: Any) -> None:
    # field 1, wire type 2 (length-delimited): tag 0x0a, length 2, "v1"
    assert pb2.VersionRequest(version="v1").SerializeToString() == b"\x0a\x02v1"


def test_namespace_option_bytes(pb2: Any) -> None:
    # NamespaceMode: POD 0, CONTAINER 1, NODE 2, TARGET 3
    assert (pb2.POD, pb2.CONTAINER, pb2.NODE, pb2.TARGET) == (0, 1, 2, 3)
    # network = field 1 varint -> tag 0x08, value 2; pid = field 2 -> 0x10; ipc = field 3 -> 0x18
    assert pb2.NamespaceOption(network=pb2.NODE).SerializeToString() == b"\x08\x02"
    opts = pb2.NamespaceOption(network=pb2.NODE, pid=pb2.CONTAINER, ipc=pb2.NODE)
    assert opts.SerializeToString() == b"\x08\x02\x10\x01\x18\x02"


def test_pod_sandbox_config_bytes(pb2: Any) -> None:
    """metadata = 1, log_directory = 3, linux = 8 -> security_context = 2 ->
    namespace_options = 1 -> network = 1."""
    config = pb2.PodSandboxConfig(
        metadata=pb2.PodSandboxMetadata(name="p", uid="u", namespace="n", attempt=1),
        log_directory="/l",
        linux=pb2.LinuxPodSandboxConfig(
            security_context=pb2.LinuxSandboxSecurityContext(
                namespace_options=pb2.NamespaceOption(network=pb2.NODE)
            )
        ),
    )
    metadata = b"\x0a\x01p" + b"\x12\x01u" + b"\x1a\x01n" + b"\x20\x01"
    linux = b"\x12\x04" + b"\x0a\x02" + b"\x08\x02"
    expected = b"\x0a" + bytes([len(metadata)]) + metadata + b"\x1a\x02/l" + b"\x42\x06" + linux
    assert config.SerializeToString() == expected


def test_container_config_bytes(pb2: Any) -> None:
    """metadata = 1, image = 2 (ImageSpec.image = 1), command = 3, args = 4, log_path = 11."""
    config = pb2.ContainerConfig(
        metadata=pb2.ContainerMetadata(name="c", attempt=2),
        image=pb2.ImageSpec(image="i"),
        command=["cat"],
        args=["/f"],
        log_path="c.log",
    )
    expected = (
        b"\x0a\x05" + b"\x0a\x01c\x10\x02"
        + b"\x12\x03" + b"\x0a\x01i"
        + b"\x1a\x03cat"
        + b"\x22\x02/f"
        + b"\x5a\x05c.log"
    )  # fmt: skip
    assert config.SerializeToString() == expected
    req = pb2.CreateContainerRequest(pod_sandbox_id="p", config=pb2.ContainerConfig())
    assert req.SerializeToString() == b"\x0a\x01p\x12\x00"


def test_pull_and_status_responses_decode(pb2: Any) -> None:
    """Bytes as a runtime sends them decode into the expected fields."""
    assert pb2.PullImageResponse.FromString(b"\x0a\x03sha").image_ref == "sha"
    # ContainerStatus: id=1 "x", state=3 EXITED(2), exit_code=7 (3), reason=10 "R",
    # message=11 "M", log_path=15 "/p"
    status = b"\x0a\x01x\x18\x02\x38\x03\x52\x01R\x5a\x01M\x7a\x02/p"
    resp = pb2.ContainerStatusResponse.FromString(b"\x0a" + bytes([len(status)]) + status)
    s = resp.status
    assert (s.id, s.state, s.exit_code, s.reason, s.message, s.log_path) == (
        "x",
        pb2.CONTAINER_EXITED,
        3,
        "R",
        "M",
        "/p",
    )
    assert pb2.ContainerState.Name(2) == "CONTAINER_EXITED"
    # StatusResponse: status=1 -> conditions=1 -> {type=1 "RuntimeReady", status=2 true}
    cond = b"\x0a\x0cRuntimeReady\x10\x01"
    runtime_status = b"\x0a" + bytes([len(cond)]) + cond
    resp2 = pb2.StatusResponse.FromString(b"\x0a" + bytes([len(runtime_status)]) + runtime_status)
    assert [(c.type, c.status) for c in resp2.status.conditions] == [("RuntimeReady", True)]
    # StopContainerRequest: container_id = 1, timeout = 2 (int64)
    stop = pb2.StopContainerRequest(container_id="c", timeout=5)
    assert stop.SerializeToString() == b"\x0a\x01c\x10\x05"
    # PullImageRequest: image = 1 -> ImageSpec.image = 1
    pull = pb2.PullImageRequest(image=pb2.ImageSpec(image="r"))
    assert pull.SerializeToString() == b"\x0a\x03\x0a\x01r"


def test_parse_cri_log() -> None:
    text = (
        "2024-01-01T00:00:00.000000001Z stdout F hello from layer 2\n"
        "2024-01-01T00:00:00.000000002Z stderr F oops\n"
        "2024-01-01T00:00:00.000000003Z stdout P part one, \n"
        "2024-01-01T00:00:00.000000004Z stdout F part two\n"
        "2024-01-01T00:00:00.000000005Z stdout F \n"
    )
    assert parse_cri_log(text) == "hello from layer 2\noops\npart one, part two\n\n"
    assert parse_cri_log(text, "stderr") == "oops\n"
    assert parse_cri_log(text, "stdout") == "hello from layer 2\npart one, part two\n\n"
    with pytest.raises(ValueError, match="not a CRI log line"):
        parse_cri_log("garbage\n")


def test_pod_config_host_network_without_hostname(tmp_path: Path) -> None:
    client = CriClient(tmp_path / "nothing.sock", timeout_s=0.5)
    try:
        config = client.pod_config("p", tmp_path / "logs")
        pb2 = client.pb2
        assert config.linux.security_context.namespace_options.network == pb2.NODE
        assert config.hostname == ""
        assert config.log_directory == str(tmp_path / "logs")
    finally:
        client.close()


def test_unreachable_socket_is_a_cri_error(tmp_path: Path) -> None:
    with (
        CriClient(tmp_path / "nothing.sock", timeout_s=0.5) as client,
        pytest.raises(cri.CriError, match=r"Version failed: (UNAVAILABLE|DEADLINE_EXCEEDED)"),
    ):
        client.version()


def test_pod_context_always_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cri.pod() stops and removes the pod after the body, also when the body fails; a failing
    cleanup becomes a note on the body's error, or the error itself when the body passed."""
    calls: list[str] = []
    with CriClient(tmp_path / "nothing.sock", timeout_s=0.5) as client:
        monkeypatch.setattr(client, "run_pod", lambda name, log_dir: "pod1")
        monkeypatch.setattr(client, "stop_pod", lambda pod_id: calls.append(f"stop {pod_id}"))

        def remove(pod_id: str) -> None:
            calls.append(f"remove {pod_id}")
            raise cri.CriError("RemovePodSandbox", None, "boom")

        monkeypatch.setattr(client, "remove_pod", remove)
        with pytest.raises(RuntimeError, match="body") as info, client.pod("p", tmp_path):
            raise RuntimeError("body")
        assert any("cleaning up pod pod1 failed" in n for n in info.value.__notes__)
        assert calls == ["stop pod1", "remove pod1"]
        with pytest.raises(cri.CriError, match="boom"), client.pod("p", tmp_path) as pod_id:
            assert pod_id == "pod1"
        assert calls == ["stop pod1", "remove pod1"] * 2
