#include "engine_link.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <spdlog/spdlog.h>

namespace vpipe::agent {

struct EngineLink::Ticket {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    int status = 0;
    uint64_t moved = 0;
    uint64_t length = 0;
    std::span<uint8_t> readback;   // filled from the request's pages before they are freed
};

struct EngineLink::Conn {
    std::unique_ptr<transport::ShmGuestChannel> ch;
    std::vector<uint32_t> free_pages;
    struct Pending {
        std::shared_ptr<Ticket> ticket;
        std::vector<uint32_t> pages;
    };
    std::map<uint64_t, Pending> pending;
};

namespace {

void complete(EngineLink::Ticket& t, int status, uint64_t moved) {
    {
        std::lock_guard lk(t.m);
        t.status = status;
        t.moved = std::min(moved, t.length);  // dom0's count can't exceed what we asked
        t.done = true;
    }
    t.cv.notify_all();
}

}  // namespace

EngineLink::EngineLink(std::string channel_path, uint32_t desc_pages)
    : path_(std::move(channel_path)), desc_pages_(desc_pages) {}

EngineLink::~EngineLink() { stop(); }

void EngineLink::start() {
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    thread_ = std::thread([this] { run(); });
}

void EngineLink::stop() {
    if (!thread_.joinable()) return;
    stopping_ = true;
    transport::kick(wake_fd_.get());
    thread_.join();
    drop("agent stopping");
}

bool EngineLink::wait_connected(int ms) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, std::chrono::milliseconds(ms), [&] { return conn_ != nullptr; });
}

int EngineLink::submit(uint8_t op, uint64_t length, std::span<const uint8_t> desc,
                       std::shared_ptr<Ticket>* out, uint32_t pages, std::span<uint8_t> readback) {
    if (desc.size() > VPIPE_DESC_MAX_BYTES) return -E2BIG;
    uint32_t npages = static_cast<uint32_t>((desc.size() + VPIPE_PAGE_SIZE - 1) / VPIPE_PAGE_SIZE);
    if (pages) {
        if (pages < npages || pages > VPIPE_DESC_MAX_PAGES) return -EINVAL;
        npages = pages;
    }
    if (!readback.empty() && readback.size() < size_t{npages} * VPIPE_PAGE_SIZE) return -EINVAL;
    auto ticket = std::make_shared<Ticket>();
    ticket->length = length;
    ticket->readback = readback;
    std::shared_ptr<Conn> c;
    int notify = 0;
    {
        std::unique_lock lk(mu_);
        for (;;) {
            if (!conn_ || stopping_) return -EHOSTDOWN;
            if (!RING_FULL(&conn_->ch->ring()) && conn_->free_pages.size() >= npages) break;
            cv_.wait(lk);
        }
        c = conn_;
        vpipe_request req{};
        req.id = next_id_++;
        req.op = op;
        req.length = length;
        req.nr_pages = static_cast<uint8_t>(npages);
        req.desc_bytes = static_cast<uint32_t>(desc.size());
        Conn::Pending p{ticket, {}};
        for (uint32_t i = 0; i < npages; ++i) {
            uint32_t page = c->free_pages.back();
            c->free_pages.pop_back();
            p.pages.push_back(page);
            req.page[i] = page;
            size_t off = size_t{i} * VPIPE_PAGE_SIZE;
            size_t n = off < desc.size() ? std::min<size_t>(VPIPE_PAGE_SIZE, desc.size() - off) : 0;
            if (n) std::memcpy(c->ch->desc_page(page), desc.data() + off, n);
            if (n < VPIPE_PAGE_SIZE) std::memset(c->ch->desc_page(page) + n, 0, VPIPE_PAGE_SIZE - n);
        }
        vpipe_front_ring_t& ring = c->ch->ring();
        *RING_GET_REQUEST(&ring, ring.req_prod_pvt) = req;
        ring.req_prod_pvt++;
        // Publishes the entry (write barrier inside) and tells whether dom0 asked for a kick.
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&ring, notify);
        c->pending.emplace(req.id, std::move(p));
    }
    if (notify) c->ch->notify_dom0();
    requests_sent_++;
    *out = std::move(ticket);
    return 0;
}

int EngineLink::wait(const std::shared_ptr<Ticket>& t, uint64_t* moved) {
    std::unique_lock lk(t->m);
    t->cv.wait(lk, [&] { return t->done; });
    *moved = t->moved;
    return t->status;
}

int EngineLink::call(uint8_t op, uint64_t length, std::span<const uint8_t> desc,
                     uint64_t* moved) {
    std::shared_ptr<Ticket> t;
    *moved = 0;
    if (int r = submit(op, length, desc, &t); r < 0) return r;
    return wait(t, moved);
}

void EngineLink::run() {
    pthread_setname_np(pthread_self(), "engine-link");
    bool warned = false;
    while (!stopping_) {
        std::shared_ptr<Conn> c;
        {
            std::lock_guard lk(mu_);
            c = conn_;
        }
        if (!c) {
            std::unique_ptr<transport::ShmGuestChannel> ch;
            int r = transport::ShmGuestChannel::open(path_, desc_pages_, &ch);
            if (r == 0) {
                auto nc = std::make_shared<Conn>();
                nc->ch = std::move(ch);
                for (uint32_t i = desc_pages_; i-- > 0;) nc->free_pages.push_back(i);
                {
                    std::lock_guard lk(mu_);
                    conn_ = nc;
                }
                connected_ = true;
                cv_.notify_all();
                spdlog::info("connected to dom0 at {} (ring of {} slots, {} descriptor pages)",
                             path_, RING_SIZE(&nc->ch->ring()), desc_pages_);
                warned = false;
                continue;
            }
            if (!warned) {
                spdlog::warn("no engine at {}: {}; retrying", path_, std::strerror(-r));
                warned = true;
            }
            pollfd p{wake_fd_.get(), POLLIN, 0};
            ::poll(&p, 1, 200);
            transport::drain_kicks(wake_fd_.get());
            continue;
        }
        pollfd fds[3] = {{wake_fd_.get(), POLLIN, 0},
                         {c->ch->event_fd(), POLLIN, 0},
                         {c->ch->control_fd(), POLLIN, 0}};
        if (::poll(fds, 3, -1) < 0 && errno != EINTR) break;
        if (fds[0].revents) transport::drain_kicks(wake_fd_.get());
        if (fds[1].revents) {
            transport::drain_kicks(c->ch->event_fd());
            reap(*c);
        }
        if (fds[2].revents) drop("dom0 closed the channel");
    }
}

void EngineLink::reap(Conn& c) {
    std::lock_guard lk(mu_);
    vpipe_front_ring_t& ring = c.ch->ring();
    for (;;) {
        RING_IDX rp = ring.sring->rsp_prod;
        xen_rmb();  // read rsp_prod before the responses it publishes
        // dom0 can only answer what we asked: anything else is a broken backend.
        if (rp - ring.rsp_cons > ring.req_prod_pvt - ring.rsp_cons) {
            spdlog::error("dom0 published response index {} beyond our requests", rp);
            break;
        }
        for (RING_IDX i = ring.rsp_cons; i != rp; ++i) {
            vpipe_response rsp = *RING_GET_RESPONSE(&ring, i);
            auto it = c.pending.find(rsp.id);
            if (it == c.pending.end()) {
                spdlog::error("dom0 answered unknown request {:#x}", rsp.id);
                continue;
            }
            auto& rb = it->second.ticket->readback;
            for (size_t k = 0; k < it->second.pages.size() && !rb.empty(); ++k)
                std::memcpy(rb.data() + k * VPIPE_PAGE_SIZE, c.ch->desc_page(it->second.pages[k]),
                            VPIPE_PAGE_SIZE);
            for (uint32_t page : it->second.pages) c.free_pages.push_back(page);
            complete(*it->second.ticket, rsp.status, rsp.moved);
            c.pending.erase(it);
        }
        ring.rsp_cons = rp;
        int more = 0;
        RING_FINAL_CHECK_FOR_RESPONSES(&ring, more);
        if (!more) break;
    }
    cv_.notify_all();
}

void EngineLink::drop(const char* why) {
    std::shared_ptr<Conn> c;
    {
        std::lock_guard lk(mu_);
        c = std::move(conn_);
        conn_.reset();
        if (c) {
            for (auto& [id, p] : c->pending) complete(*p.ticket, -ECANCELED, 0);
            c->pending.clear();
        }
    }
    connected_ = false;
    cv_.notify_all();
    if (c) spdlog::warn("lost dom0: {}", why);
}

}  // namespace vpipe::agent
