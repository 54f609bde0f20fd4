"""The generated snapshots API stubs and the script that makes them (tools/gen_snapshots_proto.py).

The wire format itself is judged by a real containerd (tests/containerd); here: the script
strips every gogoproto construct and nothing else, and the committed stubs describe
containerd's service under its own full name with containerd's field numbers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from lcow.snapshots._proto import mount_pb2, snapshots_pb2

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "src/lcow/snapshots/_proto"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_snapshots_proto", REPO / "tools/gen_snapshots_proto.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOGO = """syntax = "proto3";
package containerd.services.snapshots.v1;
import weak "gogoproto/gogo.proto";
import "github.com/containerd/containerd/api/types/mount.proto";
option go_package = "github.com/containerd/containerd/api/services/snapshots/v1;snapshots";
enum Kind {
	option (gogoproto.goproto_enum_prefix) = false;
	UNKNOWN = 0 [(gogoproto.enumvalue_customname) = "KindUnknown"];
}
message Info {
	google.protobuf.Timestamp created_at = 4 [(gogoproto.stdtime) = true,
		(gogoproto.nullable) = false];
	map<string, string> labels  = 6;
}
"""


def test_the_generator_strips_gogoproto_and_points_at_the_generated_mount() -> None:
    out = _generator().strip_gogo(GOGO)
    assert "gogo" not in out and "go_package" not in out
    assert 'import "lcow/snapshots/_proto/mount.proto";' in out
    assert "UNKNOWN = 0;" in out
    assert "google.protobuf.Timestamp created_at = 4;" in out
    assert "map<string, string> labels  = 6;" in out
    assert "package containerd.services.snapshots.v1;" in out


def test_the_committed_stubs_carry_containerd_s_names_and_numbers() -> None:
    for name in ("snapshots.proto", "mount.proto"):
        assert "gogoproto" not in (PROTO / name).read_text()
    assert "golang-github-containerd-containerd-dev" in (PROTO / "README").read_text()
    service = snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"]
    assert service.full_name == "containerd.services.snapshots.v1.Snapshots"
    assert [m.name for m in service.methods] == [
        "Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List", "Usage",
        "Cleanup",
    ]  # fmt: skip
    numbers = {f.name: f.number for f in snapshots_pb2.PrepareSnapshotRequest.DESCRIPTOR.fields}
    assert numbers == {"snapshotter": 1, "key": 2, "parent": 3, "labels": 4}
    info = {f.name: f.number for f in snapshots_pb2.Info.DESCRIPTOR.fields}
    assert info == {"name": 1, "parent": 2, "kind": 3, "created_at": 4, "updated_at": 5,
                    "labels": 6}  # fmt: skip
    assert mount_pb2.Mount.DESCRIPTOR.full_name == "containerd.types.Mount"
    assert [(v.name, v.number) for v in snapshots_pb2.Kind.DESCRIPTOR.values] == [
        ("UNKNOWN", 0), ("VIEW", 1), ("ACTIVE", 2), ("COMMITTED", 3),
    ]  # fmt: skip
