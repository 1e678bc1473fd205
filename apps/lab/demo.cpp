// `vpipe-lab demo`: a short guided tour — copy a 256 MiB file inside vm1 with cp-vpipe and cp.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "lab.h"
#include "state.h"
#include "util.h"

namespace vpipe::lab {

namespace {

// Writes back and evicts a file's cached pages, so a copy that follows reads from the disk.
void drop_file_cache(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
}

}  // namespace


namespace {

struct Timed {
    RunResult r;
    double secs = 0;
};

Timed in_vm(const std::string& vm, const std::vector<std::string>& cmd) {
    std::vector<std::string> argv{self_exe(), "exec", vm, "--"};
    argv.insert(argv.end(), cmd.begin(), cmd.end());
    auto t0 = std::chrono::steady_clock::now();
    Timed t;
    t.r = run(argv, true);
    t.secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return t;
}

void step(int n, const std::string& what) { std::cout << "\n[" << n << "] " << what << "\n"; }

std::string first_word(const std::string& s) { return s.substr(0, s.find_first_of(" \t\n")); }

}  // namespace

int cmd_demo() {
    bool brought_up = false;
    if (!lab_is_up()) {
        UpOptions o;
        o.vms = 1;
        o.disk_mib = 1024;
        o.quiet = false;
        if (find_binary("vpiped").empty() || find_binary("vpipe-guestd").empty()) {
            std::cout << "note: vpiped / vpipe-guestd not built; bringing the lab up without the engine and agent\n";
            o.daemons = false;
        }
        step(1, "bringing the lab up: vpipe-lab up --vms 1 --disk-mib 1024");
        if (cmd_up(o) != 0) return 1;
        brought_up = true;
    } else {
        step(1, "the lab is already up; using it");
    }
    int rc = 0;
    try {
        auto st = load_state();
        if (!st || st->vms.empty() || st->vms.front().disks.empty())
            throw LabError("the lab has no vm1 with a disk");
        const auto& vm = st->vms.front();
        std::string dir = vm.disks.front().mount;
        std::string src = dir + "/demo-src.bin", dst_v = dir + "/demo-copy-vpipe.bin", dst_c = dir + "/demo-copy-cp.bin";

        step(2, "writing 256 MiB of random data inside " + vm.name + ": " + src);
        auto dd = in_vm(vm.name, {"dd", "if=/dev/urandom", "of=" + src, "bs=1M", "count=256", "status=none"});
        if (dd.r.status != 0) throw LabError("dd failed: " + trim(dd.r.output));
        in_vm(vm.name, {"sync"});
        std::printf("    done in %.2f s\n", dd.secs);

        double t_vpipe = -1;
        std::string cpv = find_binary("cp-vpipe");
        step(3, "copying it with cp-vpipe --stats (data moved by the engine in dom0)");
        if (cpv.empty()) {
            std::cout << "    skipped: cp-vpipe is not built\n";
        } else {
            drop_file_cache(src);  // both copies start from a cold cache
            auto c = in_vm(vm.name, {cpv, "--stats", src, dst_v});
            if (c.r.status != 0) {
                std::cout << "    cp-vpipe failed (exit " << c.r.status << "): " << trim(c.r.output) << "\n";
            } else {
                t_vpipe = c.secs;
                std::cout << "    " << trim(c.r.output) << "\n";
                std::printf("    cp-vpipe took %.3f s (%.0f MiB/s), the file is durable when it returns\n",
                            c.secs, 256 / c.secs);
                std::cout << "    (a new file: the guest zero-fills its blocks while dom0 copies; docs/append.md)\n";
            }
        }

        step(4, "copying it with plain cp + sync (data moved by the guest)");
        drop_file_cache(src);
        auto c2 = in_vm(vm.name, {"sh", "-c", "cp \"$0\" \"$1\" && sync \"$1\"", src, dst_c});
        if (c2.r.status != 0) throw LabError("cp failed: " + trim(c2.r.output));
        std::printf("    cp + sync took %.3f s (%.0f MiB/s)\n", c2.secs, 256 / c2.secs);
        if (t_vpipe > 0)
            std::printf("    cp-vpipe / cp time: %.2f on this host; bench/run.sh measures it under VM contention\n",
                        t_vpipe / c2.secs);

        step(5, "SHA-256 sums");
        std::vector<std::string> files{src, dst_c};
        if (t_vpipe > 0) files.insert(files.begin() + 1, dst_v);
        for (const auto& f : files) {
            auto s = in_vm(vm.name, {"sha256sum", f});
            std::cout << "    " << first_word(s.r.output) << "  " << f << "\n";
        }

        step(6, "engine statistics");
        std::string ctl = find_binary("vpipectl");
        if (ctl.empty()) {
            std::cout << "    skipped: vpipectl is not built\n";
        } else if (!st->daemons || st->engine.pid == 0) {
            std::cout << "    skipped: the engine is not running in this lab\n";
        } else {
            auto s = run({ctl, "--control", st->engine.control_socket, "stats"}, true);
            std::cout << s.output;
        }
        in_vm(vm.name, {"rm", "-f", src, dst_v, dst_c});
    } catch (const std::exception& e) {
        std::cerr << "vpipe-lab demo: " << e.what() << "\n";
        rc = 1;
    }
    if (brought_up) {
        step(7, "tearing the lab down again");
        if (cmd_down(false) != 0) rc = 1;
    }
    return rc;
}

}  // namespace vpipe::lab
