#include "host_channel.h"

namespace vpipe::engine {

namespace {

class ShmHost final : public HostChannel {
public:
    explicit ShmHost(std::unique_ptr<transport::ShmHostChannel> shm) : shm_(std::move(shm)) {}

    vpipe_back_ring_t& ring() override { return shm_->ring(); }
    int copy_desc_page(uint32_t page, void* dst) override { return shm_->copy_desc_page(page, dst); }
    int write_desc_page(uint32_t page, uint32_t offset, const void* src, uint32_t len) override {
        return shm_->write_desc_page(page, offset, src, len);
    }
    int read_desc_word(uint32_t page, uint32_t offset, uint64_t* value) override {
        return shm_->read_desc_word(page, offset, value);
    }
    void notify_guest() override { shm_->notify_guest(); }
    int event_fd() const override { return shm_->event_fd(); }
    void ack_events() override { transport::drain_kicks(shm_->event_fd()); }
    int control_fd() const override { return shm_->control_fd(); }
    std::string describe() const override {
        return "shm, " + std::to_string(shm_->desc_pages()) + " descriptor pages";
    }

private:
    std::unique_ptr<transport::ShmHostChannel> shm_;
};

}  // namespace

std::unique_ptr<HostChannel> wrap_shm(std::unique_ptr<transport::ShmHostChannel> shm) {
    return std::make_unique<ShmHost>(std::move(shm));
}

RingTake take_requests(vpipe_back_ring_t& back, std::vector<vpipe_request>* out) {
    RING_IDX rp = back.sring->req_prod;
    xen_rmb();  // read req_prod before the entries it publishes
    if (RING_REQUEST_PROD_OVERFLOW(&back, rp)) return RingTake::kOverflow;
    RING_IDX rc = back.req_cons;
    // A producer behind our consumer (moved backwards) passes the check above as long as it
    // stays within a ring of rsp_prod_pvt, and `rc != rp` would then take slots the guest never
    // published, until the ring wraps. Like vchan's io.c, count what is outstanding from the
    // indexes we own: rp must lie in [rc, rsp_prod_pvt + RING_SIZE].
    if (static_cast<RING_IDX>(rp - back.rsp_prod_pvt) < static_cast<RING_IDX>(rc - back.rsp_prod_pvt))
        return RingTake::kOverflow;
    while (rc != rp) {
        // Every response slot is promised: resume when a worker answers.
        if (RING_REQUEST_CONS_OVERFLOW(&back, rc)) return RingTake::kStalled;
        vpipe_request req;
        RING_COPY_REQUEST(&back, rc, &req);  // one copy; the guest can't race us
        out->push_back(req);
        back.req_cons = ++rc;
    }
    return RingTake::kDrained;
}

}  // namespace vpipe::engine
