#include "http_framing.h"

#include <algorithm>
#include <cstdlib>

#include "common/text.h"

namespace vpipe::proxy {

namespace {

bool parse_start_line(const std::string& line, bool response, MessageHead* m) {
    if (response) {
        if (line.compare(0, 7, "HTTP/1.") != 0 || line.size() < 12) return false;
        m->status = std::atoi(line.c_str() + 9);
        return m->status >= 100 && m->status <= 999;
    }
    size_t sp = line.find(' ');
    if (sp == std::string::npos || line.find(" HTTP/1.") == std::string::npos) return false;
    m->method = line.substr(0, sp);
    return true;
}

}  // namespace

bool parse_message_head(const std::string& h, bool response, MessageHead* m) {
    size_t eol = h.find("\r\n");
    if (!parse_start_line(h.substr(0, eol), response, m)) return false;
    size_t pos = eol + 2;
    while (pos < h.size()) {
        size_t e = h.find("\r\n", pos);
        if (e == std::string::npos || e == pos) break;
        std::string name, value;
        if (!apps::split_header(std::string_view(h).substr(pos, e - pos), &name, &value)) return false;
        pos = e + 2;
        if (name == "transfer-encoding") m->chunked = true;
        if (name != "content-length") continue;
        uint64_t n;
        if (!apps::parse_u64(value, &n, 18)) return false;
        if (m->length >= 0 && m->length != static_cast<int64_t>(n)) return false;
        m->length = static_cast<int64_t>(n);
    }
    return true;
}

bool RequestFollower::follow(const char* p, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (in_body_) {
            uint64_t k = std::min<uint64_t>(body_left_, n - i);
            body_left_ -= k;
            i += k;
            in_body_ = body_left_ > 0;
            continue;
        }
        head_buf_.push_back(p[i++]);
        if (head_buf_.size() > kMaxFramedHead) return false;
        if (head_buf_.size() < 4 || head_buf_.compare(head_buf_.size() - 4, 4, "\r\n\r\n") != 0) continue;
        MessageHead m;
        if (!parse_message_head(head_buf_, false, &m) || m.chunked) return false;
        head_.push_back(m.method == "HEAD");
        head_buf_.clear();
        if (m.length > 0) {
            in_body_ = true;
            body_left_ = static_cast<uint64_t>(m.length);
        }
    }
    return true;
}

bool RequestFollower::answer(int status) {
    bool was_head = head_.front();
    if (status >= 200) head_.pop_front();
    return was_head;
}

}  // namespace vpipe::proxy
