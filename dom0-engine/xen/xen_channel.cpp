#include "xen_channel.h"

#include <fcntl.h>
#include <sys/mman.h>

extern "C" {
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xen/grant_table.h>
}

#include <cerrno>
#include <cstring>

namespace vpipe::xen {

std::unique_ptr<XenHostChannel> XenHostChannel::open(uint32_t domid, uint32_t ring_ref,
                                                     uint32_t event_channel, Failure* failure,
                                                     std::string* why) {
    auto fail = [&](Failure f, const std::string& what) {
        *failure = f;
        *why = what + ": " + std::strerror(errno);
        return nullptr;
    };
    std::unique_ptr<XenHostChannel> ch(new XenHostChannel());
    ch->domid_ = domid;
    ch->ring_ref_ = ring_ref;
    ch->remote_port_ = event_channel;
    ch->gnttab_ = xengnttab_open(nullptr, 0);
    if (!ch->gnttab_) return fail(Failure::kGnttab, "xengnttab_open");
    ch->ring_page_ = xengnttab_map_grant_ref(ch->gnttab_, domid, ring_ref, PROT_READ | PROT_WRITE);
    if (!ch->ring_page_)
        return fail(Failure::kRingMap, "mapping ring-ref " + std::to_string(ring_ref));
    ch->evtchn_ = xenevtchn_open(nullptr, 0);
    if (!ch->evtchn_) return fail(Failure::kEvtchn, "xenevtchn_open");
    const xenevtchn_port_or_error_t local = xenevtchn_bind_interdomain(ch->evtchn_, domid, event_channel);
    if (local < 0) return fail(Failure::kEvtchn, "binding event-channel " + std::to_string(event_channel));
    ch->local_port_ = static_cast<uint32_t>(local);
    ch->event_fd_ = xenevtchn_fd(ch->evtchn_);
    // ack_events() must never block the service's poll loop: pending() reads this fd.
    const int fl = ::fcntl(ch->event_fd_, F_GETFL);
    ::fcntl(ch->event_fd_, F_SETFL, fl | O_NONBLOCK);
    // The frontend initialised the shared ring (SHARED_RING_INIT); like blkback we start from
    // whatever its indexes say and check every producer index before using it.
    BACK_RING_INIT(&ch->back_, static_cast<vpipe_sring*>(ch->ring_page_), VPIPE_PAGE_SIZE);
    *failure = Failure::kNone;
    return ch;
}

XenHostChannel::~XenHostChannel() {
    if (evtchn_) {
        if (local_port_) xenevtchn_unbind(evtchn_, local_port_);
        xenevtchn_close(evtchn_);
    }
    if (gnttab_) {
        if (ring_page_) xengnttab_unmap(gnttab_, ring_page_, 1);
        xengnttab_close(gnttab_);
    }
}

int XenHostChannel::copy_desc_page(uint32_t gref, void* dst) {
    xengnttab_grant_copy_segment_t seg{};
    seg.source.foreign.ref = gref;
    seg.source.foreign.offset = 0;
    seg.source.foreign.domid = static_cast<uint16_t>(domid_);
    seg.dest.virt = dst;
    seg.len = VPIPE_PAGE_SIZE;
    seg.flags = GNTCOPY_source_gref;
    if (xengnttab_grant_copy(gnttab_, 1, &seg) != 0 || seg.status != GNTST_okay) {
        copy_failures_++;
        return -EINVAL;
    }
    return 0;
}

// An aligned 8-byte grant copy. (Xen copies with memcpy; an aligned word is one move on x86. A
// torn watermark could only misplace the guest's own file data, never reach beyond its disk.)
int XenHostChannel::read_desc_word(uint32_t gref, uint32_t offset, uint64_t* value) {
    if (offset % 8 != 0 || offset > VPIPE_PAGE_SIZE - 8) return -EINVAL;
    xengnttab_grant_copy_segment_t seg{};
    seg.source.foreign.ref = gref;
    seg.source.foreign.offset = static_cast<uint16_t>(offset);
    seg.source.foreign.domid = static_cast<uint16_t>(domid_);
    seg.dest.virt = value;
    seg.len = sizeof(*value);
    seg.flags = GNTCOPY_source_gref;
    if (xengnttab_grant_copy(gnttab_, 1, &seg) != 0 || seg.status != GNTST_okay) {
        copy_failures_++;
        return -EINVAL;
    }
    return 0;
}

int XenHostChannel::write_desc_page(uint32_t gref, uint32_t offset, const void* src, uint32_t len) {
    if (offset > VPIPE_PAGE_SIZE || len > VPIPE_PAGE_SIZE - offset) return -EINVAL;
    if (len == 0) return 0;
    xengnttab_grant_copy_segment_t seg{};
    seg.source.virt = const_cast<void*>(src);
    seg.dest.foreign.ref = gref;
    seg.dest.foreign.offset = static_cast<uint16_t>(offset);
    seg.dest.foreign.domid = static_cast<uint16_t>(domid_);
    seg.len = static_cast<uint16_t>(len);
    seg.flags = GNTCOPY_dest_gref;
    if (xengnttab_grant_copy(gnttab_, 1, &seg) != 0 || seg.status != GNTST_okay) {
        copy_failures_++;
        return -EINVAL;
    }
    return 0;
}

void XenHostChannel::notify_guest() { xenevtchn_notify(evtchn_, local_port_); }

void XenHostChannel::ack_events() {
    // Every pending port of this handle is ours (one port per handle); unmask re-arms it.
    for (int i = 0; i < 64; ++i) {
        const xenevtchn_port_or_error_t p = xenevtchn_pending(evtchn_);
        if (p < 0) break;
        xenevtchn_unmask(evtchn_, static_cast<evtchn_port_t>(p));
    }
}

std::string XenHostChannel::describe() const {
    return "xen, domain " + std::to_string(domid_) + " ring-ref " + std::to_string(ring_ref_) +
           " event-channel " + std::to_string(remote_port_) + " (local port " +
           std::to_string(local_port_) + ")";
}

}  // namespace vpipe::xen
