#include "engine_link.h"

#include <poll.h>
#include <pthread.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <vector>

#include <spdlog/spdlog.h>

#include "transport/shm_channel.h"

namespace vpipe::agent {

struct EngineLink::Conn {
    std::unique_ptr<transport::ShmGuestChannel> ch;
    vpipe_ring front{};
    vpipe_area area{};
    std::vector<uint32_t> area_storage;
    std::map<uint64_t, std::shared_ptr<Ticket>> pending;   // by request id
    bool dead = false;

    static uint8_t* page_mem(void* t, uint32_t idx) { return static_cast<Conn*>(t)->ch->desc_page(idx); }
    // on the shm transport dom0 names a page by its index in the area
    static uint32_t page_ref(void*, uint32_t idx) { return idx; }
};

struct EngineLink::Ticket {
    std::shared_ptr<Conn> conn;        // keeps the mapping alive until release()
    std::vector<uint32_t> idx;         // the request's area pages (data, then indirect)
    vpipe_link_pages pages{};
    uint64_t id = 0;
    bool done = false;                 // under the link's mu_
    int status = 0;
    uint64_t moved = 0;
};

EngineLink::EngineLink(std::string channel_path, uint32_t area_pages)
    : path_(std::move(channel_path)), area_pages_(area_pages) {}

EngineLink::~EngineLink() { stop(); }

void EngineLink::start() { thread_.start([this] { run(); }); }

void EngineLink::stop() {
    if (!thread_.stop()) return;
    drop("agent stopping");
}

bool EngineLink::wait_connected(int ms) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, std::chrono::milliseconds(ms), [&] { return conn_ != nullptr; });
}

int EngineLink::submit(const vpipe_submit& s, std::shared_ptr<Ticket>* out) {
    const uint32_t need = vpipe_link_pages_needed(s.area_bytes);
    if (need == 0) return -E2BIG;
    auto t = std::make_shared<Ticket>();
    t->idx.resize(need);
    t->pages.idx = t->idx.data();
    std::shared_ptr<Conn> c;
    {
        std::unique_lock lk(mu_);
        for (;;) {
            if (!conn_ || thread_.stopping()) return -EHOSTDOWN;
            int r = vpipe_link_reserve(&conn_->area, &s, &t->pages);
            if (r == 0) break;
            if (r != -ENOSPC) return r;   // larger than the whole area
            cv_.wait(lk);
        }
        c = conn_;
    }
    // the pages are ours now: fill them without the lock
    vpipe_link_fill(&Conn::page_mem, &Conn::page_ref, c.get(), &t->pages, &s);
    int notify = 0;
    {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return c->dead || thread_.stopping() || vpipe_ring_has_room(&c->front); });
        if (c->dead || thread_.stopping()) {
            vpipe_link_release(&c->area, &t->pages);
            return -EHOSTDOWN;
        }
        notify = vpipe_link_post(&c->front, &Conn::page_ref, c.get(), &t->pages, &s, t.get(), &t->id);
        t->conn = c;
        c->pending.emplace(t->id, t);
    }
    if (notify) c->ch->notify_dom0();
    requests_sent_++;
    *out = std::move(t);
    return 0;
}

int EngineLink::wait(const std::shared_ptr<Ticket>& t, uint64_t* moved) {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return t->done; });
    *moved = t->moved;
    return t->status;
}

int EngineLink::readback(const std::shared_ptr<Ticket>& t, uint64_t off, void* buf, uint64_t len) {
    if (!t->done || !t->conn || off + len > uint64_t{t->pages.layout.data_pages} * VPIPE_PAGE_SIZE)
        return -EIO;
    // the pages stay ours until release(): no lock needed to read them
    vpipe_area_read(&Conn::page_mem, t->conn.get(), t->idx.data(), off, buf, len);
    return 0;
}

int EngineLink::publish(const std::shared_ptr<Ticket>& t, uint64_t off, uint64_t value) {
    if (!t->conn || off % 8 != 0 || off + 8 > uint64_t{t->pages.layout.data_pages} * VPIPE_PAGE_SIZE)
        return -EINVAL;
    uint8_t* page = Conn::page_mem(t->conn.get(), t->idx[off / VPIPE_PAGE_SIZE]);
    // dom0 loads it atomically (acquire): everything the guest did before is visible with it
    __atomic_store_n(reinterpret_cast<uint64_t*>(page + off % VPIPE_PAGE_SIZE), value, __ATOMIC_RELEASE);
    return 0;
}

void EngineLink::release(const std::shared_ptr<Ticket>& t) {
    if (!t || !t->conn) return;
    std::lock_guard lk(mu_);
    vpipe_link_release(&t->conn->area, &t->pages);
    t->conn.reset();
    cv_.notify_all();
}

void EngineLink::run() {
    pthread_setname_np(pthread_self(), "engine-link");
    bool warned = false;
    while (!thread_.stopping()) {
        std::shared_ptr<Conn> c;
        {
            std::lock_guard lk(mu_);
            c = conn_;
        }
        if (!c) {
            std::unique_ptr<transport::ShmGuestChannel> ch;
            int r = transport::ShmGuestChannel::open(path_, area_pages_, &ch);
            if (r == 0) {
                auto nc = std::make_shared<Conn>();
                nc->ch = std::move(ch);
                vpipe_ring_init(&nc->front, nc->ch->ring().sring);
                nc->area_storage.resize(area_pages_);
                vpipe_area_init(&nc->area, nc->area_storage.data(), area_pages_);
                {
                    std::lock_guard lk(mu_);
                    conn_ = nc;
                }
                connected_ = true;
                cv_.notify_all();
                spdlog::info("connected to dom0 at {} (ring of {} slots, {} area pages)", path_,
                             RING_SIZE(&nc->front.ring), area_pages_);
                warned = false;
                continue;
            }
            if (!warned) {
                spdlog::warn("no engine at {}: {}; retrying", path_, std::strerror(-r));
                warned = true;
            }
            pollfd p{thread_.wake_fd(), POLLIN, 0};
            ::poll(&p, 1, 200);
            thread_.drain();
            continue;
        }
        pollfd fds[3] = {{thread_.wake_fd(), POLLIN, 0},
                         {c->ch->event_fd(), POLLIN, 0},
                         {c->ch->control_fd(), POLLIN, 0}};
        if (::poll(fds, 3, -1) < 0 && errno != EINTR) break;
        if (fds[0].revents) thread_.drain();
        if (fds[1].revents) {
            transport::drain_kicks(c->ch->event_fd());
            reap(c);
        }
        if (fds[2].revents) drop("dom0 closed the channel");
    }
}

// the core ends a request (answered, or cancelled with the channel): its ticket is done
void EngineLink::on_done(void* arg, void* owner, int status, uint64_t moved) {
    auto* conn = static_cast<Conn*>(arg);
    auto* t = static_cast<Ticket*>(owner);
    t->status = status;
    t->moved = moved;
    t->done = true;
    conn->pending.erase(t->id);
}

void EngineLink::reap(const std::shared_ptr<Conn>& c) {
    int r;
    {
        std::lock_guard lk(mu_);
        if (c->dead) return;
        // the core consumes the responses and checks them
        r = vpipe_ring_reap(&c->front, &EngineLink::on_done, c.get());
        bad_responses_ = c->front.bad_responses;
    }
    cv_.notify_all();
    if (r == -EPROTO) {
        spdlog::error("dom0 broke the ring protocol (a response beyond the requests, or an unknown id); reconnecting");
        drop("dom0 broke the ring protocol");
    }
}

void EngineLink::drop(const char* why) {
    std::shared_ptr<Conn> c;
    {
        std::lock_guard lk(mu_);
        c = std::move(conn_);
        conn_.reset();
        if (c) {
            c->dead = true;
            vpipe_ring_cancel_all(&c->front, &EngineLink::on_done, c.get());
        }
    }
    connected_ = false;
    cv_.notify_all();
    if (c) spdlog::warn("lost dom0: {}", why);
}

}  // namespace vpipe::agent
