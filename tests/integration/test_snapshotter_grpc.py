"""The snapshotter's gRPC service on a real unix socket, called through the generated
stubs the way containerd's proxy calls it: every RPC, the status codes containerd's
`errdefs.FromGRPC` maps, List streaming, and the socket's lifecycle."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from fuse_mount.snapshotter import protos
from fuse_mount.snapshotter.server import SnapshotterServer
from imagefs.errors import UsageError
from tests.conftest import REPO, Env

pytestmark = [pytest.mark.integration]


@dataclass
class Client:
    stub: Any
    pb: Any
    server: SnapshotterServer

    def code(self, method: str, request: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            getattr(self.stub, method)(request)
        code: grpc.StatusCode = info.value.code()
        return code


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ifs-sn-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def client(short_dir: Path) -> Iterator[Client]:
    server = SnapshotterServer(f"unix://{short_dir}/sn.sock", short_dir / "root")
    channel = grpc.insecure_channel(f"unix://{short_dir}/sn.sock")
    try:
        stub = protos.snapshots_pb2_grpc().SnapshotsStub(channel)
        yield Client(stub, protos.snapshots_pb2(), server)
    finally:
        channel.close()
        server.stop(grace_s=1)


def test_every_rpc(client: Client) -> None:
    pb, st = client.pb, client.stub
    r = st.Prepare(
        pb.PrepareSnapshotRequest(snapshotter="imagefs", key="ns/1/x", labels={"a": "1"})
    )
    (m,) = r.mounts
    assert (m.type, list(m.options)) == ("bind", ["rw", "rbind"])
    assert Path(m.source).is_dir()
    st.Commit(pb.CommitSnapshotRequest(name="ns/2/L1", key="ns/1/x", labels={"b": "2"}))
    info = st.Stat(pb.StatSnapshotRequest(key="ns/2/L1")).info
    assert (info.name, info.parent, info.kind) == ("ns/2/L1", "", pb.COMMITTED)
    assert dict(info.labels) == {"a": "1", "b": "2"}
    assert info.created_at.ToNanoseconds() > 0
    assert info.updated_at.ToNanoseconds() >= info.created_at.ToNanoseconds()

    (m,) = st.Prepare(pb.PrepareSnapshotRequest(key="ns/3/ctr", parent="ns/2/L1")).mounts
    assert m.type == "overlay"
    assert [o.split("=")[0] for o in m.options] == ["index", "workdir", "upperdir", "lowerdir"]
    assert list(st.Mounts(pb.MountsRequest(key="ns/3/ctr")).mounts) == [m]
    (v,) = st.View(pb.ViewSnapshotRequest(key="ns/4/v", parent="ns/2/L1")).mounts
    assert (v.type, list(v.options)) == ("bind", ["ro", "rbind"])

    mask = protos.field_mask_pb2().FieldMask(paths=["labels.c"])
    new = st.Update(
        pb.UpdateSnapshotRequest(info=pb.Info(name="ns/2/L1", labels={"c": "3"}), update_mask=mask)
    ).info
    assert dict(new.labels) == {"a": "1", "b": "2", "c": "3"}
    new = st.Update(pb.UpdateSnapshotRequest(info=pb.Info(name="ns/2/L1", labels={"d": "4"}))).info
    assert dict(new.labels) == {"d": "4"}

    upper = Path(m.options[2].split("=", 1)[1])
    (upper / "f").write_bytes(b"y" * 10000)
    usage = st.Usage(pb.UsageRequest(key="ns/3/ctr"))
    assert usage.inodes == 2 and usage.size >= 10000

    listed = {
        i.name: i.kind for r in st.List(pb.ListSnapshotsRequest(filters=["x"])) for i in r.info
    }
    assert listed == {"ns/2/L1": pb.COMMITTED, "ns/3/ctr": pb.ACTIVE, "ns/4/v": pb.VIEW}

    st.Remove(pb.RemoveSnapshotRequest(key="ns/3/ctr"))
    assert not upper.exists()
    st.Remove(pb.RemoveSnapshotRequest(key="ns/4/v"))
    st.Remove(pb.RemoveSnapshotRequest(key="ns/2/L1"))
    orphan = client.server.snapshotter.root / "snapshots" / "99"
    orphan.mkdir()
    st.Cleanup(pb.CleanupRequest())
    assert not orphan.exists()
    assert [i for r in st.List(pb.ListSnapshotsRequest()) for i in r.info] == []


def test_status_codes(client: Client) -> None:
    pb = client.pb
    client.stub.Prepare(pb.PrepareSnapshotRequest(key="a"))
    client.stub.Commit(pb.CommitSnapshotRequest(name="A", key="a"))
    client.stub.Prepare(pb.PrepareSnapshotRequest(key="b", parent="A"))
    NF, AE = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS
    FP, IA = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT
    assert client.code("Stat", pb.StatSnapshotRequest(key="nope")) == NF
    assert client.code("Mounts", pb.MountsRequest(key="nope")) == NF
    assert client.code("Usage", pb.UsageRequest(key="nope")) == NF
    assert client.code("Remove", pb.RemoveSnapshotRequest(key="nope")) == NF
    assert client.code("Prepare", pb.PrepareSnapshotRequest(key="c", parent="nope")) == NF
    assert client.code("Prepare", pb.PrepareSnapshotRequest(key="b", parent="A")) == AE
    assert client.code("Commit", pb.CommitSnapshotRequest(name="A", key="b")) == AE
    assert client.code("Remove", pb.RemoveSnapshotRequest(key="A")) == FP  # has a child
    assert client.code("Commit", pb.CommitSnapshotRequest(name="B", key="A")) == FP
    assert client.code("Prepare", pb.PrepareSnapshotRequest(key="", parent="")) == IA
    assert client.code("Mounts", pb.MountsRequest(key="A")) == IA  # committed: no mounts
    mask = protos.field_mask_pb2().FieldMask(paths=["kind"])
    bad = pb.UpdateSnapshotRequest(info=pb.Info(name="A"), update_mask=mask)
    assert client.code("Update", bad) == IA
    # nothing changed through all that
    names = sorted(i.name for r in client.stub.List(pb.ListSnapshotsRequest()) for i in r.info)
    assert names == ["A", "b"]


def test_list_streams_in_batches(client: Client) -> None:
    pb = client.pb
    for i in range(250):
        client.stub.View(pb.ViewSnapshotRequest(key=f"v{i}"))
    batches = list(client.stub.List(pb.ListSnapshotsRequest()))
    assert [len(b.info) for b in batches] == [100, 100, 50]
    assert {i.name for b in batches for i in b.info} == {f"v{i}" for i in range(250)}


def test_socket_is_private_and_refuses_a_second_server(client: Client, short_dir: Path) -> None:
    sock = short_dir / "sn.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    with pytest.raises(UsageError, match="another process is serving"):
        SnapshotterServer(str(sock), short_dir / "root2")


def test_stale_socket_is_replaced(short_dir: Path) -> None:
    sock = short_dir / "sn.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens
    server = SnapshotterServer(str(sock), short_dir / "root")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock))
    finally:
        server.stop(grace_s=1)
    assert not sock.exists()


def test_cli_serves_until_sigint(imagefs_env: Env) -> None:
    sock = imagefs_env.root / "s.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "snapshotter", "--address", str(sock), "--root",
         str(imagefs_env.root / "root")],
        cwd=REPO, env=imagefs_env.vars, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_cli_usage_errors(imagefs_env: Env) -> None:
    long = "/tmp/" + "x" * 120 + "/s.sock"
    res = imagefs_env.run("snapshotter", "--address", long, "--root", "/tmp/r", check=False)
    assert res.returncode == 2
    assert "longer than 107 bytes" in res.stderr and "Traceback" not in res.stderr
    res = imagefs_env.run("snapshotter", "--root", "/tmp/r", check=False)
    assert res.returncode == 2 and "--address" in res.stderr
