// SPDX-License-Identifier: MIT
package org.vpipe;

import static org.junit.jupiter.api.Assertions.*;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.FileChannel;
import java.nio.channels.IllegalBlockingModeException;
import java.nio.channels.NonReadableChannelException;
import java.nio.channels.NonWritableChannelException;
import java.nio.channels.NotYetConnectedException;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.Random;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Without a guest component (ctest points VPIPE_AGENT_SOCKET at nothing): argument checks, the
 * exceptions, and the fallback made visible. The offloads themselves: tests/lab/java.
 */
class VPipeTest {
    @TempDir Path dir;
    ServerSocketChannel server;
    SocketChannel client, accepted;
    boolean fallbackBefore;

    @BeforeEach
    void setUp() throws IOException {
        fallbackBefore = VPipe.setFallback(true);
        VPipe.setMinOffload(0);
        server = ServerSocketChannel.open().bind(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0));
        client = SocketChannel.open(server.getLocalAddress());
        accepted = server.accept();
    }

    @AfterEach
    void tearDown() throws IOException {
        VPipe.setFallback(fallbackBefore);
        for (var c : new java.io.Closeable[] {client, accepted, server})
            if (c != null) c.close();
    }

    static byte[] data(int n, long seed) {
        byte[] b = new byte[n];
        new Random(seed).nextBytes(b);
        return b;
    }

    Path file(String name, byte[] content) throws IOException {
        return Files.write(dir.resolve(name), content);
    }

    FileChannel rd(Path p) throws IOException {
        return FileChannel.open(p, StandardOpenOption.READ);
    }

    FileChannel wr(Path p) throws IOException {
        return FileChannel.open(p, StandardOpenOption.WRITE, StandardOpenOption.CREATE);
    }

    static byte[] readN(SocketChannel s, int n) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(n);
        while (b.hasRemaining())
            if (s.read(b) < 0) break;
        return Arrays.copyOf(b.array(), b.position());
    }

    // ---- arguments -------------------------------------------------------------------------

    @Test
    void negativePositionsAndCountsAreIllegalArguments() throws IOException {
        long ops0 = VPipe.stats().ops;
        try (FileChannel f = rd(file("a", data(10, 1))); FileChannel o = wr(dir.resolve("o"))) {
            var e = assertThrows(IllegalArgumentException.class, () -> VPipe.fileToSocket(f, -1, 1, client));
            assertEquals("negative position: -1", e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> VPipe.fileToSocket(f, 0, -5, client));
            assertThrows(IllegalArgumentException.class, () -> VPipe.socketToFile(accepted, o, -1, 1));
            assertThrows(IllegalArgumentException.class, () -> VPipe.socketToSocket(accepted, client, -1));
            assertThrows(IllegalArgumentException.class, () -> VPipe.fileToFile(f, -1, 1, o, 0));
            assertThrows(IllegalArgumentException.class, () -> VPipe.fileToFile(f, 0, 1, o, -1));
            assertThrows(IllegalArgumentException.class, () -> VPipe.fileToSocket(f, 0, 1, client, 8));
        }
        assertEquals(ops0, VPipe.stats().ops, "the checks come before libvpipe is called");
    }

    @Test
    void nullChannelsAreNullPointers() throws IOException {
        try (FileChannel f = rd(file("a", data(10, 1)))) {
            assertThrows(NullPointerException.class, () -> VPipe.fileToSocket(null, 0, 1, client));
            assertThrows(NullPointerException.class, () -> VPipe.fileToSocket(f, 0, 1, null));
        }
    }

    @Test
    void closedChannelsAreClosedChannelExceptions() throws IOException {
        FileChannel f = rd(file("a", data(10, 1)));
        f.close();
        assertThrows(ClosedChannelException.class, () -> VPipe.fileToSocket(f, 0, 1, client));
        try (FileChannel g = rd(file("b", data(10, 1)))) {
            client.close();
            assertThrows(ClosedChannelException.class, () -> VPipe.fileToSocket(g, 0, 1, client));
        }
    }

    @Test
    void nonBlockingSocketIsIllegalBlockingMode() throws IOException {
        byte[] d = data(4096, 2);
        try (FileChannel f = rd(file("a", d))) {
            client.configureBlocking(false);
            assertThrows(IllegalBlockingModeException.class, () -> VPipe.fileToSocket(f, 0, d.length, client));
            // ALLOW_NONBLOCKING: accepted, and completed synchronously
            assertEquals(d.length, VPipe.fileToSocket(f, 0, d.length, client, VPipe.ALLOW_NONBLOCKING));
            assertArrayEquals(d, readN(accepted, d.length));
            assertFalse(client.isBlocking(), "the channel's mode is left as it was");
        }
    }

    @Test
    void unconnectedSocketIsNotYetConnected() throws IOException {
        try (FileChannel f = rd(file("a", data(10, 1))); SocketChannel s = SocketChannel.open()) {
            assertThrows(NotYetConnectedException.class, () -> VPipe.fileToSocket(f, 0, 1, s));
        }
    }

    @Test
    void accessModesAreCheckedLikeTransferTo() throws IOException {
        Path a = file("a", data(10, 1));
        try (FileChannel w = wr(a); FileChannel r = rd(a)) {
            assertThrows(NonReadableChannelException.class, () -> VPipe.fileToSocket(w, 0, 1, client));
            assertThrows(NonReadableChannelException.class, () -> VPipe.fileToFile(w, 0, 1, w, 0));
            assertThrows(NonWritableChannelException.class, () -> VPipe.socketToFile(accepted, r, 0, 1));
            assertThrows(NonWritableChannelException.class, () -> VPipe.fileToFile(r, 0, 1, r, 0));
        }
    }

    // ---- the fallback, visible -----------------------------------------------------------------

    @Test
    void fileToSocketFallsBackVisiblyAndKeepsThePosition() throws IOException {
        byte[] d = data(300_000, 3);
        VPipe.Stats before = VPipe.stats();
        try (FileChannel f = rd(file("a", d))) {
            f.position(7);
            assertEquals(d.length - 100, VPipe.fileToSocket(f, 100, d.length - 100, client));
            assertEquals(7, f.position(), "like transferTo, the channel's position is not changed");
            assertArrayEquals(Arrays.copyOfRange(d, 100, d.length), readN(accepted, d.length - 100));
        }
        VPipe.Result r = VPipe.lastResult();
        assertEquals(VPipe.Result.Path.FALLBACK, r.path, r.toString());
        assertFalse(r.reason.isEmpty(), r.toString());
        assertEquals(d.length - 100, r.moved);
        assertEquals(d.length - 100, r.guestCopied);
        assertEquals(0, r.offloaded);
        VPipe.Stats after = VPipe.stats();
        assertEquals(before.opsFallback + 1, after.opsFallback, after.toString());
        assertEquals(before.bytesGuest + d.length - 100, after.bytesGuest);
    }

    @Test
    void socketToFileAndSocketToSocketFallBack() throws IOException {
        byte[] d = data(200_000, 4);
        Path o = dir.resolve("o");
        try (FileChannel out = FileChannel.open(o, StandardOpenOption.WRITE, StandardOpenOption.CREATE,
                     StandardOpenOption.READ)) {
            Thread t = new Thread(() -> {
                try {
                    client.write(ByteBuffer.wrap(d));
                } catch (IOException e) {
                    throw new RuntimeException(e);
                }
            });
            t.start();
            assertEquals(d.length, VPipe.socketToFile(accepted, out, 5000, d.length));
            join(t);
            assertEquals(0, out.position());
            assertEquals(VPipe.Result.Path.FALLBACK, VPipe.lastResult().path);
        }
        byte[] got = Files.readAllBytes(o);
        assertArrayEquals(d, Arrays.copyOfRange(got, 5000, got.length));
        // socket -> socket: client -> accepted (relay) -> second pair
        try (ServerSocketChannel s2 = ServerSocketChannel.open().bind(
                     new InetSocketAddress(InetAddress.getLoopbackAddress(), 0));
             SocketChannel c2 = SocketChannel.open(s2.getLocalAddress()); SocketChannel a2 = s2.accept()) {
            Thread t = new Thread(() -> {
                try {
                    client.write(ByteBuffer.wrap(d));
                } catch (IOException e) {
                    throw new RuntimeException(e);
                }
            });
            t.start();
            assertEquals(d.length, VPipe.socketToSocket(accepted, c2, d.length));
            join(t);
            assertArrayEquals(d, readN(a2, d.length));
            assertEquals(VPipe.Result.Path.FALLBACK, VPipe.lastResult().path);
        }
    }

    @Test
    void fileToFileFallsBack() throws IOException {
        byte[] d = data(123_457, 5);
        Path o = dir.resolve("copy");
        try (FileChannel in = rd(file("a", d)); FileChannel out = wr(o)) {
            assertEquals(d.length, VPipe.fileToFile(in, 0, d.length + 1000, out, 0), "short count at EOF");
        }
        assertArrayEquals(d, Files.readAllBytes(o));
        assertEquals(VPipe.Result.Path.FALLBACK, VPipe.lastResult().path);
    }

    @Test
    void withoutFallbackTheCallerGetsOffloadUnavailable() throws IOException {
        VPipe.setFallback(false);
        assertFalse(VPipe.setFallback(false), "setFallback returns the previous setting");
        byte[] d = data(1000, 6);
        try (FileChannel in = rd(file("a", d)); FileChannel out = wr(dir.resolve("o"))) {
            var e = assertThrows(OffloadUnavailableException.class, () -> VPipe.fileToFile(in, 0, d.length, out, 0));
            // no guest component here: the agent socket does not exist
            assertEquals("ENOENT", e.errnoName(), e.getMessage());
            assertTrue(e.reason().startsWith("no vPipe guest component"), e.reason());
            assertTrue(e.getMessage().startsWith("vpipe_file_to_file_fd: " + e.errnoName() + " ("), e.getMessage());
            VPipe.Result r = VPipe.lastResult();
            assertEquals(VPipe.Result.Path.FAILED, r.path, r.toString());
            assertEquals(e.errno(), r.error);
        }
        assertEquals(0, Files.size(dir.resolve("o")));
    }

    @Test
    void errnoNames() {
        assertEquals("EPIPE", VPipe.errnoName(32));
        assertEquals("ECONNRESET", VPipe.errnoName(104));
        assertEquals("errno 9999", VPipe.errnoName(9999));
    }

    static void join(Thread t) {
        try {
            t.join();
        } catch (InterruptedException e) {
            throw new RuntimeException(e);
        }
    }
}
