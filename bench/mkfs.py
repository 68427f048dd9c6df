#!/usr/bin/env python3
"""Builds one large tree into ext4 with `mkfs.ext4 -d` and with `builderd mkfs`,
in the same run, and prints both times, the speed-up and the images' sizes.

The tree is a copy of /usr/share and this Python's standard library (at least
500 MB and 40,000 entries), made once under BENCH_DIR (default
/var/tmp/builderd-bench). Each tool runs BENCH_RUNS times (default 3) on a
warm page cache, writing a fresh output each time (fsync included: both tools
flush the image before they exit); the best time of each is compared. Both
images must pass `e2fsck -fn`.

    python3 bench/mkfs.py
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.environ.get("BENCH_DIR", "/var/tmp/builderd-bench")
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def tree_stats(tree):
    size, entries = 0, 1
    for dirpath, dirnames, filenames in os.walk(tree):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            size += st.st_size if not os.path.islink(os.path.join(dirpath, name)) else 0
    return size, entries


def make_tree():
    tree = os.path.join(WORK, "tree")
    if not os.path.isdir(tree):
        partial = tree + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        subprocess.run(["cp", "-a", "/usr/share", os.path.join(partial, "share")], check=True)
        subprocess.run(["cp", "-a", sysconfig.get_paths()["stdlib"], os.path.join(partial, "python-stdlib")], check=True)
        os.rename(partial, tree)
    return tree


def warm(tree):
    for dirpath, _, filenames in os.walk(tree):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass


def timed(cmd, output):
    if os.path.exists(output):
        os.unlink(output)
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def describe(path):
    st = os.stat(path)
    return st.st_size, st.st_blocks * 512


def gib(n):
    return f"{n / (1 << 30):.2f} GiB"


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", os.path.join(ROOT, "Cargo.toml")], check=True)
    builderd = os.path.join(ROOT, "target", "release", "builderd")
    os.makedirs(WORK, exist_ok=True)
    tree = make_tree()
    size, entries = tree_stats(tree)
    if size < 500_000_000 or entries < 40_000:
        sys.exit(f"the tree is too small: {size} bytes, {entries} entries")
    print(f"tree: {tree}: {size / 1e6:.0f} MB of file data, {entries} entries")
    warm(tree)

    ours = os.path.join(WORK, "builderd.ext4")
    theirs = os.path.join(WORK, "mke2fs.ext4")
    # mke2fs needs a size up front: room for its inode tables and journal.
    mke2fs_size = f"{size * 3 // 2 // (1 << 20) + 512}M"
    t_ours, t_theirs = [], []
    for _ in range(RUNS):
        t_theirs.append(timed(["mkfs.ext4", "-q", "-F", "-d", tree, theirs, mke2fs_size], theirs))
        t_ours.append(timed([builderd, "mkfs", tree, "-o", ours], ours))
    for image in (theirs, ours):
        subprocess.run(["e2fsck", "-fn", image], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    (a_theirs, u_theirs), (a_ours, u_ours) = describe(theirs), describe(ours)
    best_theirs, best_ours = min(t_theirs), min(t_ours)
    print(f"mkfs.ext4 -d   best {best_theirs:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in t_theirs)})  image {gib(a_theirs)}, {gib(u_theirs)} allocated")
    print(f"builderd mkfs  best {best_ours:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in t_ours)})  image {gib(a_ours)}, {gib(u_ours)} allocated")
    print(f"speed-up: {best_theirs / best_ours:.1f}x; allocated size builderd / mkfs.ext4: {u_ours / u_theirs:.3f}")
    print("both images pass e2fsck -fn")


if __name__ == "__main__":
    main()
