// cp-vpipe: copy a regular file like cp(1), with the bytes moved by dom0 through vPipe.
#include <fcntl.h>
#include <libgen.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include <CLI/CLI.hpp>

#include <vpipe/vpipe.h>

static const char* kDescription = R"(NAME
    cp-vpipe - copy a file through vPipe: the driver domain moves the blocks

SYNOPSIS
    cp-vpipe [--no-fallback] [--inplace] [--stats] [-v] SOURCE DEST
    cp-vpipe [--no-fallback] [--inplace] [--stats] [-v] SOURCE DIRECTORY

DESCRIPTION
    Copies the regular file SOURCE to DEST (or into DIRECTORY) like cp(1), but the data never
    passes through this VM: vPipe maps both files to extents of the VM's virtual disk and the
    dom0 engine copies the blocks inside the disk image. An existing DEST is truncated first; a
    new one gets SOURCE's permission bits (minus the umask).
    When vPipe cannot offload (no guest component, no engine, a file not on a VM disk) the copy
    is done in the guest and cp-vpipe says so on stderr, unless --no-fallback is given, which
    makes it fail instead.

OPTIONS
    --no-fallback   fail rather than copy inside the guest
    --inplace       overwrite an existing DEST in place (like rsync --inplace, dd conv=notrunc)
                    instead of truncating it first, then cut it to SOURCE's size. The blocks
                    DEST already has are reused: a new or truncated file gets blocks ext4 hands
                    out as unwritten, which the guest must zero-fill before dom0's data counts
                    (docs/append.md), so where DEST is at least as long as SOURCE nothing is
                    zero-filled and the disk is written once. A copy cut short (an error, the
                    engine gone) leaves DEST's old bytes past the copied prefix.
    --stats         print how the bytes moved (offloaded, from the guest cache, zero-filled)
                    and this process's own syscall I/O (/proc/self/io rchar, wchar)
    -v, --verbose   print 'SOURCE' -> 'DEST'

EXIT STATUS
    0 on success, 1 on any error (message on stderr, cp-style).

EXAMPLES
    cp-vpipe /data/big.img /data/backup/big.img
    vpipe-lab exec vm1 -- cp-vpipe --stats /run/vpipe-lab/vm1/disk0/a /run/vpipe-lab/vm1/disk1/
)";

namespace {

int die(const std::string& msg) {
    std::fprintf(stderr, "cp-vpipe: %s\n", msg.c_str());
    return 1;
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

// This process's syscall I/O so far (/proc/self/io rchar, wchar): shows that the bytes did
// not pass through the copying process.
void syscall_io(unsigned long long* rchar, unsigned long long* wchar) {
    *rchar = *wchar = 0;
    if (FILE* f = std::fopen("/proc/self/io", "r")) {
        char key[32];
        unsigned long long v;
        while (std::fscanf(f, "%31s %llu", key, &v) == 2) {
            if (!std::strcmp(key, "rchar:")) *rchar = v;
            if (!std::strcmp(key, "wchar:")) *wchar = v;
        }
        std::fclose(f);
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{kDescription, "cp-vpipe"};
    std::string src, dst;
    bool no_fallback = false, stats = false, verbose = false, inplace = false;
    app.add_option("SOURCE", src, "file to copy")->required();
    app.add_option("DEST", dst, "destination file or directory")->required();
    app.add_flag("--no-fallback", no_fallback, "fail rather than copy inside the guest");
    app.add_flag("--inplace", inplace, "overwrite DEST in place instead of truncating it first");
    app.add_flag("--stats", stats, "print how the bytes moved");
    app.add_flag("-v,--verbose", verbose, "print what is copied");
    CLI11_PARSE(app, argc, argv);
    if (no_fallback) vpipe_set_fallback(0);

    struct stat sst{};
    if (::stat(src.c_str(), &sst) < 0)
        return die("cannot stat " + quote(src) + ": " + std::strerror(errno));
    if (S_ISDIR(sst.st_mode)) return die("-r not specified; omitting directory " + quote(src));
    if (!S_ISREG(sst.st_mode)) return die(quote(src) + " is not a regular file");

    struct stat dst_st{};
    if (::stat(dst.c_str(), &dst_st) == 0 && S_ISDIR(dst_st.st_mode)) {
        std::string base = src;
        dst = dst + "/" + ::basename(base.data());
    }
    if (::stat(dst.c_str(), &dst_st) == 0) {
        if (dst_st.st_dev == sst.st_dev && dst_st.st_ino == sst.st_ino)
            return die(quote(src) + " and " + quote(dst) + " are the same file");
        if (S_ISDIR(dst_st.st_mode))
            return die("cannot overwrite directory " + quote(dst) + " with non-directory");
    }

    int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
    if (in < 0) return die("cannot open " + quote(src) + " for reading: " + std::strerror(errno));
    int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | (inplace ? 0 : O_TRUNC) | O_CLOEXEC, sst.st_mode & 07777);
    if (out < 0) return die("cannot create regular file " + quote(dst) + ": " + std::strerror(errno));
    if (verbose) std::printf("%s -> %s\n", quote(src).c_str(), quote(dst).c_str());

    uint64_t offloaded = 0, guest = 0, zero_filled = 0, requests = 0, copied = 0;
    bool fell_back = false;
    std::string reason;
    for (;;) {
        // Ask for everything that is left; a short count means EOF (or a late error).
        ssize_t n = vpipe_file_to_file_fd(in, out, static_cast<off_t>(copied), SSIZE_MAX,
                                          static_cast<off_t>(copied));
        vpipe_result res{};
        vpipe_last_result(&res);
        if (n < 0) {
            int e = errno;
            std::string why = res.reason && *res.reason ? std::string(" (") + res.reason + ")" : "";
            return die("error copying " + quote(src) + " to " + quote(dst) + ": " +
                       std::strerror(e) + why);
        }
        if (n == 0) break;
        copied += static_cast<uint64_t>(n);
        offloaded += res.offloaded;
        guest += res.guest_copied;
        zero_filled += res.zero_filled;
        requests += res.requests;
        if (res.path == VPIPE_RESULT_FALLBACK) {
            fell_back = true;
            reason = res.reason;
        }
    }
    // in place: an old DEST longer than SOURCE keeps no tail (the copy is whole or it failed above)
    if (inplace && ::ftruncate(out, static_cast<off_t>(copied)) < 0)
        return die("cannot truncate " + quote(dst) + ": " + std::strerror(errno));
    if (::close(out) < 0) return die("error closing " + quote(dst) + ": " + std::strerror(errno));
    ::close(in);
    if (fell_back)
        std::fprintf(stderr, "cp-vpipe: note: copied inside the guest, not offloaded: %s\n",
                     reason.c_str());
    if (stats) {
        unsigned long long rchar, wchar;
        syscall_io(&rchar, &wchar);
        std::printf("copied %llu bytes: offloaded %llu in %llu ring request(s), guest %llu, "
                    "zero-filled %llu%s; cp-vpipe's own syscall I/O: rchar %llu wchar %llu\n",
                    (unsigned long long)copied, (unsigned long long)offloaded,
                    (unsigned long long)requests, (unsigned long long)guest,
                    (unsigned long long)zero_filled, fell_back ? " (fallback)" : "", rchar, wchar);
    }
    return 0;
}
