#!/usr/bin/python3
"""bench/xen_report.py CSV REPS [PNG]: bench/results/XEN.md from xen.csv (bench/xen.sh calls it),
and with PNG the improvement factors per neighbour count drawn by gnuplot (xen_fig4.png).

Medians per scheduler x neighbours x operation x data path, the ratios issue 14 sets targets
for, each next to its target, and the control (dom0's native disk -> TCP path) that tells the
machine's share of a slowdown from the guest's.
"""
import csv
import statistics
import subprocess
import sys
from collections import defaultdict

GIB = 1 << 30
SIZES = {"f2s": 64 << 20, "s2f": 32 << 20, "s2s": 48 << 20, "native": 48 << 20}


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def fnum(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def main():
    path, reps = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "?"
    rows = list(csv.DictReader(open(path)))
    good = [r for r in rows if r["ok"] == "1"]
    bad = len(rows) - len(good)
    # (sched, k, op, mode) -> lists of each field
    cell = defaultdict(lambda: defaultdict(list))
    for r in good:
        c = cell[(r["sched"], int(r["neighbours"]), r["op"], r["mode"])]
        for f in ("secs", "ttfb_s", "guest_cpu_s", "dom0_cpu_s"):
            v = fnum(r[f])
            if v is not None:
                c[f].append(v)
        # the transfer after its first byte: the data path alone, without the time the guest's
        # application took to be scheduled, read the request and answer it
        s, t = fnum(r["secs"]), fnum(r["ttfb_s"])
        if s is not None and t is not None:
            c["after_first_byte"].append(s - t)
        c["dates"].append(r["date"])

    def med(s, k, op, mode, f="secs"):
        v = cell.get((s, k, op, mode), {}).get(f, [])
        return statistics.median(v) if v else None

    def spread(s, k, op, mode):
        v = cell.get((s, k, op, mode), {}).get("secs", [])
        return f"{min(v):.2f}-{max(v):.2f}" if len(v) > 1 else "-"

    def fmt(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    def ratio(a, b):  # a / b as "N.NNx"
        return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"

    def idle_rate(s, k):
        """the idle domU's CPU seconds per second with K neighbours (None: not measured)"""
        c, t = med(s, k, "idle", "-", "guest_cpu_s"), med(s, k, "idle", "-")
        return c / t if c is not None and t else None

    def per_gib(s, k, op, mode, idle_rate):
        """guest CPU seconds per GiB moved, minus the idle domU's background over the same time"""
        c, t = med(s, k, op, mode, "guest_cpu_s"), med(s, k, op, mode)
        if c is None or t is None:
            return None, None
        raw = c / (SIZES[op] / GIB)
        net = max(0.0, c - (idle_rate or 0) * t) / (SIZES[op] / GIB)
        return raw, net

    scheds = sorted({k[0] for k in cell}, key=lambda s: (s != "credit", s))
    ks = lambda s: sorted({k[1] for k in cell if k[0] == s})
    newest = max((r["date"] for r in rows), default="?")
    # rounds per section, from the rows (sections may come from runs with different BENCH_REPS)
    nrep = defaultdict(int)
    for r in good:
        nrep[r["sched"]] = max(nrep[r["sched"]], int(r["rep"]))
    rounds = ", ".join(f"{nrep[s]} ({s})" for s in scheds) or reps
    cpu = rows[-1]["qemu_cpu"] if rows else "?"
    out = []
    w = out.append
    w("# vPipe on real Xen (issue 14): Figure 4 where it happens\n")
    w(f"`bench/xen.sh` (`bench/run.sh xen`), newest rows {newest}. Raw rows: `xen.csv`; this page: "
      "`bench/xen.sh --report`.\n")
    model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'")
    qemu = sh("qemu-system-x86_64 --version | head -1")
    xen = sh("dpkg-query -W -f '${Version}' xen-hypervisor-4.17-amd64")
    w(f"**Machine.** {sh('nproc')} host cores ({model}, "
      f"shared with other jobs), {qemu}, TCG (no KVM), "
      f"`-smp 2 -m 1280 -cpu {cpu}`, Xen {xen} "
      "(booted with `spec-ctrl=eager-fpu`, see tests/xen/README.md). PV dom0 (1 vCPU, 512 MiB) pinned to "
      "physical CPU 0 with vpiped, netback and the client (curl in a network namespace on dom0's bridge); "
      "the VM under test (PV, 1 vCPU, 256 MiB, vpipe.ko) pinned to physical CPU 1 together with K "
      "neighbour domUs (PV, 1 vCPU, a shell busy loop that never sleeps; in the sections labelled "
      "`SCHED/duty:PCT:MS` instead a lookbusy-like load, tests/xen/dutyloop.c, computing PCT % of "
      "every MS milliseconds and asleep the rest, as the paper's lookbusy neighbours).\n")
    w("**Transfers** (each from empty page caches, the guest's and dom0's; rounds alternate the order; "
      f"rounds: {rounds}; medians, spread = min-max of the rounds):\n"
      "- file -> socket: GET of 64 MiB from vpipe-httpd in the domU: vPipe, `sendfile`, `pread`+`write`;\n"
      "- socket -> file: PUT of 32 MiB, answered after `fdatasync` in every mode (equal durability): vPipe, "
      "`splice` socket->pipe->file, `recv`+`pwrite`;\n"
      "- socket -> socket: GET of 48 MiB from the client's server through vpipe-proxy in the domU: vPipe, "
      "`splice`;\n"
      "- native (the control): dom0 itself sends 48 MiB from its own virtio disk with `sendfile` to the "
      "same client: the engine's kind of data path with no domU in it.\n"
      "CPU seconds from `xl vcpu-list` around each transfer (0.1 s resolution). Guest CPU per GiB is "
      "given raw and net of the idle domU's background (measured per K over 10 s idle: timer ticks "
      "and the like cost real time under emulation).\n")
    w("**What QEMU's TCG distorts.** Every instruction is emulated (~20-100x slower than hardware), so "
      "absolute times are seconds where hardware takes milliseconds, and the cost ratios between kinds "
      "of work are not hardware's: page-table updates, hypercalls, grant copies and event-channel "
      "notifications are relatively more expensive than straight-line copying. Xen's time slices are "
      "real time, so a slice runs ~50x fewer instructions than on hardware: the neighbours' share is "
      "right, the work done per slice is not. The two emulated physical CPUs are host threads on a "
      "2-core host, next to QEMU's I/O thread: with busy neighbours the emulated CPU 1 keeps a host "
      "core busy that is otherwise idle, so dom0's CPU 0 and QEMU's disk and network emulation get "
      "less host time. The native rows measure exactly that. Ratios within one run are the figures "
      "to read.\n")

    for s in scheds:
        w(f"## {s}\n")
        w("### file -> socket (64 MiB GET)\n")
        w("| K | vPipe s (spread) | sendfile s | read+write s | sendfile / vPipe | read+write / vPipe | "
          "vPipe first byte s | sendfile first byte s | dom0 CPU s vPipe / sendfile |")
        w("|---|---|---|---|---|---|---|---|---|")
        for k in ks(s):
            v, sf, rw = med(s, k, "f2s", "vpipe"), med(s, k, "f2s", "sendfile"), med(s, k, "f2s", "rw")
            w(f"| {k} | {fmt(v)} ({spread(s, k, 'f2s', 'vpipe')}) | {fmt(sf)} | {fmt(rw)} | {ratio(sf, v)} | "
              f"{ratio(rw, v)} | {fmt(med(s, k, 'f2s', 'vpipe', 'ttfb_s'))} | {fmt(med(s, k, 'f2s', 'sendfile', 'ttfb_s'))} | "
              f"{fmt(med(s, k, 'f2s', 'vpipe', 'dom0_cpu_s'), 1)} / {fmt(med(s, k, 'f2s', 'sendfile', 'dom0_cpu_s'), 1)} |")
        w("")
        w("### socket -> file (32 MiB PUT, fdatasync before the answer)\n")
        w("| K | vPipe s (spread) | splice s | recv+pwrite s | splice / vPipe | recv+pwrite / vPipe |")
        w("|---|---|---|---|---|---|")
        for k in ks(s):
            v, sp, rw = med(s, k, "s2f", "vpipe"), med(s, k, "s2f", "sendfile"), med(s, k, "s2f", "rw")
            w(f"| {k} | {fmt(v)} ({spread(s, k, 's2f', 'vpipe')}) | {fmt(sp)} | {fmt(rw)} | {ratio(sp, v)} | {ratio(rw, v)} |")
        w("")
        w("### socket -> socket (48 MiB through vpipe-proxy)\n")
        w("| K | vPipe s (spread) | splice s | splice / vPipe |")
        w("|---|---|---|---|")
        for k in ks(s):
            v, sp = med(s, k, "s2s", "vpipe"), med(s, k, "s2s", "splice")
            w(f"| {k} | {fmt(v)} ({spread(s, k, 's2s', 'vpipe')}) | {fmt(sp)} | {ratio(sp, v)} |")
        w("")
        w("### Guest CPU seconds per GiB moved (raw / net of the idle background)\n")
        w("| K | idle domU CPU s per s | f2s vPipe | f2s sendfile | f2s read+write | vPipe / read+write (net) | "
          "s2f vPipe | s2f recv+pwrite | s2s vPipe | s2s splice |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for k in ks(s):
            ir = idle_rate(s, k)
            g = {m: per_gib(s, k, op, m, ir) for op, m in
                 [("f2s", "vpipe"), ("f2s", "sendfile"), ("f2s", "rw")]}
            h = {(op, m): per_gib(s, k, op, m, ir) for op, m in
                 [("s2f", "vpipe"), ("s2f", "rw"), ("s2s", "vpipe"), ("s2s", "splice")]}
            pair = lambda p: "-" if p[0] is None else f"{p[0]:.1f} / {p[1]:.1f}"
            vr = g["vpipe"][1], g["rw"][1]
            w(f"| {k} | {fmt(ir, 3)} | {pair(g['vpipe'])} | {pair(g['sendfile'])} | {pair(g['rw'])} | "
              f"{ratio(vr[0], vr[1]) if vr[1] else '-'} | {pair(h[('s2f', 'vpipe')])} | {pair(h[('s2f', 'rw')])} | "
              f"{pair(h[('s2s', 'vpipe')])} | {pair(h[('s2s', 'splice')])} |")
        w("")
        w("### Under neighbours: each path's speed with K neighbours against its own with none\n")
        w("| K | vPipe f2s | native dom0 (control) | sendfile f2s | vPipe s2f | vPipe s2s |")
        w("|---|---|---|---|---|---|")
        for k in ks(s):
            if k == 0:
                continue
            keep = lambda op, m: ratio(med(s, 0, op, m), med(s, k, op, m))
            w(f"| {k} | {keep('f2s', 'vpipe')} | {keep('native', 'sendfile')} | {keep('f2s', 'sendfile')} | "
              f"{keep('s2f', 'vpipe')} | {keep('s2s', 'vpipe')} |")
        w("")
        nat = [(k, med(s, k, "native", "sendfile")) for k in ks(s)]
        if all(t is None for _, t in nat):
            w("(No native control rows for this scheduler: measured before the control existed.)\n")

    w("## Targets (issue 14), two neighbours unless said\n")
    w("| target | " + " | ".join(scheds) + " |")
    w("|---|" + "---|" * len(scheds))

    def tgt(label, fn):
        w(f"| {label} | " + " | ".join(fn(s) for s in scheds) + " |")

    tgt("file -> socket >= 3x sendfile", lambda s: ratio(med(s, 2, "f2s", "sendfile"), med(s, 2, "f2s", "vpipe")))
    tgt("socket -> socket >= 2x splice proxy", lambda s: ratio(med(s, 2, "s2s", "splice"), med(s, 2, "s2s", "vpipe")))
    tgt("socket -> file >= 2x recv+pwrite+fdatasync", lambda s: ratio(med(s, 2, "s2f", "rw"), med(s, 2, "s2f", "vpipe")))

    def cpu_ratio(s):
        ir = idle_rate(s, 2)
        v, r = per_gib(s, 2, "f2s", "vpipe", ir), per_gib(s, 2, "f2s", "rw", ir)
        if v[0] is None or r[0] is None or r[1] == 0:
            return "-"
        return f"{v[0] / r[0]:.2f}x raw, {v[1] / r[1]:.2f}x net"

    # What a fair scheduler would let the neighbours do to the classic path: with K neighbours that
    # always want the CPU and equal weights, the guest gets 1/(K+1) of the CPU, so a path needing
    # C guest CPU seconds takes about C x (K+1), or its uncontended time if that is longer. Against
    # vPipe's time with K neighbours (which is dom0's speed: the engine's path does not need the
    # guest), that is the ratio to expect from contention alone; a target above it needs the
    # classic path to get less than its fair share, or dom0 to move the bytes faster.
    def fair(s, op, mode, k=2):
        c, t0, v = med(s, k, op, mode, "guest_cpu_s"), med(s, 0, op, mode), med(s, k, op, "vpipe")
        if c is None or t0 is None or not v:
            return "-"
        if "/duty:" in s and k * int(s.split("/duty:")[1].split(":")[0]) < 100:
            return "- (the neighbours leave the CPU idle)"
        return f"{max(t0, c * (k + 1)) / v:.2f}x"

    w("")
    w("Fair-share estimate (the ratio contention alone would give when the neighbours always want "
      "the CPU: the classic path's guest CPU seconds x (K+1), or its time without neighbours if "
      "longer, over vPipe's time; see `fair()` in bench/xen_report.py). A target above it needs "
      "the classic path to get less than its fair share of the CPU, or dom0 to move the bytes "
      "faster than it does here:\n")
    w("| estimate | " + " | ".join(scheds) + " |")
    w("|---|" + "---|" * len(scheds))
    tgt("file -> socket, sendfile", lambda s: fair(s, "f2s", "sendfile"))
    tgt("socket -> socket, splice proxy", lambda s: fair(s, "s2s", "splice"))
    tgt("socket -> file, recv+pwrite+fdatasync", lambda s: fair(s, "s2f", "rw"))
    w("")
    w("| target | " + " | ".join(scheds) + " |")
    w("|---|" + "---|" * len(scheds))
    tgt("guest CPU per GiB, vPipe f2s <= 0.05x read+write", cpu_ratio)
    tgt("vPipe f2s with 3 neighbours >= 0.9x with none", lambda s: ratio(med(s, 0, "f2s", "vpipe"), med(s, 3, "f2s", "vpipe")))
    tgt("  the same after the first byte (the data path alone)",
        lambda s: ratio(med(s, 0, "f2s", "vpipe", "after_first_byte"), med(s, 3, "f2s", "vpipe", "after_first_byte")))
    tgt("  vPipe's time to the first byte with 0 / 3 neighbours (the guest answering)",
        lambda s: "-" if med(s, 3, "f2s", "vpipe", "ttfb_s") is None else
        f"{fmt(med(s, 0, 'f2s', 'vpipe', 'ttfb_s'))} s / {fmt(med(s, 3, 'f2s', 'vpipe', 'ttfb_s'))} s")
    tgt("  the same for dom0's native path (control)", lambda s: ratio(med(s, 0, "native", "sendfile"), med(s, 3, "native", "sendfile")))
    w("")
    w(f"Rows with ok=0 (a transfer that did not move all its bytes with the right HTTP status) are left "
      f"out of the medians: {bad} in xen.csv.")
    print("\n".join(out))
    if len(sys.argv) > 3:
        plot(sys.argv[3], scheds, ks, med)


def plot(png, scheds, ks, med):
    """Fig 4 on real Xen: classic path's time / vPipe's time per K, a panel per operation and a
    line per section (scheduler and neighbour load), the issue's target dashed."""
    panels = [("f2s", "sendfile", "file -> socket: sendfile / vPipe", 3),
              ("s2s", "splice", "socket -> socket: splice proxy / vPipe", 2),
              ("s2f", "rw", "socket -> file: recv+pwrite+fdatasync / vPipe", 2)]
    gp = [f'set terminal pngcairo size 1500,480 font ",10"', f'set output "{png}"',
          'set multiplot layout 1,3 title "vPipe on real Xen 4.17 (QEMU TCG): improvement over the guest path, K busy neighbours on the VM physical CPU"',
          'set xlabel "busy neighbour domUs (K)"', 'set ylabel "time ratio (higher: vPipe faster)"',
          'set key top left', 'set grid', 'set xrange [-0.3:3.3]', 'set xtics 0,1,3', 'set yrange [0:*]']
    for p, (op, mode, title, target) in enumerate(panels):
        plots = []
        for i, s in enumerate(scheds):
            # the points inline (gnuplot's datablocks): no files to clean up
            gp.append(f"$d{p}_{i} << EOD")
            for k in ks(s):
                c, v = med(s, k, op, mode), med(s, k, op, "vpipe")
                if c is not None and v:
                    gp.append(f"{k} {c / v:.3f}")
            gp.append("EOD")
            plots.append(f'$d{p}_{i} using 1:2 with linespoints lw 2 title "{s}"')
        plots.append(f'{target} with lines dt 2 lc rgb "black" title "target {target}x"')
        plots.append('1 with lines dt 3 lc rgb "gray" title "equal"')
        gp += [f'set title "{title}"', "plot " + ", ".join(plots)]
    gp.append("unset multiplot")
    try:
        subprocess.run(["gnuplot"], input="\n".join(gp) + "\n", text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"xen_report.py: no plot ({e})", file=sys.stderr)


if __name__ == "__main__":
    main()
