// SPDX-License-Identifier: MIT
package org.vpipe.lab;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.Random;

import org.vpipe.VPipe;
import org.vpipe.VPipeException;

/**
 * The Java side of tests/lab/java: one mode per run, in a lab VM (the vPipe calls, fallback off)
 * (fallback on only where asked) or on the client host (the peers). A VPipeException is printed
 * as one "ERROR class=… errno=… | message | lastResult" line, exit status 3. Every side prints one line the test parses: the byte count
 * and the SHA-256 of the bytes it sent, received or wrote.
 *
 * <pre>
 *   vm:     f2s FILE SIZE SEED OFF LEN PORT [fallback]  write FILE, serve [OFF, OFF+LEN) with fileToSocket
 *           s2f FILE POS LEN PORT                receive LEN bytes into FILE at POS with socketToFile
 *           s2s INPORT OUTHOST OUTPORT LEN       relay LEN bytes with socketToSocket
 *           f2f SRC DST SIZE SEED INOFF LEN OUTOFF  write SRC, copy with fileToFile
 *   client: recv HOST PORT                       read to EOF
 *           send HOST PORT LEN SEED              send LEN bytes, then read to EOF
 *           peer HOST PORT LISTENPORT LEN SEED   s2s's both ends: send to HOST:PORT, receive on LISTENPORT
 * </pre>
 */
public final class LabDriver {
    private static final int CHUNK = 1 << 20;

    public static void main(String[] a) throws Exception {
        try {
            run(a);
        } catch (VPipeException e) {
            // what a caller sees: the class, the errno's name, the message with libvpipe's reason
            System.out.println("ERROR class=" + e.getClass().getSimpleName() + " errno=" + e.errnoName() + " | "
                    + e.getMessage() + " | " + VPipe.lastResult());
            System.exit(3);
        }
    }

    static void run(String[] a) throws Exception {
        switch (a[0]) {
        case "f2s" -> f2s(a[1], l(a[2]), l(a[3]), l(a[4]), l(a[5]), (int) l(a[6]),
                a.length > 7 && a[7].equals("fallback"));
        case "s2f" -> s2f(a[1], l(a[2]), l(a[3]), (int) l(a[4]));
        case "s2s" -> s2s((int) l(a[1]), a[2], (int) l(a[3]), l(a[4]));
        case "f2f" -> f2f(a[1], a[2], l(a[3]), l(a[4]), l(a[5]), l(a[6]), l(a[7]));
        case "recv" -> {
            try (SocketChannel s = connect(a[1], (int) l(a[2]))) {
                recvAll(s, Long.MAX_VALUE, "RECV");
            }
        }
        case "send" -> {
            try (SocketChannel s = connect(a[1], (int) l(a[2]))) {
                sendStream(s, l(a[3]), l(a[4]), "SENT");
                s.shutdownOutput();
                recvAll(s, Long.MAX_VALUE, "TAIL");
            }
        }
        case "peer" -> peer(a[1], (int) l(a[2]), (int) l(a[3]), l(a[4]), l(a[5]));
        default -> throw new IllegalArgumentException("unknown mode " + a[0]);
        }
    }

    static long l(String s) {
        return Long.parseLong(s);
    }

    static MessageDigest sha() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    static String hex(MessageDigest md) {
        return HexFormat.of().formatHex(md.digest());
    }

    // fallback off: an operation dom0 cannot do fails instead of being done in the guest
    static void offloadOnly() {
        VPipe.setFallback(false);
        VPipe.setMinOffload(0);
    }

    static void result(String op, long n, String extra) {
        System.out.println("RESULT op=" + op + " n=" + n + " " + extra + " " + VPipe.lastResult() + " | "
                + VPipe.stats());
        System.out.flush();
    }

    static ServerSocketChannel listen(int port) throws IOException {
        ServerSocketChannel s = ServerSocketChannel.open();
        s.setOption(java.net.StandardSocketOptions.SO_REUSEADDR, true);
        s.bind(new InetSocketAddress(port));
        System.out.println("READY " + port);
        System.out.flush();
        return s;
    }

    static SocketChannel connect(String host, int port) throws Exception {
        for (int i = 0;; i++) {
            try {
                return SocketChannel.open(new InetSocketAddress(host, port));
            } catch (IOException e) {
                if (i > 300) throw e;
                Thread.sleep(20);
            }
        }
    }

    // writes SIZE bytes of stream SEED to PATH (fsync), returns the SHA-256 of [off, off+len)
    static String writeFile(String path, long size, long seed, long off, long len) throws IOException {
        MessageDigest md = sha();
        Random r = new Random(seed);
        byte[] b = new byte[CHUNK];
        try (FileChannel f = FileChannel.open(Path.of(path), StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                StandardOpenOption.TRUNCATE_EXISTING)) {
            for (long pos = 0; pos < size;) {
                int k = (int) Math.min(CHUNK, size - pos);
                r.nextBytes(b);
                long s = Math.max(pos, off), e = Math.min(pos + k, off + len);
                if (s < e) md.update(b, (int) (s - pos), (int) (e - s));
                ByteBuffer bb = ByteBuffer.wrap(b, 0, k);
                while (bb.hasRemaining()) f.write(bb);
                pos += k;
            }
            f.force(true);
        }
        return hex(md);
    }

    static String hashRange(FileChannel f, long off, long len) throws IOException {
        MessageDigest md = sha();
        ByteBuffer b = ByteBuffer.allocate(CHUNK);
        for (long pos = off; pos < off + len;) {
            b.clear().limit((int) Math.min(CHUNK, off + len - pos));
            int n = f.read(b, pos);
            if (n <= 0) break;
            md.update(b.array(), 0, n);
            pos += n;
        }
        return hex(md);
    }

    static void sendStream(SocketChannel s, long len, long seed, String tag) throws IOException {
        MessageDigest md = sha();
        Random r = new Random(seed);
        byte[] b = new byte[CHUNK];
        for (long done = 0; done < len;) {
            int k = (int) Math.min(CHUNK, len - done);
            r.nextBytes(b);
            md.update(b, 0, k);
            ByteBuffer bb = ByteBuffer.wrap(b, 0, k);
            while (bb.hasRemaining()) s.write(bb);
            done += k;
        }
        System.out.println(tag + " n=" + len + " sha=" + hex(md));
        System.out.flush();
    }

    static void recvAll(SocketChannel s, long max, String tag) throws IOException {
        MessageDigest md = sha();
        ByteBuffer b = ByteBuffer.allocate(CHUNK);
        long n = 0;
        while (n < max) {
            b.clear().limit((int) Math.min(CHUNK, max - n));
            int k = s.read(b);
            if (k < 0) break;
            md.update(b.array(), 0, k);
            n += k;
        }
        System.out.println(tag + " n=" + n + " sha=" + hex(md));
        System.out.flush();
    }

    static void f2s(String file, long size, long seed, long off, long len, int port, boolean fallback)
            throws Exception {
        String want = writeFile(file, size, seed, off, len);
        if (fallback) {
            VPipe.setFallback(true);
            VPipe.setMinOffload(0);
        } else {
            offloadOnly();
        }
        try (ServerSocketChannel ss = listen(port); SocketChannel s = ss.accept();
             FileChannel f = FileChannel.open(Path.of(file), StandardOpenOption.READ)) {
            long n = VPipe.fileToSocket(f, off, len, s);
            result("file_to_socket", n, "want_sha=" + want + " position=" + f.position());
        }
    }

    static void s2f(String file, long pos, long len, int port) throws Exception {
        offloadOnly();
        try (ServerSocketChannel ss = listen(port); SocketChannel s = ss.accept();
             FileChannel f = FileChannel.open(Path.of(file), StandardOpenOption.CREATE, StandardOpenOption.READ,
                     StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
            long n = VPipe.socketToFile(s, f, pos, len);
            result("socket_to_file", n, "sha=" + hashRange(f, pos, len) + " size=" + f.size() + " position="
                    + f.position());
        }
    }

    static void s2s(int inPort, String outHost, int outPort, long len) throws Exception {
        offloadOnly();
        try (ServerSocketChannel ss = listen(inPort); SocketChannel in = ss.accept();
             SocketChannel out = connect(outHost, outPort)) {
            long n = VPipe.socketToSocket(in, out, len);
            result("socket_to_socket", n, "");
        }
    }

    static void f2f(String src, String dst, long size, long seed, long inOff, long len, long outOff)
            throws Exception {
        String want = writeFile(src, size, seed, inOff, len);
        offloadOnly();
        try (FileChannel in = FileChannel.open(Path.of(src), StandardOpenOption.READ);
             FileChannel out = FileChannel.open(Path.of(dst), StandardOpenOption.CREATE, StandardOpenOption.READ,
                     StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
            long n = VPipe.fileToFile(in, inOff, len, out, outOff);
            result("file_to_file", n, "want_sha=" + want + " sha=" + hashRange(out, outOff, len) + " size="
                    + out.size());
        }
    }

    static void peer(String host, int port, int listenPort, long len, long seed) throws Exception {
        try (ServerSocketChannel ss = ServerSocketChannel.open()) {
            ss.setOption(java.net.StandardSocketOptions.SO_REUSEADDR, true);
            ss.bind(new InetSocketAddress(listenPort));
            try (SocketChannel toVm = connect(host, port)) {
                Thread t = new Thread(() -> {
                    try {
                        sendStream(toVm, len, seed, "SENT");
                    } catch (IOException e) {
                        System.out.println("SENDFAIL " + e);
                    }
                });
                t.start();
                try (SocketChannel fromVm = ss.accept()) {
                    recvAll(fromVm, Long.MAX_VALUE, "RECV");
                }
                t.join();
            }
        }
    }
}
