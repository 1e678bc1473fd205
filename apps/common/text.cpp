#include "common/text.h"

#include <cctype>

namespace vpipe::apps {

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

std::string trim(std::string_view s) {
    size_t a = 0, b = s.size();
    while (a < b && (s[a] == ' ' || s[a] == '\t')) ++a;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) --b;
    return std::string(s.substr(a, b - a));
}

bool parse_u64(std::string_view s, uint64_t* out, size_t max_digits) {
    if (s.empty() || s.size() > max_digits || s.size() > 19) return false;
    uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + static_cast<uint64_t>(c - '0');
    }
    *out = v;
    return true;
}

bool split_header(std::string_view line, std::string* name, std::string* value) {
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) return false;
    *name = lower(std::string(line.substr(0, colon)));
    *value = trim(line.substr(colon + 1));
    return true;
}

}  // namespace vpipe::apps
