// SPDX-License-Identifier: MIT
package org.vpipe;

import java.io.IOException;

/** A libvpipe operation failed: the errno (number and name) and libvpipe's reason. */
public class VPipeException extends IOException {
    private static final long serialVersionUID = 1L;
    private final int errno;
    private final String errnoName;
    private final String reason;

    public VPipeException(String message, int errno, String errnoName, String reason) {
        super(message);
        this.errno = errno;
        this.errnoName = errnoName;
        this.reason = reason == null ? "" : reason;
    }

    /** The errno of the failure (Linux numbering). */
    public int errno() {
        return errno;
    }

    /** Its symbolic name: "EPIPE", "ECONNRESET", ... */
    public String errnoName() {
        return errnoName;
    }

    /** libvpipe's reason (vpipe_last_result), "" if it gave none. */
    public String reason() {
        return reason;
    }
}
