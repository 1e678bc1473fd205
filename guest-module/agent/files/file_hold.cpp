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

#include "files/hold_journal.h"
#include "util/unique_fd.h"

namespace vpipe::agent {
namespace {

using Key = std::pair<dev_t, ino_t>;

struct Entry {
    int refs = 0;
    bool we_set_flag = false;
    UniqueFd fd;           // our own dup: the flag can be cleared after the caller closed its fd
    bool journaled = false;  // a record in the crash journal
    HoldRecord record;
    std::mutex lift_mu;    // serializes with_lifted() on this inode
};

struct Registry {
    std::mutex mu;  // guards entries, refcounts, and every flag change except inside a lift
    std::map<Key, std::shared_ptr<Entry>> entries;
    std::string state_dir;
    HoldJournal journal;
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

// Rewrites the journal with the records of the holds alive now (and of flags recover() could not
// clear yet). Called with the registry lock held.
std::vector<HoldRecord> g_unrecovered;  // under the registry lock
void compact_locked(Registry& reg) {
    std::vector<HoldRecord> live = g_unrecovered;
    for (const auto& [k, e] : reg.entries)
        if (e->journaled) live.push_back(e->record);
    if (int r = reg.journal.compact(live)) spdlog::warn("file hold: journal compaction failed: {}", r);
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
    if (!e->journaled) return;
    if (int r = reg.journal.remove(key.first, key.second))
        spdlog::warn("file hold: journal: cannot record the release of inode {}: {}", key.second, r);
    if (reg.journal.bytes() > HoldJournal::kCompactBytes) compact_locked(reg);
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
int recover_one(const HoldRecord& rec) {
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
            // recorded before the flag is set, so a crash never leaves an unrecorded flag
            if (reg.journal.enabled()) {
                if (int r = HoldJournal::describe(fd, st, &e->record)) return r;
                if (int r = reg.journal.add(e->record)) return r;
                e->journaled = true;
            }
            if (int r = set_flags(fd, flags | FS_IMMUTABLE_FL)) {
                if (e->journaled) reg.journal.remove(st.st_dev, st.st_ino);
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
    reg.journal.close();
    reg.state_dir = path;
    g_unrecovered.clear();
    return path.empty() ? 0 : reg.journal.open(path);
}

int FileHold::recover() {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mu);
    if (reg.state_dir.empty()) return 0;
    std::vector<HoldRecord> recs;
    if (int r = HoldJournal::replay(reg.state_dir, &recs)) return r;
    int cleared = 0;
    g_unrecovered.clear();
    for (const HoldRecord& rec : recs) {
        if (reg.entries.count(Key{rec.dev, rec.ino})) continue;  // ours, live
        int r = recover_one(rec);
        if (r == -EAGAIN) {
            spdlog::warn("file hold: inode {} ({}): filesystem {}:{} not mounted, record kept", rec.ino,
                         rec.path, major(rec.dev), minor(rec.dev));
            g_unrecovered.push_back(rec);
            continue;
        }
        if (r < 0) {
            spdlog::error("file hold: inode {} ({}): cannot clear the flag: {}", rec.ino, rec.path, r);
            g_unrecovered.push_back(rec);
            continue;
        }
        if (r == 1) {
            ++cleared;
            spdlog::info("file hold: cleared the immutable flag left on inode {} ({}) by a crash", rec.ino,
                         rec.path);
        }
    }
    compact_locked(reg);
    return cleared;
}

int FileHold::journal_records() {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mu);
    if (reg.state_dir.empty()) return 0;
    std::vector<HoldRecord> recs;
    if (int r = HoldJournal::replay(reg.state_dir, &recs)) return r;
    return static_cast<int>(recs.size());
}

}  // namespace vpipe::agent
