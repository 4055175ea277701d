"""scripts/gen_protos.py's gogoproto stripping (pure text in, text out)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "gen_protos.py"

PROTO = """syntax = "proto3";

package containerd.services.snapshots.v1;

import weak "gogoproto/gogo.proto";
import "google/protobuf/timestamp.proto";
import "github.com/containerd/containerd/api/types/mount.proto";

enum Kind {
	option (gogoproto.goproto_enum_prefix) = false;
	UNKNOWN = 0 [(gogoproto.enumvalue_customname) = "KindUnknown"];
	VIEW = 1 [(gogoproto.enumvalue_customname) = "KindView"];
}

message Info {
	string name = 1;
	google.protobuf.Timestamp created_at = 4 {TS_OPTIONS};
	map<string, string> labels = 6;
}
""".replace("{TS_OPTIONS}", "[(gogoproto.stdtime) = true, (gogoproto.nullable) = false]")


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_strip_gogo_keeps_the_wire_contract(gen: ModuleType) -> None:
    out = gen.strip_gogo(PROTO)
    assert "gogoproto" not in out
    assert "package containerd.services.snapshots.v1;" in out
    assert 'import "fuse_mount/snapshotter/_gen/containerd/types/mount.proto";' in out
    assert "\tUNKNOWN = 0;" in out and "\tVIEW = 1;" in out
    assert "google.protobuf.Timestamp created_at = 4;" in out
    assert "map<string, string> labels = 6;" in out
    assert "enum Kind {\n\tUNKNOWN" in out  # the option line is gone, not left empty


def test_leftover_gogo_option_is_an_error(gen: ModuleType) -> None:
    with pytest.raises(SystemExit, match="gogoproto"):
        gen.strip_gogo(
            "message M { option deprecated = true; int32 a = 1 [(gogoproto.x) = 1 ]; }\n"
            "// (gogoproto.moretext)\n"
        )
