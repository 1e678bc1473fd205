#include "files/hold_journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include <spdlog/spdlog.h>

namespace vpipe::agent {
namespace {

constexpr const char* kName = "holds.journal";

std::string hex(const unsigned char* p, size_t n) {
    static const char* digits = "0123456789abcdef";
    std::string s;
    s.reserve(2 * n);
    for (size_t i = 0; i < n; ++i) {
        s += digits[p[i] >> 4];
        s += digits[p[i] & 15];
    }
    return s;
}

bool unhex(const std::string& s, std::vector<unsigned char>* out) {
    if (s.size() % 2) return false;
    out->clear();
    for (size_t i = 0; i < s.size(); i += 2) {
        unsigned v = 0;
        if (std::sscanf(s.c_str() + i, "%2x", &v) != 1) return false;
        out->push_back(static_cast<unsigned char>(v));
    }
    return true;
}

std::string hold_line(const HoldRecord& r) {
    std::ostringstream l;
    l << "H " << major(r.dev) << ":" << minor(r.dev) << " " << r.ino << " " << r.mount_id << " "
      << r.handle_type << " " << hex(r.handle.data(), r.handle.size()) << " "
      << hex(reinterpret_cast<const unsigned char*>(r.path.data()), r.path.size()) << "\n";
    return l.str();
}

int write_all(int fd, const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
        ssize_t w = ::write(fd, s.data() + off, s.size() - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return w < 0 ? -errno : -EIO;
        off += static_cast<size_t>(w);
    }
    return 0;
}

int fsync_dir(const std::string& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int r = ::fsync(fd) == 0 ? 0 : -errno;
    ::close(fd);
    return r;
}

}  // namespace

HoldJournal::~HoldJournal() { close(); }

int HoldJournal::open(const std::string& dir) {
    close();
    dir_ = dir;
    path_ = dir + "/" + kName;
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd_ < 0) return -errno;
    struct stat st;
    bytes_ = ::fstat(fd_, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
    // the file's own existence is durable once, here, not per record
    if (::fsync(fd_) != 0 || fsync_dir(dir) != 0) spdlog::warn("hold journal: cannot sync {}", path_);
    stop_ = false;
    committer_ = std::thread([this] { commit_loop(); });
    return 0;
}

void HoldJournal::close() {
    if (committer_.joinable()) {
        {
            std::lock_guard lk(mu_);
            stop_ = true;
        }
        cv_.notify_one();
        committer_.join();
    }
    if (fd_ >= 0) {
        ::fdatasync(fd_);
        ::close(fd_);
        fd_ = -1;
    }
}

void HoldJournal::commit_loop() {
    std::unique_lock lk(mu_);
    for (;;) {
        cv_.wait(lk, [this] { return dirty_ || stop_; });
        if (stop_) return;
        // group every change of the next interval into one flush
        cv_.wait_for(lk, kCommitDelay, [this] { return stop_; });
        dirty_ = false;
        // a duplicate: compact() may replace fd_ while this flush runs
        const int fd = fd_ >= 0 ? ::fcntl(fd_, F_DUPFD_CLOEXEC, 0) : -1;
        lk.unlock();
        if (fd >= 0) {
            if (::fdatasync(fd) != 0) spdlog::warn("hold journal: fdatasync: {}", std::strerror(errno));
            ::close(fd);
        }
        lk.lock();
    }
}

int HoldJournal::append(const std::string& line) {
    if (fd_ < 0) return 0;
    if (int r = write_all(fd_, line)) return r;
    bytes_ += line.size();
    {
        std::lock_guard lk(mu_);
        dirty_ = true;
    }
    cv_.notify_one();
    return 0;
}

int HoldJournal::describe(int fd, const struct stat& st, HoldRecord* out) {
    struct {
        struct file_handle fh;
        unsigned char bytes[MAX_HANDLE_SZ];
    } h{};
    h.fh.handle_bytes = MAX_HANDLE_SZ;
    int mount_id = -1;
    if (::name_to_handle_at(fd, "", &h.fh, &mount_id, AT_EMPTY_PATH) != 0) return -errno;
    char link[64];
    std::snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    char target[4096];
    ssize_t n = ::readlink(link, target, sizeof(target) - 1);
    out->dev = st.st_dev;
    out->ino = st.st_ino;
    out->mount_id = mount_id;
    out->handle_type = h.fh.handle_type;
    out->handle.assign(h.fh.f_handle, h.fh.f_handle + h.fh.handle_bytes);
    out->path.assign(target, n > 0 ? static_cast<size_t>(n) : 0);
    return 0;
}

int HoldJournal::add(const HoldRecord& r) { return append(hold_line(r)); }

int HoldJournal::remove(dev_t dev, ino_t ino) {
    return append("R " + std::to_string(major(dev)) + ":" + std::to_string(minor(dev)) + " " +
                  std::to_string(ino) + "\n");
}

int HoldJournal::compact(const std::vector<HoldRecord>& live) {
    if (fd_ < 0) return 0;
    std::string body;
    for (const auto& r : live) body += hold_line(r);
    const std::string tmp = path_ + ".tmp";
    int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) return -errno;
    int r = write_all(out, body);
    if (r == 0 && ::fsync(out) != 0) r = -errno;
    ::close(out);
    if (r == 0 && ::rename(tmp.c_str(), path_.c_str()) != 0) r = -errno;
    if (r != 0) {
        ::unlink(tmp.c_str());
        return r;
    }
    fsync_dir(dir_);
    int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) return -errno;
    {
        std::lock_guard lk(mu_);  // the committer may be flushing the old descriptor
        ::close(fd_);
        fd_ = fd;
    }
    bytes_ = body.size();
    return 0;
}

int HoldJournal::replay(const std::string& dir, std::vector<HoldRecord>* live) {
    live->clear();
    std::ifstream in(dir + "/" + kName);
    if (!in) return errno == ENOENT ? 0 : (errno ? -errno : 0);
    std::map<std::pair<dev_t, ino_t>, HoldRecord> held;
    std::string line;
    while (std::getline(in, line)) {
        if (in.eof()) break;  // no newline: a torn last write, its flag was never set
        std::istringstream ls(line);
        std::string kind, devs, handle, path;
        unsigned long long ino = 0;
        unsigned ma = 0, mi = 0;
        if (!(ls >> kind >> devs >> ino) || std::sscanf(devs.c_str(), "%u:%u", &ma, &mi) != 2) continue;
        const auto key = std::make_pair(makedev(ma, mi), static_cast<ino_t>(ino));
        if (kind == "R") {
            held.erase(key);
            continue;
        }
        HoldRecord r;
        std::vector<unsigned char> p;
        if (kind != "H" || !(ls >> r.mount_id >> r.handle_type >> handle) || !unhex(handle, &r.handle) ||
            r.handle.empty() || r.handle.size() > MAX_HANDLE_SZ)
            continue;
        if (ls >> path && unhex(path, &p)) r.path.assign(p.begin(), p.end());
        r.dev = key.first;
        r.ino = key.second;
        held[key] = std::move(r);
    }
    for (auto& [k, r] : held) live->push_back(std::move(r));
    return 0;
}

}  // namespace vpipe::agent
