#!/usr/bin/env python3
"""Converts one realistic image to ext4 with the peer pipeline
(`skopeo copy` + `umoci raw unpack` + `mkfs.ext4 -d`) and with
`builderd build`, in the same run, from a registry on loopback.

The image is made once under BENCH_DIR (default /var/tmp/builderd-bench) from
the tree bench/mkfs.py uses (/usr/share and this Python's standard library:
over 500 MB and 40,000 entries), as four gzip layers: two halves of
/usr/share, the standard library, and a top layer of whiteouts (a whole
directory, single files, an opaque directory) and replaced files. It is pushed
to Debian's docker-registry on a free loopback port.

Printed: the best of BENCH_RUNS (default 2) times of each pipeline (both
download from the registry each time, fsync included), the speed-up,
builderd's peak RSS, the time to only decompress the layers with builderd's
decoders (the floor) and builderd's time against it. Both images must pass
`e2fsck -fn`.

    python3 bench/build.py
"""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mkfs import ROOT, WORK, make_tree, tree_stats  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "2"))
LAYOUT = os.path.join(WORK, "image-layout")


def gzip_file(src, dst):
    with open(src, "rb") as f, open(dst, "wb") as out:
        subprocess.run(["gzip", "-6", "-n", "-c"], stdin=f, stdout=out, check=True)


def tar_members(tree, names, out, extra=()):
    """A layer tar of `names` (recursively), after the directory entries
    `extra` (alone, without their contents)."""
    subprocess.run(["tar", "--format=pax", "--numeric-owner", "-C", tree, "-cf", out, *names], check=True)
    if extra:
        subprocess.run(["tar", "--format=pax", "--numeric-owner", "--no-recursion", "-C", tree, "-cf", out + ".dirs", *extra], check=True)
        subprocess.run(["tar", "--concatenate", "-f", out + ".dirs", out], check=True)
        os.replace(out + ".dirs", out)


def top_layer(tree, out):
    """Whiteouts and replacements over the lower layers."""
    stage = out + ".d"
    shutil.rmtree(stage, ignore_errors=True)
    share = sorted(os.listdir(os.path.join(tree, "share")))
    os.makedirs(os.path.join(stage, "share"))
    victims = [share[len(share) // 3], share[2 * len(share) // 3]]
    for v in victims:  # remove whole directories of the first two layers
        open(os.path.join(stage, "share", ".wh." + v), "w").close()
    opaque = os.path.join(stage, "python-stdlib", "email")  # replace a directory's contents
    os.makedirs(opaque)
    open(os.path.join(opaque, ".wh..wh..opq"), "w").close()
    with open(os.path.join(opaque, "__init__.py"), "w") as f:
        f.write("# replaced by the top layer\n")
    with open(os.path.join(stage, "python-stdlib", "os.py"), "w") as f:  # replace a file
        f.write("# replaced\n")
    open(os.path.join(stage, "python-stdlib", ".wh.json"), "w").close()  # remove a package
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        t.add(stage, arcname=".", recursive=True)
    shutil.rmtree(stage)


def make_image(tree):
    if os.path.exists(os.path.join(LAYOUT, "index.json")):
        return
    partial = LAYOUT + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    blobs = os.path.join(partial, "blobs", "sha256")
    os.makedirs(blobs)
    share = sorted(os.listdir(os.path.join(tree, "share")))
    half = len(share) // 2
    t1 = os.path.join(partial, "l1.tar")
    tar_members(tree, [f"share/{n}" for n in share[:half]], t1, extra=["share"])
    t2 = os.path.join(partial, "l2.tar")
    tar_members(tree, [f"share/{n}" for n in share[half:]], t2, extra=["share"])
    t3 = os.path.join(partial, "l3.tar")
    tar_members(tree, ["python-stdlib"], t3)
    t4 = os.path.join(partial, "l4.tar")
    top_layer(tree, t4)
    tars = [t1, t2, t3, t4]

    def put(path):
        digest = sha256_file(path)
        size = os.path.getsize(path)
        os.replace(path, os.path.join(blobs, digest[7:]))
        return digest, size

    layers, diff_ids = [], []
    for t in tars:
        diff_ids.append(sha256_file(t))
        gz = t + ".gz"
        gzip_file(t, gz)
        os.unlink(t)
        d, size = put(gz)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": size})
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cpath = os.path.join(partial, "config")
    with open(cpath, "wb") as f:
        f.write(config)
    cd, csize = put(cpath)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
                           "layers": layers}).encode()
    mpath = os.path.join(partial, "manifest")
    with open(mpath, "wb") as f:
        f.write(manifest)
    md, msize = put(mpath)
    with open(os.path.join(partial, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
                                                     "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, f)
    with open(os.path.join(partial, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    os.rename(partial, LAYOUT)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def start_registry():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = os.path.join(WORK, "registry.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {WORK}/registry}}}}\n"
                f"http: {{addr: 127.0.0.1:{port}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    sys.exit("the registry did not start")


def timed(cmds):
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "--examples", "--manifest-path", os.path.join(ROOT, "Cargo.toml")], check=True)
    builderd = os.path.join(ROOT, "target", "release", "builderd")
    floor_bin = os.path.join(ROOT, "target", "release", "examples", "decompress_floor")
    tree = make_tree()
    size, entries = tree_stats(tree)
    make_image(tree)
    registry, addr = start_registry()
    try:
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{LAYOUT}:latest", f"docker://{addr}/bench:latest"], check=True)
        compressed = sum(l["size"] for l in json.load(open(os.path.join(LAYOUT, "blobs", "sha256",
                         json.load(open(os.path.join(LAYOUT, "index.json")))["manifests"][0]["digest"][7:])))["layers"])
        print(f"image: 4 gzip layers, {compressed / 1e6:.0f} MB compressed; tree {size / 1e6:.0f} MB, {entries} entries")

        peer_dir, peer_rootfs, peer_img = (os.path.join(WORK, n) for n in ("peer-layout", "peer-rootfs", "peer.ext4"))
        ours = os.path.join(WORK, "builderd-build.ext4")
        mke2fs_size = f"{size * 3 // 2 // (1 << 20) + 512}M"
        t_peer, t_ours, rss = [], [], []
        for _ in range(RUNS):
            for p in (peer_dir, peer_rootfs):
                shutil.rmtree(p, ignore_errors=True)
            for p in (peer_img, ours):
                if os.path.exists(p):
                    os.unlink(p)
            t_peer.append(timed([
                ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{addr}/bench:latest", f"oci:{peer_dir}:latest"],
                ["umoci", "raw", "unpack", "--image", f"{peer_dir}:latest", peer_rootfs],
                ["mkfs.ext4", "-q", "-F", "-d", peer_rootfs, peer_img, mke2fs_size],
            ]))
            subprocess.run(["sync"], check=True)
            start = time.perf_counter()
            out = subprocess.run(["/usr/bin/time", "-f", "%M", builderd, "build", f"{addr}/bench:latest", "-o", ours, "--no-cache"],
                                 check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            t_ours.append(time.perf_counter() - start)
            rss.append(int(out.stderr.strip().splitlines()[-1]))
        for image in (peer_img, ours):
            subprocess.run(["e2fsck", "-fn", image], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        floor_out = subprocess.run([floor_bin, LAYOUT, "latest"], check=True, stdout=subprocess.PIPE, text=True).stdout
        floor = float(floor_out.split()[0])
        local = timed([[builderd, "build", f"oci:{LAYOUT}:latest", "-o", ours]])
    finally:
        registry.terminate()
        registry.wait()

    best_peer, best_ours = min(t_peer), min(t_ours)
    print(f"skopeo + umoci + mkfs.ext4  best {best_peer:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in t_peer)})")
    print(f"builderd build              best {best_ours:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in t_ours)}), peak RSS {max(rss) / 1024:.0f} MiB")
    print(f"speed-up: {best_peer / best_ours:.1f}x")
    print(f"decompression floor {floor:.2f} s; builderd from the registry {best_ours / floor:.2f}x the floor, "
          f"from the local layout {local:.2f} s = {local / floor:.2f}x the floor")
    print("both images pass e2fsck -fn")


if __name__ == "__main__":
    main()
