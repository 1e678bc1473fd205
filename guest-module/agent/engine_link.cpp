#include "engine_link.h"

#include <poll.h>
#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <vector>

#include <spdlog/spdlog.h>

#include "transport/shm_channel.h"

namespace vpipe::agent {
namespace {

uint64_t now_ms() {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count());
}

}  // namespace

struct EngineLink::Conn {
    std::unique_ptr<transport::ShmGuestChannel> ch;
    vpipe_ring front{};
    vpipe_area area{};
    std::vector<uint32_t> area_storage;
    std::map<uint64_t, std::shared_ptr<Ticket>> pending;   // by request id
    bool dead = false;
    bool hung = false;                 // dropped because the engine did not answer
    vpipe_watch watch{};               // the engine must answer (watch.h), in now_ms()
    std::shared_ptr<Ticket> probe;     // the watchdog's NOP while it is out

    static uint8_t* page_mem(void* t, uint32_t idx) { return static_cast<Conn*>(t)->ch->desc_page(idx); }
    // on the shm transport dom0 names a page by its index in the area
    static uint32_t page_ref(void*, uint32_t idx) { return idx; }
};

struct EngineLink::Ticket {
    std::shared_ptr<Conn> conn;        // keeps the mapping alive until release()
    std::vector<uint32_t> idx;         // the request's area pages (data, then indirect)
    vpipe_link_pages pages{};
    uint64_t id = 0;
    uint8_t op = VPIPE_OP_NOP;
    bool done = false;                 // under the link's mu_
    // the header as an unresponsive engine left it (endpoints not handed back: taken)
    vpipe_desc_header lost_hdr{};
    bool hdr_saved = false;
    int status = 0;
    uint64_t moved = 0;
};

EngineLink::EngineLink(std::string channel_path, uint32_t area_pages, uint32_t request_timeout_ms)
    : path_(std::move(channel_path)), area_pages_(area_pages), timeout_ms_(vpipe_watch_clamp_ms(request_timeout_ms)) {}

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
        // the last slot is the watchdog's
        cv_.wait(lk, [&] { return c->dead || thread_.stopping() || vpipe_watch_room_for_request(&c->front); });
        if (c->dead || thread_.stopping()) {
            vpipe_link_release(&c->area, &t->pages);
            return -EHOSTDOWN;
        }
        t->op = s.op;
        vpipe_watch_posted(&c->watch, now_ms(), s.op, c->front.in_flight);
        notify = vpipe_link_post(&c->front, &Conn::page_ref, c.get(), &t->pages, &s, t.get(), &t->id);
        t->conn = c;
        c->pending.emplace(t->id, t);
    }
    if (notify) c->ch->notify_dom0();
    requests_sent_++;
    *out = std::move(t);
    return 0;
}

int EngineLink::wait(const std::shared_ptr<Ticket>& t, uint64_t* moved, const std::atomic<bool>* gone,
                     int* killed) {
    auto is_gone = [&] { return gone && gone->load(std::memory_order_acquire); };
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return t->done || is_gone(); });
    // The caller is gone: dom0 may still be using what the request names, so the holds and
    // frozen sockets must live until the answer -- but not longer than request_timeout_ms,
    // then the engine is declared unresponsive and the teardown ends the request.
    while (!t->done) {
        if (killed) *killed = 1;
        if (cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms_), [&] { return t->done; })) break;
        std::shared_ptr<Conn> c = t->conn;
        lk.unlock();
        if (c) declare_hung(c, "a request of a caller that is gone was not answered");
        lk.lock();
    }
    *moved = t->moved;
    return t->status;
}

void EngineLink::wake_waiters() {
    // under the lock: a waiter between its check and its sleep cannot miss it
    std::lock_guard lk(mu_);
    cv_.notify_all();
}

int EngineLink::readback(const std::shared_ptr<Ticket>& t, uint64_t off, void* buf, uint64_t len) {
    if (!t->done || !t->conn || off + len > uint64_t{t->pages.layout.data_pages} * VPIPE_PAGE_SIZE)
        return -EIO;
    if (t->hdr_saved && off < sizeof(t->lost_hdr)) {
        // an unresponsive engine's header: what it had when the guest gave up on it
        if (off + len > sizeof(t->lost_hdr)) return -EIO;
        std::memcpy(buf, reinterpret_cast<const uint8_t*>(&t->lost_hdr) + off, len);
        return 0;
    }
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
        // a quarter of the timeout between looks at the engine's answers (watch.h)
        const int period = static_cast<int>(std::max<uint32_t>(timeout_ms_ / 4, 1));
        if (::poll(fds, 3, period) < 0 && errno != EINTR) break;
        if (fds[0].revents) thread_.drain();
        if (fds[1].revents) {
            transport::drain_kicks(c->ch->event_fd());
            reap(c);
        }
        if (fds[2].revents) {
            drop("dom0 closed the channel");
            continue;
        }
        watch(c);
    }
}

void EngineLink::watch(const std::shared_ptr<Conn>& c) {
    const char* why = nullptr;
    int notify = 0;
    {
        std::lock_guard lk(mu_);
        if (c->dead) return;
        if (c->probe && c->probe->done) c->probe.reset();
        switch (vpipe_watch_check(&c->watch, now_ms(), timeout_ms_, c->front.in_flight, &why)) {
        case VPIPE_WATCH_QUIET: return;
        case VPIPE_WATCH_HUNG: break;
        case VPIPE_WATCH_PROBE: {
            // vpiped answers NOPs in its ring reader, however busy its workers are
            if (c->probe || !vpipe_ring_has_room(&c->front)) return;
            auto p = std::make_shared<Ticket>();   // no pages, no conn (no cycle with c->probe)
            vpipe_post post{};
            post.op = VPIPE_OP_NOP;
            notify = vpipe_ring_post(&c->front, &post, p.get(), &p->id);
            c->pending.emplace(p->id, p);
            c->probe = std::move(p);
            break;
        }
        }
    }
    if (why) {
        declare_hung(c, why);
        return;
    }
    if (notify) c->ch->notify_dom0();
}

void EngineLink::declare_hung(const std::shared_ptr<Conn>& c, const char* why) {
    {
        std::lock_guard lk(mu_);
        if (c->dead || conn_ != c) return;   // dropped already (by another waiter, or dom0)
    }
    engine_timeouts_++;
    spdlog::warn("the engine is unresponsive ({} within request_timeout_ms={}); reconnecting", why, timeout_ms_);
    drop("the engine did not answer", true);
}

// the core ends a request (answered, or cancelled with the channel): its ticket is done
void EngineLink::on_done(void* arg, void* owner, int status, uint64_t moved) {
    auto* conn = static_cast<Conn*>(arg);
    auto* t = static_cast<Ticket*>(owner);
    vpipe_watch_answered(&conn->watch, now_ms(), t->op);
    if (conn->hung && t->pages.layout.data_pages) {
        // the engine may still be alive and write the header after this: keep it as it is now
        vpipe_area_read(&Conn::page_mem, conn, t->idx.data(), 0, &t->lost_hdr, sizeof(t->lost_hdr));
        vpipe_watch_lost_header(&t->lost_hdr);
        t->hdr_saved = true;
    }
    if (conn->dead && t->pages.layout.data_pages) {
        // given up on with the channel: the destination is cut and its blocks given back once
        // the ticket is done. A live engine (stopped, then continued) must not write into them:
        // the mark tells it, in the header it re-reads before each write batch.
        vpipe_watch_abandon(&Conn::page_mem, conn, t->idx.data());
    }
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

void EngineLink::drop(const char* why, bool hung) {
    std::shared_ptr<Conn> c;
    {
        std::lock_guard lk(mu_);
        c = std::move(conn_);
        conn_.reset();
        if (c) {
            c->dead = true;
            c->hung = hung;
            vpipe_ring_cancel_all(&c->front, &EngineLink::on_done, c.get());
        }
    }
    connected_ = false;
    cv_.notify_all();
    if (c) spdlog::warn("lost dom0: {}", why);
}

}  // namespace vpipe::agent
