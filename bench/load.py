#!/usr/bin/env python3
"""A load test of `builderd serve`: 200 CreateBuild calls from 10 tenants at
once, against an image in a registry on loopback (Debian's docker-registry).

It starts the registry and a server on a fresh data directory, makes the
tenants (five pro, five enterprise: 3 and 10 concurrent builds), pushes a
small image, and fires every call at the same moment (curl, one process a tenant, its
calls in parallel).
Then it waits for all builds to end and checks, from the server's own
records (ListBuilds with each build's state transitions):

- none lost: every accepted id is listed under its tenant, and nothing else;
- none duplicated: 200 distinct ids, each listed once, each run once
  (one RUNNING transition) and COMPLETED;
- per-tenant concurrency never above the tier's limit, and never more than
  --workers builds at once over all tenants (the intervals from RUNNING to
  the final state, swept in time order; an end and a start in the same
  millisecond count the end first, which is the order the server writes them).

Printed: CreateBuild latency p50/p90/p99/max, the calls' wall time, the time
until the last build ended, the peak concurrency seen per tier and overall.

    python3 bench/load.py [--calls 200] [--tenants 10] [--workers 32]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITS = {"pro": 3, "enterprise": 10}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, what):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start")


def start_registry(work):
    port = free_port()
    config = os.path.join(work, "registry.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {work}/registry}}}}\n"
                f"http: {{addr: 127.0.0.1:{port}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, "the registry")
    return proc, f"127.0.0.1:{port}"


def request(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, dict(resp.headers), resp.read()


def push_blob(registry, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _, headers, _ = request("POST", f"http://{registry}/v2/{repo}/blobs/uploads/")
    location = headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    request("PUT", f"{location}{sep}digest={digest}", data, {"Content-Type": "application/octet-stream"})
    return digest


def push_image(registry, repo, tag):
    """One gzip layer of a few small files and a 1 MiB one."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in [("etc/hostname", b"load\n"), ("app/run.sh", b"#!/bin/sh\necho hi\n"),
                           ("app/data.bin", os.urandom(1 << 20))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            info.mtime = 1700000000
            t.addfile(info, io.BytesIO(data))
    layer_tar = raw.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    layer_digest = push_blob(registry, repo, layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/app/run.sh"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]}}).encode()
    config_digest = push_blob(registry, repo, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": len(layer)}]}).encode()
    request("PUT", f"http://{registry}/v2/{repo}/manifests/{tag}", manifest,
            {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})


def call(server, method, key, body):
    status, _, data = request("POST", f"{server}/builder.v1.BuilderService/{method}", json.dumps(body).encode(),
                              {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    return json.loads(data)


def create_tenant(builderd, data, name, tier):
    """`builderd tenant create`: the new key."""
    out = subprocess.run([builderd, "tenant", "create", name, "--tier", tier, "--data-dir", data],
                         check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    return out.strip().splitlines()[-1]


def start_server(builderd, data, *args):
    """`builderd serve` on a free loopback port, once /healthz answers: (process, URL)."""
    port = free_port()
    # The registry is on loopback: the builds may pull from it.
    server = subprocess.Popen([builderd, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                               "--allow-private-registries", *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            if request("GET", f"{url}/healthz")[0] == 200:
                return server, url
        except OSError:
            time.sleep(0.05)
    server.kill()
    sys.exit("the server did not get ready")


def percentile(sorted_values, p):
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


def peak_overlap(intervals):
    """The most intervals (start, end) open at once; ends first on ties."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak


def ms(ts):
    """A proto3 JSON Timestamp (RFC 3339, UTC) to milliseconds."""
    from datetime import datetime
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000 + 0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--tenants", type=int, default=10)
    ap.add_argument("--workers", type=int, default=32,
                    help="the global limit; above the tiers' so that theirs bind")
    ap.add_argument("--within", type=float, default=900, help="seconds for all builds to end")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", os.path.join(ROOT, "Cargo.toml")], check=True)
    builderd = os.path.join(ROOT, "target", "release", "builderd")
    work = tempfile.mkdtemp(prefix="builderd-load-")
    registry = server = None
    try:
        registry, reg = start_registry(work)
        push_image(reg, "load/app", "v1")
        data = os.path.join(work, "data")
        tenants = []
        for i in range(args.tenants):
            tier = "pro" if i % 2 == 0 else "enterprise"
            name = f"tenant-{i:02d}"
            tenants.append((name, tier, create_tenant(builderd, data, name, tier)))
        server, url = start_server(builderd, data, "--workers", str(args.workers))

        config = {"config": {"source": {"docker_image": {"image_uri": f"{reg}/load/app:v1"}},
                             "target": {"microvm_rootfs": {"format": "ext4", "init_strategy": "INIT_STRATEGY_DIRECT_EXEC"}}}}
        body = os.path.join(work, "create.json")
        with open(body, "w") as f:
            json.dump(config, f)
        # curl, one process a tenant, all its calls in parallel (a C client:
        # a Python one with 200 threads measures its own GIL).
        per_tenant = [args.calls // len(tenants) + (i < args.calls % len(tenants)) for i in range(len(tenants))]

        def burst(path, extra):
            """The calls, all at once; answers [(tenant, seconds, status, body)]
            and the wall time."""
            out_dir = tempfile.mkdtemp(dir=work)
            procs = []
            t0 = time.perf_counter()
            for (name, _, key), n in zip(tenants, per_tenant):
                if n == 0:
                    continue
                procs.append((name, subprocess.Popen(
                    ["curl", "-sS", "--no-progress-meter", "--parallel", "--parallel-immediate", "--parallel-max", str(n),
                     "-H", f"Authorization: Bearer {key}", *extra,
                     "-w", "%{time_total} %{http_code} %{filename_effective}\n",
                     "-o", os.path.join(out_dir, f"{name}.#1"), f"{url}{path}?call=[1-{n}]"],
                    stdout=subprocess.PIPE, text=True)))
            out = []
            for name, p in procs:
                stdout, _ = p.communicate()
                for line in stdout.splitlines():
                    seconds, status, file = line.split(" ", 2)
                    with open(file, "rb") as f:
                        out.append((name, float(seconds), status, f.read()))
            return out, time.perf_counter() - t0

        # The client's and HTTP's own cost: the same burst of calls that do nothing.
        baseline, _ = burst("/healthz", [])
        started = time.perf_counter()
        timed, calls_wall = burst("/builder.v1.BuilderService/CreateBuild",
                                  ["-X", "POST", "-H", "Content-Type: application/json", "-d", f"@{body}"])
        results = []
        for name, seconds, status, answer in timed:
            if status != "200":
                results.append((name, None, seconds, f"{status} {answer.decode(errors='replace')}"))
            else:
                results.append((name, json.loads(answer).get("buildId"), seconds, None))
        if len(results) != args.calls:
            sys.exit(f"{len(results)} of {args.calls} CreateBuild calls answered")
        errors = [r for r in results if r[3] or not r[1]]
        if errors:
            sys.exit(f"{len(errors)} CreateBuild calls failed, e.g. {errors[0]}")
        accepted = {}
        for name, build_id, _, _ in results:
            accepted.setdefault(name, []).append(build_id)

        # Wait until every build has ended; read each tenant's builds back.
        deadline = time.time() + args.within
        while True:
            listed = {name: call(url, "ListBuilds", key, {"page_size": 500}) for name, _, key in tenants}
            active = sum(1 for l in listed.values() for b in l.get("builds", [])
                         if b["state"] not in ("BUILD_STATE_COMPLETED", "BUILD_STATE_FAILED", "BUILD_STATE_CANCELLED", "BUILD_STATE_TIMEOUT"))
            if active == 0:
                break
            if time.time() > deadline:
                sys.exit(f"{active} builds still active after {args.within} s")
            time.sleep(0.5)
        all_done = time.perf_counter() - started

        problems = []
        ids = [r[1] for r in results]
        if len(set(ids)) != len(ids):
            problems.append(f"duplicate build ids: {len(ids) - len(set(ids))}")
        intervals_all, peaks = [], {}
        for name, tier, _ in tenants:
            builds = listed[name].get("builds", [])
            got = [b["buildId"] for b in builds]
            if sorted(got) != sorted(accepted.get(name, [])):
                problems.append(f"{name}: accepted {len(accepted.get(name, []))} builds, lists {len(got)}")
            if int(listed[name].get("totalCount", 0)) != len(got):
                problems.append(f"{name}: total_count {listed[name].get('totalCount')} but {len(got)} listed")
            intervals = []
            for b in builds:
                if b["state"] != "BUILD_STATE_COMPLETED":
                    problems.append(f"{b['buildId']}: {b['state']} {b.get('error', {})}")
                    continue
                t = b.get("transitions", [])
                runs = [ms(x["at"]) for x in t if x["state"] == "BUILD_STATE_RUNNING"]
                ends = [ms(x["at"]) for x in t if x["state"] == "BUILD_STATE_COMPLETED"]
                if len(runs) != 1 or len(ends) != 1:
                    problems.append(f"{b['buildId']}: ran {len(runs)} times, completed {len(ends)} times")
                    continue
                intervals.append((runs[0], ends[0]))
            peak = peak_overlap(intervals)
            peaks.setdefault(tier, []).append(peak)
            if peak > LIMITS[tier]:
                problems.append(f"{name} ({tier}): {peak} builds ran at once, over its limit of {LIMITS[tier]}")
            intervals_all += intervals
        overall = peak_overlap(intervals_all)
        if overall > args.workers:
            problems.append(f"{overall} builds ran at once over all tenants, more than --workers {args.workers}")

        lat = sorted(r[2] * 1000 for r in results)
        print(f"{args.calls} CreateBuild calls from {args.tenants} tenants at once "
              f"(pro: {LIMITS['pro']} concurrent, enterprise: {LIMITS['enterprise']}; --workers {args.workers})")
        print(f"CreateBuild latency: p50 {percentile(lat, 50):.1f} ms, p90 {percentile(lat, 90):.1f} ms, "
              f"p99 {percentile(lat, 99):.1f} ms, max {lat[-1]:.1f} ms; all calls answered in {calls_wall:.2f} s")
        base = sorted(b[1] * 1000 for b in baseline)
        if any(b[2] != "200" for b in baseline):
            sys.exit("GET /healthz failed in the baseline burst")
        print(f"the same burst of GET /healthz (the client's and HTTP's own cost): p50 {percentile(base, 50):.1f} ms, "
              f"p99 {percentile(base, 99):.1f} ms")
        print(f"all {len(ids)} builds ended {all_done:.1f} s after the first call; "
              f"{len(set(ids))} distinct ids, each listed under its tenant once")
        for tier, p in sorted(peaks.items()):
            print(f"peak concurrency, {tier} tenants: {max(p)} (limit {LIMITS[tier]}); per tenant {p}")
        print(f"peak concurrency over all tenants: {overall} (--workers {args.workers})")
        if problems:
            print("PROBLEMS:")
            for p in problems[:50]:
                print("  " + p)
            sys.exit(1)
        print("none lost, none duplicated, no limit exceeded")
    finally:
        for p in (server, registry):
            if p:
                p.terminate()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
