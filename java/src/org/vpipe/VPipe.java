// SPDX-License-Identifier: MIT
package org.vpipe;

import java.io.IOException;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.FileChannel;
import java.nio.channels.IllegalBlockingModeException;
import java.nio.channels.NonReadableChannelException;
import java.nio.channels.NonWritableChannelException;
import java.nio.channels.NotYetConnectedException;
import java.nio.channels.SocketChannel;
import java.util.Objects;

/**
 * vPipe from Java: the four operations of libvpipe ({@code vpipe.h}) on NIO channels.
 *
 * <pre>
 *   long n = VPipe.fileToSocket(fileChannel, position, count, socketChannel); // instead of transferTo
 * </pre>
 *
 * <p>The descriptors are taken from the channels themselves (the {@code FileDescriptor} inside
 * the JDK's {@code FileChannelImpl} and {@code SocketChannelImpl}, read in JNI, so no
 * {@code --add-opens} is needed). Channels of other implementations are refused with
 * {@link UnsupportedOperationException}.
 *
 * <p>Semantics, as libvpipe's:
 * <ul>
 * <li>Every call blocks until {@code count} bytes moved, the source ended (short count) or an error
 *     occurred. A short count after some bytes moved is returned; the next call reports the error.
 * <li>Positions: like {@link FileChannel#transferTo} and {@link FileChannel#transferFrom}, the
 *     file channels' own positions are <em>not</em> read or changed; the explicit position is used.
 * <li>Socket channels must be connected and in blocking mode, else
 *     {@link NotYetConnectedException} / {@link IllegalBlockingModeException}. A caller that keeps
 *     a channel non-blocking for its own selector (Hadoop's {@code SocketOutputStream}) passes
 *     {@link #ALLOW_NONBLOCKING}: the call then still completes synchronously (libvpipe blocks on
 *     non-blocking descriptors too). During the call the channel's {@code blockingLock()} is held.
 * <li>vPipe moves IPv4 TCP connections. The JDK makes AF_INET6 (dual-stack) sockets by default,
 *     also for IPv4 peers: run the JVM with {@code -Djava.net.preferIPv4Stack=true}, else socket
 *     operations fail with EOPNOTSUPP (or fall back) and the exception says so.
 * <li>A socket operation hands the connection to dom0 and back: afterwards the same descriptor
 *     number holds the (restored) connection. Nothing else may use the channel meanwhile.
 * <li>Errors: {@link VPipeException} (an {@link IOException}) with the errno's name, its text and
 *     libvpipe's reason; {@link OffloadUnavailableException} when vPipe cannot offload and fallback
 *     is off. Bad arguments get the exceptions {@code FileChannel.transferTo} would throw.
 * <li>Fallback: when vPipe cannot offload, libvpipe moves the bytes in the guest (unless
 *     {@link #setFallback(boolean) setFallback(false)}); {@link #lastResult()} tells which path the
 *     last call on this thread took and why, {@link #stats()} counts them.
 * </ul>
 *
 * <p>The native library {@code libvpipejni.so} is loaded from the path in the system property
 * {@code org.vpipe.library} if set, else from {@code java.library.path}.
 */
public final class VPipe {
    /** Flag: accept a socket channel in non-blocking mode (the call still blocks until done). */
    public static final int ALLOW_NONBLOCKING = 1;

    static {
        String path = System.getProperty("org.vpipe.library");
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else {
            System.loadLibrary("vpipejni");
        }
    }

    private VPipe() {}

    // ---- the operations ------------------------------------------------------------------------

    /** file → socket: {@code count} bytes of {@code src} from {@code position} to {@code dst}. */
    public static long fileToSocket(FileChannel src, long position, long count, SocketChannel dst)
            throws IOException {
        return fileToSocket(src, position, count, dst, 0);
    }

    public static long fileToSocket(FileChannel src, long position, long count, SocketChannel dst, int flags)
            throws IOException {
        checkFile(src, "src", true, false);
        checkRange(position, count);
        Object lock = socketLock(dst, "dst", flags);
        synchronized (lock) {
            checkSocket(dst, flags);
            return result(nFileToSocket(src, position, count, dst), "vpipe_file_to_socket_fd", dst);
        }
    }

    /** socket → file: {@code count} bytes from {@code src} into {@code dst} at {@code position}. */
    public static long socketToFile(SocketChannel src, FileChannel dst, long position, long count)
            throws IOException {
        return socketToFile(src, dst, position, count, 0);
    }

    public static long socketToFile(SocketChannel src, FileChannel dst, long position, long count, int flags)
            throws IOException {
        checkFile(dst, "dst", false, true);
        checkRange(position, count);
        Object lock = socketLock(src, "src", flags);
        synchronized (lock) {
            checkSocket(src, flags);
            return result(nSocketToFile(src, dst, position, count), "vpipe_socket_to_file_fd", src);
        }
    }

    /** socket → socket: {@code count} bytes from one connection to the other. */
    public static long socketToSocket(SocketChannel src, SocketChannel dst, long count) throws IOException {
        return socketToSocket(src, dst, count, 0);
    }

    public static long socketToSocket(SocketChannel src, SocketChannel dst, long count, int flags)
            throws IOException {
        checkRange(0, count);
        Object lockIn = socketLock(src, "src", flags);
        Object lockOut = socketLock(dst, "dst", flags);
        if (lockIn == lockOut) throw new IllegalArgumentException("src and dst are the same channel");
        // a fixed order, so two calls on the same pair in opposite directions cannot deadlock
        boolean inFirst = System.identityHashCode(lockIn) <= System.identityHashCode(lockOut);
        synchronized (inFirst ? lockIn : lockOut) {
            synchronized (inFirst ? lockOut : lockIn) {
                checkSocket(src, flags);
                checkSocket(dst, flags);
                return result(nSocketToSocket(src, dst, count), "vpipe_socket_to_socket_fd", src, dst);
            }
        }
    }

    /**
     * file → file: {@code count} bytes of {@code src} from {@code srcPosition} to {@code dst} at
     * {@code dstPosition}. Past the source's end: a short count. Past the destination's end: it grows.
     */
    public static long fileToFile(FileChannel src, long srcPosition, long count, FileChannel dst, long dstPosition)
            throws IOException {
        checkFile(src, "src", true, false);
        checkFile(dst, "dst", false, true);
        checkRange(srcPosition, count);
        checkRange(dstPosition, 0);
        return result(nFileToFile(src, srcPosition, count, dst, dstPosition), "vpipe_file_to_file_fd");
    }

    // ---- how it went ---------------------------------------------------------------------------

    /** How the last operation of this thread went (vpipe_last_result). */
    public static Result lastResult() {
        long[] v = new long[10];
        String reason = nLastResult(v);
        return new Result(v, reason == null ? "" : reason);
    }

    /** true: fall back to a guest copy when offload is impossible; false: throw instead. Returns the previous setting. */
    public static boolean setFallback(boolean enabled) {
        return nSetFallback(enabled);
    }

    /** The offload threshold in bytes (shorter operations take the guest's path unless fallback is off). */
    public static long minOffload() {
        return nMinOffload();
    }

    /** Sets the offload threshold; returns the previous one. */
    public static long setMinOffload(long bytes) {
        if (bytes < 0) throw new IllegalArgumentException("negative threshold");
        return nSetMinOffload(bytes);
    }

    /** This process's counters since libvpipe was loaded (vpipe_get_stats). */
    public static Stats stats() {
        long[] v = new long[9];
        nStats(v);
        return new Stats(v);
    }

    /** The outcome of one operation (struct vpipe_result). */
    public static final class Result {
        public enum Path { NONE, OFFLOADED, FALLBACK, FAILED }

        public final Path path;
        /** errno of the failure or of the offload that fell back, 0 if none. */
        public final int error;
        /** errno's name (EPIPE, ...), "" if none. */
        public final String errorName;
        /** why it fell back or failed, "" when offloaded. */
        public final String reason;
        public final long moved, offloaded, guestCopied, zeroFilled;
        public final int requests, paths;
        public final long hdtrMoved;

        Result(long[] v, String reason) {
            int p = (int) v[0];
            this.path = p >= 1 && p <= 3 ? Path.values()[p] : Path.NONE;
            this.error = (int) v[1];
            this.errorName = error != 0 ? nErrnoName(error) : "";
            this.reason = reason;
            this.moved = v[2];
            this.offloaded = v[3];
            this.guestCopied = v[4];
            this.zeroFilled = v[5];
            this.requests = (int) v[6];
            this.paths = (int) v[7];
            this.hdtrMoved = v[8];
        }

        public boolean offloaded() {
            return path == Path.OFFLOADED;
        }

        @Override
        public String toString() {
            return "path=" + path + " moved=" + moved + " offloaded=" + offloaded + " guest=" + guestCopied
                    + " zero_filled=" + zeroFilled + " requests=" + requests + " paths=0x" + Integer.toHexString(paths)
                    + (error != 0 ? " error=" + errorName : "") + (reason.isEmpty() ? "" : " reason=\"" + reason + "\"");
        }
    }

    /** Process-wide counters (struct vpipe_stats). */
    public static final class Stats {
        public final long ops, opsOffloaded, opsFallback, opsFailed, opsBelowThreshold, bytesOffloaded, bytesGuest,
                bytesZeroFilled, opsGuestCache;

        Stats(long[] v) {
            ops = v[0];
            opsOffloaded = v[1];
            opsFallback = v[2];
            opsFailed = v[3];
            opsBelowThreshold = v[4];
            bytesOffloaded = v[5];
            bytesGuest = v[6];
            bytesZeroFilled = v[7];
            opsGuestCache = v[8];
        }

        @Override
        public String toString() {
            return "ops=" + ops + " offloaded=" + opsOffloaded + " fallback=" + opsFallback + " failed=" + opsFailed
                    + " below_threshold=" + opsBelowThreshold + " bytes_offloaded=" + bytesOffloaded
                    + " bytes_guest=" + bytesGuest + " bytes_zero_filled=" + bytesZeroFilled
                    + " guest_cache=" + opsGuestCache;
        }
    }

    /** errno's symbolic name ("EPIPE"), or "errno N" for an unknown one. */
    public static String errnoName(int errno) {
        return nErrnoName(errno);
    }

    // ---- checks ---------------------------------------------------------------------------------

    private static void checkRange(long position, long count) {
        if (position < 0) throw new IllegalArgumentException("negative position: " + position);
        if (count < 0) throw new IllegalArgumentException("negative count: " + count);
    }

    // O_ACCMODE of the channel's descriptor, as FileChannel.transferTo checks its own mode
    private static void checkFile(FileChannel ch, String what, boolean read, boolean write) throws IOException {
        Objects.requireNonNull(ch, what);
        if (!ch.isOpen()) throw new ClosedChannelException();
        int mode = nAccessMode(ch);
        if (mode < 0) throw exception(-mode, "fcntl(F_GETFL)");
        boolean readable = mode == 0 /* O_RDONLY */ || mode == 2 /* O_RDWR */;
        boolean writable = mode == 1 /* O_WRONLY */ || mode == 2;
        if (read && !readable) throw new NonReadableChannelException();
        if (write && !writable) throw new NonWritableChannelException();
    }

    private static Object socketLock(SocketChannel ch, String what, int flags) {
        Objects.requireNonNull(ch, what);
        if ((flags & ~ALLOW_NONBLOCKING) != 0) throw new IllegalArgumentException("unknown flags: " + flags);
        return ch.blockingLock();
    }

    // under ch.blockingLock(): the mode cannot change until the call returns
    private static void checkSocket(SocketChannel ch, int flags) throws IOException {
        if (!ch.isOpen()) throw new ClosedChannelException();
        if (!ch.isConnected()) throw new NotYetConnectedException();
        if (!ch.isBlocking() && (flags & ALLOW_NONBLOCKING) == 0) throw new IllegalBlockingModeException();
    }

    private static long result(long r, String op, SocketChannel... sockets) throws IOException {
        if (r >= 0) return r;
        String hint = "";
        for (SocketChannel s : sockets)
            if (nErrnoName((int) -r).equals("EOPNOTSUPP") && nIsInet6(s))
                hint = " (an AF_INET6 socket: vPipe moves IPv4 connections; Java makes AF_INET6 sockets unless "
                        + "the JVM runs with -Djava.net.preferIPv4Stack=true)";
        throw exception((int) -r, op, hint);
    }

    private static VPipeException exception(int errno, String op) {
        return exception(errno, op, "");
    }

    private static VPipeException exception(int errno, String op, String hint) {
        String reason = nLastReason() + hint;
        String name = nErrnoName(errno), text = nStrerror(errno);
        String msg = op + ": " + name + " (" + text + ")" + (reason == null || reason.isEmpty() ? "" : ": " + reason);
        if (OffloadUnavailableException.isUnavailable(errno))
            return new OffloadUnavailableException(msg, errno, name, reason);
        return new VPipeException(msg, errno, name, reason);
    }

    // ---- native (java/native/vpipe_jni.c); operations return bytes moved or -errno -------------

    private static native long nFileToSocket(FileChannel src, long position, long count, SocketChannel dst);
    private static native long nSocketToFile(SocketChannel src, FileChannel dst, long position, long count);
    private static native long nSocketToSocket(SocketChannel src, SocketChannel dst, long count);
    private static native long nFileToFile(FileChannel src, long srcPosition, long count, FileChannel dst,
                                           long dstPosition);
    private static native int nAccessMode(FileChannel ch);
    private static native boolean nIsInet6(SocketChannel ch);
    private static native String nLastResult(long[] out);
    private static native String nLastReason();
    private static native boolean nSetFallback(boolean enabled);
    private static native long nMinOffload();
    private static native long nSetMinOffload(long bytes);
    private static native void nStats(long[] out);
    private static native String nErrnoName(int errno);
    private static native String nStrerror(int errno);
}
