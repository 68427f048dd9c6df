#!/usr/bin/env bash
# bench/build_vs_floor.sh [ROUNDS]: how far `builderd build` is from the
# decompression floor on bench/build.py's image, in one sitting. Each round
# times the floor (decompressing every layer, crates/cli/examples/
# decompress_floor) and then a build from the local OCI layout, one right
# after the other, so both see the same machine; prints the build's time,
# its flatten and checksum stages (OUT.json's timings_ms) and build/floor,
# and the CPU time the host took from this VM during each (steal, from
# /proc/stat): on a busy host it swings both times by seconds.
# Run `python3 bench/build.py` first: it makes the image layout.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
layout=/var/tmp/builderd-bench/image-layout
out=/var/tmp/builderd-bench/floor-ab.ext4
[ -d "$layout" ] || { echo "no $layout: run python3 bench/build.py first" >&2; exit 1; }
cargo build --release -q --bin builderd --example decompress_floor
# Steal ticks (USER_HZ) of all CPUs so far.
steal() { awk '/^cpu /{print $9}' /proc/stat; }
for _ in $(seq "$rounds"); do
    s0=$(steal)
    floor=$(target/release/examples/decompress_floor "$layout" latest | awk '{print $1}')
    rm -f "$out" "$out.json"; sync
    s1=$(steal)
    start=$(date +%s.%N)
    target/release/builderd build "oci:$layout:latest" -o "$out" >/dev/null 2>&1
    end=$(date +%s.%N)
    s2=$(steal)
    python3 - "$floor" "$start" "$end" "$out.json" "$s0" "$s1" "$s2" "$(getconf CLK_TCK)" <<'PY'
import json, sys
floor, start, end = (float(v) for v in sys.argv[1:4])
t = json.load(open(sys.argv[4]))["timings_ms"]
s0, s1, s2, hz = (int(v) for v in sys.argv[5:9])
build = end - start
print(f"floor {floor:.2f} s | build {build:.2f} s (flatten {t['flatten']} ms, checksum {t['checksum']} ms) | x{build / floor:.2f}"
      f" | steal {(s1 - s0) / hz:.2f} s, {(s2 - s1) / hz:.2f} s")
PY
done
rm -f "$out" "$out.json"
