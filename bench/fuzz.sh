#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang, ASan + UBSan) and runs each for a number of
# executions, one after the other on one core, recording what libFuzzer reports at the end into
# bench/results/fuzz.md: executions, exec/s, coverage (cov: edges, ft: features), corpus growth,
# crashes (each crash/leak/timeout input is kept in the work directory and listed).
#   bench/fuzz.sh [--runs N | --time S] [--targets "fuzz_request fuzz_ring ..."] [--out FILE]
#     --runs N     executions per target (default 10000000)
#     --runs-for T=N   N executions for target T only (repeatable; slow targets get fewer)
#     --time S     instead: S seconds per target (-max_total_time; scripts/test.sh uses 20)
#     --out FILE   the table (default bench/results/fuzz.md; "-": stdout only)
# Environment: FUZZ_TIMEOUT (s per input before libFuzzer calls it a hang; default 10: raise it
# on a loaded host, where a starved process is not a hang), BUILD_DIR (default build-fuzz), WORK (default $BUILD_DIR/fuzz-work: the grown
# corpora and crash inputs; the committed seeds in tests/fuzz/corpus are only read).
# Exit status: 1 when any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=10000000
TIME=
declare -A RUNS_FOR=()
TARGETS="fuzz_request fuzz_ring fuzz_xenstore fuzz_control fuzz_engine_config fuzz_agent_config"
OUT=bench/results/fuzz.md
while (($#)); do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --runs-for) RUNS_FOR[${2%%=*}]=${2#*=}; shift 2 ;;
    --time) TIME=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
BUILD_DIR=${BUILD_DIR:-build-fuzz}
WORK=${WORK:-$BUILD_DIR/fuzz-work}
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" -G Ninja -DVPIPE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$BUILD_DIR" -j"${JOBS:-2}" --target $TARGETS >/dev/null

max_len() {   # the request fuzzer's inputs are a ring entry and whole pages
  case "$1" in fuzz_request) echo 20544 ;; *) echo 65536 ;; esac
}

rows=()
failed=0
for t in $TARGETS; do
  mkdir -p "$WORK/$t/corpus" "$WORK/$t/artifacts"
  log="$WORK/$t/run.log"
  start=$(date +%s)
  rc=0
  if [ -n "$TIME" ]; then limit=(-max_total_time="$TIME"); else limit=(-runs="${RUNS_FOR[$t]:-$RUNS}"); fi
  "$BUILD_DIR/bin/$t" "${limit[@]}" -max_len="$(max_len "$t")" -timeout="${FUZZ_TIMEOUT:-10}" -print_final_stats=1 \
      -artifact_prefix="$WORK/$t/artifacts/" "$WORK/$t/corpus" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  corp=$(grep -oE 'corp: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  crashes=$(find "$WORK/$t/artifacts" -type f | wc -l)
  if [ "$rc" != 0 ] || [ "$crashes" != 0 ]; then
    failed=1
    echo "fuzz.sh: $t failed (exit $rc); see $log and $WORK/$t/artifacts/" >&2
  fi
  printf '%s: %s execs, %s exec/s, cov %s, ft %s, %s crashes (%ss)\n' "$t" "${execs:-?}" "${rate:-?}" \
    "${cov:-?}" "${ft:-?}" "$crashes" "$secs" >&2
  rows+=("| \`$t\` | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $crashes | ${secs} |")
done

table() {
  echo "# Fuzzing (bench/fuzz.sh)"
  echo
  echo "libFuzzer + ASan + UBSan (Debian clang $(clang --version | sed -n 's/.*clang version \([0-9.]*\).*/\1/p' | head -1)), one target after another on one core, each started"
  echo "from its seed corpus (tests/fuzz/corpus, make_seeds.py). $(date -u +%Y-%m-%d), $(nproc) cores shared with other work"
  echo "(exec/s are what this machine gave, not a benchmark). cov: edges covered, ft: libFuzzer features,"
  echo "corpus: inputs kept at the end, crashes: inputs that crashed, leaked or timed out."
  echo
  echo "| target | executions | exec/s | cov | ft | corpus | crashes | seconds |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
}
if [ "$OUT" = "-" ]; then table; else table > "$OUT"; echo "fuzz.sh: wrote $OUT" >&2; fi
exit $failed
