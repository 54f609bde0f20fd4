"""containerd's proxy snapshotter over lcow's driver (issue 15, SPEC §9.9).

:mod:`.snapshotter` is the Python API (snapshots as LCOW layer folders, keys in
:mod:`.metastore`), :mod:`.service` serves it as ``containerd.services.snapshots.v1.Snapshots``
over gRPC, with the stubs generated into ``_proto`` by ``tools/gen_snapshots_proto.py``.
"""
