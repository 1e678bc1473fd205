// Ring round trip through a real vpiped process: a NOP request -> engine -> response, with 1
// and N requests outstanding. This is the fixed cost every offloaded operation pays.
#include <sys/stat.h>
#include <sys/wait.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include <benchmark/benchmark.h>

#include "transport/shm_channel.h"

using namespace vpipe;

namespace {

struct Engine {
    std::string dir;
    pid_t pid = -1;
    std::unique_ptr<transport::ShmGuestChannel> ch;

    Engine() {
        dir = "/var/tmp/vpipe-bench-ring-" + std::to_string(::getpid());
        ::mkdir(dir.c_str(), 0700);
        std::ofstream(dir + "/disk.img").close();
        ::truncate((dir + "/disk.img").c_str(), 1 << 20);
        std::ofstream(dir + "/vpiped.toml") << "[engine]\ncontrol_socket = \"" << dir
            << "/ctl\"\npool_pages = 256\n[[vm]]\nname = \"b\"\nid = 1\nthreads = 4\nchannel = \""
            << dir << "/vm.sock\"\n[[vm.disk]]\nvdev = 51712\nimage = \"" << dir << "/disk.img\"\n";
        pid = ::fork();
        if (pid == 0) {
            std::string cfg = dir + "/vpiped.toml";
            ::execl(VPIPE_BIN_DIR "/vpiped", "vpiped", "--config", cfg.c_str(), "--log-level", "error", nullptr);
            ::_exit(127);
        }
        for (int i = 0; i < 250 && ::access((dir + "/ctl").c_str(), F_OK) != 0; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        if (transport::ShmGuestChannel::open(dir + "/vm.sock", 16, &ch) != 0) std::abort();
    }
    ~Engine() {
        ch.reset();
        ::kill(pid, SIGTERM);
        ::waitpid(pid, nullptr, 0);
        std::system(("rm -rf " + dir).c_str());
    }

    // Posts `n` NOPs, then waits for all n responses (sleeping on the kick like a real guest).
    void round_trip(unsigned n) {
        auto& ring = ch->ring();
        for (unsigned i = 0; i < n; ++i) {
            vpipe_request* r = RING_GET_REQUEST(&ring, ring.req_prod_pvt);
            *r = {};
            r->id = ring.req_prod_pvt;
            ring.req_prod_pvt++;
        }
        int notify;
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&ring, notify);
        if (notify) ch->notify_dom0();
        unsigned got = 0;
        while (got < n) {
            RING_IDX rp = ring.sring->rsp_prod;
            xen_rmb();
            got += rp - ring.rsp_cons;
            ring.rsp_cons = rp;
            if (got == n) break;
            int more;
            RING_FINAL_CHECK_FOR_RESPONSES(&ring, more);
            if (more) continue;
            pollfd p{ch->event_fd(), POLLIN, 0};
            ::poll(&p, 1, 1000);
            transport::drain_kicks(ch->event_fd());
        }
    }
};

}  // namespace

static void BM_RingRoundTrip(benchmark::State& state) {
    static Engine engine;
    const unsigned n = static_cast<unsigned>(state.range(0));
    for (auto _ : state) engine.round_trip(n);
    state.SetItemsProcessed(state.iterations() * n);
    state.counters["requests/s"] = benchmark::Counter(static_cast<double>(state.iterations() * n),
                                                      benchmark::Counter::kIsRate);
}
BENCHMARK(BM_RingRoundTrip)->Arg(1)->Arg(8)->Arg(32)->UseRealTime();

BENCHMARK_MAIN();
