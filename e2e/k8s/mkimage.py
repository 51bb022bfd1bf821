#!/usr/bin/env python3
"""Writes a single-layer image FROM scratch as a docker-archive (the format of
`docker save`), which `docker load`, `ctr images import` and
`scripts/cluster.sh load` accept. No daemon is needed; the output is
reproducible (fixed mtimes and owners).

    mkimage.py --ref NAME:TAG --out OUT.tar --entrypoint '["/app"]' SRC=DST...
"""
import argparse
import hashlib
import io
import json
import sys
import tarfile


def layer_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for src, dst in files:
            dst = dst.lstrip("/")
            parts = dst.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                    t.addfile(ti)
                    dirs.add(d)
            ti = t.gettarinfo(src, arcname=dst)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = 0
            with open(src, "rb") as f:
                t.addfile(ti, f)
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", required=True, help="image name:tag stored in the archive")
    p.add_argument("--out", required=True)
    p.add_argument("--entrypoint", required=True, help="JSON list")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    p.add_argument("files", nargs="+", help="SRC=DST")
    a = p.parse_args()
    files = []
    for spec in a.files:
        if "=" not in spec:
            sys.exit(f"mkimage: {spec!r} is not SRC=DST")
        files.append(tuple(spec.split("=", 1)))
    layer = layer_tar(files)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": json.loads(a.entrypoint),
            "Env": ["PATH=/usr/bin:/bin"],
            "Labels": dict(kv.split("=", 1) for kv in a.label) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "mkimage.py"}],
    }
    cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg_bytes).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": cfg_name, "RepoTags": [a.ref], "Layers": ["layer.tar"]}]
    ).encode()
    with tarfile.open(a.out, "w") as t:
        for name, data in (("layer.tar", layer), (cfg_name, cfg_bytes), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 0
            t.addfile(ti, io.BytesIO(data))


if __name__ == "__main__":
    main()
