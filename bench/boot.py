#!/usr/bin/env python3
"""Boot benchmark: time from QEMU's start to the app's first console line and
to power-off, for a small busybox image built by builderd, booted by
`builderd boot` (KVM where /dev/kvm works, else TCG) with the initramfs
builderd makes, and with Debian's own initrd (the usual way) in the same run.

    python3 bench/boot.py [RUNS]

Needs: target/release/builderd (scripts/setup), qemu-system-x86,
linux-image-amd64, busybox-static.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDERD = os.path.join(ROOT, "target", "release", "builderd")
MKIMAGE = os.path.join(ROOT, "crates", "cli", "tests", "fixtures", "mkimage.py")


def make_image(work):
    layout = os.path.join(work, "layout")
    entries = [{"name": d, "type": "dir"} for d in ["bin", "dev", "proc", "sys", "run", "tmp", "etc"]]
    entries += [
        {"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755},
        {"name": "bin/sh", "type": "symlink", "link": "busybox"},
        {"name": "etc/passwd", "data": "root:x:0:0:root:/root:/bin/sh\n"},
    ]
    spec = {"dir": layout, "tag": "v1", "layers": [{"entries": entries}],
            "config": {"Cmd": ["/bin/sh", "-c", "echo app: first line; exit 0"]}}
    subprocess.run([sys.executable, MKIMAGE], input=json.dumps(spec).encode(), check=True,
                   stdout=subprocess.DEVNULL)
    image = os.path.join(work, "bench.ext4")
    subprocess.run([BUILDERD, "build", f"oci:{layout}:v1", "-o", image], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return image


def boot_once(image, extra):
    start = time.monotonic()
    p = subprocess.Popen([BUILDERD, "boot", "--snapshot", "--timeout", "120", image] + extra,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = None
    for line in p.stdout:
        if first is None and b"app: first line" in line:
            first = time.monotonic() - start
    code = p.wait()
    total = time.monotonic() - start
    if code != 0 or first is None:
        raise SystemExit(f"boot failed (exit {code}) with {extra}")
    return first, total


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    kernels = sorted(f for f in os.listdir("/boot") if f.startswith("vmlinuz-"))
    release = kernels[-1][len("vmlinuz-"):]
    accel = "kvm" if subprocess.run(["sh", "-c", "grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]"]).returncode == 0 else "tcg"
    with tempfile.TemporaryDirectory(prefix="builderd-bench-boot-") as work:
        image = make_image(work)
        ways = {
            "builderd initramfs": [],
            "Debian initrd": ["--initrd", f"/boot/initrd.img-{release}"],
        }
        results = {name: [] for name in ways}
        for _ in range(runs):
            for name, extra in ways.items():  # alternating, so both see the same machine
                results[name].append(boot_once(image, extra))
    print(f"kernel {release}, accel {accel}, {runs} runs each (median; min-max)")
    med = {}
    for name, rs in results.items():
        firsts, totals = [r[0] for r in rs], [r[1] for r in rs]
        med[name] = (statistics.median(firsts), statistics.median(totals))
        print(f"  {name:20s} to the app's first line {med[name][0]:.2f} s ({min(firsts):.2f}-{max(firsts):.2f}); "
              f"to power-off {med[name][1]:.2f} s ({min(totals):.2f}-{max(totals):.2f})")
    a, b = med["builderd initramfs"], med["Debian initrd"]
    print(f"  Debian initrd / builderd initramfs: {b[0] / a[0]:.2f}x to the first line, {b[1] / a[1]:.2f}x to power-off")


if __name__ == "__main__":
    main()
