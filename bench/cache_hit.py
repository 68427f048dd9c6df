#!/usr/bin/env python3
"""How fast `builderd serve` serves a cache hit: a build whose image (the same
manifest, the same options) was built before, from CreateBuild to COMPLETED.

It starts Debian's docker-registry and a server on loopback, pushes a small
image, builds it once (a miss), then creates the same build RUNS times (default
20), one after another. For each it takes two times: the server's own, from
the recorded QUEUED to COMPLETED transitions, and the client's, from sending
CreateBuild to the first GetBuildStatus that says COMPLETED (polled every
millisecond, so it includes a poll's share). Each hit is checked: cache_hit
set, the artifact's sha256 that of the first build. The goal is under 50 ms.

    python3 bench/cache_hit.py [--runs 20]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import ROOT, call, create_tenant, ms, percentile, push_image, start_registry, start_server  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", os.path.join(ROOT, "Cargo.toml")], check=True)
    builderd = os.path.join(ROOT, "target", "release", "builderd")
    work = tempfile.mkdtemp(prefix="builderd-cache-hit-")
    registry = server = None
    try:
        registry, reg = start_registry(work)
        push_image(reg, "bench/app", "v1")
        data = os.path.join(work, "data")
        key = create_tenant(builderd, data, "bench", "enterprise")
        server, url = start_server(builderd, data)
        config = {"config": {"source": {"docker_image": {"image_uri": f"{reg}/bench/app:v1"}},
                             "target": {"microvm_rootfs": {"format": "ext4", "init_strategy": "INIT_STRATEGY_DIRECT_EXEC"}}}}

        def build():
            start = time.perf_counter()
            build_id = call(url, "CreateBuild", key, config)["buildId"]
            while True:
                s = call(url, "GetBuildStatus", key, {"build_id": build_id})
                if s["state"] in ("BUILD_STATE_COMPLETED", "BUILD_STATE_FAILED"):
                    break
                time.sleep(0.001)
            client = (time.perf_counter() - start) * 1000
            if s["state"] != "BUILD_STATE_COMPLETED":
                sys.exit(f"build {build_id} failed: {s.get('error')}")
            b = call(url, "GetBuild", key, {"build_id": build_id})["build"]
            at = {t["state"]: ms(t["at"]) for t in b["transitions"]}
            return s, at["BUILD_STATE_COMPLETED"] - at["BUILD_STATE_QUEUED"], client

        first, first_server, first_client = build()
        if first.get("cacheHit"):
            sys.exit("the first build was a cache hit: the data directory was not fresh")
        server_ms, client_ms = [], []
        for _ in range(args.runs):
            s, srv, cli = build()
            if not s.get("cacheHit") or s["artifact"]["sha256"] != first["artifact"]["sha256"]:
                sys.exit(f"not a cache hit of the first build: {json.dumps(s)[:400]}")
            server_ms.append(srv)
            client_ms.append(cli)
        server_ms.sort()
        client_ms.sort()
        print(f"first build (a miss): {first_server} ms recorded, {first_client:.0f} ms seen by the client")
        print(f"{args.runs} cache hits, CreateBuild to COMPLETED:")
        print(f"  recorded by the server: p50 {percentile(server_ms, 50)} ms, max {server_ms[-1]} ms")
        print(f"  seen by the client:     p50 {percentile(client_ms, 50):.1f} ms, max {client_ms[-1]:.1f} ms")
        verdict = "under" if percentile(client_ms, 50) < 50 else "OVER"
        print(f"goal: under 50 ms; the client's median is {verdict} it")
    finally:
        for p in (server, registry):
            if p:
                p.terminate()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
