// Requests of vpipe-httpd: the head, its framing, the target's path below the root, a Range.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace vpipe::httpd {

struct Request {
    std::string method, target, version;
    std::vector<std::pair<std::string, std::string>> headers;  // lower-case names
    const std::string* header(const char* name) const;
    bool is_head() const { return method == "HEAD"; }
    bool expects_continue() const;  // Expect: 100-continue
};

// Parses a request head (ending in CRLFCRLF). false: malformed (what was parsed stays in *rq).
bool parse_request_head(std::string_view head, Request* rq);

// How a request is framed and whether the connection persists.
struct Framing {
    bool keep = false;       // the connection stays open after the answer
    bool have_len = false;   // a Content-Length came
    uint64_t body_len = 0;
};

// Checks the version, Host, Transfer-Encoding and Content-Length. 0, or the status to answer
// (and close with): 400, 411, 501 or 505.
int check_framing(const Request& rq, Framing* f);

// Request target -> a relative path below the root ("." for the root). 0, or 400 / 403.
int to_relative(const std::string& target, std::string* rel);

enum class RangeKind { Whole, Part, Unsatisfiable };
// A single byte range of a file of `size` bytes (multiple or malformed ranges: Whole).
RangeKind parse_range(const std::string& value, uint64_t size, uint64_t* start, uint64_t* len);

// The text of a log field: printable ASCII (others '?'), at most 512 characters, "-" if empty.
std::string printable(std::string_view s);

}  // namespace vpipe::httpd
