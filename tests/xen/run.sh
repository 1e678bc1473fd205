#!/usr/bin/env bash
# tests/xen/run.sh -- the Xen suite: Debian's Xen + a PV dom0 running vpiped + PV domUs running
# vpipe.ko and the vPipe applications, all inside QEMU (TCG: no KVM needed).
#
# usage: run.sh [--build-dir DIR] [--work DIR] [--plain|--stress|--bench|--shell] [--quick|--no-build]
#               [--no-cmake] [--timeout SEC]
#   --build-dir DIR  CMake build dir with the project's binaries (default <repo>/build)
#   --work DIR       images, disks and logs (default BUILD_DIR/xen); the serial log is
#                    WORK/serial.log, the summary of checks WORK/summary.txt
#   --plain          Xen plumbing only (disk, bridge, client namespace; no vPipe)
#   --stress         the stress check only (domUs sharing one physical CPU; the full suite's
#                    first step)
#   --bench          bench/xen.sh's transfers under contention (BENCH_NEIGHBOURS=0:2,
#                    BENCH_REPS=3, BENCH_LOAD=burn|duty:PCT:PERIOD_MS: the neighbours' load; ctest's xen_bench_smoke runs one round with 0 and 1)
#   --shell          set dom0 up, then a shell on the serial console (Ctrl-a x quits QEMU)
#   --quick          re-pack the initramfs (and rebuild vpipe.ko) only; kernels/disks reused
#   --no-build       boot the images as they are
#   --no-cmake       do not `cmake --build` the binaries the images need first
#   --timeout SEC    hard limit for QEMU (default 540)
#   -v, --verbose    show the serial log live (the default when stdout is a terminal)
# env: SMP (QEMU vCPUs, default 2), MEM (MiB, default 1280), DOM0_MEM (default 512M),
#      VPIPED_ARGS, KVER (see build-images.sh), QEMU_CPU (-cpu, default below), XEN_ARGS (more
#      on Xen's command line, e.g. sched=credit), STRESS_DOMUS (default 3), STRESS_SECS (default
#      40 in the full suite, 60 with --stress)
# exit: 0 PASS, 1 FAIL (or timeout), 77 skip (this machine cannot run QEMU/Xen)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BUILD=$REPO/build
W=
MODE=full
BUILDMODE=full
CMAKE=1
TIMEOUT=540
LIVE=0; [ -t 1 ] && LIVE=1
while (($#)); do
  case $1 in
    --build-dir) BUILD=$(realpath "$2"); shift 2 ;;
    --work) W=$2; shift 2 ;;
    --plain) MODE=plain; shift ;;
    --stress) MODE=stress; shift ;;
    --bench) MODE=bench; shift ;;
    --shell) MODE=shell; shift ;;
    --quick) BUILDMODE=quick; shift ;;
    --no-build) BUILDMODE=none; shift ;;
    --no-cmake) CMAKE=0; shift ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    -v|--verbose) LIVE=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
W=${W:-$BUILD/xen}
SMP=${SMP:-2}
MEM=${MEM:-1280}
DOM0_MEM=${DOM0_MEM:-512M}

skip() { log "SKIP: $*"; exit 77; }
if [ "$BUILDMODE" = full ] && [ "$(id -u)" = 0 ]; then
  ensure_packages || log "could not install packages (see above)"
fi
command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64 (apt: qemu-system-x86)"
ls /boot/xen-$XENV-amd64.gz >/dev/null 2>&1 || skip "no /boot/xen-$XENV-amd64.gz (apt: xen-hypervisor-$XENV-amd64)"
[ -x "$XLIB/xl" ] || skip "no $XLIB/xl (apt: xen-utils-$XENV)"
guest_kver >/dev/null || skip "no guest kernel (apt: linux-image-amd64)"
[ -r /dev/urandom ] && [ -w /dev/null ] || skip "no usable /dev"

if [ "$CMAKE" = 1 ] && [ "$BUILDMODE" != none ]; then
  [ -f "$BUILD/build.ninja" ] || [ -f "$BUILD/Makefile" ] ||
    cmake -S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  nice cmake --build "$BUILD" -j2 --target vpiped vpipectl cp-vpipe vpipe-httpd vpipe-proxy vpipe vpipe-preload kmod >/dev/null ||
    die "cmake --build $BUILD failed"
fi
case $BUILDMODE in
  full) "$XEN_DIR/build-images.sh" --build-dir "$BUILD" --work "$W" ;;
  quick) "$XEN_DIR/build-images.sh" --build-dir "$BUILD" --work "$W" --quick ;;
esac
W=$(realpath "$W")
for f in kernel/xen kernel/vmlinux dom0.cpio.gz disks/xvda.img disks/data.img; do
  [ -f "$W/$f" ] || die "$W/$f missing: run without --no-build"
done

# a fresh copy of the domU's disk for every boot (the suite writes to it)
mkdir -p "$W/run"
cp --sparse=always "$W/disks/xvda.img" "$W/run/xvda.img"

XEN_CMD="console=com1 com1=115200,8n1 dom0_mem=$DOM0_MEM,max:$DOM0_MEM dom0_max_vcpus=1 smap=0 spec-ctrl=eager-fpu loglvl=all guest_loglvl=all${XEN_ARGS:+ $XEN_ARGS}"
# smap=0: under QEMU 7.2 TCG dom0 otherwise faults at its first lretq (a PV stack read is done as
# a supervisor access, which SMAP forbids).
# spec-ctrl=eager-fpu: `-cpu max` under TCG is an AMD CPU, on which Xen switches a vCPU's FPU/SSE
# state lazily (CR0.TS, restored at the first #NM). Under TCG that loses state once two vCPUs
# share a physical CPU: domU processes then crash or compute wrong bytes (glibc's SSE string
# functions); restoring the state eagerly at every switch does not (tests/xen/README.md, "stress").
DOM0_CMD="console=hvc0 earlyprintk=xen loglevel=4 rootfstype=ramfs vpipe_xen=$MODE"
[ -n "${STRESS_DOMUS:-}" ] && DOM0_CMD+=" vpipe_stress_domus=$STRESS_DOMUS"
[ -n "${STRESS_SECS:-}" ] && DOM0_CMD+=" vpipe_stress_secs=$STRESS_SECS"
[ -n "${BENCH_NEIGHBOURS:-}" ] && DOM0_CMD+=" vpipe_bench_neighbours=$BENCH_NEIGHBOURS"
[ -n "${BENCH_REPS:-}" ] && DOM0_CMD+=" vpipe_bench_reps=$BENCH_REPS"
[ -n "${BENCH_LOAD:-}" ] && DOM0_CMD+=" vpipe_bench_load=$BENCH_LOAD"
QEMU_CPU=${QEMU_CPU:-max}
QEMU=(qemu-system-x86_64 -accel tcg -cpu "$QEMU_CPU" -m "$MEM" -smp "$SMP"
  -nographic -monitor none -no-reboot
  -device isa-debug-exit,iobase=0xf4,iosize=0x04
  -drive "file=$W/run/xvda.img,if=virtio,format=raw,cache=unsafe"
  -drive "file=$W/disks/data.img,if=virtio,format=raw,readonly=on"
  -kernel "$W/kernel/xen" -append "$XEN_CMD"
  -initrd "$W/kernel/vmlinux $DOM0_CMD,$W/dom0.cpio.gz")

if [ "$MODE" = shell ]; then
  log "shell mode: dom0's shell on this terminal; Ctrl-a x quits QEMU"
  exec "${QEMU[@]}" -serial mon:stdio
fi

LOG=$W/serial.log
SUM=$W/summary.txt
rm -f "$LOG" "$SUM"
log "booting Xen (mode $MODE, -cpu $QEMU_CPU, SMP $SMP, ${MEM} MiB, dom0 $DOM0_MEM, timeout ${TIMEOUT}s); serial log: $LOG"
start=${EPOCHREALTIME/./}
rm -f "$W/qemu.pid" "$W/qemu.rc"
# every line gets the seconds since QEMU started
(
  {
    timeout --kill-after=10 "$TIMEOUT" "${QEMU[@]}" -serial stdio </dev/null 2>&1 &
    echo $! > "$W/qemu.pid"
    qrc=0; wait $! || qrc=$?   # (set -e: QEMU's "PASS" is exit 1)
    echo $qrc > "$W/qemu.rc"
  } | while IFS= read -r line; do
    d=$(( (${EPOCHREALTIME/./} - start) / 10000 ))
    printf '[%4d.%02d] %s\n' $((d / 100)) $((d % 100)) "${line%$'\r'}"
  done | if [ "$LIVE" = 1 ]; then tee "$LOG"; else cat > "$LOG"; fi
) &
RUNNER=$!
# stopped from outside (ctest timeout, Ctrl-C): `timeout` passes SIGTERM on to QEMU
trap '[ -f "$W/qemu.pid" ] && kill -TERM "$(cat "$W/qemu.pid")" 2>/dev/null; wait $RUNNER; exit 1' INT TERM HUP
wait $RUNNER || true
trap - INT TERM HUP
rc=$(cat "$W/qemu.rc" 2>/dev/null || echo 255)
total=$(( (${EPOCHREALTIME/./} - start) / 1000000 ))
{
  echo "qemu -cpu $QEMU_CPU; xen: $XEN_CMD"
  grep -E 'VPIPE-XEN (CHECK|PHASE|RESULT|STRESS|BENCH)' "$LOG" || true
  if grep -q 'VPIPE-XEN CHECK .*: FAIL' "$LOG"; then
    echo "failed checks:"; grep -a 'VPIPE-XEN CHECK .*: FAIL' "$LOG" | sed 's/^/  /'
  fi
  case $rc in
    1) echo "qemu: exit 1 (PASS via isa-debug-exit) after ${total}s" ;;
    3) echo "qemu: exit 3 (FAIL via isa-debug-exit) after ${total}s" ;;
    124|137) echo "qemu: TIMEOUT after ${TIMEOUT}s -- last lines:"; tail -n 25 "$LOG" ;;
    *) echo "qemu: exit $rc after ${total}s (crash? Xen panic?) -- last lines:"; tail -n 40 "$LOG" ;;
  esac
} > "$SUM"
cat "$SUM"
log "serial log: $LOG"
[ "$rc" = 1 ]
