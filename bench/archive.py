#!/usr/bin/env python3
"""A static site from an archive (`builderd build archive:FILE --base-image
REF`: nothing to build, the files laid over the runtime image at /app as one
more layer) against the peer pipeline on the same input, in the same run.

Made once under BENCH_DIR (default /var/tmp/builderd-bench)/archive, seeded:
a runtime image (busybox and Debian's /usr/lib/python3.X, about 50 MB, two
gzip layers) pushed to Debian's docker-registry on loopback; a site (index.html
at its top and 19,999 files, 200 MB: html, css, js, json, md, svg of text, png,
jpg, woff2 of random bytes, lognormal sizes, 600 directories up to six deep)
as a zip (binary kinds stored) and a tar.gz.

Timed BENCH_RUNS times (default 3), alternating, `sync` before each: builderd
(blob cache warmed by one untimed build; its log must say "nothing to build");
the peer: `unzip -q` (or `tar -xzf`) + `umoci raw unpack` of the runtime
pulled beforehand by `skopeo copy` (warm, like the cache) + the files moved
to rootfs/app + `mkfs.ext4 -d`; `builderd build` of the runtime alone; and
the floor: `builderd build` of the runtime image with the site added as a
plain tar layer (the same image, no archive read at all). Printed:
the best of each, the speed-ups (goal for the zip: at least 5x), the site's
build against the runtime's. Every image passes `e2fsck -fn`. Needs root and
the release binary (`cargo build --release`; or BUILDERD=PATH).

Both write to a new journaled ext4 on a loop device (BENCH_LOOP=0: BENCH_DIR
itself). Without a journal (this project's root filesystem has none), ext4
passes over inodes freed in the last 60 s (360 s if dirty), reading each one's
dtime: extracting the site after a build deleted as many files took 6 s, not 1.

    python3 bench/archive.py
"""
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build import gzip_file, sha256_file, start_registry  # noqa: E402
from mkfs import ROOT, WORK, tree_stats  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
BUILDERD = os.environ.get("BUILDERD", os.path.join(ROOT, "target", "release", "builderd"))
DIR = os.path.join(WORK, "archive")
FILES, BYTES, SEED, MTIME = 20_000, 200_000_000, 20_000, 1_700_000_000
TEXT, BINARY = [".html", ".css", ".js", ".json", ".md", ".svg"], [".png", ".jpg", ".woff2"]


def runtime_tree():
    found = sorted(glob.glob("/usr/lib/python3.[0-9]*"), key=lambda p: [int(x) for x in p.rsplit("python", 1)[1].split(".")])
    return found[-1] if found else sys.exit("no /usr/lib/python3.X to make the runtime image of")


def node(name, kind, mode, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, target, MTIME
    return info


def fixed(info):
    info.uid, info.gid, info.uname, info.gname, info.mtime = 0, 0, "", "", MTIME
    return info


def make_runtime(layout):
    """An OCI layout: busybox and /etc, then Debian's Python standard library."""
    if os.path.exists(os.path.join(layout, "index.json")):
        return
    partial, stdlib = layout + ".partial", runtime_tree()
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.join(partial, "blobs", "sha256"))

    def put(name, value=None):
        path = os.path.join(partial, name)
        if value is not None:
            with open(path, "w") as f:
                json.dump(value, f)
        digest, size = sha256_file(path), os.path.getsize(path)
        os.replace(path, os.path.join(partial, "blobs", "sha256", digest[7:]))
        return {"digest": digest, "size": size}

    layers, diff_ids = [], []
    for n, (dirs, files, links) in enumerate([
            (["bin", "etc"], [("/bin/busybox", "bin/busybox"), ("/etc/passwd", "etc/passwd"), ("/etc/group", "etc/group")],
             ["sh", "httpd", "ls", "cat", "wget"]),
            (["usr", "usr/lib"], [(stdlib, stdlib.strip("/"))], [])]):
        tar = os.path.join(partial, f"l{n}.tar")
        with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
            for d in dirs:
                t.addfile(node(d, tarfile.DIRTYPE, 0o755))
            for src, name in files:
                t.add(src, arcname=name, filter=fixed)
            for applet in links:
                t.addfile(node(f"bin/{applet}", tarfile.SYMTYPE, 0o777, "busybox"))
        diff_ids.append(sha256_file(tar))
        gzip_file(tar, tar + ".gz")
        os.unlink(tar)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(f"l{n}.tar.gz")})
    config = put("config", {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
                            "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    manifest = put("manifest", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": layers,
                                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config}})
    with open(os.path.join(partial, "oci-layout"), "w") as f, open(os.path.join(partial, "index.json"), "w") as g:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
                                                     "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, g)
    os.rename(partial, layout)


def make_floor(layout, runtime, tree):
    """The runtime image plus the site under app/ as a third, uncompressed
    layer: what converting an image that already holds the files costs (no
    archive is read), the floor of any archive build that writes and
    checksums the same image."""
    if os.path.exists(os.path.join(layout, "index.json")):
        return
    partial = layout + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(runtime, partial)
    tar = os.path.join(partial, "site.tar")
    subprocess.run(["tar", "--format=pax", "--sort=name", "--numeric-owner", "--owner=0", "--group=0",
                    "--transform", r"s,^\./,app/,;s,^\.$,app,", "-C", tree, "-cf", tar, "."], check=True)
    diff_id, size = sha256_file(tar), os.path.getsize(tar)
    os.replace(tar, os.path.join(partial, "blobs", "sha256", diff_id[7:]))

    def blob(digest):
        return json.load(open(os.path.join(partial, "blobs", "sha256", digest[7:])))

    def put(value):
        path = os.path.join(partial, "new")
        with open(path, "w") as f:
            json.dump(value, f)
        digest, n = sha256_file(path), os.path.getsize(path)
        os.replace(path, os.path.join(partial, "blobs", "sha256", digest[7:]))
        return {"digest": digest, "size": n}

    index = json.load(open(os.path.join(partial, "index.json")))
    manifest = blob(index["manifests"][0]["digest"])
    config = blob(manifest["config"]["digest"])
    config["rootfs"]["diff_ids"].append(diff_id)
    config["config"]["WorkingDir"] = "/app"
    manifest["config"].update(put(config))
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": diff_id, "size": size})
    index["manifests"][0].update(put(manifest))
    with open(os.path.join(partial, "index.json"), "w") as f:
        json.dump(index, f)
    os.rename(partial, layout)


def make_site(tree):
    """FILES files of BYTES bytes in all, from SEED."""
    if os.path.isdir(tree):
        return
    rng, partial = random.Random(SEED), tree + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(3000)]
    pool = (" ".join(rng.choices(vocab + ["<div>", "</div>", "<p>", "</p>", "{", "}", ";\n", "\n"], k=700_000))).encode()
    dirs = ["assets", "assets/css", "assets/js", "assets/img", "assets/fonts", "blog", "docs", "api"]
    while len(dirs) < 600:
        parent = rng.choice(dirs)
        if parent.count("/") < 5:
            dirs.append(f"{parent}/{rng.choice(vocab)}-{len(dirs)}")
    kinds = []
    for i in range(FILES - 1):
        binary = rng.random() < 0.3
        size = min(4e6, rng.lognormvariate(9.2, 1.2) if binary else rng.lognormvariate(8.3, 1.0))
        kinds.append((f"{rng.choice(dirs)}/{rng.choice(vocab)}-{i}{rng.choice(BINARY if binary else TEXT)}", binary, size))
    scale = (BYTES - 4096) / sum(k[2] for k in kinds)
    for d in dirs:
        os.makedirs(os.path.join(partial, d), exist_ok=True)
    with open(os.path.join(partial, "index.html"), "wb") as f:
        f.write(b"<!doctype html>\n<title>bench</title>\n" + pool[:4059])
    for name, binary, size in kinds:
        n = min(len(pool) - 1, max(1, int(size * scale)))
        with open(os.path.join(partial, name), "wb") as f:
            f.write(rng.randbytes(n) if binary else pool[(start := rng.randrange(len(pool) - n)):start + n])
    for dirpath, _, names in sorted(os.walk(partial), reverse=True):
        for name in names + [""]:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME))
    os.rename(partial, tree)


def make_archives(tree, zip_path, tgz_path):
    paths = []
    for dirpath, dirnames, names in os.walk(tree):
        dirnames.sort()
        rel = os.path.relpath(dirpath, tree)
        paths += ([rel + "/"] if rel != "." else []) + sorted(os.path.normpath(os.path.join(rel, n)) for n in names)
    if not os.path.exists(zip_path):
        subprocess.run(["zip", "-q", "-X", "-n", ":".join(BINARY), "-@", zip_path + ".partial"], cwd=tree,
                       input="\n".join(paths).encode(), check=True)
        os.rename(zip_path + ".partial", zip_path)
    if not os.path.exists(tgz_path):
        subprocess.run(["bash", "-o", "pipefail", "-c", 'tar --format=pax --sort=name --numeric-owner --owner=0 --group=0 '
                        f'--mtime=@{MTIME} --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$1" -cf - '
                        f'{" ".join(sorted(os.listdir(tree)))} | gzip -6 -n > "$2"', "-", tree, tgz_path + ".partial"], check=True)
        os.rename(tgz_path + ".partial", tgz_path)


def scratch(mnt):
    """A new journaled ext4 mounted at mnt."""
    subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL)
    fresh(mnt, mnt + ".img")
    os.makedirs(mnt)
    subprocess.run(["truncate", "-s", "8G", mnt + ".img"], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", mnt + ".img"], check=True)
    subprocess.run(["mount", "-o", "loop", mnt + ".img", mnt], check=True)


def fresh(*paths):
    for p in paths:
        shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p) if os.path.exists(p) else None


def timed(steps):
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    for step in steps:
        step() if callable(step) else subprocess.run(step, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def check(image, app=True):
    subprocess.run(["e2fsck", "-fn", image], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stat = subprocess.run(["debugfs", "-R", "stat /app/index.html", image], capture_output=True, text=True).stdout
    assert ("Inode:" in stat) == app, f"{image}: /app/index.html {'missing' if app else 'there'}"


def main():
    if not os.access(BUILDERD, os.X_OK):
        sys.exit(f"{BUILDERD}: build it first (cargo build --release)")
    os.makedirs(DIR, exist_ok=True)
    layout, tree, zip_path, tgz_path, floor_layout = (os.path.join(DIR, n) for n in (
        "runtime-layout", "site", "site.zip", "site.tar.gz", "floor-layout"))
    make_runtime(layout)
    make_site(tree)
    make_archives(tree, zip_path, tgz_path)
    make_floor(floor_layout, layout, tree)
    (data, entries), (rt_data, rt_entries) = tree_stats(tree), tree_stats(runtime_tree())
    manifest = json.load(open(os.path.join(layout, "blobs", "sha256", json.load(open(os.path.join(layout, "index.json")))
                                           ["manifests"][0]["digest"][7:])))
    work, loop = os.path.join(DIR, "run"), os.environ.get("BENCH_LOOP", "1") != "0"
    print(f"runtime image: busybox and {runtime_tree()} in 2 gzip layers, "
          f"{sum(l['size'] for l in manifest['layers']) / 1e6:.0f} MB compressed; {rt_data / 1e6:.0f} MB, {rt_entries} entries")
    print(f"site: {FILES} files in {entries - 1 - FILES} directories, {data / 1e6:.0f} MB; zip {os.path.getsize(zip_path) / 1e6:.0f} MB, "
          f"tar.gz {os.path.getsize(tgz_path) / 1e6:.0f} MB; written to {'a new journaled ext4 on a loop device' if loop else work}")
    scratch(work) if loop else (fresh(work), os.makedirs(work))
    registry, addr = start_registry()
    cache, peer_layout, files, rootfs = (os.path.join(work, n) for n in ("cache", "peer-layout", "files", "rootfs"))
    size = f"{(data + rt_data) * 3 // 2 // (1 << 20) + 512}M"  # mke2fs needs one up front, as bench/build.py's peer
    ref, floor_ref = f"{addr}/archive-runtime:v1", f"{addr}/archive-floor:v1"
    t, stages = {k: [] for k in ("peer zip", "ours zip", "peer tgz", "ours tgz", "runtime", "floor")}, {}
    try:
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{ref}"], check=True)
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{floor_layout}:v1", f"docker://{floor_ref}"],
                       check=True)
        subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{peer_layout}:v1"], check=True)

        def ours(source, out, *extra):
            fresh(out, out + ".json")
            o = []
            took = timed([lambda: o.append(subprocess.run([BUILDERD, "build", source, "-o", out, "--cache-dir", cache, *extra],
                                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))])
            meta = json.load(open(out + ".json")) if not o[0].returncode else sys.exit(f"builderd build {source}:\n{o[0].stdout}")
            assert not extra or "nothing to build" in o[0].stdout and meta["archive"]["runtime"] == "static" \
                and meta["archive"]["built"] is False, o[0].stdout
            stages[took] = meta["timings_ms"]
            return took

        def peer(extract, out):
            fresh(files, rootfs, out)
            os.makedirs(files)
            return timed([extract, ["umoci", "raw", "unpack", "--image", f"{peer_layout}:v1", rootfs],
                          lambda: os.rename(files, os.path.join(rootfs, "app")),
                          ["mkfs.ext4", "-q", "-F", "-d", rootfs, out, size]])

        site = ("--base-image", ref)
        ours(f"archive:{zip_path}", os.path.join(work, "warm.ext4"), *site)  # warms the blob cache
        ours(floor_ref, os.path.join(work, "floor.ext4"))
        for _ in range(RUNS):
            t["peer zip"].append(peer(["unzip", "-q", zip_path, "-d", files], os.path.join(work, "peer-zip.ext4")))
            t["ours zip"].append(ours(f"archive:{zip_path}", os.path.join(work, "zip.ext4"), *site))
            t["peer tgz"].append(peer(["tar", "-xzf", tgz_path, "-C", files], os.path.join(work, "peer-tgz.ext4")))
            t["ours tgz"].append(ours(f"archive:{tgz_path}", os.path.join(work, "tgz.ext4"), *site))
            t["runtime"].append(ours(ref, os.path.join(work, "runtime.ext4")))
            t["floor"].append(ours(floor_ref, os.path.join(work, "floor.ext4")))
        for name in ("peer-zip", "zip", "peer-tgz", "tgz", "warm", "runtime", "floor"):
            check(os.path.join(work, f"{name}.ext4"), name != "runtime")
    finally:
        registry.terminate()
        registry.wait()
        if loop:
            subprocess.run(["umount", work], check=True)
            os.unlink(work + ".img")

    for name, key in [("unzip + umoci raw unpack + mkfs.ext4 -d", "peer zip"), ("builderd build archive:site.zip", "ours zip"),
                      ("tar -xzf + umoci raw unpack + mkfs.ext4 -d", "peer tgz"), ("builderd build archive:site.tar.gz", "ours tgz"),
                      ("builderd build of the runtime image alone", "runtime"),
                      ("floor: the same image from an image layer", "floor")]:
        print(f"{name:<44} best {min(t[key]):6.2f} s  (runs: {', '.join(f'{x:.2f}' for x in t[key])})")
    b = {k: min(v) for k, v in t.items()}
    print(f"speed-up, zip: {b['peer zip'] / b['ours zip']:.1f}x (goal: at least 5x); tar.gz: {b['peer tgz'] / b['ours tgz']:.1f}x")
    print(f"the floor (the site already a plain tar layer of the image: no archive read) sets the most any archive "
          f"build could reach here: {b['peer zip'] / b['floor']:.1f}x against the zip's peer")
    print("builderd's stages, best zip run: " + ", ".join(f"{k} {v} ms" for k, v in stages[b["ours zip"]].items() if v))
    print(f"a static site over the runtime image takes {b['ours zip']:.2f} s (zip); converting the runtime image alone "
          f"{b['runtime']:.2f} s: the archive's {data / 1e6:.0f} MB add {b['ours zip'] - b['runtime']:.2f} s")
    print('every image passes e2fsck -fn, /app/index.html in each site image; every site build said "nothing to build"')


if __name__ == "__main__":
    main()
