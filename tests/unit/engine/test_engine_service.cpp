// vpiped as a process, fed by a hostile guest speaking the ring directly: malformed requests
// are refused with the right status, counted, and the engine keeps serving good ones.
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "transport/shm_channel.h"
#include "util/unix_socket.h"

using namespace vpipe;

namespace {

constexpr uint32_t kVdev = 51712;
constexpr uint64_t kImageBytes = 64ull << 20;

class EngineProcess : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = "/var/tmp/vpipe-engine-test-" + std::to_string(::getpid());
        ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
        image_ = dir_ + "/disk.img";
        // A real image on a real filesystem (O_DIRECT needs one): random bytes to copy around.
        std::vector<char> data(kImageBytes);
        std::mt19937_64 rng(42);
        for (size_t i = 0; i < data.size(); i += 8) {
            uint64_t v = rng();
            std::memcpy(&data[i], &v, 8);
        }
        std::ofstream(image_, std::ios::binary).write(data.data(), static_cast<long>(data.size()));
        image_data_ = std::move(data);
        std::ofstream(dir_ + "/vpiped.toml") << "[engine]\ncontrol_socket = \"" << dir_
            << "/ctl\"\npool_pages = 1024\n[[vm]]\nname = \"vm1\"\nid = 1\nthreads = 2\n"
            << "channel = \"" << dir_ << "/vm1.sock\"\n[[vm.disk]]\nvdev = " << kVdev
            << "\nimage = \"" << image_ << "\"\n";
        pid_ = ::fork();
        if (pid_ == 0) {
            std::string cfg = dir_ + "/vpiped.toml";
            ::execl(VPIPE_BIN_DIR "/vpiped", "vpiped", "--config", cfg.c_str(), "--log-level",
                    "error", nullptr);
            ::_exit(127);
        }
        for (int i = 0; i < 200 && ::access((dir_ + "/ctl").c_str(), F_OK) != 0; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        ASSERT_EQ(::access((dir_ + "/ctl").c_str(), F_OK), 0) << "vpiped did not start";
        ASSERT_EQ(transport::ShmGuestChannel::open(dir_ + "/vm1.sock", 16, &ch_), 0);
    }

    void TearDown() override {
        ch_.reset();
        if (pid_ > 0) {
            ::kill(pid_, SIGTERM);
            int st = 0;
            ::waitpid(pid_, &st, 0);
            EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "vpiped did not exit cleanly";
        }
        std::string cmd = "rm -rf " + dir_;
        EXPECT_EQ(std::system(cmd.c_str()), 0);
    }

    // Posts `req` with `desc` in descriptor pages 0.., waits for the response.
    vpipe_response call(vpipe_request req, const std::vector<uint8_t>& desc) {
        for (size_t off = 0; off < desc.size(); off += VPIPE_PAGE_SIZE)
            std::memcpy(ch_->desc_page(static_cast<uint32_t>(off / VPIPE_PAGE_SIZE)), desc.data() + off,
                        std::min<size_t>(VPIPE_PAGE_SIZE, desc.size() - off));
        auto& ring = ch_->ring();
        *RING_GET_REQUEST(&ring, ring.req_prod_pvt) = req;
        ring.req_prod_pvt++;
        int notify;
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&ring, notify);
        if (notify) ch_->notify_dom0();
        return wait_response();
    }

    vpipe_response wait_response() {
        auto& ring = ch_->ring();
        for (int i = 0; i < 3000; ++i) {
            RING_IDX rp = ring.sring->rsp_prod;
            xen_rmb();
            if (rp != ring.rsp_cons) {
                vpipe_response r = *RING_GET_RESPONSE(&ring, ring.rsp_cons);
                ring.rsp_cons++;
                return r;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        ADD_FAILURE() << "no response within 6 s";
        return {};
    }

    static std::vector<uint8_t> file_to_file_desc(std::vector<vpipe_segment> src,
                                                  std::vector<vpipe_segment> dst, uint32_t vdev = kVdev) {
        vpipe_desc_header h{};
        h.magic = VPIPE_DESC_MAGIC;
        h.version = VPIPE_PROTOCOL_VERSION;
        h.header_bytes = sizeof(h);
        h.nr_segments = static_cast<uint32_t>(src.size() + dst.size());
        h.src = {VPIPE_EP_FILE, vdev, 0, static_cast<uint32_t>(src.size()), 0, 0, {}, {}};
        h.dst = {VPIPE_EP_FILE, vdev, static_cast<uint32_t>(src.size()),
                 static_cast<uint32_t>(dst.size()), 0, 0, {}, {}};
        const size_t bytes = sizeof(h) + h.nr_segments * sizeof(vpipe_segment);
        h.area_pages = static_cast<uint32_t>((bytes + VPIPE_PAGE_SIZE - 1) / VPIPE_PAGE_SIZE);
        std::vector<uint8_t> d(sizeof(h));
        std::memcpy(d.data(), &h, sizeof(h));
        for (auto* list : {&src, &dst}) {
            size_t at = d.size();
            d.resize(at + list->size() * sizeof(vpipe_segment));
            std::memcpy(d.data() + at, list->data(), list->size() * sizeof(vpipe_segment));
        }
        return d;
    }

    static vpipe_request request(uint64_t id, uint64_t length, const std::vector<uint8_t>& desc) {
        vpipe_request r{};
        r.id = id;
        r.op = VPIPE_OP_FILE_TO_FILE;
        r.length = length;
        r.nr_pages = static_cast<uint8_t>((desc.size() + VPIPE_PAGE_SIZE - 1) / VPIPE_PAGE_SIZE);
        r.desc_bytes = static_cast<uint32_t>(desc.size());
        for (unsigned i = 0; i < r.nr_pages; ++i) r.page[i] = i;
        return r;
    }

    nlohmann::json stats() {
        UniqueFd fd = connect_unix(dir_ + "/ctl");
        std::string q = "{\"cmd\":\"stats\"}\n";
        EXPECT_EQ(send_msg_fds(fd.get(), q.data(), q.size(), nullptr, 0), 0);
        std::string buf;
        char c;
        while (::read(fd.get(), &c, 1) == 1 && c != '\n') buf += c;
        return nlohmann::json::parse(buf)["stats"]["vms"][0];
    }

    std::vector<char> read_image(uint64_t off, uint64_t len) {
        std::vector<char> out(len);
        std::ifstream f(image_, std::ios::binary);
        f.seekg(static_cast<long>(off));
        f.read(out.data(), static_cast<long>(len));
        return out;
    }

    std::string dir_, image_;
    std::vector<char> image_data_;
    pid_t pid_ = -1;
    std::unique_ptr<transport::ShmGuestChannel> ch_;
};

}  // namespace

TEST_F(EngineProcess, CopiesBlocksInsideTheImage) {
    // 1 MiB at 4 MiB -> 40 MiB, plus an unaligned 1000-byte tail from a hole.
    auto desc = file_to_file_desc({{4 << 20, 1 << 20, 0, 0}, {0, 1000, VPIPE_SEG_ZERO, 0}},
                                  {{40 << 20, (1 << 20) + 1000, 0, 0}});
    vpipe_response r = call(request(1, (1 << 20) + 1000, desc), desc);
    EXPECT_EQ(r.id, 1u);
    EXPECT_EQ(r.status, 0);
    EXPECT_EQ(r.moved, (1u << 20) + 1000);
    auto got = read_image(40 << 20, (1 << 20) + 1000 + 100);
    EXPECT_EQ(std::memcmp(got.data(), image_data_.data() + (4 << 20), 1 << 20), 0);
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(got[(1 << 20) + i], 0) << i;
    // The byte after the destination is untouched (read-modify-write kept it).
    EXPECT_EQ(got[(1 << 20) + 1000], image_data_[(40 << 20) + (1 << 20) + 1000]);
    auto s = stats();
    EXPECT_EQ(s["ops"]["file_to_file"], 1);
    EXPECT_EQ(s["bytes"]["file_to_file"], (1 << 20) + 1000);
    EXPECT_GE(s["disks"][0]["bytes_read"].get<uint64_t>(), 1u << 20);
}

TEST_F(EngineProcess, RefusesExtentsOutsideTheImageAndKeepsServing) {
    const auto before = read_image(0, kImageBytes);
    struct Case {
        const char* what;
        std::vector<vpipe_segment> src, dst;
        uint32_t vdev;
        int status;
    } cases[] = {
        {"source past the end", {{kImageBytes - 4096, 8192, 0, 0}}, {{0, 8192, 0, 0}}, kVdev, -ERANGE},
        {"destination past the end", {{0, 8192, 0, 0}}, {{kImageBytes, 8192, 0, 0}}, kVdev, -ERANGE},
        {"offset overflow", {{UINT64_MAX - 10, 4096, 0, 0}}, {{0, 4096, 0, 0}}, kVdev, -ERANGE},
        {"someone else's disk", {{0, 4096, 0, 0}}, {{4096, 4096, 0, 0}}, kVdev + 16, -EPERM},
    };
    uint64_t id = 100;
    for (const auto& c : cases) {
        auto desc = file_to_file_desc(c.src, c.dst, c.vdev);
        vpipe_response r = call(request(++id, c.src[0].length, desc), desc);
        EXPECT_EQ(r.id, id) << c.what;
        EXPECT_EQ(r.status, c.status) << c.what;
        EXPECT_EQ(r.moved, 0u) << c.what;
    }
    // A descriptor page index outside the shared area, and a malformed entry.
    auto desc = file_to_file_desc({{0, 4096, 0, 0}}, {{8192, 4096, 0, 0}});
    vpipe_request bad = request(++id, 4096, desc);
    bad.page[0] = 16;  // the area has pages 0..15
    EXPECT_EQ(call(bad, desc).status, -EINVAL);
    bad = request(++id, 4096, desc);
    bad.flags = 0x80;
    EXPECT_EQ(call(bad, desc).status, -EINVAL);
    EXPECT_EQ(read_image(0, kImageBytes), before) << "a refused request wrote to the image";

    // Still serving.
    vpipe_response ok = call(request(++id, 4096, desc), desc);
    EXPECT_EQ(ok.status, 0);
    EXPECT_EQ(ok.moved, 4096u);
    auto s = stats();
    EXPECT_EQ(s["rejected"], 6);
    EXPECT_EQ(s["connected"], true);
}

TEST_F(EngineProcess, ABogusProducerIndexCostsTheGuestItsChannelOnly) {
    auto& ring = ch_->ring();
    ring.sring->req_prod = ring.req_prod_pvt + 1000;  // claims more requests than the ring holds
    ch_->notify_dom0();
    // The engine drops the channel (EOF on the control socket) and survives.
    pollfd p{ch_->control_fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 5000), 1);
    char c;
    EXPECT_EQ(::read(ch_->control_fd(), &c, 1), 0);
    ch_.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_EQ(transport::ShmGuestChannel::open(dir_ + "/vm1.sock", 16, &ch_), 0);
    vpipe_request nop{};
    nop.id = 5;
    vpipe_response r = call(nop, {});
    EXPECT_EQ(r.id, 5u);
    EXPECT_EQ(r.status, 0);
    EXPECT_EQ(stats()["channels"], 2);
}

TEST_F(EngineProcess, OneChannelPerVm) {
    std::unique_ptr<transport::ShmGuestChannel> second;
    EXPECT_EQ(transport::ShmGuestChannel::open(dir_ + "/vm1.sock", 16, &second), -EBUSY);
}
