#!/usr/bin/env bash
# bench/build_vs_floor.sh [ROUNDS]: how far `builderd build` is from the
# decompression floor on bench/build.py's image, in one sitting. Each round
# times the floor (decompressing every layer, crates/cli/examples/
# decompress_floor) and then a build from the local OCI layout, one right
# after the other, so both see the same machine; prints the build's time,
# its flatten and checksum stages (OUT.json's timings_ms) and build/floor.
# Run `python3 bench/build.py` first: it makes the image layout.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
layout=/var/tmp/builderd-bench/image-layout
out=/var/tmp/builderd-bench/floor-ab.ext4
[ -d "$layout" ] || { echo "no $layout: run python3 bench/build.py first" >&2; exit 1; }
cargo build --release -q --bin builderd --example decompress_floor
for _ in $(seq "$rounds"); do
    floor=$(target/release/examples/decompress_floor "$layout" latest | awk '{print $1}')
    rm -f "$out" "$out.json"; sync
    start=$(date +%s.%N)
    target/release/builderd build "oci:$layout:latest" -o "$out" >/dev/null 2>&1
    end=$(date +%s.%N)
    python3 - "$floor" "$start" "$end" "$out.json" <<'PY'
import json, sys
floor, start, end = (float(v) for v in sys.argv[1:4])
t = json.load(open(sys.argv[4]))["timings_ms"]
build = end - start
print(f"floor {floor:.2f} s | build {build:.2f} s (flatten {t['flatten']} ms, checksum {t['checksum']} ms) | x{build / floor:.2f}")
PY
done
rm -f "$out" "$out.json"
