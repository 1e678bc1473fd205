#!/usr/bin/env bash
# The lab demo: builds vPipe, brings up a lab VM, copies a freshly written 256 MiB file with
# cp-vpipe (dom0 moves the blocks) and compares it with cp, then tears the lab down.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
exec build/bin/vpipe-lab demo "$@"
