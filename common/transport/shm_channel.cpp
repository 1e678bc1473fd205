#include "transport/shm_channel.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "util/unix_socket.h"

namespace vpipe::transport {

ShmMapping::ShmMapping(ShmMapping&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

ShmMapping& ShmMapping::operator=(ShmMapping&& o) noexcept {
    if (this != &o) {
        if (base_) ::munmap(base_, bytes_);
        base_ = std::exchange(o.base_, nullptr);
        bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
}

ShmMapping::~ShmMapping() {
    if (base_) ::munmap(base_, bytes_);
}

void kick(int fd) {
    uint64_t one = 1;
    ssize_t r = ::write(fd, &one, sizeof(one));
    (void)r;
}

void drain_kicks(int fd) {
    uint64_t count;
    while (::read(fd, &count, sizeof(count)) == static_cast<ssize_t>(sizeof(count))) {
    }
}

namespace {

constexpr unsigned kRequiredSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

size_t area_bytes(uint32_t desc_pages) {
    return VPIPE_PAGE_SIZE * (1 + static_cast<size_t>(desc_pages));
}

}  // namespace

int ShmGuestChannel::open(const std::string& channel_path, uint32_t desc_pages,
                          std::unique_ptr<ShmGuestChannel>* out) {
    if (desc_pages == 0 || desc_pages > VPIPE_SHM_MAX_DESC_PAGES) return -EINVAL;
    auto ch = std::unique_ptr<ShmGuestChannel>(new ShmGuestChannel());
    const size_t bytes = area_bytes(desc_pages);

    ch->memfd_.reset(::memfd_create("vpipe-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!ch->memfd_) return -errno;
    if (::ftruncate(ch->memfd_.get(), static_cast<off_t>(bytes)) < 0) return -errno;
    if (::fcntl(ch->memfd_.get(), F_ADD_SEALS, kRequiredSeals) < 0) return -errno;
    void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, ch->memfd_.get(), 0);
    if (base == MAP_FAILED) return -errno;
    ch->map_ = ShmMapping(base, bytes);
    SHARED_RING_INIT(ch->map_.sring());
    FRONT_RING_INIT(&ch->front_, ch->map_.sring(), VPIPE_PAGE_SIZE);

    ch->kick_dom0_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    ch->kick_guest_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!ch->kick_dom0_ || !ch->kick_guest_) return -errno;

    ch->control_ = connect_unix(channel_path);
    if (!ch->control_) return -errno;

    vpipe_shm_hello hello{};
    hello.magic = VPIPE_SHM_MAGIC;
    hello.version = VPIPE_PROTOCOL_VERSION;
    hello.ring_pages = 1;
    hello.desc_pages = desc_pages;
    const int fds[3] = {ch->memfd_.get(), ch->kick_dom0_.get(), ch->kick_guest_.get()};
    // dom0 may refuse (e.g. -EBUSY) and close before reading our hello: then the send fails,
    // but its answer is already waiting in our receive buffer, so read it either way.
    const int sent = send_msg_fds(ch->control_.get(), &hello, sizeof(hello), fds, 3);

    vpipe_shm_welcome welcome{};
    if (int r = recv_msg_fds(ch->control_.get(), &welcome, sizeof(welcome), nullptr, 0); r < 0) {
        if (sent < 0) return sent;
        return r == -ECONNRESET ? -EPROTO : r;
    }
    if (welcome.magic != VPIPE_SHM_MAGIC) return -EPROTO;
    if (welcome.status != 0) return welcome.status < 0 ? welcome.status : -EPROTO;
    if (sent < 0) return sent;
    if (welcome.version != VPIPE_PROTOCOL_VERSION) return -EPROTO;
    ch->max_inflight_ = welcome.max_inflight;
    *out = std::move(ch);
    return 0;
}

int ShmHostChannel::accept(UniqueFd conn, uint32_t max_inflight,
                           std::unique_ptr<ShmHostChannel>* out) {
    vpipe_shm_welcome welcome{};
    welcome.magic = VPIPE_SHM_MAGIC;
    welcome.version = VPIPE_PROTOCOL_VERSION;
    welcome.max_inflight = max_inflight;
    auto refuse = [&](int err) {
        welcome.status = err;
        send_msg_fds(conn.get(), &welcome, sizeof(welcome), nullptr, 0);
        return err;
    };

    // A guest that connects and says nothing must not pin this thread forever.
    timeval tv{5, 0};
    ::setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

    vpipe_shm_hello hello{};
    std::vector<UniqueFd> fds;
    if (int r = recv_msg_fds(conn.get(), &hello, sizeof(hello), &fds, 3); r < 0) return refuse(r);
    if (hello.magic != VPIPE_SHM_MAGIC || hello.version != VPIPE_PROTOCOL_VERSION)
        return refuse(-EPROTO);
    if (hello.ring_pages != 1 || hello.desc_pages == 0 ||
        hello.desc_pages > VPIPE_SHM_MAX_DESC_PAGES || hello.reserved0 != 0)
        return refuse(-EINVAL);
    if (fds.size() != 3) return refuse(-EINVAL);

    const size_t bytes = area_bytes(hello.desc_pages);
    const int memfd = fds[0].get();
    // The guest could shrink a memfd under us and turn every access into SIGBUS: insist on
    // seals that make its size immutable, and check the size itself.
    const int seals = ::fcntl(memfd, F_GET_SEALS);
    if (seals < 0 || (static_cast<unsigned>(seals) & kRequiredSeals) != kRequiredSeals)
        return refuse(-EPERM);
    struct stat st{};
    if (::fstat(memfd, &st) < 0 || static_cast<size_t>(st.st_size) != bytes)
        return refuse(-EINVAL);
    // The kick descriptors must really be eventfds: a pipe or socket could block our writes.
    for (int i = 1; i < 3; ++i) {
        char link[64], target[64] = {};
        std::snprintf(link, sizeof(link), "/proc/self/fd/%d", fds[i].get());
        ssize_t n = ::readlink(link, target, sizeof(target) - 1);
        if (n <= 0 || std::strcmp(target, "anon_inode:[eventfd]") != 0) return refuse(-EINVAL);
        int fl = ::fcntl(fds[i].get(), F_GETFL);
        ::fcntl(fds[i].get(), F_SETFL, fl | O_NONBLOCK);
    }

    void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (base == MAP_FAILED) return refuse(-errno);

    auto ch = std::unique_ptr<ShmHostChannel>(new ShmHostChannel());
    ch->map_ = ShmMapping(base, bytes);
    // The guest initialised the shared ring; we start consuming from whatever it says the
    // producer is at zero, like a freshly connected blkback.
    BACK_RING_INIT(&ch->back_, ch->map_.sring(), VPIPE_PAGE_SIZE);
    ch->kick_dom0_ = std::move(fds[1]);
    ch->kick_guest_ = std::move(fds[2]);

    tv = {0, 0};
    ::setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    welcome.status = 0;
    if (int r = send_msg_fds(conn.get(), &welcome, sizeof(welcome), nullptr, 0); r < 0) return r;
    ch->control_ = std::move(conn);
    *out = std::move(ch);
    return 0;
}

int ShmHostChannel::copy_desc_page(uint32_t index, void* dst) const {
    if (index >= map_.desc_pages()) return -EINVAL;
    std::memcpy(dst, map_.desc_page(index), VPIPE_PAGE_SIZE);
    return 0;
}

int ShmHostChannel::write_desc_page(uint32_t index, uint32_t offset, const void* src,
                                    uint32_t len) const {
    if (index >= map_.desc_pages() || offset > VPIPE_PAGE_SIZE || len > VPIPE_PAGE_SIZE - offset)
        return -EINVAL;
    std::memcpy(map_.desc_page(index) + offset, src, len);
    return 0;
}

int ShmHostChannel::read_desc_word(uint32_t index, uint32_t offset, uint64_t* value) const {
    if (index >= map_.desc_pages() || offset % 8 != 0 || offset > VPIPE_PAGE_SIZE - 8) return -EINVAL;
    // the guest stores it with release ordering; a plain memcpy could tear it
    *value = __atomic_load_n(reinterpret_cast<const uint64_t*>(map_.desc_page(index) + offset), __ATOMIC_ACQUIRE);
    return 0;
}

}  // namespace vpipe::transport
