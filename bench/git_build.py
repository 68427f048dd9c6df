#!/usr/bin/env python3
"""A Node app from Git, built into a rootfs: first build and rebuild after one
source change, builderd against the peer pipeline, in the same run.

The app (no Containerfile: builderd detects Node and generates one) depends
on 20 packages of 10 files each (200 dependency files) published to
verdaccio, which runs in a network namespace of its own at 198.51.100.10
(TEST-NET-2, routed to it from here) so that builderd's egress network
reaches it. The base image is the tests' Debian 12 with nodejs and npm
(scripts/debian-tree node-python: made by debootstrap once, kept in
/var/tmp/builderd-tests), pushed to a docker-registry on loopback.

- builderd: `builderd build git:REPO#main --cache-dependencies --network
  egress` (its layer cache is on: the rebuild reuses the install).
- the peer: `git clone` + `buildah build` of the same Containerfile (the one
  builderd generated, read from its OUT.json) + `buildah push oci:` +
  `umoci raw unpack` + `mkfs.ext4 -d`; buildah as a person runs it
  (`--network host`, its own storage, no `--layers`), and once more with
  `--layers` for reference.

Each side builds once (first), then the app's index.js changes in a new
commit and each side builds again (rebuild); BENCH_RUNS rebuilds each
(default 3), alternating, best and median. Needs root, what scripts/setup
installs, and debootstrap's base (made here if missing).

    python3 bench/git_build.py
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
WORK = "/var/tmp/builderd-bench/git-build"
BUILDERD = os.path.join(ROOT, "target/release/builderd")
VERDACCIO = os.path.join(ROOT, "crates/cli/tests/clients/node_modules/.bin/verdaccio")
MKIMAGE = os.path.join(ROOT, "crates/cli/tests/fixtures/mkimage.py")
INDEX = "198.51.100.10"
NS = "bdbench"
PACKAGES, FILES = 20, 10


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def base_tar():
    """The tests' Debian base (scripts/debian-tree, made here if missing)."""
    return run([os.path.join(ROOT, "scripts/debian-tree"), "node-python"]).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url):
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} did not answer")


def start_registry():
    port = free_port()
    config = os.path.join(WORK, "registry.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {WORK}/registry}}}}\n"
                f"http: {{addr: 127.0.0.1:{port}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(f"http://127.0.0.1:{port}/v2/")
    return proc, f"127.0.0.1:{port}"


def netns_up():
    """A namespace joined by a veth pair, holding 198.51.100.10."""
    netns_down()
    ip = lambda *a: run(["ip", *a])
    ip("netns", "add", NS)
    ip("link", "add", "bdbo", "type", "veth", "peer", "name", "bdbi")
    ip("link", "set", "bdbi", "netns", NS)
    ip("addr", "add", "10.232.0.1/24", "dev", "bdbo")
    ip("link", "set", "bdbo", "up")
    ip("-n", NS, "addr", "add", "10.232.0.2/24", "dev", "bdbi")
    ip("-n", NS, "addr", "add", f"{INDEX}/32", "dev", "bdbi")
    ip("-n", NS, "link", "set", "bdbi", "up")
    ip("-n", NS, "link", "set", "lo", "up")
    ip("-n", NS, "route", "add", "default", "via", "10.232.0.1")
    ip("route", "add", f"{INDEX}/32", "dev", "bdbo")


def netns_down():
    subprocess.run(["ip", "route", "del", f"{INDEX}/32"], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)


def start_verdaccio():
    config = os.path.join(WORK, "verdaccio.yaml")
    with open(config, "w") as f:
        f.write(f"storage: {WORK}/npm\nauth:\n  htpasswd:\n    file: {WORK}/htpasswd\n    max_users: 10\n"
                "uplinks: {}\npackages:\n  '**':\n    access: $all\n    publish: $authenticated\n"
                "log: {type: stdout, format: pretty, level: warn}\n")
    proc = subprocess.Popen(["ip", "netns", "exec", NS, VERDACCIO, "--config", config, "--listen", "0.0.0.0:4873"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(f"http://{INDEX}:4873/-/ping")
    request = urllib.request.Request(
        f"http://{INDEX}:4873/-/user/org.couchdb.user:bench", method="PUT",
        data=json.dumps({"name": "bench", "password": "bench-password"}).encode(),
        headers={"content-type": "application/json"})
    token = json.load(urllib.request.urlopen(request))["token"]
    return proc, token


def publish(token):
    """20 packages of 10 files each; the app depends on all of them."""
    deps = {}
    for p in range(PACKAGES):
        name = f"bench-dep-{p:02d}"
        d = os.path.join(WORK, "packages", name)
        os.makedirs(os.path.join(d, "lib"), exist_ok=True)
        with open(os.path.join(d, "package.json"), "w") as f:
            json.dump({"name": name, "version": "1.0.0", "main": "index.js", "license": "MIT"}, f)
        with open(os.path.join(d, "index.js"), "w") as f:
            f.write("module.exports = [" + ", ".join(f"require('./lib/part{i}')" for i in range(FILES - 2)) + "];\n")
        for i in range(FILES - 2):
            with open(os.path.join(d, "lib", f"part{i}.js"), "w") as f:
                f.write(f"module.exports = {{ name: '{name}', part: {i}, text: '{'x' * 2000}' }};\n")
        run(["npm", "publish", "--loglevel=error", "--registry", f"http://{INDEX}:4873/",
             f"--//{INDEX}:4873/:_authToken={token}"], cwd=d,
            env={**os.environ, "npm_config_cache": os.path.join(WORK, "npm-cache")})
        deps[name] = "1.0.0"
    return deps


def make_repo(deps):
    repo, tree = os.path.join(WORK, "app.git"), os.path.join(WORK, "app-work")
    g = ["git", "-C", tree, "-c", "user.name=b", "-c", "user.email=b@b"]
    os.makedirs(tree)
    with open(os.path.join(tree, "package.json"), "w") as f:
        json.dump({"name": "app", "version": "1.0.0", "engines": {"node": "18"}, "dependencies": deps}, f)
    write_app(tree, 0)
    run(g + ["init", "-q", "-b", "main"])
    run(g + ["add", "-A"])
    run(g + ["commit", "-q", "-m", "app"])
    run(["git", "clone", "-q", "--bare", tree, repo])
    return repo, tree, g


def write_app(tree, n):
    deps = [f"bench-dep-{p:02d}" for p in range(PACKAGES)]
    with open(os.path.join(tree, "index.js"), "w") as f:
        f.write(f"const n = {json.dumps(deps)}.map((d) => require(d).length);\n"
                f"console.log('change {n}', n.reduce((a, b) => a + b, 0));\n")


def change(tree, g, repo, n):
    write_app(tree, n)
    run(g + ["commit", "-q", "-am", f"change {n}"])
    run(g + ["push", "-q", repo, "main"])


def timed(cmds):
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    for cmd in cmds:
        cmd()
    return time.perf_counter() - start


def main():
    if os.geteuid() != 0:
        sys.exit("run as root (buildah, network namespaces)")
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    tar = base_tar()
    registry, addr = start_registry()
    netns_up()
    verdaccio = None
    try:
        verdaccio, token = start_verdaccio()
        deps = publish(token)
        layout = os.path.join(WORK, "base-layout")
        spec = {"dir": layout, "tag": "v1", "history": True,
                "layers": [{"compression": "none", "tar": tar}],
                "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}}
        run([sys.executable, MKIMAGE], input=json.dumps(spec))
        base = f"{addr}/debian-node:12"
        run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{base}"])
        table = os.path.join(WORK, "base-images.json")
        with open(table, "w") as f:
            json.dump({"node": {"18": base}}, f)
        repo, tree, g = make_repo(deps)
        steps = os.path.join(WORK, "steps")
        out = os.path.join(WORK, "ours.ext4")

        logs = []

        def ours():
            logs.append(run([BUILDERD, "build", f"git:{repo}#main", "-o", out, "--steps-dir", steps,
                             "--base-images", table, "--network", "egress", "--cache-dependencies",
                             "--build-arg", f"NPM_CONFIG_REGISTRY=http://{INDEX}:4873/"]).stderr)

        # The peer's inputs: the Containerfile builderd generated, with the
        # registry on loopback as plain HTTP.
        first_ours = timed([ours])
        containerfile = os.path.join(WORK, "Containerfile")
        with open(out + ".json") as f:
            generated = json.load(f)["generated"]["containerfile"]
        with open(containerfile, "w") as f:
            f.write(generated)
        registries = os.path.join(WORK, "registries.conf")
        with open(registries, "w") as f:
            f.write(f'[[registry]]\nlocation = "{addr}"\ninsecure = true\n')
        peer_storage = os.path.join(WORK, "peer-storage")

        def peer(layers):
            def build():
                clone = os.path.join(WORK, "peer-clone")
                shutil.rmtree(clone, ignore_errors=True)
                for d in ("peer-layout", "peer-rootfs"):
                    shutil.rmtree(os.path.join(WORK, d), ignore_errors=True)
                run(["git", "clone", "-q", repo, clone])
                b = ["buildah", "--root", peer_storage, "--runroot", peer_storage + "-run"]
                env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": registries}
                run(b + ["build", "--network", "host", f"--layers={str(layers).lower()}",
                         "--build-arg", f"NPM_CONFIG_REGISTRY=http://{INDEX}:4873/",
                         "-f", containerfile, "-t", "localhost/peer", clone], env=env)
                run(b + ["push", "-q", "localhost/peer", f"oci:{WORK}/peer-layout:latest"], env=env)
                run(["umoci", "raw", "unpack", "--image", f"{WORK}/peer-layout:latest", f"{WORK}/peer-rootfs"])
                size = int(run(["du", "-sb", f"{WORK}/peer-rootfs"]).stdout.split()[0])
                image = os.path.join(WORK, "peer.ext4")
                if os.path.exists(image):
                    os.remove(image)
                run(["mkfs.ext4", "-q", "-F", "-d", f"{WORK}/peer-rootfs", image, f"{size * 3 // 2 // 1024 + 65536}k"])
            return build

        first_peer = timed([peer(False)])
        first_layers = timed([peer(True)])
        rebuilds = {"builderd": [], "peer": [], "peer --layers": []}
        for n in range(1, RUNS + 1):
            for name, build in (("builderd", ours), ("peer", peer(False)), ("peer --layers", peer(True))):
                change(tree, g, repo, f"{n}-{name}")
                rebuilds[name].append(timed([build]))
        for image in (out, os.path.join(WORK, "peer.ext4")):
            run(["e2fsck", "-fn", image])
        cached = all("Using cache" in log for log in logs[1:]) and "Using cache" not in logs[0]
    finally:
        if verdaccio:
            verdaccio.terminate()
            verdaccio.wait()
        netns_down()
        registry.terminate()
        registry.wait()

    print(f"a Node app with {PACKAGES} dependencies ({PACKAGES * FILES} files) from verdaccio, "
          f"on a {os.path.getsize(tar) / 1e6:.0f} MB Debian base; rebuilds after one source change, {RUNS} each")
    print(f"{'':>14}  {'first':>8}  {'rebuild best':>12}  {'median':>8}  runs")
    for name, first in (("builderd", first_ours), ("peer", first_peer), ("peer --layers", first_layers)):
        t = rebuilds[name]
        print(f"{name:>14}  {first:7.2f}s  {min(t):11.2f}s  {statistics.median(t):7.2f}s  "
              + ", ".join(f"{x:.2f}" for x in t))
    ours_median = statistics.median(rebuilds["builderd"])
    print(f"rebuild: builderd {statistics.median(rebuilds['peer']) / ours_median:.2f}x faster than the peer, "
          f"{statistics.median(rebuilds['peer --layers']) / ours_median:.2f}x faster than the peer with --layers "
          f"(medians); builderd's rebuild logs show the install cached (its first build's not): {cached}")


if __name__ == "__main__":
    main()
