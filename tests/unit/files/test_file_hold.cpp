#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "files/file_hold.h"
#include "lab_fs.h"

namespace vpipe::test {
namespace {

using agent::FileHold;

std::vector<std::string> records(const std::string& dir) {
    std::vector<std::string> out;
    DIR* d = ::opendir(dir.c_str());
    if (!d) return out;
    while (struct dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') out.emplace_back(e->d_name);
    ::closedir(d);
    return out;
}

struct FileHoldTest : LabSuite<FileHoldTest> {
    void TearDown() override {
        FileHold::set_state_dir("");
        if (!state_dir.empty()) {
            for (const auto& r : records(state_dir)) ::unlink((state_dir + "/" + r).c_str());
            ::rmdir(state_dir.c_str());
        }
    }
    void use_state_dir() {
        char dir[] = "/var/tmp/vpipe-files-state-XXXXXX";
        ASSERT_NE(::mkdtemp(dir), nullptr);
        state_dir = dir;
        ASSERT_EQ(FileHold::set_state_dir(state_dir), 0);
    }
    std::string state_dir;
};

bool immutable(int fd) { return inode_flags(fd) & FS_IMMUTABLE_FL; }

TEST_F(FileHoldTest, OtherWritersAndTruncateGetEPERMDuringTheHold) {
    const std::string path = lab().path("held");
    int fd = make_file(path, "abcdef");
    int other = ::open(path.c_str(), O_RDWR);  // opened before the hold
    ASSERT_GE(other, 0);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    {
        FileHold hold;
        EXPECT_FALSE(hold.held());
        ASSERT_EQ(FileHold::acquire(fd, &hold), 0);
        EXPECT_TRUE(hold.held());
        EXPECT_EQ(hold.ino(), st.st_ino);
        EXPECT_TRUE(immutable(fd));
        EXPECT_EQ(::pwrite(other, "X", 1, 0), -1);
        EXPECT_EQ(errno, EPERM);
        EXPECT_EQ(::ftruncate(other, 0), -1);
        EXPECT_EQ(errno, EPERM);
        EXPECT_EQ(::fallocate(other, 0, 0, 1 * kMiB), -1);
        EXPECT_EQ(errno, EPERM);
        EXPECT_EQ(::open(path.c_str(), O_WRONLY), -1);
        EXPECT_EQ(errno, EPERM);
        EXPECT_EQ(read_fd(other, 0, 6), "abcdef");  // readers are unaffected
        hold.release();
        EXPECT_FALSE(hold.held());
        EXPECT_FALSE(immutable(fd));
        hold.release();  // idempotent
    }
    EXPECT_EQ(::pwrite(other, "X", 1, 0), 1);
    EXPECT_EQ(read_fd(fd, 0, 6), "Xbcdef");
    ::close(other);
    ::close(fd);
}

TEST_F(FileHoldTest, NestedHoldsAreRefcounted) {
    int fd = make_file(lab().path("nested"), "n");
    int fd2 = ::open(lab().path("nested").c_str(), O_RDONLY);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    FileHold a, b;
    ASSERT_EQ(FileHold::acquire(fd, &a), 0);
    ASSERT_EQ(FileHold::acquire(fd2, &b), 0);
    EXPECT_EQ(FileHold::hold_count(st.st_dev, st.st_ino), 2);
    FileHold c(std::move(b));
    EXPECT_FALSE(b.held());
    EXPECT_TRUE(c.held());
    EXPECT_EQ(FileHold::hold_count(st.st_dev, st.st_ino), 2);
    a.release();
    EXPECT_EQ(FileHold::hold_count(st.st_dev, st.st_ino), 1);
    EXPECT_TRUE(immutable(fd));  // still held by c
    {
        FileHold d;
        ASSERT_EQ(FileHold::acquire(fd, &d), 0);
        EXPECT_EQ(FileHold::hold_count(st.st_dev, st.st_ino), 2);
    }  // destructor releases
    EXPECT_EQ(FileHold::hold_count(st.st_dev, st.st_ino), 1);
    c = FileHold();  // move-assigning releases the old hold
    EXPECT_EQ(FileHold::hold_count(st.st_dev, st.st_ino), 0);
    EXPECT_FALSE(immutable(fd));
    ::close(fd2);
    ::close(fd);
}

TEST_F(FileHoldTest, ForeignFlagsAreLeftAloneAndRefusedForDestinations) {
    int fd = make_file(lab().path("foreign"), "f");
    const uint32_t base = inode_flags(fd);
    set_inode_flags(fd, base | FS_IMMUTABLE_FL);
    FileHold hold;
    ASSERT_EQ(FileHold::acquire(fd, &hold), 0);  // a source: held without touching the flag
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_FALSE(FileHold::held_by_us(st.st_dev, st.st_ino));
    FileHold dest;
    EXPECT_EQ(FileHold::acquire_destination(fd, &dest), -EPERM);  // even while held as a source
    EXPECT_EQ(FileHold::with_lifted(fd, [] { return 0; }), -EPERM);
    hold.release();
    EXPECT_EQ(inode_flags(fd), base | FS_IMMUTABLE_FL);  // still immutable: not ours
    EXPECT_EQ(FileHold::acquire_destination(fd, &dest), -EPERM);

    set_inode_flags(fd, base | FS_APPEND_FL);
    EXPECT_EQ(FileHold::acquire_destination(fd, &dest), -EPERM);
    ASSERT_EQ(FileHold::acquire(fd, &hold), 0);  // append-only source: held, flags restored
    EXPECT_EQ(inode_flags(fd), base | FS_APPEND_FL | FS_IMMUTABLE_FL);
    hold.release();
    EXPECT_EQ(inode_flags(fd), base | FS_APPEND_FL);
    set_inode_flags(fd, base);
    ::close(fd);
}

TEST_F(FileHoldTest, WithLiftedLetsTheAgentChangeAHeldFile) {
    int fd = make_file(lab().path("lifted"), "0123456789abcdef");
    FileHold hold;
    ASSERT_EQ(FileHold::acquire_destination(fd, &hold), 0);
    EXPECT_EQ(::ftruncate(fd, 10), -1);  // the agent too is refused while held...
    EXPECT_EQ(FileHold::with_lifted(fd, [&] { return ::ftruncate(fd, 10) == 0 ? 0 : -errno; }), 0);
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(st.st_size, 10);
    EXPECT_TRUE(immutable(fd));  // ...and the hold is back afterwards
    EXPECT_EQ(FileHold::with_lifted(fd, [] { return -ENOSPC; }), -ENOSPC);  // fn's result
    EXPECT_TRUE(immutable(fd));
    hold.release();
    EXPECT_FALSE(immutable(fd));
    EXPECT_EQ(FileHold::with_lifted(fd, [] { return 7; }), 7);  // not held: just runs
    ::close(fd);
}

TEST_F(FileHoldTest, JournalRecordLivesExactlyAsLongAsTheHold) {
    use_state_dir();
    int fd = make_file(lab().path("journaled"), "j");
    EXPECT_EQ(FileHold::journal_records(), 0);
    FileHold a, b;
    ASSERT_EQ(FileHold::acquire(fd, &a), 0);
    ASSERT_EQ(FileHold::acquire(fd, &b), 0);
    EXPECT_EQ(FileHold::journal_records(), 1);  // one record per inode, not per hold
    EXPECT_EQ(FileHold::recover(), 0);           // live holds are not "recovered"
    EXPECT_TRUE(immutable(fd));
    EXPECT_EQ(FileHold::journal_records(), 1);
    a.release();
    EXPECT_EQ(FileHold::journal_records(), 1);
    b.release();
    EXPECT_EQ(FileHold::journal_records(), 0);
    EXPECT_EQ(records(state_dir), std::vector<std::string>{"holds.journal"});
    ::close(fd);
}

TEST_F(FileHoldTest, RecoverClearsTheFlagOfACrashedAgent) {
    use_state_dir();
    const std::string path = lab().path("crashed");
    const std::string other = lab().path("released");
    int fd = make_file(path, "c");
    int fd2 = make_file(other, "r");
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {  // the "agent": releases one hold, then dies holding the other -- no flush
        FileHold* released = new FileHold;
        FileHold* hold = new FileHold;
        if (FileHold::acquire(fd2, released) != 0 || FileHold::acquire(fd, hold) != 0) ::_exit(1);
        released->release();
        ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT_TRUE(immutable(fd));  // left behind by the crash
    EXPECT_FALSE(immutable(fd2));
    EXPECT_EQ(FileHold::journal_records(), 1);
    // the restarted agent finds the inode by handle (an immutable file can't even be renamed)
    EXPECT_EQ(::rename(path.c_str(), (path + ".moved").c_str()), -1);
    EXPECT_EQ(FileHold::recover(), 1);
    EXPECT_FALSE(immutable(fd));
    EXPECT_EQ(FileHold::journal_records(), 0);
    EXPECT_EQ(FileHold::recover(), 0);
    ::close(fd);
    ::close(fd2);
}

TEST_F(FileHoldTest, ATornLastRecordIsIgnoredAndTheJournalIsCompacted) {
    use_state_dir();
    int fd = make_file(lab().path("many"), "m");
    for (int i = 0; i < 8000; ++i) {  // 8000 holds and releases: ~1.3 MB of records
        FileHold h;
        ASSERT_EQ(FileHold::acquire(fd, &h), 0);
    }
    EXPECT_EQ(FileHold::journal_records(), 0);
    struct stat st;
    ASSERT_EQ(::stat((state_dir + "/holds.journal").c_str(), &st), 0);
    EXPECT_GT(st.st_size, 0);
    EXPECT_LE(st.st_size, 1 << 20) << "the journal is compacted past 1 MiB";
    // a crash in the middle of an append leaves a line without its newline
    int j = ::open((state_dir + "/holds.journal").c_str(), O_WRONLY | O_APPEND);
    ASSERT_GE(j, 0);
    ASSERT_EQ(::write(j, "H 7:0 12 3 1 0c00", 17), 17);
    ::close(j);
    EXPECT_EQ(FileHold::journal_records(), 0);
    EXPECT_EQ(FileHold::recover(), 0);
    ASSERT_EQ(::stat((state_dir + "/holds.journal").c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 0) << "recover() rewrites the journal with what is still live";
    ::close(fd);
}

}  // namespace
}  // namespace vpipe::test
