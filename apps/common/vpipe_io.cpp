#include "common/vpipe_io.h"

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace vpipe::apps {

vpipe_result VpipeTally::add(ssize_t n) {
    int saved = errno;
    vpipe_result r{};
    vpipe_last_result(&r);
    used_ = true;
    if (n < 0 || r.path == VPIPE_RESULT_FAILED) {
        failed_ = true;
        error_ = n < 0 ? saved : r.error;
        reason_ = r.reason ? r.reason : "";
    } else if (n > 0) {
        offloaded_ += r.offloaded;
        guest_ += r.guest_copied;
        if (r.path == VPIPE_RESULT_FALLBACK) {
            ops_fallback_++;
            if (r.reason && *r.reason) reason_ = r.reason;
        } else {
            ops_offloaded_++;
        }
    }
    errno = saved;
    return r;
}

std::string VpipeTally::failure() const { return std::string(std::strerror(error_)) + ": " + reason_; }

std::string VpipeTally::text() const {
    if (!used_) return "-";
    if (failed_) return "failed(" + failure() + ")";
    if (ops_fallback_ == 0) return "offloaded";
    if (ops_offloaded_ == 0) return "fallback(" + reason_ + ")";
    return "mixed(offloaded=" + std::to_string(offloaded_) + " guest=" + std::to_string(guest_) + ": " + reason_ + ")";
}

namespace {

// One call with what is left of the head and up to `want` data bytes. The call returns head +
// data bytes; vpipe_last_result() tells them apart (moved: data, hdtr_moved: head, there is no
// tail). Also a failed call may have written some (the head, data before the error): they count.
bool step(std::string_view head, uint64_t want, const HdtrCall& call, VpipeTally* tally, HdtrProgress* p) {
    std::string_view rest = head.substr(std::min<uint64_t>(p->head, head.size()));
    iovec iov{const_cast<char*>(rest.data()), rest.size()};
    vpipe_hdtr hdtr{&iov, 1, nullptr, 0};
    ssize_t n = call(p->data, want, rest.empty() ? nullptr : &hdtr);
    vpipe_result r = tally->add(n);
    p->head += std::min<uint64_t>(r.hdtr_moved, rest.size());
    p->data += r.moved;
    return n >= 0;
}

}  // namespace

VpipeEnd vpipe_send_with_head(std::string_view head, uint64_t length, const HdtrCall& call, VpipeTally* tally,
                              HdtrProgress* progress) {
    while (progress->head < head.size() || progress->data < length) {
        uint64_t before = progress->total();
        if (!step(head, length - progress->data, call, tally, progress)) return VpipeEnd::Failed;
        if (progress->total() == before) return VpipeEnd::Short;
    }
    return VpipeEnd::Done;
}

VpipeEnd vpipe_send_until_eof(std::string_view head, uint64_t chunk, const HdtrCall& call, VpipeTally* tally,
                              HdtrProgress* progress) {
    for (;;) {
        HdtrProgress before = *progress;
        if (!step(head, chunk, call, tally, progress)) return VpipeEnd::Failed;
        if (progress->total() == before.total()) return VpipeEnd::Short;
        // all of the head went, and fewer data bytes than asked for: the source ended
        if (progress->head >= head.size() && progress->data - before.data < chunk) return VpipeEnd::Short;
    }
}

}  // namespace vpipe::apps
