#include "backend.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>
#include <vpipe/abi/ring.h>

#include "transport/shm_channel.h"
#include "xen_channel.h"
#include "xs_client.h"

namespace vpipe::xen {

namespace {

const std::string kIntroduce = "vpipe:introduce";
const std::string kRelease = "vpipe:release";
const std::string kFrontend = "vpipe:fe:";   // + domid
const std::string kIdentity = "vpipe:id:";   // + domid

std::string vbd_dir(uint32_t domid) { return "/local/domain/0/backend/vbd/" + std::to_string(domid); }
std::string vif_dir(uint32_t domid) { return "/local/domain/0/backend/vif/" + std::to_string(domid); }

bool same_identity(const engine::VmConfig& a, const engine::VmConfig& b) {
    if (a.name != b.name || a.id != b.id || a.weight != b.weight || a.threads != b.threads || a.tenant != b.tenant ||
        a.ip != b.ip || a.mac != b.mac || a.vif != b.vif || a.bridge != b.bridge ||
        a.disks.size() != b.disks.size())
        return false;
    for (size_t i = 0; i < a.disks.size(); ++i)
        if (a.disks[i].vdev != b.disks[i].vdev || a.disks[i].image != b.disks[i].image ||
            a.disks[i].writable != b.disks[i].writable)
            return false;
    return true;
}

std::optional<uint32_t> token_domid(const std::string& token, const std::string& prefix) {
    if (token.rfind(prefix, 0) != 0) return std::nullopt;
    auto v = parse_decimal(token.substr(prefix.size()), 0x7FEF);
    if (!v) return std::nullopt;
    return static_cast<uint32_t>(*v);
}

}  // namespace

XenBackend::XenBackend(engine::Engine& engine, const engine::XenConfig& cfg)
    : engine_(engine), cfg_(cfg) {}

XenBackend::~XenBackend() { stop(); }

void XenBackend::start() {
    xs_ = std::make_unique<XsClient>();
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_fd_) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    if (!xs_->watch("@introduceDomain", kIntroduce) || !xs_->watch("@releaseDomain", kRelease))
        throw std::runtime_error(std::string("xenstore watch on @introduceDomain/@releaseDomain: ") +
                                 std::strerror(errno));
    {
        std::lock_guard lk(mu_);
        scan();
        spdlog::info("xen: backend ready, {} guest domain(s)", domains_.size());
    }
    thread_ = std::thread([this] { run(); });
}

void XenBackend::stop() {
    if (!xs_) return;
    stopping_ = true;
    if (thread_.joinable()) {
        transport::kick(wake_fd_.get());
        thread_.join();
    }
    std::lock_guard lk(mu_);
    for (auto& [domid, d] : domains_) {
        disconnect(d, "engine stopping");
        set_backend_state(d, kClosed);
        xs_->unwatch(frontend_path(domid) + "/state", kFrontend + std::to_string(domid));
        xs_->unwatch(vbd_dir(domid), kIdentity + std::to_string(domid));
        xs_->unwatch(vif_dir(domid), kIdentity + std::to_string(domid));
    }
    xs_->unwatch("@introduceDomain", kIntroduce);
    xs_->unwatch("@releaseDomain", kRelease);
    spdlog::info("xen: backend stopped, {} device(s) Closed", domains_.size());
    xs_.reset();
}

void XenBackend::run() {
    pthread_setname_np(pthread_self(), "xen-backend");
    while (!stopping_) {
        pollfd fds[2] = {{wake_fd_.get(), POLLIN, 0}, {xs_->fileno(), POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::error("xen: poll: {}", std::strerror(errno));
            return;
        }
        if (stopping_) return;
        if (fds[0].revents) {
            transport::drain_kicks(wake_fd_.get());
            std::vector<uint32_t> lost;
            {
                std::lock_guard lk(lost_mu_);
                lost.swap(lost_);
            }
            std::lock_guard lk(mu_);
            for (uint32_t domid : lost) {
                auto it = domains_.find(domid);
                if (it == domains_.end() || !it->second.connected) continue;
                Domain& d = it->second;
                d.connected = false;
                counters_.ring_errors++;
                counters_.disconnects++;
                d.last_error = "the service dropped the ring (malformed indexes)";
                // Leaving Connected makes the frontend tear down and start over (5d).
                set_backend_state(d, kInitWait);
            }
        }
        if (fds[1].revents) {
            auto events = xs_->pending_watches();
            std::lock_guard lk(mu_);
            for (const auto& [path, token] : events) handle_watch(path, token);
        }
    }
}

void XenBackend::channel_lost(uint32_t domid) {
    std::lock_guard lk(lost_mu_);
    lost_.push_back(domid);
    transport::kick(wake_fd_.get());
}

void XenBackend::handle_watch(const std::string& path, const std::string& token) {
    if (token == kIntroduce) {
        scan();
        return;
    }
    if (token == kRelease) {
        std::vector<uint32_t> gone;
        for (const auto& [domid, d] : domains_)
            if (!xs_->domain_introduced(domid) || !xs_->list(domain_path(domid))) gone.push_back(domid);
        for (uint32_t domid : gone) remove_domain(domid, "domain released");
        return;
    }
    if (auto domid = token_domid(token, kFrontend)) {
        if (auto it = domains_.find(*domid); it != domains_.end()) frontend_changed(it->second);
        return;
    }
    if (auto domid = token_domid(token, kIdentity)) {
        auto it = domains_.find(*domid);
        if (it == domains_.end()) return;
        Domain& d = it->second;
        // While the guest comes up the toolstack adds its disks and vifs one by one: follow them,
        // so that stats show the VM as it will be served. Otherwise (a ring is up, or the domain
        // is being torn down and its devices vanish) only note it: the next handshake re-reads.
        const bool coming_up = d.frontend_state == kInitialising || d.frontend_state == kInitWait ||
                               d.frontend_state == kInitialised;
        if (!d.connected && coming_up)
            refresh_identity(d, false);
        else
            d.identity_changed = true;
        return;
    }
    spdlog::debug("xen: unexpected watch {} {}", path, token);
}

void XenBackend::scan() {
    const auto now = list_domains(*xs_);
    // Only introduced domains: one the toolstack is still building gets its device when its
    // @introduceDomain fires (its own transactions are not raced).
    for (uint32_t domid : now)
        if (domid != 0 && !domains_.count(domid) && xs_->domain_introduced(domid)) add_domain(domid);
    // A domain whose directory vanished without a @releaseDomain we noticed.
    std::vector<uint32_t> gone;
    for (const auto& [domid, d] : domains_)
        if (std::find(now.begin(), now.end(), domid) == now.end()) gone.push_back(domid);
    for (uint32_t domid : gone) remove_domain(domid, "domain vanished from xenstore");
}

bool XenBackend::write_device_nodes(Domain& d) {
    const uint32_t domid = d.domid;
    const std::string fe = frontend_path(domid), be = backend_path(domid);
    const std::string dev = domain_path(domid) + "/device/vpipe";
    const std::string id = std::to_string(domid);
    // Frontend: the guest owns it (may write its keys), dom0 reads. Backend: ours, the guest reads.
    const std::vector<xs_permissions> fe_perms = {{static_cast<unsigned>(domid), XS_PERM_NONE},
                                                  {0, XS_PERM_READ}};
    const std::vector<xs_permissions> be_perms = {{0, XS_PERM_NONE},
                                                  {static_cast<unsigned>(domid), XS_PERM_READ}};
    const bool ok = xs_->transact([&](xs_transaction_t t) {
        const bool fresh = !xs_->read(t, fe + "/state");
        bool w = true;
        if (fresh) {
            w = w && xs_->mkdir(t, dev) && xs_->set_permissions(t, dev, be_perms);
            w = w && xs_->mkdir(t, fe) && xs_->set_permissions(t, fe, fe_perms);
            w = w && xs_->write(t, fe + "/state", std::to_string(kInitialising));
        }
        // Ours to say even in an existing (guest-owned) directory: where its backend is.
        w = w && xs_->write(t, fe + "/backend", be) && xs_->write(t, fe + "/backend-id", "0");
        w = w && xs_->mkdir(t, backend_domain_dir(domid)) &&
            xs_->set_permissions(t, backend_domain_dir(domid), be_perms);
        w = w && xs_->mkdir(t, be) && xs_->set_permissions(t, be, be_perms);
        w = w && xs_->write(t, be + "/frontend", fe) && xs_->write(t, be + "/frontend-id", id) &&
            xs_->write(t, be + "/online", "1") &&
            xs_->write(t, be + "/protocol-version", std::to_string(VPIPE_PROTOCOL_VERSION)) &&
            xs_->write(t, be + "/max-desc-pages", std::to_string(VPIPE_DESC_MAX_PAGES)) &&
            xs_->write(t, be + "/state", std::to_string(kInitWait));
        return w;
    });
    if (!ok) {
        counters_.xenstore_errors++;
        d.last_error = std::string("writing the device nodes failed: ") + std::strerror(errno);
        spdlog::error("xen: domain {}: {}", domid, d.last_error);
        return false;
    }
    d.backend_state = kInitWait;
    return true;
}

void XenBackend::add_domain(uint32_t domid) {
    Domain& d = domains_[domid];
    d.domid = domid;
    counters_.domains_seen++;
    write_device_nodes(d);
    const std::string id = std::to_string(domid);
    xs_->watch(frontend_path(domid) + "/state", kFrontend + id);
    xs_->watch(vbd_dir(domid), kIdentity + id);
    xs_->watch(vif_dir(domid), kIdentity + id);
    refresh_identity(d, false);
    d.frontend_state = read_state(*xs_, frontend_path(domid));
    spdlog::info("xen: domain {} ({}): vpipe device created, frontend {}", domid,
                 d.name.empty() ? "?" : d.name, state_name(d.frontend_state));
    // A frontend already Connected (we restarted) sees our InitWait and reconnects; one that is
    // Initialised has been waiting for us.
    if (d.frontend_state == kInitialised) connect(d);
}

void XenBackend::remove_domain(uint32_t domid, const char* why) {
    auto it = domains_.find(domid);
    if (it == domains_.end()) return;
    Domain& d = it->second;
    disconnect(d, why);
    if (d.service) engine_.remove_vm(domid);  // in-flight work: responses dropped, sockets released
    const std::string id = std::to_string(domid);
    xs_->unwatch(frontend_path(domid) + "/state", kFrontend + id);
    xs_->unwatch(vbd_dir(domid), kIdentity + id);
    xs_->unwatch(vif_dir(domid), kIdentity + id);
    xs_->transact([&](xs_transaction_t t) { return xs_->rm(t, backend_domain_dir(domid)); });
    counters_.domains_released++;
    spdlog::info("xen: domain {} ({}): {}; device removed", domid, d.name, why);
    domains_.erase(it);
}

void XenBackend::refresh_identity(Domain& d, bool at_connect) {
    engine::VmConfig cfg;
    std::vector<std::string> warnings;
    std::string why;
    if (!vm_config_from_store(*xs_, d.domid, cfg_, &cfg, &warnings, &why)) {
        d.last_error = why;
        return;
    }
    const bool changed = !d.service || !same_identity(cfg, d.config);
    if (!changed && !(at_connect && d.identity_changed)) return;
    for (const auto& w : warnings) spdlog::warn("xen: domain {} ({}): {}", d.domid, cfg.name, w);
    if (d.connected && !at_connect) {
        if (!same_identity(cfg, d.config)) {
            d.identity_changed = true;
            spdlog::info("xen: domain {} ({}): disks/vifs changed; applied at its next connection",
                         d.domid, cfg.name);
        }
        return;
    }
    if (d.service && !same_identity(cfg, d.config)) {
        engine_.remove_vm(d.domid);
        d.service = nullptr;
    }
    d.identity_changed = false;
    d.config = std::move(cfg);
    d.name = d.config.name;
    ensure_vm(d);
}

bool XenBackend::ensure_vm(Domain& d) {
    if (d.service) return true;
    if (d.config.name.empty()) return false;
    std::string err;
    d.service = engine_.add_vm(d.config, &err);
    if (!d.service) {
        d.last_error = "cannot serve the VM: " + err;
        spdlog::warn("xen: domain {} ({}): {}", d.domid, d.config.name, d.last_error);
        return false;
    }
    const uint32_t domid = d.domid;
    d.service->set_on_channel_lost([this, domid](const char*) { channel_lost(domid); });
    std::string disks;
    for (const auto& disk : d.config.disks)
        disks += " " + std::to_string(disk.vdev) + "=" + disk.image + (disk.writable ? "(w)" : "(r)");
    spdlog::info("xen: domain {} ({}): disks{} address {} {}", domid, d.config.name,
                 disks.empty() ? " none" : disks, d.config.ip.empty() ? "none" : d.config.ip,
                 d.config.vif);
    return true;
}

void XenBackend::frontend_changed(Domain& d) {
    const std::string fe = frontend_path(d.domid);
    const int st = read_state(*xs_, fe);
    if (st != d.frontend_state)
        spdlog::info("xen: domain {} ({}): frontend {} -> {}", d.domid, d.name,
                     state_name(d.frontend_state), state_name(st));
    d.frontend_state = st;
    switch (st) {
    case kInitialised:
        if (d.connected) {
            // Watches coalesce: a frontend that tore down and came back (1 -> 3) may look like
            // it never left. New keys mean a new ring.
            FrontendKeys now;
            std::string why;
            if (read_frontend_keys(*xs_, fe, &now, &why) == 0 && now.ring_ref == d.keys.ring_ref &&
                now.event_channel == d.keys.event_channel)
                return;
            disconnect(d, "frontend re-initialised");
            set_backend_state(d, kInitWait);
        }
        if (d.backend_state == kInitWait) connect(d);
        return;
    case kConnected:
        return;  // after our Connected; or a frontend that still has to see our InitWait
    default:
        // Initialising/InitWait (it reset), Closing/Closed (module unloaded), or no state.
        if (d.connected) disconnect(d, st >= kClosing ? "frontend closed" : "frontend reset");
        set_backend_state(d, kInitWait);
        return;
    }
}

void XenBackend::handshake_failed(Domain& d, const std::string& why) {
    counters_.handshake_failures++;
    d.handshake_failures++;
    d.last_error = why;
    spdlog::warn("xen: domain {} ({}): handshake refused, staying InitWait: {}", d.domid, d.name, why);
}

void XenBackend::connect(Domain& d) {
    refresh_identity(d, true);
    if (!ensure_vm(d)) {
        counters_.vm_failures++;
        handshake_failed(d, d.last_error.empty() ? "no VM configuration" : d.last_error);
        return;
    }
    FrontendKeys keys;
    std::string why;
    const int r = read_frontend_keys(*xs_, frontend_path(d.domid), &keys, &why);
    if (r < 0) {
        (r == -EPROTO ? counters_.bad_version : counters_.bad_keys)++;
        handshake_failed(d, why);
        return;
    }
    XenHostChannel::Failure failure;
    auto ch = XenHostChannel::open(d.domid, keys.ring_ref, keys.event_channel, &failure, &why);
    if (!ch) {
        if (failure == XenHostChannel::Failure::kRingMap) counters_.ring_map_failures++;
        if (failure == XenHostChannel::Failure::kEvtchn) counters_.evtchn_failures++;
        handshake_failed(d, why);
        return;
    }
    d.service->attach(std::move(ch));
    d.keys = keys;
    d.connected = true;
    d.connects++;
    counters_.connects++;
    d.last_error.clear();
    set_backend_state(d, kConnected);
}

void XenBackend::disconnect(Domain& d, const char* why) {
    if (!d.connected) return;
    if (d.service) d.service->detach(why);  // the ring is unmapped once no worker holds it
    d.connected = false;
    counters_.disconnects++;
}

void XenBackend::set_backend_state(Domain& d, int state) {
    if (d.backend_state == state) return;
    if (!xs_->write(backend_path(d.domid) + "/state", std::to_string(state))) {
        counters_.xenstore_errors++;
        spdlog::warn("xen: domain {}: writing backend state {}: {}", d.domid, state_name(state),
                     std::strerror(errno));
        return;
    }
    spdlog::info("xen: domain {} ({}): backend {} -> {}", d.domid, d.name,
                 state_name(d.backend_state), state_name(state));
    d.backend_state = state;
}

nlohmann::json XenBackend::stats() const {
    std::lock_guard lk(mu_);
    nlohmann::json doms = nlohmann::json::array();
    for (const auto& [domid, d] : domains_) {
        doms.push_back({{"domid", domid},
                        {"name", d.name},
                        {"vm", d.service != nullptr},
                        {"connected", d.connected},
                        {"backend_state", state_name(d.backend_state)},
                        {"frontend_state", state_name(d.frontend_state)},
                        {"ring_ref", d.connected ? d.keys.ring_ref : 0},
                        {"event_channel", d.connected ? d.keys.event_channel : 0},
                        {"connects", d.connects},
                        {"handshake_failures", d.handshake_failures},
                        {"last_error", d.last_error}});
    }
    const XenCounters& c = counters_;
    return {{"enabled", true},
            {"domains", doms},
            {"counters",
             {{"domains_seen", c.domains_seen},
              {"domains_released", c.domains_released},
              {"connects", c.connects},
              {"disconnects", c.disconnects},
              {"handshake_failures", c.handshake_failures},
              {"bad_version", c.bad_version},
              {"bad_keys", c.bad_keys},
              {"ring_map_failures", c.ring_map_failures},
              {"evtchn_failures", c.evtchn_failures},
              {"vm_failures", c.vm_failures},
              {"ring_errors", c.ring_errors},
              {"xenstore_errors", c.xenstore_errors}}}};
}

}  // namespace vpipe::xen
