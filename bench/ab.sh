#!/usr/bin/env bash
# bench/ab.sh OLD_BUILDERD NEW_BUILDERD [ROUNDS]: two builderd binaries on
# bench/build.py's image, alternating (old, new, old, new, ...) so both see
# the same machine; each round builds from the local OCI layout. Prints each
# run's wall time, user+system CPU and the flatten and checksum stages, then
# the means and the ratio new/old. For "did this change slow the build?":
# build the old binary from the commit before (a git worktree), the new one
# here.
# Run `python3 bench/build.py` first: it makes the image layout.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1
new=$2
rounds=${3:-6}
layout=/var/tmp/builderd-bench/image-layout
out=/var/tmp/builderd-bench/ab.ext4
[ -d "$layout" ] || { echo "no $layout: run python3 bench/build.py first" >&2; exit 1; }
log=$(mktemp)
trap 'rm -f "$log" "$out" "$out.json"' EXIT
run() {
    local which=$1 bin=$2
    rm -f "$out" "$out.json"; sync
    local start end cpu
    start=$(date +%s.%N)
    cpu=$( { /usr/bin/env time -f "%U %S" "$bin" build "oci:$layout:latest" -o "$out" >/dev/null 2>/dev/null; } 2>&1 | tail -1 ) || true
    end=$(date +%s.%N)
    python3 - "$which" "$start" "$end" "$out.json" "$cpu" >>"$log" <<'PY'
import json, sys
which, start, end, meta, cpu = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5].split()
t = json.load(open(meta))["timings_ms"]
print(json.dumps({"which": which, "wall": end - start, "cpu": sum(float(c) for c in cpu) if len(cpu) == 2 else None,
                  "flatten": t["flatten"] / 1000, "checksum": t["checksum"] / 1000}))
PY
    tail -1 "$log"
}
for _ in $(seq "$rounds"); do
    run old "$old"
    run new "$new"
done
python3 - "$log" <<'PY'
import json, sys, statistics
runs = [json.loads(l) for l in open(sys.argv[1])]
for key in ("wall", "cpu", "flatten", "checksum"):
    means = {}
    for which in ("old", "new"):
        values = [r[key] for r in runs if r["which"] == which and r[key] is not None]
        means[which] = statistics.mean(values) if values else float("nan")
    print(f"{key:9} old {means['old']:.2f} s, new {means['new']:.2f} s, new/old {means['new'] / means['old']:.3f}")
PY
