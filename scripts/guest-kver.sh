#!/usr/bin/env bash
# Prints the guest kernel release the QEMU suites boot (and build vpipe.ko for): $KVER if set,
# else the one Debian's linux-image-amd64 depends on, else the newest installed *-amd64 kernel.
# Exits 1 when there is none (callers skip).
set -euo pipefail
if [ -n "${KVER:-}" ]; then echo "$KVER"; exit 0; fi
k=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null |
    grep -oE 'linux-image-[0-9][^ ,]*' | head -1 | sed 's/^linux-image-//') || true
[ -n "$k" ] || k=$(ls /lib/modules 2>/dev/null | sort -V | grep -- '-amd64$' | tail -1) || true
[ -n "$k" ] && [ -e "/boot/vmlinuz-$k" ] || exit 1
echo "$k"
