#!/usr/bin/env bash
# Installs the Debian packages vPipe needs (first run only) and builds everything into build/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "vPipe's build installs Debian packages and its lab needs root: run as root (sudo $0)" >&2
  exit 1
fi
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" >/dev/null
cmake --build build -j"$(nproc)"
