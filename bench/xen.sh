#!/usr/bin/env bash
# bench/xen.sh (also `bench/run.sh xen`): the paper's Figure 4 where it happens, on real Xen 4.17
# booted by the Xen suite under QEMU TCG (tests/xen/run.sh --bench). dom0 (vpiped, the client,
# netback) on physical CPU 0; the VM under test plus 0 and 2 busy neighbour domUs pinned together
# on physical CPU 1. 64 MiB GETs from the guest: vPipe (vpipe-httpd --mode vpipe, dom0 moves the
# bytes) against the guest's own sendfile, alternating, each from an empty guest page cache.
# Run it under the lab lock (it boots QEMU): flock /tmp/vpipe-lab.lock bench/xen.sh
#
#   bench/xen.sh [--quick]      --quick: credit2 only, 1 repetition (a smoke run, ~6-10 min)
#   bench/xen.sh --report       only rewrite XEN.md from xen.csv
# env: BUILD_DIR (build), XEN_SCHEDS ("credit2 credit": Xen's default and the paper's),
#      BENCH_NEIGHBOURS (0:2), BENCH_REPS (3), QEMU_CPU (the suite's default)
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
if [ $QUICK = 1 ]; then XEN_SCHEDS=credit2; BENCH_REPS=1; fi
export BENCH_NEIGHBOURS=${BENCH_NEIGHBOURS:-0:2} BENCH_REPS
R=bench/results
CSV=$R/xen.csv
mkdir -p "$R"
TMPD=$(mktemp -d /tmp/vpipe-xenbench-XXXXXX)
trap 'rm -rf "$TMPD"' EXIT
HDR=sched,neighbours,mode,rep,secs,mib_s,guest_cpu_s,dom0_cpu_s,ok,qemu_cpu,date

first=1
[ $REPORT = 1 ] && XEN_SCHEDS=""
for sched in $XEN_SCHEDS; do
  xa=""; [ "$sched" = credit2 ] || xa="sched=$sched"
  build=--no-build; [ $first = 1 ] && build=--quick
  first=0
  echo "bench/xen.sh: $sched, neighbours ${BENCH_NEIGHBOURS//:/ and }, $BENCH_REPS repetition(s)" >&2
  XEN_ARGS=$xa tests/xen/run.sh --build-dir "$BUILD_DIR" --bench $build --timeout 2400 > "$TMPD/$sched.out" 2>&1 ||
    { tail -30 "$TMPD/$sched.out" >&2; echo "bench/xen.sh: the $sched run failed (see $BUILD_DIR/xen/serial.log)" >&2; exit 1; }
  cp "$BUILD_DIR/xen/serial.log" "$TMPD/$sched.log"
  sed -n 's/^qemu -cpu \([^;]*\);.*/\1/p' "$BUILD_DIR/xen/summary.txt" | head -1 > "$TMPD/qemu_cpu"
  # VPIPE-XEN BENCH sched=S neighbours=K mode=M rep=R secs=T bytes=B guest_cpu_s=G dom0_cpu_s=D ok=1
  grep -a 'VPIPE-XEN BENCH ' "$TMPD/$sched.log" | sed 's/.*VPIPE-XEN BENCH //' |
    awk -v cpu="$(cat "$TMPD/qemu_cpu")" -v d="$(date -u +%Y-%m-%dT%H:%MZ)" '{
      gsub(/\r/, "")   # line ends of the serial console
      for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "%s,%s,%s,%s,%s,%.2f,%s,%s,%s,%s,%s\n", v["sched"], v["neighbours"], v["mode"], v["rep"], v["secs"],
             v["bytes"] / 1048576 / v["secs"], v["guest_cpu_s"], v["dom0_cpu_s"], v["ok"], cpu, d }' > "$TMPD/$sched.csv"
  [ -s "$TMPD/$sched.csv" ] || { echo "bench/xen.sh: no BENCH lines in the $sched run" >&2; exit 1; }
done

# replace the rows of the schedulers measured now, keep the others
if [ $REPORT = 0 ]; then
{
  echo "$HDR"
  if [ -f "$CSV" ]; then
    tail -n +2 "$CSV" | awk -F, -v s=" $XEN_SCHEDS " 'index(s, " " $1 " ") == 0'
  fi
  for sched in $XEN_SCHEDS; do cat "$TMPD/$sched.csv"; done
} > "$TMPD/all.csv"
mv "$TMPD/all.csv" "$CSV"
fi

# XEN.md: medians per scheduler x neighbours x mode
median() { sort -g | awk '{a[NR] = $1} END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() {  # col SCHED K MODE FIELD#
  awk -F, -v s="$1" -v k="$2" -v m="$3" -v f="$4" '$1 == s && $2 == k && $3 == m && $9 == 1 { print $f }' "$CSV" | median
}
{
  cat <<EOF
# vPipe on real Xen (issue 14): Figure 4 where it happens

\`bench/xen.sh\` (\`bench/run.sh xen\`), newest run $(date -u +%Y-%m-%dT%H:%MZ). Raw rows: \`xen.csv\`.

**Machine.** $(nproc) host cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), shared
with other jobs), $(qemu-system-x86_64 --version | head -1), TCG (no KVM), \`-smp 2 -m 1280 -cpu $(cut -d, -f10 "$CSV" | tail -1)\`.
Xen $(dpkg-query -W -f '${Version}' xen-hypervisor-4.17-amd64 2>/dev/null), PV dom0 (1 vCPU, 512 MiB) pinned to physical CPU 0 with
vpiped, netback and the client (curl in a network namespace on dom0's bridge); the VM under test
(PV, 1 vCPU, 256 MiB, vpipe.ko, vpipe-httpd) pinned to physical CPU 1 together with K neighbour
domUs (PV, 1 vCPU, a shell busy loop). Each GET: 64 MiB (\`big.bin\` on the domU's ext4 disk,
virtio under dom0), after the guest dropped its page cache; vPipe and sendfile alternate,
${BENCH_REPS} repetition(s) each; medians. CPU seconds from \`xl vcpu-list\` around each GET.

**What QEMU's TCG distorts.** Every instruction is emulated (~20-100x slower than hardware), so
absolute times are minutes-scale where hardware takes milliseconds, and the cost ratios
between kinds of work are not hardware's: page-table updates, hypercalls, grant copies and
event-channel notifications are relatively more expensive under emulation than straight-line
copying, and memory copies (the bulk of both paths) are emulated byte-for-byte-ish loops.
Xen's scheduler time slices are real time, so a slice runs ~50x fewer instructions than on
hardware: the neighbours' share is right, the work done per slice is not. The two emulated CPUs
are host threads on a 2-core host shared with other jobs, so "physical CPU 0" and "1" contend on
the host too; dom0's CPU figure includes the client (curl) and netback. Ratios within one run
are the figures to read; absolute throughputs are not hardware's.

| scheduler | neighbours | vPipe s | sendfile s | sendfile/vPipe | vPipe MiB/s | sendfile MiB/s | guest CPU s vPipe / sendfile | dom0 CPU s vPipe / sendfile |
|---|---|---|---|---|---|---|---|---|
EOF
  for sched in $(cut -d, -f1 "$CSV" | tail -n +2 | sort -u); do
    for k in $(awk -F, -v s="$sched" '$1 == s { print $2 }' "$CSV" | sort -n -u); do
      tv=$(col "$sched" "$k" vpipe 5); ts=$(col "$sched" "$k" sendfile 5)
      ratio=$(awk -v a="$tv" -v b="$ts" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", b / a; else print "-" }')
      echo "| $sched | $k | $tv | $ts | $ratio | $(col "$sched" "$k" vpipe 6) | $(col "$sched" "$k" sendfile 6) |" \
           "$(col "$sched" "$k" vpipe 7) / $(col "$sched" "$k" sendfile 7) | $(col "$sched" "$k" vpipe 8) / $(col "$sched" "$k" sendfile 8) |"
    done
  done
  echo
  echo "Rows with ok=0 (a GET that did not return 64 MiB with HTTP 200) are left out of the medians:" \
       "$(awk -F, 'NR > 1 && $9 != 1' "$CSV" | wc -l) in xen.csv."
} > "$R/XEN.md"
cat "$R/XEN.md"
