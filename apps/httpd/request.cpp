#include "request.h"

#include <algorithm>
#include <cctype>
#include <climits>

#include "common/text.h"

namespace vpipe::httpd {

using apps::lower;
using apps::parse_u64;
using apps::trim;

const std::string* Request::header(const char* name) const {
    for (const auto& h : headers)
        if (h.first == name) return &h.second;
    return nullptr;
}

bool Request::expects_continue() const {
    const std::string* e = header("expect");
    return e && lower(*e) == "100-continue";
}

namespace {

bool parse_request_line(std::string_view line, Request* rq) {
    size_t s1 = line.find(' ');
    size_t s2 = s1 == std::string_view::npos ? s1 : line.find(' ', s1 + 1);
    if (s1 == std::string_view::npos || s2 == std::string_view::npos || line.find(' ', s2 + 1) != std::string_view::npos)
        return false;
    rq->method = std::string(line.substr(0, s1));
    rq->target = std::string(line.substr(s1 + 1, s2 - s1 - 1));
    rq->version = std::string(line.substr(s2 + 1));
    if (rq->method.empty() || rq->target.empty()) return false;
    return std::all_of(rq->method.begin(), rq->method.end(),
                       [](char c) { return std::isupper(static_cast<unsigned char>(c)); });
}

bool parse_header_line(std::string_view h, Request* rq) {
    size_t colon = h.find(':');
    if (colon == std::string_view::npos || colon == 0) return false;
    for (char c : h.substr(0, colon))
        if (c <= 0x20 || c >= 0x7f) return false;  // no whitespace before the colon, no obs-fold
    for (char c : h)
        if (c == '\0' || c == '\r' || c == '\n') return false;
    std::string name, value;
    apps::split_header(h, &name, &value);
    rq->headers.emplace_back(std::move(name), std::move(value));
    return true;
}

// Does the comma-separated header value contain `token` (case-insensitive)?
bool has_token(const std::string& value, const char* token) {
    size_t pos = 0;
    while (pos <= value.size()) {
        size_t comma = value.find(',', pos);
        if (comma == std::string::npos) comma = value.size();
        if (lower(trim(std::string_view(value).substr(pos, comma - pos))) == token) return true;
        pos = comma + 1;
    }
    return false;
}

bool version_ok(const std::string& v) {
    return v.size() == 8 && v.compare(0, 5, "HTTP/") == 0 && std::isdigit(static_cast<unsigned char>(v[5])) &&
           v[6] == '.' && std::isdigit(static_cast<unsigned char>(v[7]));
}

// Percent-decoding of a path. false on a bad escape or an encoded NUL.
bool percent_decode(const std::string& t, std::string* dec) {
    for (size_t i = 0; i < t.size(); ++i) {
        if (t[i] != '%') {
            *dec += t[i];
            continue;
        }
        if (i + 2 >= t.size() || !std::isxdigit(static_cast<unsigned char>(t[i + 1])) ||
            !std::isxdigit(static_cast<unsigned char>(t[i + 2])))
            return false;
        char c = static_cast<char>(std::stoi(t.substr(i + 1, 2), nullptr, 16));
        if (c == '\0') return false;
        *dec += c;
        i += 2;
    }
    return true;
}

// A number of a Range: digits; more digits than fit count as "huge" (*huge) instead of invalid.
bool range_number(const std::string& s, uint64_t* v, bool* huge) {
    *huge = s.size() > 19 && s.find_first_not_of("0123456789") == std::string::npos;
    return parse_u64(s, v);
}

}  // namespace

bool parse_request_head(std::string_view head, Request* rq) {
    head = head.substr(0, head.size() - 2);  // keep one CRLF after each line
    size_t eol = head.find("\r\n");
    if (!parse_request_line(head.substr(0, eol), rq)) return false;
    size_t pos = eol + 2;
    while (pos < head.size()) {
        size_t e = head.find("\r\n", pos);
        if (e == std::string_view::npos) return false;
        std::string_view h = head.substr(pos, e - pos);
        pos = e + 2;
        if (h.empty()) break;
        if (!parse_header_line(h, rq)) return false;
    }
    return true;
}

int check_framing(const Request& rq, Framing* f) {
    if (!version_ok(rq.version)) return 400;
    if (rq.version != "HTTP/1.1" && rq.version != "HTTP/1.0") return 505;
    const std::string* conn = rq.header("connection");
    f->keep = rq.version == "HTTP/1.1" ? !(conn && has_token(*conn, "close")) : (conn && has_token(*conn, "keep-alive"));
    if (rq.version == "HTTP/1.1" && !rq.header("host")) return 400;
    if (rq.header("transfer-encoding")) return rq.method == "PUT" ? 411 : 501;
    for (const auto& h : rq.headers) {
        if (h.first != "content-length") continue;
        uint64_t v;
        if (!parse_u64(h.second, &v) || (f->have_len && v != f->body_len)) return 400;
        f->body_len = v;
        f->have_len = true;
    }
    return 0;
}

int to_relative(const std::string& target, std::string* rel) {
    std::string t = target;
    if (t.compare(0, 7, "http://") == 0 || t.compare(0, 8, "https://") == 0) {  // absolute-form
        size_t slash = t.find('/', t.find("//") + 2);
        t = slash == std::string::npos ? "/" : t.substr(slash);
    }
    if (t.empty() || t[0] != '/') return 400;
    size_t q = t.find_first_of("?#");
    if (q != std::string::npos) t.resize(q);
    std::string dec;
    if (!percent_decode(t, &dec)) return 400;
    rel->clear();
    size_t pos = 0;
    while (pos <= dec.size()) {
        size_t s = dec.find('/', pos);
        if (s == std::string::npos) s = dec.size();
        std::string seg = dec.substr(pos, s - pos);
        pos = s + 1;
        if (seg.empty() || seg == ".") continue;
        if (seg == "..") return 403;  // path traversal
        if (!rel->empty()) *rel += '/';
        *rel += seg;
    }
    if (rel->empty()) rel->push_back('.');  // the root itself
    return 0;
}

RangeKind parse_range(const std::string& value, uint64_t size, uint64_t* start, uint64_t* len) {
    std::string s = trim(value);
    if (s.size() < 6 || lower(s.substr(0, 6)) != "bytes=") return RangeKind::Whole;
    s = trim(s.substr(6));
    if (s.find(',') != std::string::npos) return RangeKind::Whole;  // multiple ranges: ignored
    size_t dash = s.find('-');
    if (dash == std::string::npos) return RangeKind::Whole;
    std::string a = trim(s.substr(0, dash)), b = trim(s.substr(dash + 1));
    bool huge;
    if (a.empty()) {  // suffix: the last N bytes
        uint64_t n;
        if (!range_number(b, &n, &huge)) {
            if (!huge) return RangeKind::Whole;
            n = UINT64_MAX;
        }
        if (n == 0 || size == 0) return RangeKind::Unsatisfiable;
        *len = std::min(n, size);
        *start = size - *len;
        return RangeKind::Part;
    }
    uint64_t first, last = UINT64_MAX;
    if (!range_number(a, &first, &huge)) return huge ? RangeKind::Unsatisfiable : RangeKind::Whole;
    if (!b.empty() && !range_number(b, &last, &huge)) {
        if (!huge) return RangeKind::Whole;
        last = UINT64_MAX;
    }
    if (last < first) return RangeKind::Whole;  // invalid: ignored
    if (first >= size) return RangeKind::Unsatisfiable;
    *start = first;
    *len = std::min(last, size - 1) - first + 1;
    return RangeKind::Part;
}

std::string printable(std::string_view s) {
    if (s.empty()) return "-";
    std::string out;
    for (char c : s.substr(0, 512)) out += (c >= 0x21 && c < 0x7f && c != '"') ? c : '?';
    return out;
}

}  // namespace vpipe::httpd
