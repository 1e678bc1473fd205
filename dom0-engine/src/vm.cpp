#include "vm.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace vpipe::engine {

const char* op_name(uint8_t op) {
    switch (op) {
    case VPIPE_OP_NOP: return "nop";
    case VPIPE_OP_FILE_TO_FILE: return "file_to_file";
    case VPIPE_OP_FILE_TO_SOCKET: return "file_to_socket";
    case VPIPE_OP_SOCKET_TO_FILE: return "socket_to_file";
    case VPIPE_OP_SOCKET_TO_SOCKET: return "socket_to_socket";
    default: return "unknown";
    }
}

Vm::Vm(const VmConfig& cfg, const EngineConfig& engine)
    : cfg_(cfg), identity_(VmIdentity::from_ip_string(cfg.ip)) {
    cancel_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!cancel_fd_) throw std::system_error(errno, std::generic_category(), "eventfd");
    for (const auto& d : cfg_.disks) disks_[d.vdev] = DiskImage::open(d.image, d.writable, d.host_cache);
    workers_ = std::make_unique<WorkerPool>(cfg_.name, cfg_.threads, engine.queue_depth);
}

void Vm::cancel() {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(cancel_fd_.get(), &one, sizeof one);
}

DiskImage* Vm::disk(uint32_t vdev) const {
    auto it = disks_.find(vdev);
    return it == disks_.end() ? nullptr : it->second.get();
}

DiskLookup Vm::disk_lookup() const {
    return [this](uint32_t vdev) -> std::optional<DiskLimits> {
        const DiskImage* d = disk(vdev);
        if (!d) return std::nullopt;
        return DiskLimits{d->size(), d->writable()};
    };
}

nlohmann::json Vm::stats_json() const {
    nlohmann::json j;
    j["name"] = cfg_.name;
    j["id"] = cfg_.id;
    j["weight"] = cfg_.weight;
    j["threads"] = cfg_.threads;
    j["connected"] = connected_.load();
    j["transport"] = cfg_.channel.empty() ? "xen" : "shm";
    j["channels"] = counters_.channels.load();
    j["requests"] = counters_.requests.load();
    j["rejected"] = counters_.rejected.load();
    j["peer_refused"] = counters_.peer_refused.load();
    j["failed"] = counters_.failed.load();
    j["active"] = counters_.active.load();
    j["shadow_sockets"] = counters_.shadow_sockets.load();
    j["steered_flows"] = counters_.steered_flows.load();
    j["bad_pages"] = counters_.bad_pages.load();
    j["ring_overflows"] = counters_.ring_overflows.load();
    j["cancelled"] = counters_.cancelled.load();
    j["abandoned"] = counters_.abandoned.load();
    j["preparing"] = counters_.preparing.load();
    j["prepare_waits"] = counters_.prepare_waits.load();
    nlohmann::json ops = nlohmann::json::object(), bytes = nlohmann::json::object();
    for (uint8_t op = VPIPE_OP_FILE_TO_FILE; op < VPIPE_OP_MAX_; ++op) {
        ops[op_name(op)] = counters_.ops[op].load();
        bytes[op_name(op)] = counters_.bytes[op].load();
    }
    j["ops"] = ops;
    j["bytes"] = bytes;
    nlohmann::json disks = nlohmann::json::array();
    for (const auto& [vdev, d] : disks_) {
        disks.push_back({{"vdev", vdev},
                         {"image", d->path()},
                         {"size", d->size()},
                         {"writable", d->writable()},
                         {"cache", d->cached_fd() >= 0 ? "host" : "direct"},
                         {"bytes_read", d->bytes_read.load()},
                         {"bytes_spliced", d->bytes_spliced.load()},
                         {"bytes_written", d->bytes_written.load()}});
    }
    j["disks"] = disks;
    return j;
}

}  // namespace vpipe::engine
