#!/usr/bin/env python3
"""Compares vpipe.ko's extent mapping (MAP lines of kmod_probe on the guest console) with the
extents debugfs reads from the same ext4 image on the host.

usage: check_maps.py console.txt partition.img partition_offset_bytes

A MAP line is `MAP <path> <offset> <length> <vdev> <partition_offset> <disk:len:zero>...`.
Expected segments: each block of the range is looked up in debugfs's leaf extents (an Uninit
extent or no extent reads as zeros), pieces are trimmed to the byte range, physically
contiguous neighbours and neighbouring zero pieces merge, disk offsets include the partition
offset. Files the probe prepared as destinations (PREPARED lines) must have no zero segment in
their last MAP line (no unwritten block and no hole left).
"""
import re
import subprocess
import sys

VDEV = 51712
BLOCK = 4096


def debugfs(img, cmd):
    out = subprocess.run(["debugfs", "-R", cmd, img], capture_output=True, text=True, check=True)
    return out.stdout


def leaf_extents(img, path):
    """[(logical_first, logical_last, physical_first, uninit)] of the leaves."""
    ext = []
    pat = re.compile(r"^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*(.*)$")
    for line in debugfs(img, "ex " + path).splitlines():
        m = pat.match(line)
        if not m:
            continue
        level, depth = int(m.group(1)), int(m.group(2))
        if level != depth:
            continue  # index node
        ext.append((int(m.group(3)), int(m.group(4)), int(m.group(5)), "Uninit" in m.group(8)))
    return ext


def expected(img, path, off, length, part):
    ext = leaf_extents(img, path)

    def phys(b):
        for lf, ll, pf, un in ext:
            if lf <= b <= ll:
                return None if un else pf + (b - lf)
        return None

    segs = []
    end = off + length
    b = off // BLOCK
    while b * BLOCK < end:
        bs = b * BLOCK
        fr, to = max(off, bs), min(end, bs + BLOCK)
        p = phys(b)
        if p is None:
            piece = [0, to - fr, 1]
        else:
            piece = [part + p * BLOCK + (fr - bs), to - fr, 0]
        if segs and segs[-1][2] == 1 and piece[2] == 1:
            segs[-1][1] += piece[1]
        elif segs and segs[-1][2] == 0 and piece[2] == 0 and segs[-1][0] + segs[-1][1] == piece[0]:
            segs[-1][1] += piece[1]
        else:
            segs.append(piece)
        b += 1
    return [tuple(s) for s in segs]


def main():
    console, img, part = sys.argv[1], sys.argv[2], int(sys.argv[3])
    maps, prepared = [], set()
    for line in open(console, errors="replace"):
        line = line.strip()
        if line.startswith("MAP "):
            f = line.split()
            segs = [tuple(int(x) for x in s.split(":")) for s in f[6:]]
            maps.append((f[1], int(f[2]), int(f[3]), int(f[4]), int(f[5]), segs))
        elif line.startswith("PREPARED "):
            prepared.add(line.split()[1])
    if len(maps) < 10:
        print(f"FAIL: only {len(maps)} MAP lines on the console")
        return 1
    fails = 0
    last = {}
    for path, off, length, vdev, poff, segs in maps:
        rel = path[len("/mnt"):] if path.startswith("/mnt/") else path
        want = expected(img, rel, off, length, part)
        ok = vdev == VDEV and poff == part and segs == want
        print(f"{'ok  ' if ok else 'FAIL'} map {path} [{off}, +{length}): {len(segs)} segment(s)"
              f"{'' if ok else f' module {segs[:6]} debugfs {want[:6]} vdev {vdev} part {poff}'}")
        fails += not ok
        last[path] = segs
    for path in sorted(prepared):
        if path not in last:
            continue
        zero = [s for s in last[path] if s[2]]
        ok = not zero
        print(f"{'ok  ' if ok else 'FAIL'} prepared {path}: no hole or unwritten block left")
        fails += not ok
    print(f"maps: {len(maps)} compared with debugfs, {fails} mismatch(es)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
