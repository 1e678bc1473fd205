// libxenstore, wrapped: reads, writes, permissions, transactions and watches for the backend.
// One instance is used by one thread (the backend's) plus stats readers of its cache, never
// shared with the data paths.
#pragma once

extern "C" {
#include <xenstore.h>
}

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "store.h"

namespace vpipe::xen {

class XsClient final : public StoreReader {
public:
    // Connects to xenstored (socket or /dev/xen/xenbus). Throws std::runtime_error.
    XsClient();
    ~XsClient() override;
    XsClient(const XsClient&) = delete;
    XsClient& operator=(const XsClient&) = delete;

    std::optional<std::string> read(const std::string& path) override;
    std::optional<std::vector<std::string>> list(const std::string& path) override;

    // Runs `body` in a transaction, retried while xenstored says EAGAIN (a conflicting
    // writer). `body` returns false to abort. true when committed.
    bool transact(const std::function<bool(xs_transaction_t)>& body);
    std::optional<std::string> read(xs_transaction_t t, const std::string& path);
    bool write(xs_transaction_t t, const std::string& path, const std::string& value);
    bool write(const std::string& path, const std::string& value) { return write(XBT_NULL, path, value); }
    bool mkdir(xs_transaction_t t, const std::string& path);
    bool rm(xs_transaction_t t, const std::string& path);
    // perms in xenstore's notation: {owner, everyone-else} then per-domain entries, e.g.
    // {{domid, XS_PERM_NONE}, {0, XS_PERM_READ}} = "n<domid> r0".
    bool set_permissions(xs_transaction_t t, const std::string& path,
                         std::vector<xs_permissions> perms);

    bool watch(const std::string& path, const std::string& token);
    bool unwatch(const std::string& path, const std::string& token);
    int fileno() const;  // readable when a watch fired
    // Pending watch events, {path, token} each; never blocks.
    std::vector<std::pair<std::string, std::string>> pending_watches();
    bool domain_introduced(uint32_t domid);

private:
    xs_handle* h_ = nullptr;
};

}  // namespace vpipe::xen
