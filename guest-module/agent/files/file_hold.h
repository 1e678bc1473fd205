// FileHold: keeps a file's contents and size still for the duration of an offload
// (docs/design.md, "Files: rules that keep data safe": hold the inode against concurrent
// truncate/write for the duration).
//
// Mechanism: userspace has no i_rwsem, so the hold sets the inode's immutable flag
// (FS_IOC_SETFLAGS FS_IMMUTABLE_FL, needs CAP_LINUX_IMMUTABLE). ext4/XFS then refuse write,
// truncate, fallocate, and opening for write with EPERM -- from anyone, including descriptors
// opened before the hold. That loses nothing: a racing writer gets an error instead of a torn
// offload. Limits: pages of an existing shared writable mmap may still be dirtied (nothing short
// of the kernel's own locks stops that); readers are not affected.
//
// Registry: holds are refcounted per (st_dev, st_ino) process-wide, so concurrent offloads of one
// file nest: the first hold sets the flag, the last release clears it. A file that was already
// immutable is held without touching the flag (and never cleared by us). acquire_destination()
// refuses files that are immutable or append-only on their own (-EPERM): we must not write them.
//
// Crash journal: with a state directory set, each flag we set is first recorded in the append-
// only journal <state_dir>/holds.journal (hold_journal.h: dev, ino, an open_by_handle_at handle,
// mount id, path hint) and its release appended after the flag is cleared. No flush per hold: a
// committer flushes within 50 ms, grouping all changes of that interval. recover() at agent
// start-up clears flags left by a crashed agent. Without a state directory holds work but a
// crash leaves the flag set (chattr -i clears it by hand).
//
// The agent's own changes to a held file (fallocate, zero-fill, ftruncate when preparing and
// finishing a destination) go through with_lifted(): the flag is cleared, the function runs, the
// flag is set again, all under the file's lift lock. During that window the file is NOT held
// against other writers; dest_alloc keeps the window to the allocation itself and the final size
// change, and the caller maps extents only after the flag is back (so the mapping is true).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>

namespace vpipe::agent {

class FileHold {
public:
    FileHold() = default;
    FileHold(const FileHold&) = delete;
    FileHold& operator=(const FileHold&) = delete;
    FileHold(FileHold&& other) noexcept;
    FileHold& operator=(FileHold&& other) noexcept;
    ~FileHold();

    // Holds the file behind `fd` (any access mode; the registry keeps its own dup of it).
    // `out` is released first if it held something. 0 or -errno: -EOPNOTSUPP the filesystem has
    // no inode flags, -EPERM not allowed to set the flag, or a journal write error.
    static int acquire(int fd, FileHold* out);
    // Same, for a destination: -EPERM if the file is immutable or append-only by itself.
    static int acquire_destination(int fd, FileHold* out);

    // Drops this hold (the flag is cleared when the last hold of the inode goes). Idempotent.
    void release();
    bool held() const { return held_; }
    dev_t dev() const { return dev_; }
    ino_t ino() const { return ino_; }

    // Runs `fn` with the flag of the file behind `fd` briefly cleared, if this process holds it
    // (serialized per inode; `fn` must not call with_lifted on the same file). If the file is not
    // held, `fn` just runs -- unless the file is immutable/append-only by itself: -EPERM.
    // Returns fn's result, or -errno if the flag could not be lifted or set again.
    static int with_lifted(int fd, const std::function<int()>& fn);

    // Whether the inode is held by this process with a flag WE set (dest_alloc uses this to tell
    // our immutability from a foreign one).
    static bool held_by_us(dev_t dev, ino_t ino);
    // Number of holds on the inode in this process (tests, stats).
    static int hold_count(dev_t dev, ino_t ino);

    // Directory for the crash journal; created if missing. Empty path disables the journal.
    static int set_state_dir(const std::string& path);
    // Clears flags recorded in the journal by a previous (crashed) agent and removes the records.
    // Records of inodes this process holds now are left alone; records whose filesystem is not
    // mounted are kept for a later call. Returns the number of flags cleared, or -errno.
    static int recover();
    // Records in the journal not released (tests: what a crash would leave to recover()).
    static int journal_records();

private:
    static int acquire_impl(int fd, FileHold* out, bool destination);
    bool held_ = false;
    dev_t dev_ = 0;
    ino_t ino_ = 0;
};

}  // namespace vpipe::agent
