#include "metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include <spdlog/spdlog.h>

namespace vpipe::engine {

namespace {

// Label values: backslash, double quote and newline escaped.
std::string label(const std::string& v) {
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out;
}

template <typename T>
T num(const nlohmann::json& j, const char* key, T fallback = 0) {
    auto it = j.find(key);
    return it != j.end() && it->is_number() ? it->get<T>() : fallback;
}

class Writer {
public:
    void family(const char* name, const char* type, const char* help) {
        o_ << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
    }
    template <typename T>
    void sample(const char* name, const std::string& labels, T v) {
        o_ << name;
        if (!labels.empty()) o_ << '{' << labels << '}';
        o_ << ' ' << v << '\n';
    }
    std::string str() const { return o_.str(); }

private:
    std::ostringstream o_;
};

}  // namespace

std::string format_metrics(const nlohmann::json& stats) {
    Writer w;
    static const nlohmann::json empty = nlohmann::json::object();
    static const nlohmann::json no_vms = nlohmann::json::array();
    const nlohmann::json& vms = stats.contains("vms") && stats["vms"].is_array() ? stats["vms"] : no_vms;
    auto vm_label = [](const nlohmann::json& vm) {
        return "vm=\"" + label(vm.value("name", std::string())) + "\"";
    };
    w.family("vpipe_vm_bytes_total", "counter", "Bytes the engine moved for the VM, by operation type.");
    for (const auto& vm : vms)
        for (const auto& [op, n] : (vm.contains("bytes") ? vm["bytes"] : empty).items())
            w.sample("vpipe_vm_bytes_total", vm_label(vm) + ",op=\"" + label(op) + "\"", n.get<uint64_t>());
    w.family("vpipe_vm_operations_total", "counter", "Operations completed for the VM, by operation type.");
    for (const auto& vm : vms)
        for (const auto& [op, n] : (vm.contains("ops") ? vm["ops"] : empty).items())
            w.sample("vpipe_vm_operations_total", vm_label(vm) + ",op=\"" + label(op) + "\"", n.get<uint64_t>());
    struct Simple {
        const char* name;
        const char* type;
        const char* help;
        const char* key;
        bool in_credits;
    };
    const Simple simple[] = {
        {"vpipe_vm_requests_total", "counter", "Ring requests received from the VM.", "requests", false},
        {"vpipe_vm_rejected_total", "counter", "Requests that failed validation.", "rejected", false},
        {"vpipe_vm_peer_refused_total", "counter", "Socket requests the peer policy refused (a dom0 or another tenant's address).", "peer_refused", false},
        {"vpipe_vm_failed_total", "counter", "Valid requests whose I/O failed.", "failed", false},
        {"vpipe_vm_abandoned_total", "counter", "Requests stopped before a write into the VM's disk: the guest gave them up or closed their channel.", "abandoned", false},
        {"vpipe_vm_active_operations", "gauge", "Operations in progress for the VM.", "active", false},
        {"vpipe_vm_weight", "gauge", "The VM's fairness weight.", "weight", true},
        {"vpipe_vm_credit_bytes", "gauge", "Bytes of credit the VM holds now (negative: debt).", "credit", true},
        {"vpipe_vm_charged_bytes_total", "counter", "Bytes charged to the VM by the credit scheduler.", "charged", true},
        {"vpipe_vm_credit_waits_total", "counter", "Times a worker of the VM waited for credit.", "waits", true},
    };
    for (const Simple& s : simple) {
        w.family(s.name, s.type, s.help);
        for (const auto& vm : vms) {
            const nlohmann::json& src = !s.in_credits ? vm : vm.contains("credits") ? vm["credits"] : empty;
            if (!src.contains(s.key)) continue;
            if (std::string(s.key) == "credit")
                w.sample(s.name, vm_label(vm), num<int64_t>(src, s.key));
            else
                w.sample(s.name, vm_label(vm), num<uint64_t>(src, s.key));
        }
    }
    w.family("vpipe_vm_credit_active", "gauge", "1 if the VM asked for credit in the current or last tick.");
    for (const auto& vm : vms)
        if (vm.contains("credits"))
            w.sample("vpipe_vm_credit_active", vm_label(vm), vm["credits"].value("active", false) ? 1 : 0);

    const nlohmann::json& f = stats.contains("fairness") ? stats["fairness"] : empty;
    w.family("vpipe_engine_total_rate_bytes_per_second", "gauge",
             "Credit handed out per second to all VMs together.");
    w.sample("vpipe_engine_total_rate_bytes_per_second", "", num<uint64_t>(f, "total_rate"));
    w.family("vpipe_engine_disk_rate_bytes_per_second", "gauge",
             "Credit handed out per second for file -> file, which never crosses the network.");
    w.sample("vpipe_engine_disk_rate_bytes_per_second", "", num<uint64_t>(f, "disk_rate"));
    w.family("vpipe_engine_calibrated_rate_bytes_per_second", "gauge",
             "What the start-up calibration measured, by path (min = measured).");
    const nlohmann::json& cal = f.contains("calibration") ? f["calibration"] : empty;
    w.sample("vpipe_engine_calibrated_rate_bytes_per_second", "path=\"disk\"", num<uint64_t>(cal, "disk_bytes_per_second"));
    w.sample("vpipe_engine_calibrated_rate_bytes_per_second", "path=\"memory\"", num<uint64_t>(cal, "memory_bytes_per_second"));
    w.sample("vpipe_engine_calibrated_rate_bytes_per_second", "path=\"min\"", num<uint64_t>(cal, "measured_bytes_per_second"));
    w.family("vpipe_engine_tick_seconds", "gauge", "Credit refill period.");
    w.sample("vpipe_engine_tick_seconds", "", num<double>(f, "tick_ms") / 1000.0);
    w.family("vpipe_engine_fairness_strict", "gauge", "1 in strict mode, 0 in work-conserving mode.");
    w.sample("vpipe_engine_fairness_strict", "", f.value("mode", std::string()) == "strict" ? 1 : 0);
    const nlohmann::json& pool = stats.contains("pool") ? stats["pool"] : empty;
    w.family("vpipe_engine_pool_buffers_in_use", "gauge", "Buffer pool windows in use.");
    w.sample("vpipe_engine_pool_buffers_in_use", "", num<uint64_t>(pool, "in_use"));
    w.family("vpipe_engine_pool_buffers", "gauge", "Buffer pool windows in all.");
    w.sample("vpipe_engine_pool_buffers", "", num<uint64_t>(pool, "buffers"));
    return w.str();
}

MetricsServer::MetricsServer(const std::string& listen, Render render) : render_(std::move(render)) {
    const auto colon = listen.rfind(':');
    if (colon == std::string::npos) throw std::runtime_error("metrics_listen " + listen + ": expected IPV4:PORT");
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(std::stoul(listen.substr(colon + 1))));
    if (inet_pton(AF_INET, listen.substr(0, colon).c_str(), &sa.sin_addr) != 1)
        throw std::runtime_error("metrics_listen " + listen + ": not an IPv4 address");
    listen_fd_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!listen_fd_) throw std::runtime_error(std::string("metrics socket: ") + std::strerror(errno));
    int one = 1;
    ::setsockopt(listen_fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
        ::listen(listen_fd_.get(), 16) != 0)
        throw std::runtime_error("metrics_listen " + listen + ": " + std::strerror(errno));
    socklen_t len = sizeof sa;
    ::getsockname(listen_fd_.get(), reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
}

MetricsServer::~MetricsServer() { stop(); }

void MetricsServer::start() { thread_.start([this] { run(); }); }

void MetricsServer::stop() { thread_.stop(); }

void MetricsServer::run() {
    while (!thread_.stopping()) {
        pollfd p[2] = {{listen_fd_.get(), POLLIN, 0}, {thread_.wake_fd(), POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::error("metrics: poll: {}", std::strerror(errno));
            return;
        }
        if (p[1].revents) break;
        if (!(p[0].revents & POLLIN)) continue;
        UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!conn) continue;
        timeval tv{2, 0};
        ::setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(conn.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        try {
            serve(conn.get());
        } catch (const std::exception& e) {
            spdlog::warn("metrics: {}", e.what());
        }
    }
}

void MetricsServer::serve(int conn) {
    std::string head;
    char buf[4096];
    while (head.find("\r\n\r\n") == std::string::npos && head.find("\n\n") == std::string::npos) {
        ssize_t n = ::recv(conn, buf, sizeof buf, 0);
        if (n <= 0) return;
        head.append(buf, static_cast<size_t>(n));
        if (head.size() > 16384) break;
    }
    const std::string line = head.substr(0, head.find_first_of("\r\n"));
    std::string status = "404 Not Found", type = "text/plain; charset=utf-8", body = "not found\n";
    const bool get = line.rfind("GET ", 0) == 0;
    std::string target = line.substr(line.find(' ') + 1);
    target = target.substr(0, target.find(' '));
    if (get && (target == "/metrics" || target.rfind("/metrics?", 0) == 0)) {
        status = "200 OK";
        type = "text/plain; version=0.0.4; charset=utf-8";
        body = render_();
    }
    std::string reply = "HTTP/1.1 " + status + "\r\nContent-Type: " + type +
                        "\r\nContent-Length: " + std::to_string(body.size()) +
                        "\r\nConnection: close\r\n\r\n" + body;
    size_t off = 0;
    while (off < reply.size()) {
        ssize_t n = ::send(conn, reply.data() + off, reply.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return;
        off += static_cast<size_t>(n);
    }
}

}  // namespace vpipe::engine
