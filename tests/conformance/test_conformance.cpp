// The conformance corpus (corpus.h) against the agent: vpipe-guestd, reached through libvpipe,
// in a network namespace of its own (the VM's address 10.9.9.1 and its peers' 10.9.9.2 on lo),
// with an ext4 "VM disk" on a loop device, connected over the shm transport to a scripted
// engine that takes every request exactly as vpiped does (take_requests + load_request: the
// ring checks and the protocol's one validator) and then answers as the case says -- moving the
// bytes for real on the disk image, or breaking the protocol on purpose.
//
// One process per case (ctest), so a case that breaks the ring cannot disturb the next.
// The kernel module runs the same corpus in QEMU (tests/kmod/kmod_probe.c, "conformance").
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <vpipe/vpipe.h>

#include "corpus.h"
#include "host_channel.h"
#include "request.h"
#include "transport/shm_channel.h"
#include "util/unique_fd.h"
#include "util/unix_socket.h"
#include "../unit/files/lab_fs.h"

namespace {

using vpipe::UniqueFd;
using namespace vpipe::engine;
constexpr uint32_t kVdev = 51712;

int sh(const std::string& cmd) { return std::system(cmd.c_str()); }

// ---- the scripted engine ------------------------------------------------------------------

class ScriptedEngine {
public:
    ScriptedEngine(std::string channel, std::string image, uint64_t disk_size)
        : channel_(std::move(channel)), image_(std::move(image)), disk_size_(disk_size) {}
    ~ScriptedEngine() { stop(); }

    void start() {
        listen_ = vpipe::listen_unix(channel_, 0600);
        wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        disk_.reset(::open(image_.c_str(), O_RDWR | O_CLOEXEC));
        thread_ = std::thread([this] { run(); });
    }
    void stop() {
        if (!thread_.joinable()) return;
        stop_ = true;
        vpipe::transport::kick(wake_.get());
        thread_.join();
    }
    // the answers from now on (VC_ANS_DOWN: the channel goes and no new one is accepted)
    void script(const vc_script& s) {
        std::lock_guard lk(mu_);
        script_ = s;
        down_ = s.ans == VC_ANS_DOWN;
        for (auto& r : recorded_) free_req(&r);
        recorded_.clear();
        if (down_) drop_ = true;
        vpipe::transport::kick(wake_.get());
    }
    void requests(const vc_req** out, int* n) {
        std::lock_guard lk(mu_);
        *out = recorded_.empty() ? nullptr : recorded_.data();
        *n = static_cast<int>(recorded_.size());
    }

private:
    static void free_req(vc_req* r) {
        std::free(r->segs);
        for (auto& side : r->carry)
            for (auto*& p : side) std::free(p);
    }
    static uint8_t* dup_bytes(const std::vector<uint8_t>& v) {
        auto* p = static_cast<uint8_t*>(std::malloc(v.size() ? v.size() : 1));
        if (!v.empty()) std::memcpy(p, v.data(), v.size());
        return p;
    }

    void run() {
        while (!stop_) {
            pollfd fds[4] = {{wake_.get(), POLLIN, 0}, {listen_.get(), POLLIN, 0}, {-1, POLLIN, 0}, {-1, POLLIN, 0}};
            if (ch_) {
                fds[2].fd = ch_->event_fd();
                fds[3].fd = ch_->control_fd();
            }
            if (::poll(fds, 4, -1) < 0 && errno != EINTR) break;
            if (fds[0].revents) vpipe::transport::drain_kicks(wake_.get());
            {
                std::lock_guard lk(mu_);
                if (drop_) {
                    ch_.reset();
                    drop_ = false;
                }
            }
            if (fds[1].revents & POLLIN) {
                UniqueFd conn(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
                bool down;
                {
                    std::lock_guard lk(mu_);
                    down = down_;
                }
                if (conn && !down) {
                    std::unique_ptr<vpipe::transport::ShmHostChannel> c;
                    if (vpipe::transport::ShmHostChannel::accept(std::move(conn), 32, &c) == 0) ch_ = std::move(c);
                }
                continue;
            }
            if (ch_ && fds[3].revents) {
                ch_.reset();   // the agent dropped the channel (a broken ring): it reconnects
                continue;
            }
            if (ch_ && fds[2].revents) {
                vpipe::transport::drain_kicks(ch_->event_fd());
                serve();
            }
        }
    }

    void serve() {
        for (;;) {
            std::vector<vpipe_request> batch;
            if (take_requests(ch_->ring(), &batch) == RingTake::kOverflow) {
                ch_.reset();
                return;
            }
            for (const auto& r : batch) handle(r);
            int more = 0;
            RING_FINAL_CHECK_FOR_REQUESTS(&ch_->ring(), more);
            if (!more) return;
        }
    }

    void respond(uint64_t id, int status, uint64_t moved, int extra_prod = 0) {
        auto& back = ch_->ring();
        vpipe_response* rsp = RING_GET_RESPONSE(&back, back.rsp_prod_pvt);
        *rsp = vpipe_response{};
        rsp->id = id;
        rsp->moved = moved;
        rsp->status = status;
        back.rsp_prod_pvt++;
        int notify = 0;
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
        if (extra_prod) {
            back.sring->rsp_prod += extra_prod;   // more responses than requests: a broken ring
            notify = 1;
        }
        if (notify) ch_->notify_guest();
    }

    // copies `n` bytes of the stream from the source extents to the destination extents
    int copy(const ParsedRequest& p, uint64_t n) {
        std::vector<uint8_t> data(p.length);
        uint64_t pos = 0;
        for (const auto& e : p.src_file.extents) {
            if (e.zero)
                std::memset(data.data() + pos, 0, e.length);
            else if (::pread(disk_.get(), data.data() + pos, e.length, static_cast<off_t>(e.disk_offset)) !=
                     static_cast<ssize_t>(e.length))
                return -EIO;
            pos += e.length;
        }
        pos = 0;
        for (const auto& e : p.dst_file.extents) {
            if (pos >= n) break;
            const uint64_t w = std::min<uint64_t>(e.length, n - pos);
            if (::pwrite(disk_.get(), data.data() + pos, w, static_cast<off_t>(e.disk_offset)) != static_cast<ssize_t>(w))
                return -EIO;
            pos += w;
        }
        return ::fdatasync(disk_.get()) == 0 ? 0 : -EIO;
    }

    // writes one socket endpoint's result fields into the area's header
    // (`recorded`: VPIPE_EP_RESULT_MOVED, written when not 0)
    void write_ep(const ParsedRequest& p, bool source, uint32_t flags, const vpipe_tcp_state* tcp,
                  uint64_t recorded = 0) {
        const size_t ep = source ? offsetof(vpipe_desc_header, src) : offsetof(vpipe_desc_header, dst);
        auto put = [&](size_t off, const void* d, uint32_t n) {
            ch_->write_desc_page(p.area[0], static_cast<uint32_t>(off), d, n);
        };
        if (recorded) put(ep + offsetof(vpipe_endpoint, prepared), &recorded, 8);
        if (tcp) put(ep + offsetof(vpipe_endpoint, tcp), tcp, sizeof(*tcp));
        const uint32_t zero = 0;
        put(ep + offsetof(vpipe_endpoint, tail_len), &zero, 4);
        put(ep + offsetof(vpipe_endpoint, result_flags), &flags, 4);
    }

    void handle(const vpipe_request& req) {
        vc_script s;
        {
            std::lock_guard lk(mu_);
            s = script_;
        }
        ParsedRequest p;
        auto lookup = [this](uint32_t vdev) -> std::optional<DiskLimits> {
            if (vdev == kVdev) return DiskLimits{disk_size_, true};
            return std::nullopt;
        };
        PageCopier copier = [this](uint32_t ref, void* dst) { return ch_->copy_desc_page(ref, dst); };
        vc_req rec{};
        rec.ring = req;
        rec.verdict = load_request(req, copier, lookup, VmIdentity::from_ip_string("10.9.9.1"), &p);
        if (rec.verdict == 0 && req.op != VPIPE_OP_NOP) {
            // the raw stream as the guest wrote it: header and segments
            std::vector<uint8_t> page(VPIPE_PAGE_SIZE), stream;
            for (size_t i = 0; stream.size() < req.desc_bytes; ++i) {
                ch_->copy_desc_page(p.area[i], page.data());
                stream.insert(stream.end(), page.begin(), page.end());
            }
            std::memcpy(&rec.h, stream.data(), sizeof(rec.h));
            rec.segs = static_cast<vpipe_segment*>(std::calloc(rec.h.nr_segments + 1, sizeof(vpipe_segment)));
            std::memcpy(rec.segs, stream.data() + sizeof(rec.h), rec.h.nr_segments * sizeof(vpipe_segment));
            const SocketEndpoint* eps[2] = {&p.src_sock, &p.dst_sock};
            for (int i = 0; i < 2; ++i) {
                const std::vector<uint8_t>* q[3] = {&eps[i]->sndq, &eps[i]->rcvq, &eps[i]->tail};
                for (int k = 0; k < 3; ++k) {
                    rec.carry[i][k] = dup_bytes(*q[k]);
                    rec.carry_len[i][k] = static_cast<uint32_t>(q[k]->size());
                }
            }
        }
        {
            std::lock_guard lk(mu_);
            recorded_.push_back(rec);
        }
        if (rec.verdict) {
            respond(req.id, rec.verdict, 0);
            return;
        }
        const bool f2f = req.op == VPIPE_OP_FILE_TO_FILE;
        const bool src_sock = req.op == VPIPE_OP_SOCKET_TO_FILE || req.op == VPIPE_OP_SOCKET_TO_SOCKET;
        const bool dst_sock = req.op == VPIPE_OP_FILE_TO_SOCKET || req.op == VPIPE_OP_SOCKET_TO_SOCKET;
        auto each_socket = [&](uint32_t flags, auto mutate, uint64_t recorded = 0) {
            if (src_sock) {
                vpipe_tcp_state t = p.src_sock.tcp;
                mutate(t, p.src_sock.room);
                write_ep(p, true, flags, &t, recorded);
            }
            if (dst_sock) {
                vpipe_tcp_state t = p.dst_sock.tcp;
                mutate(t, p.dst_sock.room);
                write_ep(p, false, flags, &t, recorded);
            }
        };
        auto same = [](vpipe_tcp_state&, uint32_t) {};
        switch (s.ans) {
        case VC_ANS_OK:
        case VC_ANS_ECHO:
            if (f2f) {
                int r = copy(p, p.length);
                respond(req.id, r, r ? 0 : p.length);
            } else {
                each_socket(VPIPE_EPF_VALID, same);
                respond(req.id, 0, s.ans == VC_ANS_ECHO ? s.moved : 0);
            }
            break;
        case VC_ANS_STATUS:
            respond(req.id, -s.err, 0);
            break;
        case VC_ANS_SHORT:
            copy(p, s.moved);
            respond(req.id, -EIO, s.moved);
            break;
        case VC_ANS_BOGUS_STATUS:
            respond(req.id, 5, 0);
            break;
        case VC_ANS_BOGUS_MOVED:
            if (f2f) copy(p, p.length);
            respond(req.id, 0, 2 * p.length + 1);
            break;
        case VC_ANS_BOGUS_ID:
            respond(req.id ^ (1ull << 20), 0, 0);
            break;
        case VC_ANS_BOGUS_PROD:
            respond(req.id, -EIO, 0, 5);
            break;
        case VC_ANS_RESET:
            if (src_sock) write_ep(p, true, VPIPE_EPF_RESET, nullptr);
            if (dst_sock) write_ep(p, false, VPIPE_EPF_RESET, nullptr);
            respond(req.id, -ECONNRESET, 0);
            break;
        case VC_ANS_BAD_TUPLE:
            each_socket(VPIPE_EPF_VALID, [](vpipe_tcp_state& t, uint32_t) { t.remote_port ^= htons(1); });
            respond(req.id, 0, 0);
            break;
        case VC_ANS_BIG_QUEUES:
            each_socket(VPIPE_EPF_VALID, [](vpipe_tcp_state& t, uint32_t room) { t.rcvq_len = room + 1; });
            respond(req.id, 0, 0);
            break;
        case VC_ANS_TAKEN_LOST:
            if (src_sock) write_ep(p, true, VPIPE_EPF_TAKEN, nullptr);
            if (dst_sock) write_ep(p, false, VPIPE_EPF_TAKEN, nullptr);
            respond(req.id ^ (1ull << 20), 0, 0);
            break;
        case VC_ANS_VALID_LOST:
            each_socket(VPIPE_EPF_VALID, same, s.moved);
            respond(req.id ^ (1ull << 20), 0, 0);
            break;
        default:
            respond(req.id, -EOPNOTSUPP, 0);
        }
    }

    std::string channel_, image_;
    uint64_t disk_size_;
    UniqueFd listen_, wake_, disk_;
    std::unique_ptr<vpipe::transport::ShmHostChannel> ch_;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::mutex mu_;
    vc_script script_{};
    bool down_ = false, drop_ = false;
    std::vector<vc_req> recorded_;
};

// ---- the environment: netns, disk, engine, agent ------------------------------------------

struct World {
    std::unique_ptr<vpipe::test::LoopFs> fs;
    std::string dir, offdisk, agent_sock;
    std::unique_ptr<ScriptedEngine> engine;
    pid_t agent = -1;
    std::string why;

    bool up() {
        if (::geteuid() != 0) {
            why = "needs root (network namespace, loop device)";
            return false;
        }
        if (::unshare(CLONE_NEWNET) != 0) {
            why = std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno);
            return false;
        }
        if (sh("ip link set lo up && ip addr add 10.9.9.1/32 dev lo && ip addr add 10.9.9.2/32 dev lo") != 0) {
            why = "cannot set up the namespace's addresses";
            return false;
        }
        bool skippable = false;
        vpipe::test::LoopFs::Options o;
        o.image_size = 128 * vpipe::test::kMiB;
        fs = vpipe::test::LoopFs::create(o, &why, &skippable);
        if (!fs) return false;
        char tmpl[] = "/tmp/vpipe-conformance.XXXXXX";
        if (!::mkdtemp(tmpl)) {
            why = "mkdtemp";
            return false;
        }
        offdisk = tmpl;
        dir = fs->mount_dir;
        agent_sock = offdisk + "/agent.sock";
        const std::string channel = offdisk + "/engine.sock";
        struct stat st{};
        ::stat(fs->image.c_str(), &st);
        engine = std::make_unique<ScriptedEngine>(channel, fs->image, static_cast<uint64_t>(st.st_size));
        engine->start();
        std::ofstream cfg(offdisk + "/agent.toml");
        cfg << "[agent]\nvm = \"conformance\"\nlisten = \"" << agent_sock << "\"\nengine_channel = \"" << channel
            << "\"\nstate_dir = \"" << offdisk << "/state\"\narea_pages = 4096\nlog_level = \"warn\"\n"
            << "[[disk]]\nvdev = " << kVdev << "\ndevice = \"" << fs->loop << "\"\n";
        cfg.close();
        agent = ::fork();
        if (agent == 0) {
            ::execl(VPIPE_BIN_DIR "/vpipe-guestd", "vpipe-guestd", "--config", (offdisk + "/agent.toml").c_str(),
                    static_cast<char*>(nullptr));
            ::_exit(127);
        }
        ::setenv("VPIPE_AGENT_SOCKET", agent_sock.c_str(), 1);
        vpipe_set_fallback(0);
        vpipe_set_min_offload(0);
        if (!wait_engine(true)) {
            why = "the agent did not connect to the scripted engine";
            return false;
        }
        return true;
    }

    void down() {
        if (agent > 0) {
            ::kill(agent, SIGTERM);
            ::waitpid(agent, nullptr, 0);
        }
        if (engine) engine->stop();
        fs.reset();
        if (!offdisk.empty()) sh("rm -rf '" + offdisk + "'");
    }

    // the agent's own view of its engine link (VPIPE_IOC_STATS over its socket)
    int engine_connected() {
        UniqueFd s = vpipe::connect_unix(agent_sock);
        if (!s) return -1;
        vpipe_agent_msg m{VPIPE_AGENT_MAGIC, VPIPE_IOC_STATS, 0, 0};
        if (vpipe::send_msg_fds(s.get(), &m, sizeof(m), nullptr, 0) < 0) return -1;
        vpipe_agent_msg rep{};
        vpipe_ioc_stats st{};
        if (vpipe::recv_msg_fds(s.get(), &rep, sizeof(rep), nullptr, 0) < 0 ||
            vpipe::recv_msg_fds(s.get(), &st, sizeof(st), nullptr, 0) < 0)
            return -1;
        return static_cast<int>(st.engine_connected);
    }
    // waits (bounded) for the link to be up / down: an event the agent reports, not a sleep
    bool wait_engine(bool up_) {
        for (int i = 0; i < 500; ++i) {
            if (engine_connected() == (up_ ? 1 : 0)) return true;
            ::usleep(10000);
        }
        return false;
    }
};

World* g_world;

// ---- the corpus's environment ---------------------------------------------------------------

int pair_on(const char* addr, const char* peer_addr, int* vm, int* peer) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    ::inet_pton(AF_INET, addr, &a.sin_addr);
    socklen_t al = sizeof(a);
    UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!l || ::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) || ::listen(l.get(), 1) ||
        ::getsockname(l.get(), reinterpret_cast<sockaddr*>(&a), &al))
        return -1;
    UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in p{};
    p.sin_family = AF_INET;
    ::inet_pton(AF_INET, peer_addr, &p.sin_addr);
    if (!c || ::bind(c.get(), reinterpret_cast<sockaddr*>(&p), sizeof(p)) ||
        ::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)))
        return -1;
    int s = ::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (s < 0) return -1;
    *vm = s;
    *peer = c.release();
    return 0;
}

int env_vm_pair(void*, int* vm, int* peer) { return pair_on("10.9.9.1", "10.9.9.2", vm, peer); }
int env_lo_pair(void*, int* vm, int* peer) { return pair_on("127.0.0.1", "127.0.0.1", vm, peer); }

int env_script(void*, const vc_script* s) {
    g_world->engine->script(*s);
    // the agent must see the engine as the case wants it before the call
    return g_world->wait_engine(s->ans != VC_ANS_DOWN) ? 0 : -1;
}

int env_requests(void*, const vc_req** out, int* n) {
    g_world->engine->requests(out, n);
    return 0;
}

// One operation through libvpipe (fallbacks off, no threshold): what an application calls.
int env_call(void*, vpipe_ioc_op* op, int in, int out, const void* head, const void* tail) {
    iovec h{const_cast<void*>(head), op->head_len}, t{const_cast<void*>(tail), op->tail_len};
    vpipe_hdtr hdtr{&h, 1, &t, 1};
    const bool with_hdtr = op->head_len || op->tail_len;
    const off_t in_off = static_cast<off_t>(op->in_offset), out_off = static_cast<off_t>(op->out_offset);
    ssize_t n;
    // libvpipe has no head/tail for file destinations, and with fallbacks off it turns the
    // cache rule off: those ask the agent directly
    if ((with_hdtr && (op->op == VPIPE_IOC_FILE_TO_FILE || op->op == VPIPE_IOC_SOCKET_TO_FILE)) ||
        (op->op == VPIPE_IOC_FILE_TO_SOCKET && !(op->flags & VPIPE_OPF_NO_CACHE_RULE))) {
        {
            UniqueFd s = vpipe::connect_unix(g_world->agent_sock);
            std::vector<uint8_t> msg(sizeof(vpipe_agent_msg) + sizeof(*op) + op->head_len + op->tail_len);
            vpipe_agent_msg m{VPIPE_AGENT_MAGIC, VPIPE_IOC_OP, 0, static_cast<uint32_t>(msg.size() - sizeof(vpipe_agent_msg))};
            vpipe_ioc_op o = *op;
            o.handle = VPIPE_NO_HANDLE;
            o.in_fd = 0;
            o.out_fd = 1;
            std::memcpy(msg.data(), &m, sizeof(m));
            std::memcpy(msg.data() + sizeof(m), &o, sizeof(o));
            std::memcpy(msg.data() + sizeof(m) + sizeof(o), head, op->head_len);
            std::memcpy(msg.data() + sizeof(m) + sizeof(o) + op->head_len, tail, op->tail_len);
            const int fds[2] = {in, out};
            vpipe_agent_msg rep{};
            if (vpipe::send_msg_fds(s.get(), msg.data(), msg.size(), fds, 2) < 0 ||
                vpipe::recv_msg_fds(s.get(), &rep, sizeof(rep), nullptr, 0) < 0 ||
                vpipe::recv_msg_fds(s.get(), op, sizeof(*op), nullptr, 0) < 0)
                return -EPROTO;
            return rep.result;
        }
    }
    switch (op->op) {
    case VPIPE_IOC_FILE_TO_FILE:
        n = vpipe_file_to_file_fd(in, out, in_off, op->length, out_off);
        break;
    case VPIPE_IOC_FILE_TO_SOCKET:
        n = with_hdtr ? vpipe_file_to_socket_fd_hdtr(in, out, in_off, op->length, &hdtr)
                      : vpipe_file_to_socket_fd(in, out, in_off, op->length);
        break;
    case VPIPE_IOC_SOCKET_TO_FILE:
        n = vpipe_socket_to_file_fd(in, out, out_off, op->length);
        break;
    default:
        n = with_hdtr ? vpipe_socket_to_socket_fd_hdtr(in, out, op->length, &hdtr)
                      : vpipe_socket_to_socket_fd(in, out, op->length);
        break;
    }
    const int err = n < 0 ? errno : 0;
    vpipe_result r{};
    vpipe_last_result(&r);
    op->moved = r.moved;
    op->offloaded = r.offloaded;
    op->guest_copied = r.guest_copied;
    op->zero_filled = r.zero_filled;
    op->requests = r.requests;
    op->paths = r.paths;
    op->hdtr_moved = r.hdtr_moved;
    return -err;
}

void env_log(void*, const char* line) { std::printf("%s\n", line); }

class Agent : public ::testing::TestWithParam<size_t> {
protected:
    static void SetUpTestSuite() {
        g_world = new World;
        if (!g_world->up()) {
            skip_ = g_world->why;
            g_world->down();
        }
    }
    static void TearDownTestSuite() {
        if (g_world) g_world->down();
        delete g_world;
        g_world = nullptr;
    }
    void SetUp() override {
        if (!skip_.empty()) {
            if (::geteuid() != 0) GTEST_SKIP() << skip_;
            FAIL() << "set-up failed: " << skip_;
        }
    }
    static std::string skip_;
};
std::string Agent::skip_;

TEST_P(Agent, Case) {
    const vc_case& c = vc_corpus[GetParam()];
    vc_env env{};
    env.dir = g_world->dir.c_str();
    env.offdisk = g_world->offdisk.c_str();
    env.vdev = kVdev;
    env.part_off = g_world->fs->fs_offset;
    env.vm_pair = env_vm_pair;
    env.lo_pair = env_lo_pair;
    env.script = env_script;
    env.requests = env_requests;
    env.call = env_call;
    env.log = env_log;
    char why[512];
    EXPECT_EQ(vc_run(&env, &c, why, sizeof(why)), 0) << vc_describe(&c) << ": " << why;
}

INSTANTIATE_TEST_SUITE_P(conformance, Agent, ::testing::Range<size_t>(0, vc_corpus_len),
                         [](const ::testing::TestParamInfo<size_t>& i) { return std::string(vc_corpus[i.param].name); });

}  // namespace

int main(int argc, char** argv) {
    ::signal(SIGPIPE, SIG_IGN);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
