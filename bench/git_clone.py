#!/usr/bin/env python3
"""The Git client builderd fetches with: the `git` binary against gitoxide's
`gix` on the same large repository, served by `git daemon` on loopback, in
the same run. A shallow clone with its checkout (what a build needs), three
runs each, best and median, and the ratio.

The repository is made once (kept in /var/tmp/builderd-bench/git-large.git)
from the crate sources in ~/.cargo/registry/src: tens of thousands of files,
hundreds of MB, two commits. `gix` is taken from $GIX, else PATH (install:
`cargo install gitoxide --locked --no-default-features --features max-pure`).

    python3 bench/git_clone.py
"""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
WORK = "/var/tmp/builderd-bench"
REPO = os.path.join(WORK, "git-large.git")
SOURCES = os.path.expanduser("~/.cargo/registry/src")


def run(cmd, **kw):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def make_repo():
    if os.path.exists(os.path.join(REPO, "HEAD")):
        return
    tree = tempfile.mkdtemp(prefix="git-large-", dir=WORK)
    shutil.copytree(SOURCES, os.path.join(tree, "src"), symlinks=True)
    g = ["git", "-C", tree, "-c", "user.name=b", "-c", "user.email=b@b"]
    run(g + ["init", "-q", "-b", "main"])
    run(g + ["add", "-A"])
    run(g + ["commit", "-q", "-m", "all sources"])
    # A second commit, so the tip is not the only commit.
    with open(os.path.join(tree, "CHANGES"), "w") as f:
        f.write("one more\n")
    run(g + ["add", "CHANGES"])
    run(g + ["commit", "-q", "-m", "changes"])
    run(["git", "clone", "-q", "--bare", tree, REPO + ".partial"])
    os.rename(REPO + ".partial", REPO)
    shutil.rmtree(tree)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def timed(cmd):
    dest = tempfile.mkdtemp(prefix="clone-", dir=WORK)
    shutil.rmtree(dest)
    # The last run's files are written back first, not during this one.
    os.sync()
    start = time.monotonic()
    run(cmd + [dest])
    took = time.monotonic() - start
    files = sum(len(f) for _, _, f in os.walk(dest))
    shutil.rmtree(dest)
    os.sync()
    return took, files


def main():
    os.makedirs(WORK, exist_ok=True)
    make_repo()
    gix = os.environ.get("GIX") or shutil.which("gix")
    if not gix:
        sys.exit("gix not found: set GIX or install gitoxide (see the docstring)")
    size = subprocess.run(["du", "-sb", REPO], capture_output=True, text=True).stdout.split()[0]
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--export-all", f"--base-path={WORK}", "--reuseaddr",
         "--listen=127.0.0.1", f"--port={port}", WORK],
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"git://127.0.0.1:{port}/git-large.git"
        clients = {
            "git clone --depth 1": ["git", "-c", "gc.auto=0", "clone", "-q", "--depth", "1", url],
            "gix clone --depth 1": [gix, "clone", "--depth", "1", url],
        }
        times = {name: [] for name in clients}
        files = {}
        # Alternating, so both see the same machine.
        for _ in range(RUNS):
            for name, cmd in clients.items():
                took, n = timed(cmd)
                times[name].append(took)
                files[name] = n
        print(f"repository: {REPO} ({int(size) / 2**20:.0f} MiB packed), "
              f"served by git daemon on loopback; {RUNS} runs each, alternating")
        for name in clients:
            t = times[name]
            print(f"{name:22} best {min(t):6.2f} s  median {statistics.median(t):6.2f} s  "
                  f"runs {', '.join(f'{x:.2f}' for x in t)}  files {files[name]}")
        g, x = (statistics.median(times[n]) for n in clients)
        print(f"gix / git (median): {x / g:.2f}x the time of git")
        print(subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip(),
              "|", subprocess.run([gix, "--version"], capture_output=True, text=True).stdout.strip())
    finally:
        os.killpg(daemon.pid, 9)


if __name__ == "__main__":
    main()
