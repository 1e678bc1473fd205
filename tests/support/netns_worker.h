// NsWorker: a thread living in a named network namespace (/run/netns/<name>), so one test
// process can act in several namespaces at once; run() executes a function there and returns
// its result. sh()/capture() run shell commands (namespace set-up with ip(8), nft listings).
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>

namespace vpipe::test {

inline int sh(const std::string& cmd) {
    int rc = system(cmd.c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

inline std::string capture(const std::string& cmd) {
    std::string out;
    FILE* f = popen(cmd.c_str(), "r");
    if (!f) return out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
    pclose(f);
    return out;
}

// A thread living in a named network namespace; run() executes a function there, synchronously.
class NsWorker {
public:
    explicit NsWorker(const std::string& ns) {
        std::promise<bool> ready;
        auto fut = ready.get_future();
        th_ = std::thread([this, ns, &ready] {
            int fd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
            bool ok = fd >= 0 && setns(fd, CLONE_NEWNET) == 0;
            if (fd >= 0) close(fd);
            ready.set_value(ok);
            loop();
        });
        ok_ = fut.get();
    }
    ~NsWorker() {
        {
            std::lock_guard<std::mutex> g(mu_);
            stop_ = true;
        }
        cv_.notify_one();
        th_.join();
    }
    bool ok() const { return ok_; }
    template <typename F>
    auto run(F f) -> decltype(f()) {
        std::packaged_task<decltype(f())()> task(std::move(f));
        auto fut = task.get_future();
        {
            std::lock_guard<std::mutex> g(mu_);
            q_.emplace_back([&task] { task(); });
        }
        cv_.notify_one();
        return fut.get();
    }

private:
    void loop() {
        for (;;) {
            std::function<void()> fn;
            {
                std::unique_lock<std::mutex> l(mu_);
                cv_.wait(l, [this] { return stop_ || !q_.empty(); });
                if (q_.empty()) return;
                fn = std::move(q_.front());
                q_.pop_front();
            }
            fn();
        }
    }
    std::thread th_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> q_;
    bool stop_ = false;
    bool ok_ = false;
};

}  // namespace vpipe::test
