// HoldJournal: the crash journal of file holds (file_hold.h) -- which inodes this agent made
// immutable, so that a restarted agent can clear flags a crashed one left behind.
//
// One append-only file, <state_dir>/holds.journal, kept open. A hold appends one line before
// its flag is set, its release one line after the flag is cleared:
//
//   H <dev> <ino> <mount_id> <handle_type> <handle hex> <path hex>     (a flag we set)
//   R <dev> <ino>                                                      (cleared again)
//
// Replaying it (H minus R) gives the flags that may be left. A torn last line (a crash in the
// middle of a write) is ignored: its flag was never set.
//
// No flush on the hot path. The records are plain writes: once write() returns they survive a
// crash of the agent (the common case: killed, OOM, a bug) in the page cache. A background
// committer fdatasync()s the journal within kCommitDelay of a change, grouping every change
// of that interval into one flush. What is left open: a crash of the whole machine inside that
// interval, after the filesystem committed the flag but before the record reached the disk,
// leaves a file immutable with no record (`chattr -i` clears it). Holds last milliseconds and
// set+clear usually commit together, so the flag rarely reaches the disk at all.
//
// The file is compacted (live records rewritten, fsync, rename) when nothing is held, or when it
// grows past kCompactBytes. Not thread-safe: FileHold calls it under its registry lock; only
// the committer runs beside it (on its own lock).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace vpipe::agent {

struct HoldRecord {
    dev_t dev = 0;
    ino_t ino = 0;
    int mount_id = -1;
    int handle_type = 0;
    std::vector<unsigned char> handle;
    std::string path;  // a hint for logs
};

class HoldJournal {
public:
    static constexpr std::chrono::milliseconds kCommitDelay{50};
    static constexpr uint64_t kCompactBytes = 1 << 20;

    HoldJournal() = default;
    ~HoldJournal();  // close()
    HoldJournal(const HoldJournal&) = delete;
    HoldJournal& operator=(const HoldJournal&) = delete;

    // Opens (creating) <dir>/holds.journal and starts the committer; closes a previous one.
    int open(const std::string& dir);
    // Flushes what is pending and stops the committer.
    void close();
    bool enabled() const { return fd_ >= 0; }
    const std::string& path() const { return path_; }

    // The record of the inode behind `fd` (name_to_handle_at), for add().
    static int describe(int fd, const struct stat& st, HoldRecord* out);
    // Appends a hold / a release. 0 or -errno (a failed add must not set the flag).
    int add(const HoldRecord& r);
    int remove(dev_t dev, ino_t ino);
    // Rewrites the file with only `live` (nothing live: empties it). Durable when it returns.
    int compact(const std::vector<HoldRecord>& live);
    uint64_t bytes() const { return bytes_; }

    // The records of <dir>/holds.journal that were never released. A missing file is empty.
    static int replay(const std::string& dir, std::vector<HoldRecord>* live);

private:
    int append(const std::string& line);
    void commit_loop();

    std::string dir_, path_;
    int fd_ = -1;
    uint64_t bytes_ = 0;
    std::mutex mu_;  // dirty_, stop_ (the committer's side)
    std::condition_variable cv_;
    bool dirty_ = false;
    bool stop_ = false;
    std::thread committer_;
};

}  // namespace vpipe::agent
