#!/usr/bin/env python3
"""Build steps: `builderd build --run` against the peer pipeline on the same
image, in the same run.

The image is bench/build.py's (four gzip layers: /usr/share and the Python
standard library, under share/ and python-stdlib/) with a fifth layer that
gives it a shell: busybox at /bin, and /usr/share a link to /share, so that
the step `rm -rf /usr/share/doc && echo x > /marker` removes the image's
documentation (the largest directory of /usr/share) as it would in a
Debian image. It is an OCI layout on local disk: the source is the same for
both pipelines, and the time is that of running the step and making the
ext4.

- builderd: `builderd build oci:LAYOUT --run CMD -o OUT`, its step engine's
  storage new each run (cold, as the peer's) and, reported apart, once more
  with the storage of the run before (the base disk kept).
- The peer: `buildah from oci:LAYOUT` + `buildah run CTR -- sh -c CMD` +
  `buildah commit` + `buildah push oci:DIR` + `umoci raw unpack` +
  `mkfs.ext4 -d`, with buildah's storage new each run (its defaults as root:
  runc, no user namespace).
- A plain `builderd build` of the same layout (no step): the cost of a step
  is builderd-with-step over it.

Printed: the best of BENCH_RUNS (default 2) of each, the speed-up (goal: at
least 3x) and builderd's time with the step over the plain build (goal: at
most 2x). Every image passes `e2fsck -fn`; the step's marker is in both
images and the documentation in neither.

    python3 bench/steps.py
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build import LAYOUT, gzip_file, make_image, sha256_file  # noqa: E402
from mkfs import ROOT, WORK, make_tree, tree_stats  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "2"))
SHELL_LAYOUT = os.path.join(WORK, "image-layout-shell")
STEP = "rm -rf /usr/share/doc && echo x > /marker"


def shell_layer(out):
    """busybox as /bin/sh, /usr/share -> ../share."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        for d in ("bin", "usr"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
        t.add("/bin/busybox", arcname="bin/busybox")
        for name, target in (("bin/sh", "busybox"), ("usr/share", "../share")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)


def make_shell_image():
    """bench/build.py's layout plus the shell layer."""
    if os.path.exists(os.path.join(SHELL_LAYOUT, "index.json")):
        return
    partial = SHELL_LAYOUT + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(LAYOUT, partial, copy_function=os.link)
    blobs = os.path.join(partial, "blobs", "sha256")

    def blob(digest):
        return os.path.join(blobs, digest[7:])

    def put(path):
        digest = sha256_file(path)
        size = os.path.getsize(path)
        os.replace(path, blob(digest))
        return digest, size

    index = json.load(open(os.path.join(partial, "index.json")))
    manifest = json.load(open(blob(index["manifests"][0]["digest"])))
    config = json.load(open(blob(manifest["config"]["digest"])))
    tar = os.path.join(partial, "shell.tar")
    shell_layer(tar)
    config["rootfs"]["diff_ids"].append(sha256_file(tar))
    gzip_file(tar, tar + ".gz")
    os.unlink(tar)
    digest, size = put(tar + ".gz")
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
    config["config"]["Env"] = ["PATH=/bin"]
    path = os.path.join(partial, "config")
    with open(path, "w") as f:
        json.dump(config, f)
    manifest["config"]["digest"], manifest["config"]["size"] = put(path)
    path = os.path.join(partial, "manifest")
    with open(path, "w") as f:
        json.dump(manifest, f)
    index["manifests"][0]["digest"], index["manifests"][0]["size"] = put(path)
    os.unlink(os.path.join(partial, "index.json"))
    with open(os.path.join(partial, "index.json"), "w") as f:
        json.dump(index, f)
    os.rename(partial, SHELL_LAYOUT)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw).stdout.strip()


def timed(steps):
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    for step in steps:
        step()
    return time.perf_counter() - start


def fresh(path):
    if os.path.isdir(path):
        subprocess.run(["umount", "-R", path], stderr=subprocess.DEVNULL)
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.unlink(path)


def peer(work, size_mb):
    """The peer pipeline into work/peer.ext4."""
    storage = os.path.join(work, "buildah")
    buildah = ["buildah", "--root", f"{storage}/root", "--runroot", f"{storage}/run", "--storage-driver", "overlay"]
    layout, rootfs, image = (os.path.join(work, n) for n in ("peer-layout", "peer-rootfs", "peer.ext4"))
    ctr = []

    def from_():
        ctr.append(run(buildah + ["from", "--quiet", f"oci:{SHELL_LAYOUT}:latest"]))

    def step():
        run(buildah + ["run", ctr[0], "--", "/bin/sh", "-c", STEP])

    def commit():
        run(buildah + ["commit", "--quiet", ctr[0], "bench-steps"])

    def push():
        run(buildah + ["push", "--quiet", "bench-steps", f"oci:{layout}:latest"])

    def unpack():
        run(["umoci", "raw", "unpack", "--image", f"{layout}:latest", rootfs])

    def mkfs():
        run(["mkfs.ext4", "-q", "-F", "-d", rootfs, image, f"{size_mb}M"])

    took = timed([from_, step, commit, push, unpack, mkfs])
    run(buildah + ["rm", "--all"])
    run(buildah + ["rmi", "--all", "--force"])
    fresh(storage)
    return took, image


def check(image, step):
    subprocess.run(["e2fsck", "-fn", image], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cat = run(["debugfs", "-R", "cat /marker", image])
    doc = run(["debugfs", "-R", "stat /share/doc", image])
    if step:
        assert cat == "x", f"{image}: no marker"
        assert "Inode:" not in doc, f"{image}: /share/doc is still there"
    else:
        assert "Inode:" in doc, f"{image}: /share/doc is missing"


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", os.path.join(ROOT, "Cargo.toml")], check=True)
    builderd = os.path.join(ROOT, "target", "release", "builderd")
    tree = make_tree()
    size, entries = tree_stats(tree)
    make_image(tree)
    make_shell_image()
    print(f"image: 5 gzip layers (bench/build.py's and a shell); tree {size / 1e6:.0f} MB, {entries} entries; step: {STEP}")
    work = os.path.join(WORK, "steps")
    os.makedirs(work, exist_ok=True)
    size_mb = size * 3 // 2 // (1 << 20) + 512
    source = f"oci:{SHELL_LAYOUT}:latest"
    ours = os.path.join(work, "builderd.ext4")
    plain = os.path.join(work, "plain.ext4")
    storage = os.path.join(work, "builderd-steps")
    t_peer, t_ours, t_plain = [], [], []
    for _ in range(RUNS):
        for p in (ours, plain, storage):
            fresh(p)
        took, peer_image = peer(work, size_mb)
        t_peer.append(took)
        check(peer_image, True)
        t_ours.append(timed([lambda: run([builderd, "build", source, "-o", ours, "--steps-dir", storage, "--run", STEP])]))
        check(ours, True)
        t_plain.append(timed([lambda: run([builderd, "build", source, "-o", plain])]))
        check(plain, False)
    fresh(ours)
    warm = timed([lambda: run([builderd, "build", source, "-o", ours, "--steps-dir", storage, "--run", STEP])])
    check(ours, True)
    fresh(storage)

    def line(name, times):
        return f"{name:<58} best {min(times):6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})"

    print(line("buildah from+run+commit+push, umoci unpack, mkfs.ext4 -d", t_peer))
    print(line("builderd build --run (new step storage)", t_ours))
    print(line("builderd build (no step)", t_plain))
    print(f"builderd build --run, the base already in the step storage: {warm:.2f} s")
    print(f"speed-up over the peer pipeline: {min(t_peer) / min(t_ours):.1f}x (goal: at least 3x)")
    print(f"with the step over without: {min(t_ours) / min(t_plain):.2f}x (goal: at most 2x); "
          f"the base already in the step storage: {warm / min(t_plain):.2f}x")
    print("every image passes e2fsck -fn; the marker is in both images with the step, /share/doc in neither")


if __name__ == "__main__":
    main()
