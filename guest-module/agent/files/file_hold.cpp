#include "files/file_hold.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "util/unique_fd.h"

namespace vpipe::agent {
namespace {

using Key = std::pair<dev_t, ino_t>;

struct Entry {
    int refs = 0;
    bool we_set_flag = false;
    UniqueFd fd;           // our own dup: the flag can be cleared after the caller closed its fd
    std::string journal;   // crash-journal record, empty when none was written
    std::mutex lift_mu;    // serializes with_lifted() on this inode
};

struct Registry {
    std::mutex mu;  // guards entries, refcounts, and every flag change except inside a lift
    std::map<Key, std::shared_ptr<Entry>> entries;
    std::string state_dir;
};

Registry& registry() {
    static Registry* r = new Registry;  // never destroyed: holds may be released during exit
    return *r;
}

int get_flags(int fd, int* flags) {
    if (::ioctl(fd, FS_IOC_GETFLAGS, flags) != 0) {
        int err = errno;
        return (err == ENOTTY || err == EINVAL) ? -EOPNOTSUPP : -err;
    }
    return 0;
}

int set_flags(int fd, int flags) { return ::ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0 ? 0 : -errno; }

int set_immutable(int fd, bool on) {
    int flags = 0;
    if (int r = get_flags(fd, &flags)) return r;
    int want = on ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
    return want == flags ? 0 : set_flags(fd, want);
}

std::string hex(const unsigned char* p, size_t n) {
    static const char* digits = "0123456789abcdef";
    std::string s;
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

int fsync_path(const std::string& path, int flags) {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC);
    if (fd < 0) return -errno;
    int r = ::fsync(fd) == 0 ? 0 : -errno;
    ::close(fd);
    return r;
}

// Writes the crash-journal record for the inode behind `fd` durably (tmp + fsync + rename +
// fsync dir). Returns 0 and the record's path, or -errno.
int write_journal(const std::string& dir, int fd, const struct stat& st, std::string* path) {
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
    target[n > 0 ? n : 0] = '\0';

    std::ostringstream rec;
    rec << "vpipe-hold 1\n"
        << "dev " << major(st.st_dev) << ":" << minor(st.st_dev) << "\n"
        << "ino " << st.st_ino << "\n"
        << "mount_id " << mount_id << "\n"
        << "handle_type " << h.fh.handle_type << "\n"
        << "handle " << hex(h.fh.f_handle, h.fh.handle_bytes) << "\n"
        << "path " << target << "\n";
    const std::string body = rec.str();

    *path = dir + "/hold-" + std::to_string(st.st_dev) + "-" + std::to_string(st.st_ino);
    const std::string tmp = *path + ".tmp";
    int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) return -errno;
    int r = 0;
    errno = 0;
    if (::write(out, body.data(), body.size()) != static_cast<ssize_t>(body.size()) ||
        ::fsync(out) != 0)
        r = errno ? -errno : -EIO;
    ::close(out);
    if (r == 0 && ::rename(tmp.c_str(), path->c_str()) != 0) r = -errno;
    if (r == 0) r = fsync_path(dir, O_RDONLY | O_DIRECTORY);
    if (r != 0) ::unlink(tmp.c_str());
    return r;
}

void remove_journal(const std::string& path) {
    if (path.empty()) return;
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        spdlog::warn("file hold: cannot remove journal record {}: {}", path, std::strerror(errno));
}

// Drops one reference; the last one clears the flag (if ours) and the journal record.
// Called with the registry lock held.
void unref_locked(Registry& reg, const Key& key) {
    auto it = reg.entries.find(key);
    if (it == reg.entries.end()) return;
    std::shared_ptr<Entry> e = it->second;
    if (--e->refs > 0) return;
    reg.entries.erase(it);
    if (e->we_set_flag) {
        if (int r = set_immutable(e->fd.get(), false)) {
            // Keep the journal record: recover() retries at the next start-up.
            spdlog::error("file hold: cannot clear the immutable flag of inode {}: {}", key.second, r);
            return;
        }
    }
    remove_journal(e->journal);
}

struct JournalRecord {
    dev_t dev = 0;
    ino_t ino = 0;
    int mount_id = -1;
    int handle_type = 0;
    std::vector<unsigned char> handle;
};

bool parse_record(const std::string& path, JournalRecord* rec) {
    std::ifstream in(path);
    std::string line;
    if (!std::getline(in, line) || line != "vpipe-hold 1") return false;
    bool have_dev = false, have_ino = false, have_handle = false;
    while (std::getline(in, line)) {
        auto sp = line.find(' ');
        if (sp == std::string::npos) continue;
        std::string k = line.substr(0, sp), v = line.substr(sp + 1);
        if (k == "dev") {
            unsigned ma, mi;
            if (std::sscanf(v.c_str(), "%u:%u", &ma, &mi) == 2) {
                rec->dev = makedev(ma, mi);
                have_dev = true;
            }
        } else if (k == "ino") {
            rec->ino = static_cast<ino_t>(std::stoull(v));
            have_ino = true;
        } else if (k == "mount_id") {
            rec->mount_id = std::stoi(v);
        } else if (k == "handle_type") {
            rec->handle_type = std::stoi(v);
        } else if (k == "handle") {
            have_handle = unhex(v, &rec->handle) && rec->handle.size() <= MAX_HANDLE_SZ;
        }
    }
    return have_dev && have_ino && have_handle;
}

std::string unescape_mountinfo(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size()) {
            int v = 0;
            if (std::sscanf(s.c_str() + i + 1, "%3o", &v) == 1) {
                out += static_cast<char>(v);
                i += 3;
                continue;
            }
        }
        out += s[i];
    }
    return out;
}

// Mount points of the filesystem on `dev`, the one with `mount_id` first.
std::vector<std::string> mount_points(dev_t dev, int mount_id) {
    std::vector<std::string> found;
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        int id = 0, parent = 0;
        std::string majmin, root, point;
        if (!(ls >> id >> parent >> majmin >> root >> point)) continue;
        unsigned ma, mi;
        if (std::sscanf(majmin.c_str(), "%u:%u", &ma, &mi) != 2 || makedev(ma, mi) != dev) continue;
        std::string p = unescape_mountinfo(point);
        if (id == mount_id)
            found.insert(found.begin(), p);
        else
            found.push_back(p);
    }
    return found;
}

// 1 flag cleared, 0 nothing to clear (file gone / not immutable), -EAGAIN fs not mounted.
int recover_one(const JournalRecord& rec) {
    auto points = mount_points(rec.dev, rec.mount_id);
    if (points.empty()) return -EAGAIN;
    struct {
        struct file_handle fh;
        unsigned char bytes[MAX_HANDLE_SZ];
    } h{};
    h.fh.handle_bytes = static_cast<unsigned>(rec.handle.size());
    h.fh.handle_type = rec.handle_type;
    std::memcpy(h.fh.f_handle, rec.handle.data(), rec.handle.size());
    int last = -EAGAIN;
    for (const std::string& p : points) {
        UniqueFd mfd(::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!mfd) continue;
        UniqueFd fd(::open_by_handle_at(mfd.get(), &h.fh, O_RDONLY | O_CLOEXEC | O_NOCTTY));
        if (!fd) {
            if (errno == ESTALE) return 0;  // the inode is gone: nothing left to clear
            last = -errno;
            continue;
        }
        struct stat st;
        if (::fstat(fd.get(), &st) != 0 || st.st_ino != rec.ino || st.st_dev != rec.dev) return 0;
        int flags = 0;
        if (int r = get_flags(fd.get(), &flags)) return r;
        if (!(flags & FS_IMMUTABLE_FL)) return 0;
        if (int r = set_flags(fd.get(), flags & ~FS_IMMUTABLE_FL)) return r;
        return 1;
    }
    return last;
}

}  // namespace

FileHold::FileHold(FileHold&& other) noexcept
    : held_(std::exchange(other.held_, false)), dev_(other.dev_), ino_(other.ino_) {}

FileHold& FileHold::operator=(FileHold&& other) noexcept {
    if (this != &other) {
        release();
        held_ = std::exchange(other.held_, false);
        dev_ = other.dev_;
        ino_ = other.ino_;
    }
    return *this;
}

FileHold::~FileHold() { release(); }

int FileHold::acquire(int fd, FileHold* out) { return acquire_impl(fd, out, false); }

int FileHold::acquire_destination(int fd, FileHold* out) { return acquire_impl(fd, out, true); }

int FileHold::acquire_impl(int fd, FileHold* out, bool destination) {
    if (!out) return -EINVAL;
    out->release();
    struct stat st;
    if (::fstat(fd, &st) != 0) return -errno;
    const Key key{st.st_dev, st.st_ino};

    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mu);
    auto it = reg.entries.find(key);
    if (it != reg.entries.end()) {
        if (destination && !it->second->we_set_flag) return -EPERM;  // immutable by itself
        ++it->second->refs;
    } else {
        int flags = 0;
        if (int r = get_flags(fd, &flags)) return r;
        if (destination && (flags & (FS_IMMUTABLE_FL | FS_APPEND_FL))) return -EPERM;
        auto e = std::make_shared<Entry>();
        e->fd.reset(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
        if (!e->fd) return -errno;
        if (!(flags & FS_IMMUTABLE_FL)) {
            if (!reg.state_dir.empty()) {
                if (int r = write_journal(reg.state_dir, fd, st, &e->journal)) return r;
            }
            if (int r = set_flags(fd, flags | FS_IMMUTABLE_FL)) {
                remove_journal(e->journal);
                return r;
            }
            e->we_set_flag = true;
        }
        e->refs = 1;
        reg.entries.emplace(key, std::move(e));
    }
    out->held_ = true;
    out->dev_ = st.st_dev;
    out->ino_ = st.st_ino;
    return 0;
}

void FileHold::release() {
    if (!held_) return;
    held_ = false;
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mu);
    unref_locked(reg, Key{dev_, ino_});
}

int FileHold::with_lifted(int fd, const std::function<int()>& fn) {
    struct stat st;
    if (::fstat(fd, &st) != 0) return -errno;
    const Key key{st.st_dev, st.st_ino};
    Registry& reg = registry();
    std::shared_ptr<Entry> e;
    {
        std::lock_guard<std::mutex> lock(reg.mu);
        auto it = reg.entries.find(key);
        if (it != reg.entries.end()) {
            if (!it->second->we_set_flag) return -EPERM;  // immutable by itself: not ours to lift
            e = it->second;
            ++e->refs;  // pin: a concurrent last release must not clear the flag under us
        }
    }
    if (!e) {
        int flags = 0;
        if (int r = get_flags(fd, &flags); r == 0 && (flags & (FS_IMMUTABLE_FL | FS_APPEND_FL)))
            return -EPERM;
        return fn();
    }

    int result;
    {
        std::lock_guard<std::mutex> lift(e->lift_mu);
        result = set_immutable(e->fd.get(), false);
        if (result == 0) {
            result = fn();
            if (int r = set_immutable(e->fd.get(), true)) {
                spdlog::error("file hold: cannot set the immutable flag again on inode {}: {}",
                              key.second, r);
                if (result == 0) result = r;
            }
        }
    }
    std::lock_guard<std::mutex> lock(reg.mu);
    unref_locked(reg, key);
    return result;
}

bool FileHold::held_by_us(dev_t dev, ino_t ino) {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mu);
    auto it = reg.entries.find(Key{dev, ino});
    return it != reg.entries.end() && it->second->we_set_flag;
}

int FileHold::hold_count(dev_t dev, ino_t ino) {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mu);
    auto it = reg.entries.find(Key{dev, ino});
    return it == reg.entries.end() ? 0 : it->second->refs;
}

int FileHold::set_state_dir(const std::string& path) {
    if (!path.empty()) {
        if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) return -errno;
        struct stat st;
        if (::stat(path.c_str(), &st) != 0) return -errno;
        if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
    }
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mu);
    reg.state_dir = path;
    return 0;
}

int FileHold::recover() {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mu);
    if (reg.state_dir.empty()) return 0;
    DIR* dir = ::opendir(reg.state_dir.c_str());
    if (!dir) return -errno;
    std::vector<std::string> names;
    while (struct dirent* d = ::readdir(dir)) {
        if (std::strncmp(d->d_name, "hold-", 5) == 0) names.emplace_back(d->d_name);
    }
    ::closedir(dir);

    int cleared = 0;
    for (const std::string& name : names) {
        const std::string path = reg.state_dir + "/" + name;
        if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
            ::unlink(path.c_str());  // never completed: its flag was never set
            continue;
        }
        JournalRecord rec;
        if (!parse_record(path, &rec)) {
            spdlog::warn("file hold: unreadable journal record {}, removed", path);
            ::unlink(path.c_str());
            continue;
        }
        if (reg.entries.count(Key{rec.dev, rec.ino})) continue;  // ours, live
        int r = recover_one(rec);
        if (r == -EAGAIN) {
            spdlog::warn("file hold: {}: filesystem {}:{} not mounted, record kept", path,
                         major(rec.dev), minor(rec.dev));
            continue;
        }
        if (r < 0) {
            spdlog::error("file hold: {}: cannot clear the flag: {}", path, r);
            continue;
        }
        if (r == 1) {
            ++cleared;
            spdlog::info("file hold: cleared the immutable flag left on inode {} by a crash",
                         rec.ino);
        }
        ::unlink(path.c_str());
    }
    if (cleared > 0) fsync_path(reg.state_dir, O_RDONLY | O_DIRECTORY);
    return cleared;
}

}  // namespace vpipe::agent
