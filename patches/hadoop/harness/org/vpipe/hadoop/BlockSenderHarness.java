// SPDX-License-Identifier: MIT
package org.vpipe.hadoop;

import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.Random;
import java.util.zip.CRC32C;

import org.vpipe.VPipe;

/**
 * What the patched HDFS DataNode does when it serves a block (patches/hadoop), without Hadoop:
 * written from the block format and the wire shapes, not from Hadoop's code.
 *
 * <p>serve: writes a block file and its .meta file (BlockMetadataHeader's shape: version short,
 * checksum type byte, bytesPerChecksum int, then one CRC32C per 512-byte chunk), accepts one
 * reader, reads its request (offset, length), and sends like BlockSender.sendPacket with
 * transferTo on: the checksum header (type, bytesPerChecksum), then packets of at most
 * {@code packetData} bytes (64 KiB: TRANSFERTO_BUFFER_SIZE), each a packet header (payload length
 * int, header length short, PacketHeaderProto in protobuf wire format: offsetInBlock, seqno,
 * lastPacketInBlock, dataLen), the chunks' checksums from the .meta file, written on the
 * socket channel left non-blocking as Hadoop's SocketOutputStream leaves it (a selector waits when
 * it is full), then the data with {@code VPipe.fileToSocket(..., ALLOW_NONBLOCKING)} (mode vpipe)
 * or FileChannel.transferTo (mode transferTo, the unpatched DataNode), and an empty last packet.
 *
 * <p>read: the client: sends the request, checks every packet (offsets, seqnos, lengths, the last
 * packet) and every chunk's CRC32C, and prints the SHA-256 of the data.
 *
 * <pre>
 *   serve DIR BLOCKLEN SEED PORT vpipe|transferTo [PACKETDATA]
 *   read HOST PORT OFFSET LENGTH
 * </pre>
 */
public final class BlockSenderHarness {
    static final int BYTES_PER_CHECKSUM = 512;
    static final int CHECKSUM_SIZE = 4;
    static final byte TYPE_CRC32C = 2;          // DataChecksum.Type: NULL 0, CRC32 1, CRC32C 2
    static final short META_VERSION = 1;
    static final int META_HEADER = 2 + 1 + 4;
    static final String BLOCK = "blk_1073741825", META = "blk_1073741825_1001.meta";

    public static void main(String[] a) throws Exception {
        switch (a[0]) {
        case "serve" -> serve(Path.of(a[1]), Long.parseLong(a[2]), Long.parseLong(a[3]), Integer.parseInt(a[4]),
                a[5].equals("vpipe"), a.length > 6 ? Integer.parseInt(a[6]) : 64 * 1024);
        case "read" -> System.exit(read(a[1], Integer.parseInt(a[2]), Long.parseLong(a[3]), Long.parseLong(a[4])));
        default -> throw new IllegalArgumentException(a[0]);
        }
    }

    // ---- the DataNode side ----------------------------------------------------------------------

    static void writeBlock(Path dir, long len, long seed) throws IOException {
        Random r = new Random(seed);
        byte[] chunk = new byte[BYTES_PER_CHECKSUM];
        ByteBuffer sums = ByteBuffer.allocate(META_HEADER + (int) ((len + 511) / 512) * CHECKSUM_SIZE);
        sums.putShort(META_VERSION).put(TYPE_CRC32C).putInt(BYTES_PER_CHECKSUM);
        try (FileChannel b = FileChannel.open(dir.resolve(BLOCK), StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                StandardOpenOption.TRUNCATE_EXISTING)) {
            for (long pos = 0; pos < len; pos += BYTES_PER_CHECKSUM) {
                int k = (int) Math.min(BYTES_PER_CHECKSUM, len - pos);
                r.nextBytes(chunk);
                CRC32C c = new CRC32C();
                c.update(chunk, 0, k);
                sums.putInt((int) c.getValue());
                ByteBuffer bb = ByteBuffer.wrap(chunk, 0, k);
                while (bb.hasRemaining()) b.write(bb);
            }
            b.force(true);
        }
        try (FileChannel m = FileChannel.open(dir.resolve(META), StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                StandardOpenOption.TRUNCATE_EXISTING)) {
            sums.flip();
            while (sums.hasRemaining()) m.write(sums);
            m.force(true);
        }
    }

    // PacketHeaderProto in protobuf's wire format (fields 1, 2: sfixed64; 3: bool; 4: sfixed32)
    static byte[] packetHeader(int payloadLen, long offsetInBlock, long seqno, boolean last, int dataLen) {
        ByteBuffer p = ByteBuffer.allocate(25).order(ByteOrder.LITTLE_ENDIAN);
        p.put((byte) 0x09).putLong(offsetInBlock).put((byte) 0x11).putLong(seqno);
        p.put((byte) 0x18).put((byte) (last ? 1 : 0)).put((byte) 0x25).putInt(dataLen);
        ByteBuffer h = ByteBuffer.allocate(4 + 2 + 25);   // big-endian lengths, as DataOutputStream
        h.putInt(payloadLen).putShort((short) 25).put(p.array());
        return h.array();
    }

    // a write on the non-blocking channel that waits in a selector when the socket is full
    // (what Hadoop's SocketOutputStream does)
    static void writeFully(SocketChannel s, ByteBuffer b, Selector sel) throws IOException {
        while (b.hasRemaining()) {
            if (s.write(b) > 0) continue;
            SelectionKey k = s.register(sel, SelectionKey.OP_WRITE);
            sel.select(60_000);
            k.cancel();
            sel.selectNow();   // deregisters the cancelled key now
        }
    }

    static void serve(Path dir, long blockLen, long seed, int port, boolean vpipe, int packetData) throws Exception {
        writeBlock(dir, blockLen, seed);
        VPipe.setFallback(false);   // every packet must go through dom0
        VPipe.setMinOffload(0);
        final int maxChunks = Math.max(1, packetData / BYTES_PER_CHECKSUM);
        try (ServerSocketChannel ss = ServerSocketChannel.open()) {
            ss.setOption(java.net.StandardSocketOptions.SO_REUSEADDR, true);
            ss.bind(new InetSocketAddress(port));
            System.out.println("READY " + port);
            System.out.flush();
            try (SocketChannel s = ss.accept(); Selector sel = Selector.open();
                 FileChannel block = FileChannel.open(dir.resolve(BLOCK), StandardOpenOption.READ);
                 FileChannel meta = FileChannel.open(dir.resolve(META), StandardOpenOption.READ)) {
                DataInputStream req = new DataInputStream(s.socket().getInputStream());
                long startOffset = req.readLong(), length = req.readLong();
                s.configureBlocking(false);
                if (startOffset < 0 || length < 0 || startOffset + length > blockLen)
                    throw new IOException("offset " + startOffset + " and length " + length + " don't match block");
                long offset = startOffset - startOffset % BYTES_PER_CHECKSUM;   // chunk aligned
                long end = startOffset + length;
                if (end % BYTES_PER_CHECKSUM != 0) end = Math.min(blockLen, end + BYTES_PER_CHECKSUM - end % BYTES_PER_CHECKSUM);
                writeFully(s, ByteBuffer.allocate(5).put(TYPE_CRC32C).putInt(BYTES_PER_CHECKSUM).flip(), sel);
                long seqno = 0, packets = 0, dataBytes = 0, vpipeCalls = 0, offloadedBytes = 0;
                MessageDigest md = MessageDigest.getInstance("SHA-256");
                for (;;) {
                    int dataLen = (int) Math.min(end - offset, (long) BYTES_PER_CHECKSUM * maxChunks);
                    int numChunks = (dataLen + BYTES_PER_CHECKSUM - 1) / BYTES_PER_CHECKSUM;
                    int checksumLen = numChunks * CHECKSUM_SIZE;
                    byte[] hdr = packetHeader(dataLen + checksumLen + 4, offset, seqno, dataLen == 0, dataLen);
                    ByteBuffer out = ByteBuffer.allocate(hdr.length + checksumLen).put(hdr);
                    long sumPos = META_HEADER + offset / BYTES_PER_CHECKSUM * CHECKSUM_SIZE;
                    while (out.hasRemaining()) {
                        if (meta.read(out, sumPos + out.position() - hdr.length) < 0) throw new EOFException("meta");
                    }
                    writeFully(s, out.flip(), sel);   // header and checksums with the socket's stream
                    if (dataLen > 0) {
                        long sent;
                        if (vpipe) {
                            sent = VPipe.fileToSocket(block, offset, dataLen, s, VPipe.ALLOW_NONBLOCKING);
                            VPipe.Result r = VPipe.lastResult();
                            if (!r.offloaded()) throw new IOException("packet " + seqno + " not offloaded: " + r);
                            vpipeCalls++;
                            offloadedBytes += r.offloaded;
                        } else {
                            sent = 0;
                            while (sent < dataLen) {
                                long n = block.transferTo(offset + sent, dataLen - sent, s);
                                if (n == 0) {
                                    SelectionKey k = s.register(sel, SelectionKey.OP_WRITE);
                                    sel.select(60_000);
                                    k.cancel();
                                    sel.selectNow();
                                }
                                sent += n;
                            }
                        }
                        if (sent != dataLen) throw new EOFException("short send " + sent + " of " + dataLen);
                        ByteBuffer d = ByteBuffer.allocate(dataLen);
                        while (d.hasRemaining()) block.read(d, offset + d.position());
                        md.update(d.array());
                    }
                    packets++;
                    seqno++;
                    offset += dataLen;
                    dataBytes += dataLen;
                    if (dataLen == 0) break;   // the empty packet marks the end of the block
                }
                // the reader closes when it saw the last packet
                s.configureBlocking(true);
                s.read(ByteBuffer.allocate(1));
                System.out.println("SERVED packets=" + packets + " bytes=" + dataBytes + " sha="
                        + HexFormat.of().formatHex(md.digest()) + " vpipe_calls=" + vpipeCalls + " offloaded="
                        + offloadedBytes + " | " + VPipe.stats());
            }
        }
    }

    // ---- the reader (DFSClient's side) ------------------------------------------------------------

    static int read(String host, int port, long offset, long length) throws Exception {
        SocketChannel s = null;
        for (int i = 0; s == null; i++) {
            try {
                s = SocketChannel.open(new InetSocketAddress(host, port));
            } catch (IOException e) {
                if (i > 300) throw e;
                Thread.sleep(20);
            }
        }
        try (SocketChannel c = s) {
            c.write(ByteBuffer.allocate(16).putLong(offset).putLong(length).flip());
            DataInputStream in = new DataInputStream(new java.io.BufferedInputStream(c.socket().getInputStream(), 1 << 16));
            byte type = in.readByte();
            int bpc = in.readInt();
            if (type != TYPE_CRC32C || bpc != BYTES_PER_CHECKSUM) return bad("checksum header " + type + "/" + bpc);
            long expectOffset = offset - offset % bpc, seqno = 0, bytes = 0, packets = 0;
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            for (;;) {
                int payloadLen = in.readInt();
                short hlen = in.readShort();
                byte[] proto = new byte[hlen];
                in.readFully(proto);
                ByteBuffer p = ByteBuffer.wrap(proto).order(ByteOrder.LITTLE_ENDIAN);
                if (hlen != 25 || p.get() != 0x09) return bad("header shape, length " + hlen);
                long off = p.getLong();
                if (p.get() != 0x11) return bad("seqno tag");
                long sq = p.getLong();
                if (p.get() != 0x18) return bad("last tag");
                boolean last = p.get() != 0;
                if (p.get() != 0x25) return bad("dataLen tag");
                int dataLen = p.getInt();
                int chunks = (dataLen + bpc - 1) / bpc;
                if (payloadLen != dataLen + chunks * CHECKSUM_SIZE + 4) return bad("payload length " + payloadLen);
                if (off != expectOffset || sq != seqno) return bad("packet " + sq + " at " + off + ", expected " + seqno + " at " + expectOffset);
                if (last != (dataLen == 0)) return bad("lastPacketInBlock " + last + " with " + dataLen + " bytes");
                byte[] sums = new byte[chunks * CHECKSUM_SIZE], data = new byte[dataLen];
                in.readFully(sums);
                in.readFully(data);
                ByteBuffer sb = ByteBuffer.wrap(sums);
                for (int i = 0; i < chunks; i++) {
                    CRC32C crc = new CRC32C();
                    int k = Math.min(bpc, dataLen - i * bpc);
                    crc.update(data, i * bpc, k);
                    if (sb.getInt() != (int) crc.getValue()) return bad("checksum of chunk at " + (off + (long) i * bpc));
                }
                md.update(data);
                bytes += dataLen;
                expectOffset += dataLen;
                packets++;
                seqno++;
                if (last) break;
            }
            System.out.println("READ packets=" + packets + " bytes=" + bytes + " sha=" + HexFormat.of().formatHex(md.digest())
                    + " first=" + (offset - offset % bpc));
            return 0;
        }
    }

    static int bad(String what) {
        System.out.println("BAD " + what);
        return 1;
    }
}
