// Turns mapped extents into ring requests: splits one operation into requests that each move
// at most `chunk_bytes` and fit the descriptor pages, and writes their descriptor streams.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <vpipe/abi/ring.h>

#include "files/extent_map.h"

namespace vpipe::agent {

struct RingChunk {
    uint64_t stream_offset = 0;    // where this request starts in the operation's byte stream
    uint64_t length = 0;
    std::vector<uint8_t> desc;     // descriptor stream (vpipe_desc_header + segments)
};

// Merges physically contiguous neighbours (and neighbouring holes) so that no boundary
// survives that the filesystem did not put there.
std::vector<Segment> coalesce(const std::vector<Segment>& segs);

// file -> file: `src` and `dst` each describe exactly `length` bytes.
// max_segments is the per-request limit (VPIPE_DESC_MAX_SEGMENTS; smaller in tests).
std::vector<RingChunk> build_file_to_file(const FileExtents& src, const FileExtents& dst,
                                          uint64_t length, uint64_t chunk_bytes,
                                          size_t max_segments = VPIPE_DESC_MAX_SEGMENTS);

// One socket request (file->socket, socket->file, socket->socket): the descriptor stream
// names `nr_pages` = VPIPE_DESC_MAX_PAGES pages so that dom0 has room to write the final
// connection state and its queues back. `file` (the file endpoint, or nullptr) is sliced to
// stream bytes [file_offset, file_offset + length). Socket states are copied with queue
// lengths 0 and carry_offset set: the carry area starts 8-aligned after the stream; with two
// sockets the source gets the first half. Throws std::invalid_argument if the slice needs more
// than max_socket_segments() segments.
struct SocketChunk {
    std::vector<uint8_t> desc;
    uint32_t nr_pages = VPIPE_DESC_MAX_PAGES;
};
// carry room kept free for dom0's results in every socket request
inline constexpr uint32_t kMinCarryRoom = 16384;
size_t max_socket_segments();
SocketChunk build_socket_request(uint8_t op, const FileExtents* file, uint64_t file_offset,
                                 uint64_t length, const vpipe_tcp_state* src,
                                 const vpipe_tcp_state* dst);
// The result dom0 wrote for one endpoint, read from the request's pages after the response.
struct SocketResult {
    uint32_t flags = 0;                // VPIPE_EPF_*
    vpipe_tcp_state st{};
    std::vector<uint8_t> sndq, rcvq;
};
// Parses `pages` (nr_pages * 4096 bytes read back); -EPROTO if dom0 wrote something
// inconsistent (lengths outside the room).
int read_socket_result(std::span<const uint8_t> pages, bool source, SocketResult* out);

}  // namespace vpipe::agent
