// The engine's side of one VM's ring, whatever shares it: the shm transport (a sealed memfd and
// eventfds, handed over a unix socket) or Xen (a grant-mapped ring page, grant copies of the
// descriptor pages, an interdomain event channel). VmService speaks only this interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <vpipe/abi/ring.h>

#include "transport/shm_channel.h"

namespace vpipe::engine {

class HostChannel {
public:
    virtual ~HostChannel() = default;

    // The back ring over the shared page. Its private indexes are guarded by the caller.
    virtual vpipe_back_ring_t& ring() = 0;
    // Copies descriptor page `page` (a guest-supplied number: an index into the shm area, a
    // grant reference on Xen) into `dst` (VPIPE_PAGE_SIZE bytes). -EINVAL when the guest named
    // a page it does not have. Called from worker threads concurrently.
    virtual int copy_desc_page(uint32_t page, void* dst) = 0;
    // Writes `len` bytes at `offset` of descriptor page `page` (results for the guest).
    virtual int write_desc_page(uint32_t page, uint32_t offset, const void* src, uint32_t len) = 0;
    // Reads the naturally aligned 64-bit word at `offset` of descriptor page `page` as the guest
    // has it now (a live field such as the preparing watermark, never a private copy).
    virtual int read_desc_word(uint32_t page, uint32_t offset, uint64_t* value) = 0;
    virtual void notify_guest() = 0;
    // Readable (POLLIN) when the guest notified us; never blocks a poll loop on its own.
    virtual int event_fd() const = 0;
    // Consumes pending notifications (and re-arms them) so the next poll blocks. Non-blocking.
    virtual void ack_events() = 0;
    // A descriptor whose POLLIN/POLLHUP means the guest side is gone; -1 when there is none
    // (Xen: the backend learns that from xenstore).
    virtual int control_fd() const { return -1; }
    virtual std::string describe() const = 0;
};

// The shm transport's host side behind the interface.
std::unique_ptr<HostChannel> wrap_shm(std::unique_ptr<transport::ShmHostChannel> shm);

enum class RingTake {
    kDrained,    // took every request the guest published
    kStalled,    // stopped: every response slot is promised (RING_REQUEST_CONS_OVERFLOW)
    kOverflow,   // the guest's req_prod claims more requests than the ring holds, or moved back
};

// Copies the requests the guest published out of the shared ring, each exactly once
// (RING_COPY_REQUEST), advancing req_cons. Checks the producer index the guest wrote
// (RING_REQUEST_PROD_OVERFLOW) before trusting any entry, and never takes more requests than
// there are free response slots. The caller holds whatever guards the back ring's indexes.
RingTake take_requests(vpipe_back_ring_t& back, std::vector<vpipe_request>* out);

}  // namespace vpipe::engine
