// PollThread: one thread running a poll() loop, and the eventfd that wakes it -- the start/stop
// half of every "thread polling its own descriptors" in the engine and the agent.
//
// The loop is the owner's: it polls its own descriptors plus wake_fd(), and returns once
// stopping() is true (which it sees after the wake-up stop() sends). A loop that is woken for
// other work too (wake() from another thread: new work queued, room freed) tells the two apart
// by stopping(), and drain()s the wake-ups it consumed so that its next poll() blocks again.
//
//   PollThread loop_;
//   loop_.start([this] { run(); });
//   void run() {
//       while (!loop_.stopping()) {
//           pollfd fds[2] = {{loop_.wake_fd(), POLLIN, 0}, {sock_, POLLIN, 0}};
//           ...poll...
//           if (fds[0].revents) { loop_.drain(); if (loop_.stopping()) break; ...other work... }
//       }
//   }
//   ~Owner() { loop_.stop(); ... }         // before the members the loop uses go away
#pragma once

#include <atomic>
#include <functional>
#include <thread>

#include "util/unique_fd.h"

namespace vpipe {

class PollThread {
public:
    PollThread();   // creates the eventfd; throws std::system_error ("eventfd: ...") on failure
    ~PollThread();  // stop(); owners stop() in their own destructor, while the loop's data lives
    PollThread(const PollThread&) = delete;
    PollThread& operator=(const PollThread&) = delete;

    // Runs `loop` in a new thread (not while one runs). Wake-ups from before start() are
    // dropped and stopping() turns false.
    void start(std::function<void()> loop);
    // Sets stopping(), wakes the loop and joins it. True when it did stop a running loop; false
    // (and nothing done) when none runs: never started, or stopped already. Not from the loop
    // itself, nor concurrently with start() or another stop().
    bool stop();

    bool running() const { return thread_.joinable(); }
    // True from stop() on: the loop returns when it sees it. Any thread may ask.
    bool stopping() const { return stopping_; }

    // Readable when the loop has been woken (by stop() or wake()). Open until destruction.
    int wake_fd() const { return wake_fd_.get(); }
    // Wakes the loop for other work (stopping() unchanged). Any thread, any time: also before
    // start() and after stop() (then it is lost, nobody polls).
    void wake() const;
    // Consumes pending wake-ups (on the loop's thread) so that the next poll() blocks again.
    void drain() const;

private:
    UniqueFd wake_fd_;
    std::atomic<bool> stopping_{false};
    std::thread thread_;
};

}  // namespace vpipe
