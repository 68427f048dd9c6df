#!/usr/bin/env python3
"""A rebuild with kept layers (`--preserve-layers`) whose lower layers are
unchanged, against converting the changed layer alone, in the same run.

The bench image of bench/build.py (four gzip layers, over 500 MB and 40,000
entries) is built once with `--preserve-layers` into a layer store. Then:

- `rebuild`: the same image with only its top layer changed (one file added
  to it), built with `--preserve-layers` over a copy of that store (the
  three lower layers are found there; only the new top layer is converted);
- `alone`: an image of that changed top layer only, built as usual.

Both come from Debian's docker-registry on loopback with a warm blob cache
(each is built once before it is timed). Printed: the best of BENCH_RUNS
(default 3) times of each and their ratio; the goal is at most 1.5x. Every
disk must pass `e2fsck -fn`.

    python3 bench/preserve_layers.py
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build import LAYOUT, make_image, start_registry  # noqa: E402
from mkfs import ROOT, WORK, make_tree  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def blob(layout, digest):
    return os.path.join(layout, "blobs", "sha256", digest.split(":")[1])


def put(layout, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(blob(layout, digest), "wb") as f:
        f.write(data)
    return digest


def variant(name, layers_of):
    """An OCI layout beside the bench image's, sharing its blobs, whose
    layers are `layers_of(manifest layers, diff_ids)`."""
    out = os.path.join(WORK, f"layout-{name}")
    if os.path.exists(os.path.join(out, "index.json")):
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(LAYOUT, out, copy_function=os.link)
    index = json.load(open(os.path.join(out, "index.json")))
    manifest = json.load(open(blob(out, index["manifests"][0]["digest"])))
    config = json.load(open(blob(out, manifest["config"]["digest"])))
    layers, diff_ids = layers_of(out, manifest["layers"], config["rootfs"]["diff_ids"])
    config["rootfs"]["diff_ids"] = diff_ids
    cdata = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": put(out, cdata), "size": len(cdata)}
    manifest["layers"] = layers
    mdata = json.dumps(manifest).encode()
    index["manifests"][0] = {**index["manifests"][0], "digest": put(out, mdata), "size": len(mdata)}
    # A new file: the copied one is a link to the bench image's own.
    with open(os.path.join(out, "index.json.new"), "w") as f:
        json.dump(index, f)
    os.replace(os.path.join(out, "index.json.new"), os.path.join(out, "index.json"))
    return out


def changed_top(layout, layers, diff_ids):
    """The top layer with one file more."""
    with gzip.open(blob(layout, layers[-1]["digest"])) as f:
        old = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(old)) as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        note = b"rebuilt with only the top layer changed\n"
        info = tarfile.TarInfo("python-stdlib/REBUILT")
        info.size, info.mtime = len(note), 1_700_000_000
        dst.addfile(info, io.BytesIO(note))
    tar = buf.getvalue()
    gz = gzip.compress(tar, compresslevel=6, mtime=0)
    layer = {**layers[-1], "digest": put(layout, gz), "size": len(gz)}
    return layers[:-1] + [layer], diff_ids[:-1] + ["sha256:" + hashlib.sha256(tar).hexdigest()]


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", os.path.join(ROOT, "Cargo.toml")], check=True)
    builderd = os.path.join(ROOT, "target", "release", "builderd")
    make_image(make_tree())
    v2 = variant("v2", changed_top)
    def only_top(out, layers, diff_ids):
        layers, diff_ids = changed_top(out, layers, diff_ids)
        return layers[-1:], diff_ids[-1:]

    alone = variant("alone", only_top)
    registry, addr = start_registry()
    work = os.path.join(WORK, "preserve-layers")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    cache = os.path.join(work, "cache")
    store = os.path.join(work, "store")
    try:
        for layout, tag in [(LAYOUT, "latest"), (v2, "v2"), (alone, "alone")]:
            subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest",
                            f"docker://{addr}/bench:{tag}"], check=True)

        def build(tag, out, *extra):
            start = time.perf_counter()
            subprocess.run([builderd, "build", f"docker://{addr}/bench:{tag}", "-o", out, "--cache-dir", cache, *extra],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - start

        def check(out):
            meta = json.load(open(out + ".json"))
            disks = [out] + [d["file"] for d in meta.get("layer_disks", [])]
            for d in disks:
                subprocess.run(["e2fsck", "-fn", d], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return meta

        first = build("latest", os.path.join(work, "first.ext4"), "--preserve-layers", "--layer-store", store)
        check(os.path.join(work, "first.ext4"))
        print(f"the bench image with its 4 layers kept, first build: {first:.2f} s")
        rebuild, single = [], []
        for i in range(RUNS + 1):
            copy = os.path.join(work, f"store-{i}")
            subprocess.run(["cp", "-al", store, copy], check=True)
            out = os.path.join(work, f"rebuild-{i}.ext4")
            t = build("v2", out, "--preserve-layers", "--layer-store", copy)
            meta = check(out)
            converted = [d["converted"] for d in meta["layer_disks"]]
            assert converted == [False, False, False, True], converted
            t_alone = build("alone", os.path.join(work, f"alone-{i}.ext4"))
            check(os.path.join(work, f"alone-{i}.ext4"))
            if i > 0:  # the first of each warms the blob cache
                rebuild.append(t)
                single.append(t_alone)
        top = meta["layer_disks"][-1]
        print(f"changed top layer: {top['entries']} entries, {top['whiteouts']} whiteouts, "
              f"{top['opaque_dirs']} opaque directories")
        r, a = min(rebuild), min(single)
        print(f"rebuild, 3 of 4 layers from the store (best of {RUNS}): {r * 1000:.0f} ms")
        print(f"converting the changed layer alone (best of {RUNS}):   {a * 1000:.0f} ms")
        print(f"rebuild / layer alone: {r / a:.2f}x (goal: at most 1.5x)")
    finally:
        registry.terminate()


if __name__ == "__main__":
    main()
