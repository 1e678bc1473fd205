#!/usr/bin/env bash
# Regenerates bench/results/ from a clean build: micro-benchmarks (Google Benchmark, CSV), the lab
# scenarios (CSV), gnuplot PNGs and SUMMARY.md. Needs root (the lab). Every ratio is taken
# within one run, under identical conditions (the paths compared run back to back in one lab),
# never across runs.
#   bench/run.sh [--quick] [all]   everything but soak and xen (default; the full run takes ~35 min on
#                                  2 cores): micro, handover, fig4, inplace, scale, fairness, apps
#                                  (apps last: its builds are the likeliest to fail, and a failed
#                                  part stops the run; `bench/run.sh summary` re-plots what is there)
#   bench/run.sh micro             only the micro-benchmarks
#   bench/run.sh scenarios         Fig 4(a-d) + Fig 6 CPU, Fig 5 sizes, op-size sweep, ceiling,
#                                  profiles, scale
#   bench/run.sh fig4 | scale      only those lab scenarios (fig4: both neighbour models, the
#                                  model column of fig4.csv; FIG4_MODELS=hypervisor: only the
#                                  hypervisor rows, the others kept)
#   bench/run.sh fairness          only the sharing-dom0 experiment (Fig 7)
#   bench/run.sh handover          only the hand-over benchmarks (latency sweep, wrk, httperf:
#                                  latency.csv, wrk.csv, httperf.csv, HANDOVER.md; ~12 min)
#   bench/run.sh inplace           only new files vs overwrites in place (inplace.csv: the share of
#                                  the zero-fill of a new destination; ~5 min)
#   bench/run.sh apps              only the real applications: wrk against lighttpd stock vs on
#                                  vPipe, small-request p50/p99 under large downloads, Pound
#                                  stock vs POUND_VPIPE=1 (apps.csv, APPS.md; ~10 min; builds the
#                                  patched lighttpd and Pound, POUND_GIT=<clone of pound> if
#                                  Debian's pool lacks pound 4.16-3)
#   bench/run.sh soak              only the overload soak (SOAK.md, soak.csv; SOAK_SECONDS=600,
#                                  --quick 60): exits non-zero when it did not pass
#   bench/run.sh profile           only the profiles (profile/: ss, strace, perf of the losses)
#   bench/run.sh summary           only re-plot and rewrite SUMMARY.md from the CSVs
#   bench/run.sh [--quick] xen     real Xen under QEMU (bench/xen.sh: xen.csv, XEN.md, xen_fig4.png;
#                                  both schedulers x both neighbour loads, busy loops and
#                                  lookbusy-like: ~90 min, --quick ~6 min); boots QEMU: run it
#                                  under the lab lock
# --quick: fewer conditions, sizes and repetitions (a smoke run of every code path, ~6 min).
# Environment: BUILD_DIR (default build, built with scripts/build.sh; any other dir is built
# with cmake --build), FIG4_MIB (512), REPS (2: repetitions with the unlimited link), REPS_LINK (1);
# FIG4_NEIGHBOURS ("0 1 2 3"), FIG4_LINKS ("0 1000": unlimited, 1 Gbit/s), FIG4_EXTRA (1: the size
# sweeps and profiles of the 0- and 2-neighbour labs), FIG4_MODELS ("shares hypervisor": how the
# busy neighbours delay the VM, vpipe-lab up --neighbour-model) select a part of Fig 4.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
what=all
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    *) what=$a ;;
  esac
done
# real Xen has its own driver (it boots the Xen suite's images, no lab)
if [ "$what" = xen ]; then exec bench/xen.sh "$@"; fi
BUILD_DIR=${BUILD_DIR:-build}
if [ "$what" != summary ]; then
  if [ "$BUILD_DIR" = build ]; then
    scripts/build.sh
  else
    [ -f "$BUILD_DIR/build.ninja" ] || cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    # only what the benchmarks run (the rest of the tree may be mid-change by others)
    nice cmake --build "$BUILD_DIR" -j2 --target vpipe vpiped vpipectl vpipe-guestd vpipe-lab vpipe-httpd vpipe-proxy \
      cp-vpipe vpipe-bench-tool bench_ring bench_page_pool bench_tcp_repair bench_fiemap bench_steering bench_handover \
      test_fairness >/dev/null
  fi
fi
B=$PWD/$BUILD_DIR/bin
R=bench/results
mkdir -p "$R"
TMPD=$(mktemp -d /tmp/vpipe-bench-XXXXXX)
chmod 755 "$TMPD"
START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
START_TIME=$(date +%s)
cleanup() {
  stop_servers 2>/dev/null || true
  "$B/vpipe-lab" info >/dev/null 2>&1 && [ "${LAB_MINE:-0}" = 1 ] && "$B/vpipe-lab" down >/dev/null 2>&1
  rm -rf "$TMPD"
  true
}
trap cleanup EXIT

machine() {
  echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
}

# micro.csv: one header for all binaries; each binary's counter columns (its own CSV header)
# are mapped by name onto the union of all counter names, so p50_us/p99_us (bench_steering,
# bench_handover) and segments or requests/s land in their own columns.
run_micro() {
  for b in bench_ring bench_page_pool bench_tcp_repair bench_fiemap bench_steering bench_handover; do
    "$B/$b" --benchmark_format=csv --benchmark_min_time=0.5 2>/dev/null | grep -E '^(name|")' > "$TMPD/micro_$b.csv"
  done
  awk -F, 'FNR == 1 { delete col; for (i = 11; i <= NF; i++) { col[i] = $i; if (!($i in seen)) { seen[$i] = ++nc; names[nc] = $i } }
                      if (!base) base = $1 "," $2 "," $3 "," $4 "," $5 "," $6 "," $7 "," $8 "," $9 "," $10; next }
           { line = $1; for (i = 2; i <= 10; i++) line = line "," $i
             delete v; for (i = 11; i <= NF; i++) if (i in col) v[seen[col[i]]] = $i
             rows[++nr] = line; for (k = 1; k <= nc; k++) if (k in v) val[nr, k] = v[k] }
           END { h = base; for (k = 1; k <= nc; k++) h = h "," names[k]; print h
                 for (r = 1; r <= nr; r++) { line = rows[r]; for (k = 1; k <= nc; k++) line = line "," val[r, k]; print line } }' \
    "$TMPD"/micro_bench_ring.csv "$TMPD"/micro_bench_page_pool.csv "$TMPD"/micro_bench_tcp_repair.csv \
    "$TMPD"/micro_bench_fiemap.csv "$TMPD"/micro_bench_steering.csv "$TMPD"/micro_bench_handover.csv > "$R/micro.csv"
}

lab_wait_free() {  # one lab per host: wait for another user's lab to go away
  for _ in $(seq 1 120); do "$B/vpipe-lab" info >/dev/null 2>&1 || return 0; sleep 5; done
  echo "bench: a lab stayed up for 10 minutes; giving up" >&2; exit 1
}

# CPU time (ns) used so far by a lab cgroup, v1 (cpuacct) or v2 (cpu.stat).
cg_cpu_ns() {
  local name=$1
  if [ -f "/sys/fs/cgroup/cpuacct/vpipe-lab/$name/cpuacct.usage" ]; then
    cat "/sys/fs/cgroup/cpuacct/vpipe-lab/$name/cpuacct.usage"
  else
    awk '/usage_usec/ {print $2 * 1000}' "/sys/fs/cgroup/vpipe-lab/$name/cpu.stat"
  fi
}

now() { date +%s.%N; }

# shellcheck source=bench/scenarios.sh
. bench/scenarios.sh
# shellcheck source=bench/summary.sh
. bench/summary.sh
# shellcheck source=bench/handover.sh
. bench/handover.sh
# shellcheck source=bench/soak.sh
. bench/soak.sh
# shellcheck source=bench/inplace.sh
. bench/inplace.sh
# shellcheck source=bench/apps.sh
. bench/apps.sh

# Fig 7: 3 VMs (weights 1:1:2) serving files with vpipe-httpd --mode vpipe over a shaped link;
# shares measured on the client every 250 ms. With VPIPE_BENCH_RESULTS the lab test writes
# fairness.csv / fairness.png there and asserts the figures (shares within ±5 %, the link's use);
# under ctest it only checks what holds on any box (progress, shares ordered like the weights).
run_fairness() {
  lab_wait_free
  VPIPE_BENCH_RESULTS="$PWD/$R" "$B/test_fairness" --gtest_color=no | tee "$TMPD/fairness.log" | grep -E '^\[ (SHARES|  FAILED|       OK) ' || true
}

case "$what" in
  micro) run_micro ;;
  scenarios) run_fig4; run_scale ;;
  fig4) run_fig4 ;;
  scale) run_scale ;;
  fairness) run_fairness ;;
  handover) run_handover ;;
  soak) run_soak ;;
  inplace) run_inplace ;;
  apps) run_apps ;;
  profile) run_profile_only ;;
  summary) ;;
  all) run_micro; run_handover; run_fig4; run_inplace; run_scale; run_fairness; run_apps ;;
  *) echo "usage: bench/run.sh [--quick] [all|micro|scenarios|fig4|inplace|scale|fairness|handover|apps|soak|profile|summary|xen]" >&2; exit 2 ;;
esac
ELAPSED=$(($(date +%s) - START_TIME))
set +e   # a plotting or formatting problem must not lose the measurements
# what the last full run was like (SUMMARY.md quotes it also after partial re-runs)
[ "$what" = all ] && echo "$ELAPSED|$START_LOAD|$QUICK|$(date -u +%Y-%m-%dT%H:%MZ)" > "$R/run_info.txt"
# and of each part run since (a part's tables are from its newest run): one line per part
part=$what
case " ${FIG4_MODELS:-shares} " in *" shares "*) ;; *) [ "$what" = fig4 ] && part="fig4-${FIG4_MODELS// /-}" ;; esac
if [ "$what" != summary ]; then
  { grep -v "^$part|" "$R/runs.txt" 2>/dev/null || true; echo "$part|$(date -u +%Y-%m-%dT%H:%MZ)|$ELAPSED|$START_LOAD|$QUICK"; } > "$TMPD/runs.txt"
  sort "$TMPD/runs.txt" > "$R/runs.txt"
fi
plots
summary
echo "bench: results in $R/ (SUMMARY.md), $ELAPSED s"
