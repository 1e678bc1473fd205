// What the Xen backend reads from xenstore, behind a small interface so the parsing and
// validation of the toolstack's and the guest's keys can be tested without a hypervisor.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vpipe::xen {

// enum xenbus_state (xen/io/xenbus.h), the values both ends write as "state".
enum XenbusState : int {
    kUnknown = 0,
    kInitialising = 1,
    kInitWait = 2,
    kInitialised = 3,
    kConnected = 4,
    kClosing = 5,
    kClosed = 6,
    kReconfiguring = 7,
    kReconfigured = 8,
};
const char* state_name(int state);

class StoreReader {
public:
    virtual ~StoreReader() = default;
    // The node's value; nullopt when it does not exist (or cannot be read).
    virtual std::optional<std::string> read(const std::string& path) = 0;
    // The node's children; nullopt when it does not exist.
    virtual std::optional<std::vector<std::string>> list(const std::string& path) = 0;
};

// Strict unsigned decimal: digits only (no sign, space, base prefix or trailing bytes), at most
// `max`. Values written by a guest go through this and nothing else.
std::optional<uint64_t> parse_decimal(const std::string& s, uint64_t max);

}  // namespace vpipe::xen
