// The shm transport: a vPipe ring in a sealed memfd, eventfd kicks both ways, handed to dom0
// over a unix socket (protocol in vpipe/abi/shm.h). Both ends speak the ring through Xen's
// ring.h macros, exactly as the Xen transport does; only page sharing and notification differ.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <vpipe/abi/ring.h>
#include <vpipe/abi/shm.h>

#include "util/unique_fd.h"

namespace vpipe::transport {

// Mapped shared area: page 0 is the ring, pages 1..desc_pages the descriptor area.
class ShmMapping {
public:
    ShmMapping() = default;
    ShmMapping(void* base, size_t bytes) : base_(base), bytes_(bytes) {}
    ShmMapping(const ShmMapping&) = delete;
    ShmMapping& operator=(const ShmMapping&) = delete;
    ShmMapping(ShmMapping&& o) noexcept;
    ShmMapping& operator=(ShmMapping&& o) noexcept;
    ~ShmMapping();

    vpipe_sring* sring() const { return static_cast<vpipe_sring*>(base_); }
    uint8_t* desc_page(uint32_t index) const {
        return static_cast<uint8_t*>(base_) + VPIPE_PAGE_SIZE * (1 + static_cast<size_t>(index));
    }
    uint32_t desc_pages() const {
        return bytes_ ? static_cast<uint32_t>(bytes_ / VPIPE_PAGE_SIZE - 1) : 0;
    }

private:
    void* base_ = nullptr;
    size_t bytes_ = 0;
};

// Signals the other side: one eventfd write. Errors are ignored on purpose: a full counter
// still wakes the reader, and a dead peer is noticed through the control socket.
void kick(int eventfd);
// Consumes pending kicks so the next poll() blocks again.
void drain_kicks(int eventfd);

// Guest side (frontend). Owns the ring memory; dom0 maps it.
class ShmGuestChannel {
public:
    // Creates the ring and connects it to dom0 through `channel_path`. 0 or -errno
    // (-ECONNREFUSED/-ENOENT: no engine; -EPROTO: the engine refused the handshake).
    static int open(const std::string& channel_path, uint32_t desc_pages,
                    std::unique_ptr<ShmGuestChannel>* out);

    vpipe_front_ring_t& ring() { return front_; }
    uint8_t* desc_page(uint32_t index) const { return map_.desc_page(index); }
    uint32_t desc_pages() const { return map_.desc_pages(); }
    uint32_t max_inflight() const { return max_inflight_; }

    void notify_dom0() { kick(kick_dom0_.get()); }
    int event_fd() const { return kick_guest_.get(); }     // readable: dom0 kicked us
    int control_fd() const { return control_.get(); }      // POLLHUP/readable EOF: dom0 gone

private:
    ShmMapping map_;
    vpipe_front_ring_t front_{};
    UniqueFd memfd_, kick_dom0_, kick_guest_, control_;
    uint32_t max_inflight_ = 0;
};

// dom0 side (backend). Maps the guest's ring; trusts nothing in it.
class ShmHostChannel {
public:
    // Runs the handshake on an accepted connection: checks magic/version/size/seals, maps the
    // memory, answers with a welcome. On refusal the welcome carries the error, the
    // connection is closed and -errno returned.
    static int accept(UniqueFd conn, uint32_t max_inflight, std::unique_ptr<ShmHostChannel>* out);

    vpipe_back_ring_t& ring() { return back_; }
    uint32_t desc_pages() const { return map_.desc_pages(); }
    // Copies descriptor page `index` (a guest-supplied number) out of shared memory.
    // -EINVAL when the index is outside the descriptor area.
    int copy_desc_page(uint32_t index, void* dst) const;
    // Writes `len` bytes at `offset` of descriptor page `index` (results for the guest).
    int write_desc_page(uint32_t index, uint32_t offset, const void* src, uint32_t len) const;
    // One naturally aligned 64-bit word of descriptor page `index`, loaded atomically (acquire):
    // a field the guest updates while dom0 works. -EINVAL outside the area or unaligned.
    int read_desc_word(uint32_t index, uint32_t offset, uint64_t* value) const;

    void notify_guest() { kick(kick_guest_.get()); }
    int event_fd() const { return kick_dom0_.get(); }
    int control_fd() const { return control_.get(); }

private:
    ShmMapping map_;
    vpipe_back_ring_t back_{};
    UniqueFd kick_dom0_, kick_guest_, control_;
};

}  // namespace vpipe::transport
