#!/usr/bin/env bash
# bench/xen.sh (also `bench/run.sh xen`): the paper's Figure 4 where it happens, on real Xen 4.17
# booted by the Xen suite under QEMU TCG (tests/xen/run.sh --bench). dom0 (vpiped, the client,
# netback) on physical CPU 0; the VM under test plus K busy neighbour domUs pinned together on
# physical CPU 1 (K from BENCH_NEIGHBOURS). Each operation against the guest's classic paths, in
# rounds that alternate the order, every transfer from empty page caches: file -> socket (64 MiB
# GET: vPipe, sendfile, read+write), socket -> file (32 MiB PUT, fdatasync before the answer:
# vPipe, splice, recv+pwrite), socket -> socket (48 MiB through vpipe-proxy: vPipe, splice), and
# the control: dom0 serving 48 MiB from its own disk natively (sendfile), no domU involved.
# Run it under the lab lock (it boots QEMU): flock /tmp/vpipe-lab.lock bench/xen.sh
#
#   bench/xen.sh [--quick]      --quick: credit2 only, 1 repetition (a smoke run, ~10-15 min)
#   bench/xen.sh --report       only rewrite XEN.md from xen.csv
# env: BUILD_DIR (build), XEN_SCHEDS ("credit2 credit": Xen's default and the paper's),
#      BENCH_NEIGHBOURS (0:2:3), BENCH_REPS (3), QEMU_CPU (the suite's default),
#      BENCH_LOADS ("burn duty:90:10": the neighbours' loads, one boot per scheduler and load.
#      burn: a loop that never sleeps; duty:PCT:PERIOD_MS: lookbusy-like, as the paper's
#      neighbours, computing PCT % of each period and asleep the rest, tests/xen/dutyloop.c; its
#      rows are labelled SCHED/duty:PCT:PERIOD_MS in the sched column, a section of XEN.md each)
# out: bench/results/xen.csv (rows of the schedulers measured are replaced), bench/results/XEN.md
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
REPORT=0
for a in "$@"; do
  case $a in
    --quick) QUICK=1 ;;
    --report) REPORT=1 ;;
    xen) ;;
    *) echo "usage: bench/xen.sh [--quick|--report]" >&2; exit 2 ;;
  esac
done
BUILD_DIR=${BUILD_DIR:-build}
XEN_SCHEDS=${XEN_SCHEDS:-credit2 credit}
BENCH_REPS=${BENCH_REPS:-3}
BENCH_LOADS=${BENCH_LOADS:-burn duty:90:10}
if [ $QUICK = 1 ]; then XEN_SCHEDS=credit2; BENCH_REPS=1; BENCH_LOADS=burn; fi
export BENCH_NEIGHBOURS=${BENCH_NEIGHBOURS:-0:2:3} BENCH_REPS
for load in $BENCH_LOADS; do
  case $load in burn|duty:[0-9]*:[0-9]*) ;; *) echo "bench/xen.sh: BENCH_LOADS: burn or duty:PCT:PERIOD_MS, not $load" >&2; exit 2 ;; esac
done
# the sched column's label of a run's rows: SCHED, or SCHED/LOAD for other loads than burn
label() { if [ "$2" = burn ]; then echo "$1"; else echo "$1/$2"; fi; }
R=bench/results
CSV=$R/xen.csv
mkdir -p "$R"
TMPD=$(mktemp -d /tmp/vpipe-xenbench-XXXXXX)
trap 'rm -rf "$TMPD"' EXIT
: > "$TMPD/new.csv"   # the rows measured now, run after run
HDR=sched,neighbours,op,mode,rep,secs,ttfb_s,mib_s,guest_cpu_s,dom0_cpu_s,ok,qemu_cpu,date

first=1
[ $REPORT = 1 ] && XEN_SCHEDS=""
runs=()
for load in $BENCH_LOADS; do for sched in $XEN_SCHEDS; do runs+=("$sched $load"); done; done
for run in "${runs[@]}"; do
  read -r sched load <<< "$run"
  xa=""; [ "$sched" = credit2 ] || xa="sched=$sched"
  build=--no-build; [ $first = 1 ] && build=--quick
  first=0
  echo "bench/xen.sh: $sched, neighbours ${BENCH_NEIGHBOURS//:/ and } ($load), $BENCH_REPS repetition(s)" >&2
  BENCH_LOAD=$load XEN_ARGS=$xa tests/xen/run.sh --build-dir "$BUILD_DIR" --bench $build --timeout 3600 > "$TMPD/run.out" 2>&1 ||
    { tail -30 "$TMPD/run.out" >&2; echo "bench/xen.sh: the $sched ($load) run failed (see $BUILD_DIR/xen/serial.log)" >&2; exit 1; }
  sed -n 's/^qemu -cpu \([^;]*\);.*/\1/p' "$BUILD_DIR/xen/summary.txt" | head -1 > "$TMPD/qemu_cpu"
  # VPIPE-XEN BENCH sched=S load=L neighbours=K op=O mode=M rep=R secs=T ttfb=F bytes=B guest_cpu_s=G dom0_cpu_s=D ok=1
  grep -a 'VPIPE-XEN BENCH ' "$BUILD_DIR/xen/serial.log" | sed 's/.*VPIPE-XEN BENCH //' |
    awk -v cpu="$(cat "$TMPD/qemu_cpu")" -v d="$(date -u +%Y-%m-%dT%H:%MZ)" '{
      gsub(/\r/, "")   # line ends of the serial console
      for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      s = v["sched"]; if (v["load"] != "" && v["load"] != "burn") s = s "/" v["load"]
      printf "%s,%s,%s,%s,%s,%s,%s,%.2f,%s,%s,%s,%s,%s\n", s, v["neighbours"], v["op"], v["mode"], v["rep"],
             v["secs"], v["ttfb"], (v["secs"] > 0 ? v["bytes"] / 1048576 / v["secs"] : 0), v["guest_cpu_s"],
             v["dom0_cpu_s"], v["ok"], cpu, d }' > "$TMPD/run.csv"
  [ -s "$TMPD/run.csv" ] || { echo "bench/xen.sh: no BENCH lines in the $sched ($load) run" >&2; exit 1; }
  cat "$TMPD/run.csv" >> "$TMPD/new.csv"
done

# replace the rows of the schedulers measured now, keep the others
if [ $REPORT = 0 ]; then
{
  echo "$HDR"
  if [ -f "$CSV" ]; then
    labels=" "; for run in "${runs[@]}"; do labels+="$(label $run) "; done
    tail -n +2 "$CSV" | awk -F, -v s="$labels" 'index(s, " " $1 " ") == 0'
  fi
  cat "$TMPD/new.csv"
} > "$TMPD/all.csv"
mv "$TMPD/all.csv" "$CSV"
fi

# XEN.md: medians per scheduler x neighbours x operation x mode (bench/xen_report.py)
/usr/bin/python3 bench/xen_report.py "$CSV" "$BENCH_REPS" "$R/xen_fig4.png" > "$R/XEN.md"
cat "$R/XEN.md"
