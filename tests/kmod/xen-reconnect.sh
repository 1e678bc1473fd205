#!/usr/bin/env bash
# vpipe.ko's reconnect on real Xen (docs/protocol.md §5d): vpiped is stopped (SIGTERM: backend
# Closed) and started again (InitWait) while a domU's module is Connected and a cp-vpipe loop
# runs in it (tests/xen's "victim" role). Drives dom0's shell of tests/xen/run.sh --shell with
# timed commands. PASS when the frontend was Connected before, is Connected again (with the
# backend) after the restart, and copies after the reconnect succeed (no cp-vpipe failure).
# While the engine is away, calls fail fast (EHOSTDOWN / ECANCELED for one in flight).
# usage: xen-reconnect.sh --build-dir DIR   (images built by tests/xen/run.sh --build-dir DIR)
# exit: 0 PASS, 1 FAIL, 77 skip. Timing-based (TCG): ~5.5 min of QEMU.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=$REPO/build
[ "${1:-}" = --build-dir ] && BUILD=$(realpath "$2")
[ -f "$BUILD/xen/dom0.cpio.gz" ] || { echo "SKIP: no images in $BUILD/xen (run tests/xen/run.sh --build-dir $BUILD first)"; exit 77; }
LOG=$BUILD/xen/reconnect.log
G=/var/log/xen/console/guest-d1.log
drive() {  # short lines, one at a time: the emulated serial line drops characters of long ones
  s() { sleep "$1"; }
  l() { echo "$1"; sleep 2; }
  s 50
  l 'D=/local/domain/1; F=$D/device/vpipe/0/state'
  l 'B=/local/domain/0/backend/vpipe/1/0/state'
  l "C=\$D/data/copies; G=$G"
  l 'x() { xenstore-read $1 2>/dev/null || echo none; }'
  l 'n() { grep -ac "loop: exit" $G; }'
  l 'A=$(cat /etc/vpipe/vpiped.args)'
  l 'vpiped $A >/tmp/v1.log 2>&1 &'
  s 10
  l '/scenario.sh mkcfg d1 victim >/etc/d1.cfg'
  l 'xl create /etc/d1.cfg'
  s 70
  l 'echo RC BEFORE $(x $F) $(x $C)'
  l 'kill -TERM $(pidof vpiped)'
  s 8
  l 'echo RC STOPPED $(x $F)'
  s 8
  l 'vpiped $A >/tmp/v2.log 2>&1 &'
  s 25
  l 'echo RC AFTER $(x $F) $(x $B) $(x $C) $(n)'
  s 30
  l 'echo RC LATER $(x $C) $(n)'
  l 'tail -4 /tmp/v2.log'
  s 10
}
drive | timeout 330 "$REPO/tests/xen/run.sh" --build-dir "$BUILD" --shell --no-build > "$LOG" 2>&1
rc() { grep -a "^RC $1 " "$LOG" | tr -d '\r' | tail -1 | cut -d' ' -f3-; }
read -r b_state b_copies <<<"$(rc BEFORE)"
read -r s_state <<<"$(rc STOPPED)"
read -r a_front a_back a_copies a_fails <<<"$(rc AFTER)"
read -r l_copies l_fails <<<"$(rc LATER)"
echo "before: frontend ${b_state:-?}, copies ${b_copies:-?}; engine stopped: frontend ${s_state:-?};" \
     "restarted: frontend ${a_front:-?} backend ${a_back:-?}, copies ${a_copies:-?} -> ${l_copies:-?}," \
     "failures after the reconnect $(( ${l_fails:-0} - ${a_fails:-0} ))"
if [ "${b_state:-}" = 4 ] && [ "${s_state:-4}" != 4 ] && [ "${a_front:-}" = 4 ] && [ "${a_back:-}" = 4 ] &&
   [ "${l_copies:-0}" -gt "${a_copies:-0}" ] && [ "${l_fails:-1}" = "${a_fails:-0}" ]; then
  echo "XEN RECONNECT: PASS (log $LOG)"; exit 0
fi
echo "XEN RECONNECT: FAIL (log $LOG)"; exit 1
