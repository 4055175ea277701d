"""The imagefs containerd snapshotter: containerd's Snapshots API over gRPC on a unix
socket, for containerd's `proxy_plugins`.

- `state`: the metadata store (snapshots, kinds, parents, labels), persisted as JSON;
- `mounts`: which mounts containerd gets for a snapshot (pure);
- `snapshotter`: the operations over the store and the snapshot directories, with the
  `RemoteLayers` hook where imagefs layers plug in;
- `service`: the gRPC servicer (requests <-> `Snapshotter`, errors -> status codes);
- `server`: serve on a unix socket until SIGTERM/SIGINT.

The gRPC stubs are generated at install time into `_gen/` (see `protos`).
"""
