#include "xs_client.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace vpipe::xen {

XsClient::XsClient() {
    h_ = xs_open(0);
    if (!h_) throw std::runtime_error(std::string("cannot open xenstore: ") + std::strerror(errno));
}

XsClient::~XsClient() {
    if (h_) xs_close(h_);
}

std::optional<std::string> XsClient::read(const std::string& path) { return read(XBT_NULL, path); }

std::optional<std::string> XsClient::read(xs_transaction_t t, const std::string& path) {
    unsigned len = 0;
    void* v = xs_read(h_, t, path.c_str(), &len);
    if (!v) return std::nullopt;
    std::string s(static_cast<const char*>(v), len);
    std::free(v);
    return s;
}

std::optional<std::vector<std::string>> XsClient::list(const std::string& path) {
    unsigned n = 0;
    char** d = xs_directory(h_, XBT_NULL, path.c_str(), &n);
    if (!d) return std::nullopt;
    std::vector<std::string> out(d, d + n);
    std::free(d);
    return out;
}

bool XsClient::transact(const std::function<bool(xs_transaction_t)>& body) {
    for (int attempt = 0; attempt < 100; ++attempt) {
        xs_transaction_t t = xs_transaction_start(h_);
        if (t == XBT_NULL) return false;
        const bool ok = body(t);
        if (!ok) {
            xs_transaction_end(h_, t, true);
            return false;
        }
        if (xs_transaction_end(h_, t, false)) return true;
        if (errno != EAGAIN) return false;
    }
    return false;
}

bool XsClient::write(xs_transaction_t t, const std::string& path, const std::string& value) {
    return xs_write(h_, t, path.c_str(), value.data(), static_cast<unsigned>(value.size()));
}

bool XsClient::mkdir(xs_transaction_t t, const std::string& path) { return xs_mkdir(h_, t, path.c_str()); }

bool XsClient::rm(xs_transaction_t t, const std::string& path) { return xs_rm(h_, t, path.c_str()); }

bool XsClient::set_permissions(xs_transaction_t t, const std::string& path,
                               std::vector<xs_permissions> perms) {
    return xs_set_permissions(h_, t, path.c_str(), perms.data(), static_cast<unsigned>(perms.size()));
}

bool XsClient::watch(const std::string& path, const std::string& token) {
    return xs_watch(h_, path.c_str(), token.c_str());
}

bool XsClient::unwatch(const std::string& path, const std::string& token) {
    return xs_unwatch(h_, path.c_str(), token.c_str());
}

int XsClient::fileno() const { return xs_fileno(h_); }

std::vector<std::pair<std::string, std::string>> XsClient::pending_watches() {
    std::vector<std::pair<std::string, std::string>> out;
    while (char** v = xs_check_watch(h_)) {
        out.emplace_back(v[XS_WATCH_PATH], v[XS_WATCH_TOKEN]);
        std::free(v);
    }
    return out;
}

bool XsClient::domain_introduced(uint32_t domid) { return xs_is_domain_introduced(h_, domid); }

}  // namespace vpipe::xen
