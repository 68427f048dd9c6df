#!/usr/bin/env python3
"""The docker strategy's sizes: a Debian build machine's image before and
after each option, against the cleanup the original service's documented
example ran, on the same tree in the same run.

The image is `scripts/debian-tree build-tools` (Debian 12 by debootstrap:
build-essential, python3, systemd and openssh, with docs, apt's lists and an
app packaged as a .deb), as one zstd layer of an OCI layout on local disk,
built with `--init systemd`. Each variant is a `builderd build`:

- as built: `--no-harden` (nothing left out or changed);
- hardened: the default (host keys, machine-id, histories, credentials);
- `--optimize`, `--remove-dev-packages`, and both (hardened).

The baseline: the original Go service removed a fixed list of paths with
`rm -rf`; that list is not in the material this project has, so the
baseline is the cleanup its documented "webapp" example asks for as custom
commands (`apt-get autoremove -y`, `apt-get clean`, `rm -rf
/var/lib/apt/lists/* /tmp/* /var/tmp/*`), run in a chroot of the unpacked
tree, which `builderd mkfs` then writes.

Printed for each: file data, image size, allocated bytes, the zstd copy's
size (`--compression zstd`), the build's time, and the file data over the
image as built. Goal: both options at most half the original's file data,
and the image still boots and runs the app (booted here once, `builderd
boot --snapshot`). Every image passes `e2fsck -fn`.

    python3 bench/docker_strategy.py
"""
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDERD = os.path.join(ROOT, "target/release/builderd")
MKIMAGE = os.path.join(ROOT, "crates/cli/tests/fixtures/mkimage.py")
WORK = "/var/tmp/builderd-bench/docker-strategy"
APP = ("for i in $(seq 240); do [ \"$(systemctl is-active ssh)\" = active ] && break; sleep 0.5; done; "
       "echo \"app: ssh=$(systemctl is-active ssh) $(hello-app)\"")
BASELINE = ["apt-get autoremove -y", "apt-get clean", "rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*"]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def fsck(image):
    run(["e2fsck", "-fn", image])


def build(name, source, extra):
    out = os.path.join(WORK, name + ".ext4")
    start = time.monotonic()
    run([BUILDERD, "build", source, "-o", out, "--init", "systemd", "--compression", "zstd"] + extra)
    took = time.monotonic() - start
    fsck(out)
    meta = json.load(open(out + ".json"))
    return out, {
        "file": meta["image"]["file_data_bytes"],
        "image": meta["image"]["size_bytes"],
        "allocated": meta["image"]["allocated_bytes"],
        "zstd": meta["compressed"]["size_bytes"],
        "time": took,
        "meta": meta,
    }


def baseline(tar):
    tree = os.path.join(WORK, "tree")
    shutil.rmtree(tree, ignore_errors=True)
    os.makedirs(tree)
    run(["tar", "-C", tree, "--numeric-owner", "-xf", tar])
    for cmd in BASELINE:
        run(["chroot", tree, "sh", "-c", cmd])
    out = os.path.join(WORK, "baseline.ext4")
    start = time.monotonic()
    run([BUILDERD, "mkfs", tree, "-o", out])
    took = time.monotonic() - start
    run(["zstd", "-q", "-f", "-T0", out, "-o", out + ".zst"])
    fsck(out)
    file_bytes = int(run(["du", "-sb", "--apparent-size", tree]).stdout.split()[0])
    alloc = os.stat(out).st_blocks * 512
    shutil.rmtree(tree)
    return {"file": file_bytes, "image": os.path.getsize(out), "allocated": alloc,
            "zstd": os.path.getsize(out + ".zst"), "time": took}


def main():
    if os.geteuid() != 0:
        sys.exit("run as root (debootstrap, chroot)")
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    tar = run([os.path.join(ROOT, "scripts/debian-tree"), "build-tools"]).stdout.strip()
    layout = os.path.join(WORK, "layout")
    spec = {"dir": layout, "tag": "v1", "layers": [{"compression": "zstd", "tar": tar}],
            "config": {"Cmd": ["/bin/sh", "-c", APP],
                       "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                               "LANG=C.UTF-8"]}}
    run(["python3", MKIMAGE], input=json.dumps(spec))
    source = f"oci:{layout}:v1"
    variants = [
        ("as built (--no-harden)", "plain", ["--no-harden"]),
        ("hardened (the default)", "hardened", []),
        ("--optimize", "optimize", ["--optimize", "--no-harden"]),
        ("--remove-dev-packages", "dev", ["--remove-dev-packages", "--no-harden"]),
        ("--optimize --remove-dev-packages", "both", ["--optimize", "--remove-dev-packages"]),
    ]
    rows = []
    images = {}
    for label, name, extra in variants:
        out, row = build(name, source, extra)
        images[name] = out
        rows.append((label, row))
    rows.append(("the seed example's cleanup (chroot + builderd mkfs)", baseline(tar)))
    base = rows[0][1]["file"]
    mib = lambda n: f"{n / 1048576:.1f} MiB"  # noqa: E731
    print(f"image: scripts/debian-tree build-tools ({os.path.getsize(tar) / 1048576:.0f} MiB tar)")
    print(f"| variant | file data | image | allocated | zstd copy | build | file data / as built |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {mib(r['file'])} | {mib(r['image'])} | {mib(r['allocated'])} | "
              f"{mib(r['zstd'])} | {r['time']:.2f} s | {r['file'] / base:.2f} |")
    both = dict(rows)["--optimize --remove-dev-packages"]
    policy = both["meta"]["policy"]
    print("rules:", ", ".join(f"{r['rule']} {r['entries']} entries {mib(r['bytes'])}" for r in policy["rules"]))
    print("packages removed:", len(policy["packages"]["removed"]),
          "kept because needed:", [(p["name"], p["needed_by"]) for p in policy["packages"]["kept_because_needed"]])
    o = subprocess.run([BUILDERD, "boot", "--snapshot", "--timeout", "300", images["both"]],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = next((l[l.find("app: "):] for l in o.stdout.splitlines() if "app: ssh=" in l), None)
    print(f"boot of --optimize --remove-dev-packages: exit {o.returncode}, {line}")
    ratio = both["file"] / base
    print(f"goal: at most 0.50 of the file data as built: {ratio:.2f} "
          f"({'met' if ratio <= 0.5 and o.returncode == 0 and line else 'NOT met'})")


if __name__ == "__main__":
    main()
