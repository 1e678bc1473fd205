// Small text helpers for HTTP heads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace vpipe::apps {

std::string lower(std::string s);

// Without leading and trailing spaces and tabs.
std::string trim(std::string_view s);

// A non-empty run of at most `max_digits` decimal digits; false on anything else.
bool parse_u64(std::string_view s, uint64_t* out, size_t max_digits = 19);

// A header line "Name: value" -> lower-case name, trimmed value. false without a colon.
bool split_header(std::string_view line, std::string* name, std::string* value);

}  // namespace vpipe::apps
