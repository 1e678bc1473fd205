// The Xen transport's host side (docs/protocol.md 5c): the guest's ring page mapped with
// libxengnttab for as long as the channel lives, descriptor pages moved with grant copy (never
// mapped: a grant the guest names is copied out once, or refused), and one interdomain event
// channel bound with libxenevtchn for both directions.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "host_channel.h"

struct xengntdev_handle;
struct xenevtchn_handle;

namespace vpipe::xen {

class XenHostChannel final : public engine::HostChannel {
public:
    enum class Failure { kNone, kGnttab, kRingMap, kEvtchn };

    // Maps `ring_ref` of `domid` and binds its unbound port `event_channel`. nullptr on
    // failure, with *failure and *why (nothing stays mapped or bound).
    static std::unique_ptr<XenHostChannel> open(uint32_t domid, uint32_t ring_ref,
                                                uint32_t event_channel, Failure* failure,
                                                std::string* why);
    ~XenHostChannel() override;  // unbinds the port, unmaps the ring

    vpipe_back_ring_t& ring() override { return back_; }
    int copy_desc_page(uint32_t gref, void* dst) override;
    int write_desc_page(uint32_t gref, uint32_t offset, const void* src, uint32_t len) override;
    int read_desc_word(uint32_t gref, uint32_t offset, uint64_t* value) override;
    void notify_guest() override;
    int event_fd() const override { return event_fd_; }
    void ack_events() override;
    std::string describe() const override;

    uint64_t grant_copy_failures() const { return copy_failures_; }

private:
    XenHostChannel() = default;

    uint32_t domid_ = 0, ring_ref_ = 0, remote_port_ = 0, local_port_ = 0;
    xengntdev_handle* gnttab_ = nullptr;
    xenevtchn_handle* evtchn_ = nullptr;
    void* ring_page_ = nullptr;
    int event_fd_ = -1;
    vpipe_back_ring_t back_{};
    std::atomic<uint64_t> copy_failures_{0};
};

}  // namespace vpipe::xen
