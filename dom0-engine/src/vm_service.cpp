#include "vm_service.h"

#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include <spdlog/spdlog.h>

#include "ops.h"
#include "request.h"
#include "util/unix_socket.h"

namespace vpipe::engine {

struct VmService::Channel {
    std::unique_ptr<HostChannel> host;
    std::mutex ring_mu;           // the back ring's private indexes: service thread + workers
    bool alive = true;            // under ring_mu
    bool stalled = false;         // under ring_mu: requests waiting for response slots
    std::atomic<bool> live{true}; // alive, readable without the lock (workers skip dead work)
};

VmService::VmService(Vm& vm, PagePool& pool, ShadowSockets* sockets, const PeerPolicy* policy)
    : vm_(vm), pool_(pool), sockets_(sockets), policy_(policy) {}

VmService::~VmService() { stop(); }

void VmService::start() {
    if (!vm_.config().channel.empty()) listen_fd_ = listen_unix(vm_.config().channel, 0600);
    thread_.start([this] { run(); });
}

void VmService::stop() {
    if (!thread_.stop()) return;
    // Nobody waits on a hand-over any more.
    std::lock_guard lk(handoff_mu_);
    handoffs_.clear();
    handoffs_done_ = handoffs_queued_;
    handoff_cv_.notify_all();
}

void VmService::attach(std::unique_ptr<HostChannel> ch) {
    std::lock_guard lk(handoff_mu_);
    handoffs_.push_back({std::move(ch), "replaced by a new channel"});
    handoffs_queued_++;
    thread_.wake();
}

void VmService::detach(const char* why) {
    std::unique_lock lk(handoff_mu_);
    if (!thread_.running() || thread_.stopping()) return;
    handoffs_.push_back({nullptr, why});
    const uint64_t mine = ++handoffs_queued_;
    thread_.wake();
    handoff_cv_.wait(lk, [&] { return handoffs_done_ >= mine; });
}

void VmService::run_handoffs() {
    std::vector<Handoff> work;
    uint64_t upto;
    {
        std::lock_guard lk(handoff_mu_);
        work.swap(handoffs_);
        upto = handoffs_queued_;
    }
    for (auto& h : work) {
        if (h.attach)
            install(std::move(h.attach));
        else
            close_channel(h.why);
    }
    std::lock_guard lk(handoff_mu_);
    handoffs_done_ = std::max(handoffs_done_, upto);
    handoff_cv_.notify_all();
}

void VmService::run() {
    pthread_setname_np(pthread_self(), ("ring/" + vm_.name()).substr(0, 15).c_str());
    if (listen_fd_)
        spdlog::info("vm {}: waiting for its guest on {}", vm_.name(), vm_.config().channel);
    while (!thread_.stopping()) {
        // fds: 0 wake, 1 listen (-1: none), 2 guest notifications, 3 control (-1: none)
        pollfd fds[4] = {{thread_.wake_fd(), POLLIN, 0}, {listen_fd_ ? listen_fd_.get() : -1, POLLIN, 0},
                         {-1, POLLIN, 0}, {-1, POLLIN, 0}};
        if (channel_) {
            fds[2].fd = channel_->host->event_fd();
            fds[3].fd = channel_->host->control_fd();
        }
        if (::poll(fds, 4, -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::error("vm {}: poll: {}", vm_.name(), std::strerror(errno));
            break;
        }
        if (fds[0].revents) {
            thread_.drain();
            if (thread_.stopping()) break;
            run_handoffs();
        }
        if (fds[1].revents & POLLIN) accept_one();
        if (channel_ && fds[3].fd >= 0 && fds[3].revents) {
            // Nothing is ever sent on the control socket after the handshake: readable
            // means EOF or garbage, both mean the guest side is gone.
            close_channel("guest closed its channel");
            if (on_lost_) on_lost_("guest closed its channel");
            continue;
        }
        if (channel_) drain_requests();  // also on wake-ups: response slots may have freed
    }
    close_channel("engine stopping");
}

void VmService::accept_one() {
    UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) return;
    if (channel_) {
        vpipe_shm_welcome busy{VPIPE_SHM_MAGIC, VPIPE_PROTOCOL_VERSION, 0, -EBUSY, 0};
        send_msg_fds(conn.get(), &busy, sizeof(busy), nullptr, 0);
        spdlog::warn("vm {}: refused a second channel while one is connected", vm_.name());
        return;
    }
    std::unique_ptr<transport::ShmHostChannel> shm;
    int r = transport::ShmHostChannel::accept(std::move(conn), vm_.config().threads, &shm);
    if (r < 0) {
        spdlog::warn("vm {}: refused a channel: {}", vm_.name(), std::strerror(-r));
        return;
    }
    install(wrap_shm(std::move(shm)));
}

void VmService::install(std::unique_ptr<HostChannel> host) {
    if (channel_) close_channel("replaced by a new channel");
    channel_ = std::make_shared<Channel>();
    channel_->host = std::move(host);
    vm_.connected() = true;
    vm_.counters().channels++;
    spdlog::info("vm {}: guest connected ({})", vm_.name(), channel_->host->describe());
    // The guest may have queued requests before we looked: serve them without waiting for a kick.
    thread_.wake();
}

void VmService::close_channel(const char* why) {
    if (!channel_) return;
    {
        std::lock_guard lk(channel_->ring_mu);
        channel_->alive = false;
        channel_->live = false;
    }
    // Workers may still hold the channel (and so its mapping) until their operation ends;
    // their responses are dropped.
    channel_.reset();
    vm_.connected() = false;
    spdlog::info("vm {}: channel closed: {}", vm_.name(), why);
}

void VmService::drain_requests() {
    channel_->host->ack_events();
    for (;;) {
        std::vector<vpipe_request> batch;
        bool overflow = false;
        {
            std::lock_guard lk(channel_->ring_mu);
            vpipe_back_ring_t& back = channel_->host->ring();
            const RingTake t = take_requests(back, &batch);
            channel_->stalled = t == RingTake::kStalled;
            if (t == RingTake::kOverflow) {
                spdlog::error("vm {}: guest set req_prod {} past the ring (cons {}); closing",
                              vm_.name(), back.sring->req_prod, back.req_cons);
                overflow = true;
            }
        }
        if (overflow) {
            vm_.counters().ring_overflows++;
            close_channel("malformed ring");
            if (on_lost_) on_lost_("malformed ring");
            return;
        }
        for (const auto& req : batch) handle(req);
        int more = 0;
        {
            std::lock_guard lk(channel_->ring_mu);
            if (channel_->stalled) return;
            RING_FINAL_CHECK_FOR_REQUESTS(&channel_->host->ring(), more);
        }
        if (!more) return;
    }
}

void VmService::handle(const vpipe_request& req) {
    auto& counters = vm_.counters();
    counters.requests++;
    auto ch = channel_;
    if (int r = check_request(req); r < 0) {
        counters.rejected++;
        spdlog::warn("vm {}: request {:#x} rejected: {}", vm_.name(), req.id, std::strerror(-r));
        respond(ch, req.id, r, 0);
        return;
    }
    if (req.op == VPIPE_OP_NOP) {
        respond(ch, req.id, 0, 0);
        return;
    }
    // Copy the area's pages out of shared memory once (indirect pages, the descriptor stream,
    // the bytes carried in socket rooms); parse only the copies.
    auto parsed = std::make_shared<ParsedRequest>();
    bool bad_page = false;
    int r = load_request(
        req, [&](uint32_t ref, void* dst) { return ch->host->copy_desc_page(ref, dst); },
        vm_.disk_lookup(), vm_.identity(), parsed.get(), &bad_page);
    if (r < 0) {
        counters.rejected++;
        if (bad_page) {
            counters.bad_pages++;
            spdlog::warn("vm {}: request {:#x} names an area page it cannot give us", vm_.name(), req.id);
        } else {
            spdlog::warn("vm {}: {} request {:#x} rejected: {}", vm_.name(), op_name(req.op), req.id,
                         std::strerror(-r));
        }
        respond(ch, req.id, r, 0);
        return;
    }
    // The peer policy: a shadow socket never talks to dom0 itself or to another tenant's VM.
    // Refused here, before a worker takes the request: nothing in dom0 has changed, and the
    // guest restores its connection from its own frozen state.
    if (policy_) {
        std::string why;
        if (int pr = policy_->check_request(vm_.config().id, *parsed, &why); pr < 0) {
            counters.rejected++;
            counters.peer_refused++;
            spdlog::warn("vm {}: {} request {:#x} refused by the peer policy: {}", vm_.name(),
                         op_name(req.op), req.id, why);
            respond(ch, req.id, pr, 0);
            return;
        }
    }
    counters.active++;
    vm_.workers().submit([this, ch, parsed](BlockIo& io) {
        auto& c = vm_.counters();
        if (!ch->live) {
            // The channel went away while this waited for a worker: nobody will read the
            // answer, and the guest may be gone. Do not start it.
            c.cancelled++;
            c.active--;
            return;
        }
        uint64_t moved = 0;
        // Results of socket endpoints go back into the request's own descriptor pages (the
        // guest reads them after the response, before it frees the pages).
        DescWriter write_back = [ch, parsed](uint64_t off, const void* data, size_t n) -> int {
            if (!ch->live) return -ESHUTDOWN;  // nobody reads it (finish_endpoint: the connection is reset)
            const auto* p = static_cast<const uint8_t*>(data);
            if (off + n > uint64_t{parsed->area.size()} * VPIPE_PAGE_SIZE) return -EINVAL;
            while (n > 0) {
                const uint32_t page = parsed->area[off / VPIPE_PAGE_SIZE];
                const uint32_t in = static_cast<uint32_t>(off % VPIPE_PAGE_SIZE);
                const uint32_t m = static_cast<uint32_t>(std::min<uint64_t>(n, VPIPE_PAGE_SIZE - in));
                if (int wr = ch->host->write_desc_page(page, in, p, m); wr < 0) return wr;
                p += m;
                off += m;
                n -= m;
            }
            return 0;
        };
        DescWordReader read_word = [ch, parsed](uint64_t off, uint64_t* value) -> int {
            // A guest that closed its channel (its agent died) never moves a word again: a
            // socket -> file waiting for its prepared watermark stops now, not at the socket
            // timeout (30 s of a peer sending into a connection nobody will hand back).
            if (!ch->live) return -ESHUTDOWN;
            if (off % 8 != 0 || off + 8 > uint64_t{parsed->area.size()} * VPIPE_PAGE_SIZE) return -EINVAL;
            return ch->host->read_desc_word(parsed->area[off / VPIPE_PAGE_SIZE],
                                            static_cast<uint32_t>(off % VPIPE_PAGE_SIZE), value);
        };
        // Before every batch of writes into the VM's disk: the guest may have given the request
        // up (declared this engine unresponsive -- e.g. it was stopped -- then cut the
        // destination and given its blocks back). Its mark in the live header, or a channel
        // that is no longer the one the request came on, stops the request: nothing more is
        // written. The mark is the guest's word: it can only stop this request.
        const char* abandoned = nullptr;
        WriteGate may_write = [&read_word, &abandoned]() -> int {
            uint64_t word = 0;
            if (int rd = read_word(VPIPE_ABANDON_OFFSET, &word); rd == -ESHUTDOWN) {
                abandoned = "its channel is closed";
                return rd;
            } else if (rd < 0) {
                abandoned = "its header cannot be read";
                return -ECANCELED;
            }
            uint32_t flags = 0;  // dst.result_flags: the word's first four bytes
            std::memcpy(&flags, &word, sizeof(flags));
            if (flags & VPIPE_EPF_ABANDONED) {
                abandoned = "the guest abandoned it";
                return -ECANCELED;
            }
            return 0;
        };
        int status = execute_request(vm_, io, pool_, *parsed, &moved, sockets_, write_back, read_word, may_write);
        if (abandoned) {
            c.abandoned++;
            spdlog::warn("vm {}: {} request {:#x} abandoned after {} bytes ({}): nothing more written", vm_.name(),
                         op_name(parsed->op), parsed->id, moved, abandoned);
        } else if (status == 0)
            c.ops[parsed->op]++;
        else {
            c.failed++;
            spdlog::warn("vm {}: {} request {:#x} failed after {} bytes: {}", vm_.name(),
                         op_name(parsed->op), parsed->id, moved, std::strerror(-status));
        }
        respond(ch, parsed->id, status, moved);
        c.active--;  // after the answer: a clean stop waits for active == 0 before closing channels
    });
}

void VmService::respond(const std::shared_ptr<Channel>& ch, uint64_t id, int status,
                        uint64_t moved) {
    int notify = 0;
    bool wake_service = false;
    {
        std::lock_guard lk(ch->ring_mu);
        if (!ch->alive) return;
        vpipe_back_ring_t& back = ch->host->ring();
        vpipe_response* rsp = RING_GET_RESPONSE(&back, back.rsp_prod_pvt);
        rsp->id = id;
        rsp->moved = moved;
        rsp->status = status;
        rsp->reserved0 = 0;
        rsp->reserved1 = 0;
        back.rsp_prod_pvt++;
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
        wake_service = ch->stalled;
    }
    if (notify) ch->host->notify_guest();
    if (wake_service) thread_.wake();
}

}  // namespace vpipe::engine
