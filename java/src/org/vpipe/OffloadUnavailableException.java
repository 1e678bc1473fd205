// SPDX-License-Identifier: MIT
package org.vpipe;

/**
 * vPipe could not offload and fallback is off (VPipe.setFallback(false) or VPIPE_NO_FALLBACK=1):
 * the errnos libvpipe falls back on (libvpipe/src/api.cpp may_fall_back): ENOENT / ECONNREFUSED
 * (no guest component: no /dev/vpipe, no agent socket), EHOSTDOWN (the guest component has no
 * engine), ENXIO (the file is not on a VM disk), EOPNOTSUPP (not offloadable), EALREADY (cache
 * rule). With fallback on, libvpipe would have moved the bytes in the guest instead.
 */
public class OffloadUnavailableException extends VPipeException {
    private static final long serialVersionUID = 1L;

    public OffloadUnavailableException(String message, int errno, String errnoName, String reason) {
        super(message, errno, errnoName, reason);
    }

    static boolean isUnavailable(int errno) {
        String n = VPipe.errnoName(errno);
        return switch (n) {
        case "ENOENT", "ECONNREFUSED", "EHOSTDOWN", "ENXIO", "EOPNOTSUPP", "EALREADY" -> true;
        default -> false;
        };
    }
}
