// org.vpipe.VPipe in the lab: Java programs in vm1 call the four operations (fallback off, no
// threshold) on real channels, their peers run on the client host; both ends print the byte
// count and SHA-256 of what they sent / received / wrote. The engine's per-operation byte
// counters (vpipectl stats) must grow by exactly the bytes moved: dom0 moved them. Then
// patches/hadoop's BlockSender harness serves a block (packets of 64 KiB as Hadoop sends them)
// with VPipe.fileToSocket, and with transferTo as the unpatched control.
#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/lab_fixture.h"

namespace {

using namespace vpipe::labtest;

// "key=value" out of a line of space-separated fields ("" if absent)
std::string field(const std::string& line, const std::string& key) {
    const std::string k = key + "=";
    size_t at = 0;
    while ((at = line.find(k, at)) != std::string::npos) {
        if (at == 0 || line[at - 1] == ' ') {
            const size_t end = line.find_first_of(" \n", at);
            return line.substr(at + k.size(), end == std::string::npos ? std::string::npos : end - at - k.size());
        }
        ++at;
    }
    return "";
}
uint64_t num(const std::string& line, const std::string& key) {
    const std::string v = field(line, key);
    return v.empty() ? ~0ull : std::stoull(v);
}

class JavaLab : public LabFixture {
protected:
    static void SetUpTestSuite() {
        bring_up({.up = {"--vms", "1", "--disks", "2", "--disk-mib", "512"},
                  .binaries = {"vpipectl"},
                  .tools = {"java"},
                  .name = "java"});
    }

    static std::vector<std::string> java(const std::string& cls, const std::string& jar,
                                         std::vector<std::string> args, bool ipv4 = true) {
        const std::string dir = VPIPE_JAVA_DIR;
        std::vector<std::string> av{VPIPE_JAVA, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                                    std::string("-Dorg.vpipe.library=") + VPIPE_JNI_LIB, "-cp",
                                    dir + "/vpipe.jar:" + dir + "/" + jar, cls};
        // vPipe moves IPv4 connections; the JDK's sockets are AF_INET6 without this
        if (ipv4) av.insert(av.begin() + 1, "-Djava.net.preferIPv4Stack=true");
        av.insert(av.end(), args.begin(), args.end());
        return av;
    }
    static std::vector<std::string> driver(std::vector<std::string> args, bool ipv4 = true) {
        return java("org.vpipe.lab.LabDriver", "vpipe-lab-driver.jar", std::move(args), ipv4);
    }
    static std::vector<std::string> harness(std::vector<std::string> args) {
        return java("org.vpipe.hadoop.BlockSenderHarness", "vpipe-hdfs-harness.jar", std::move(args));
    }
    static Res on_client(const std::vector<std::string>& argv) {
        std::vector<std::string> a{"client", "--"};
        a.insert(a.end(), argv.begin(), argv.end());
        return lab(a, {.merge_stderr = true});
    }

    // the engine's counters of vm1 for one operation: {ops, bytes}
    static std::pair<uint64_t, uint64_t> engine_op(const std::string& op) {
        const auto s = engine_stats();
        if (!s.contains("vms") || s["vms"].empty()) return {~0ull, ~0ull};
        const auto& vm = s["vms"][0];
        return {vm["ops"].value(op, ~0ull), vm["bytes"].value(op, ~0ull)};
    }

    // A VM side's RESULT line: n bytes moved, offloaded all of them
    static void expect_offloaded(const std::string& result, uint64_t len) {
        ASSERT_FALSE(result.empty());
        EXPECT_EQ(num(result, "n"), len) << result;
        EXPECT_EQ(field(result, "path"), "OFFLOADED") << result;
        EXPECT_EQ(num(result, "offloaded"), len) << result;
        EXPECT_EQ(num(result, "guest"), 0u) << result;
    }

    // patches/hadoop: the patched BlockSender's calls, packet by packet, through vpipe.jar
    static void serve_block(const std::string& dir, const std::string& mode, int port, bool vpipe) {
        const uint64_t block = (16ull << 20) + 1000, offset = 700, length = block - 700 - 300;
        const auto [ops0, bytes0] = engine_op("file_to_socket");
        LabProc vm("vm1", harness({"serve", dir, std::to_string(block), "15", std::to_string(port), mode}));
        ASSERT_FALSE(vm.line("READY").empty()) << vm.all;
        std::vector<std::string> c{"client", "--"};
        for (auto& a : harness({"read", kVm1Ip, std::to_string(port), std::to_string(offset),
                                              std::to_string(length)}))
            c.push_back(a);
        const Res rd = lab(c, {.merge_stderr = true});
        const std::string served = vm.line("SERVED");
        EXPECT_EQ(vm.wait(), 0) << vm.all;
        ASSERT_EQ(rd.status, 0) << rd.out;
        std::printf("[ datanode, %s ] %s\n[ reader ] %s", mode.c_str(), served.c_str(), rd.out.c_str());
        ASSERT_FALSE(served.empty()) << vm.all;
        const std::string read = rd.out.substr(rd.out.find("READ"));
        // chunk aligned: from 512 (700 rounded down) to the block's end (its last chunk is partial)
        const uint64_t bytes = block - 512;
        EXPECT_EQ(num(read, "bytes"), bytes);
        EXPECT_EQ(num(served, "bytes"), bytes);
        EXPECT_EQ(field(read, "sha"), field(served, "sha")) << "the reader got other data than the block's";
        const uint64_t packets = (bytes + 65535) / 65536 + 1;  // 64 KiB packets and the empty last one
        EXPECT_EQ(num(read, "packets"), packets);
        const auto [ops1, bytes1] = engine_op("file_to_socket");
        if (vpipe) {
            EXPECT_EQ(num(served, "vpipe_calls"), packets - 1);
            EXPECT_EQ(num(served, "offloaded"), bytes);
            EXPECT_EQ(ops1 - ops0, packets - 1);
            EXPECT_EQ(bytes1 - bytes0, bytes) << "the engine did not send every packet's data";
        } else {
            EXPECT_EQ(bytes1 - bytes0, 0u) << "transferTo is the guest's own path";
        }
        std::printf("[ engine ] file_to_socket: +%llu ops, +%llu bytes\n", (unsigned long long)(ops1 - ops0),
                    (unsigned long long)(bytes1 - bytes0));
    }

    void TearDown() override {
        if (ready()) expect_nothing_left_behind();
    }
};

TEST_F(JavaLab, FileToSocket) {
    const std::string file = mount(1, 0) + "/java-f2s.bin";
    const uint64_t size = (40ull << 20) + 777, off = (1ull << 20) + 3, len = (32ull << 20) + 5;
    const auto [ops0, bytes0] = engine_op("file_to_socket");
    LabProc vm("vm1", driver({"f2s", file, std::to_string(size), "11", std::to_string(off), std::to_string(len), "9101"}));
    ASSERT_FALSE(vm.line("READY").empty()) << vm.all;
    const Res c = on_client(driver({"recv", kVm1Ip, "9101"}));
    const std::string result = vm.line("RESULT");
    EXPECT_EQ(vm.wait(), 0) << vm.all;
    ASSERT_EQ(c.status, 0) << c.out;
    std::printf("[ vm ] %s\n[ client ] %s", result.c_str(), c.out.c_str());
    expect_offloaded(result, len);
    EXPECT_EQ(field(result, "position"), "0") << "fileToSocket must not move the channel's position";
    const std::string recv = c.out.substr(c.out.find("RECV"));
    EXPECT_EQ(num(recv, "n"), len);
    EXPECT_EQ(field(recv, "sha"), field(result, "want_sha")) << "the client got other bytes than the file's range";
    const auto [ops1, bytes1] = engine_op("file_to_socket");
    EXPECT_GE(ops1 - ops0, 1u);
    EXPECT_EQ(bytes1 - bytes0, len) << "the engine did not move exactly the range";
    std::printf("[ engine ] file_to_socket: +%llu ops, +%llu bytes\n", (unsigned long long)(ops1 - ops0),
                (unsigned long long)(bytes1 - bytes0));
    ::unlink(file.c_str());
}

TEST_F(JavaLab, SocketToFile) {
    const std::string file = mount(1, 0) + "/java-s2f.bin";
    const uint64_t pos = 12345, len = (24ull << 20) + 11;
    const auto [ops0, bytes0] = engine_op("socket_to_file");
    LabProc vm("vm1", driver({"s2f", file, std::to_string(pos), std::to_string(len), "9102"}));
    ASSERT_FALSE(vm.line("READY").empty()) << vm.all;
    const Res c = on_client(driver({"send", kVm1Ip, "9102", std::to_string(len), "12"}));
    const std::string result = vm.line("RESULT");
    EXPECT_EQ(vm.wait(), 0) << vm.all;
    ASSERT_EQ(c.status, 0) << c.out;
    std::printf("[ vm ] %s\n[ client ] %s", result.c_str(), c.out.c_str());
    expect_offloaded(result, len);
    const std::string sent = c.out.substr(c.out.find("SENT"));
    EXPECT_EQ(field(result, "sha"), field(sent, "sha")) << "the file holds other bytes than were sent";
    EXPECT_EQ(num(result, "size"), pos + len);
    EXPECT_EQ(field(result, "position"), "0");
    const auto [ops1, bytes1] = engine_op("socket_to_file");
    EXPECT_GE(ops1 - ops0, 1u);
    EXPECT_EQ(bytes1 - bytes0, len);
    std::printf("[ engine ] socket_to_file: +%llu ops, +%llu bytes\n", (unsigned long long)(ops1 - ops0),
                (unsigned long long)(bytes1 - bytes0));
    ::unlink(file.c_str());
}

TEST_F(JavaLab, SocketToSocket) {
    const uint64_t len = (24ull << 20) + 7;
    const auto [ops0, bytes0] = engine_op("socket_to_socket");
    LabProc vm("vm1", driver({"s2s", "9103", kClientIp, "9104", std::to_string(len)}));
    ASSERT_FALSE(vm.line("READY").empty()) << vm.all;
    const Res c = on_client(driver({"peer", kVm1Ip, "9103", "9104", std::to_string(len), "13"}));
    const std::string result = vm.line("RESULT");
    EXPECT_EQ(vm.wait(), 0) << vm.all;
    ASSERT_EQ(c.status, 0) << c.out;
    std::printf("[ vm ] %s\n[ client ] %s", result.c_str(), c.out.c_str());
    expect_offloaded(result, len);
    const std::string sent = c.out.substr(c.out.find("SENT")), recv = c.out.substr(c.out.find("RECV"));
    EXPECT_EQ(num(recv, "n"), len);
    EXPECT_EQ(field(recv, "sha"), field(sent, "sha")) << "the relayed bytes differ";
    const auto [ops1, bytes1] = engine_op("socket_to_socket");
    EXPECT_GE(ops1 - ops0, 1u);
    EXPECT_EQ(bytes1 - bytes0, len);
    std::printf("[ engine ] socket_to_socket: +%llu ops, +%llu bytes\n", (unsigned long long)(ops1 - ops0),
                (unsigned long long)(bytes1 - bytes0));
}

TEST_F(JavaLab, FileToFile) {
    const std::string src = mount(1, 0) + "/java-f2f.src", dst = mount(1, 1) + "/java-f2f.dst";
    const uint64_t size = (20ull << 20) + 99, in_off = 4096 + 1, len = (16ull << 20) + 3, out_off = 777;
    const auto [ops0, bytes0] = engine_op("file_to_file");
    std::vector<std::string> av{"exec", "vm1", "--"};
    for (auto& a : driver({"f2f", src, dst, std::to_string(size), "14", std::to_string(in_off), std::to_string(len),
                           std::to_string(out_off)}))
        av.push_back(a);
    const Res vm = lab(av, {.merge_stderr = true});
    ASSERT_EQ(vm.status, 0) << vm.out;
    const std::string result = vm.out.substr(vm.out.find("RESULT"));
    std::printf("[ vm ] %s", result.c_str());
    expect_offloaded(result.substr(0, result.find('\n')), len);
    EXPECT_EQ(field(result, "sha"), field(result, "want_sha")) << "the copy differs";
    EXPECT_EQ(num(result, "size"), out_off + len);
    const auto [ops1, bytes1] = engine_op("file_to_file");
    EXPECT_GE(ops1 - ops0, 1u);
    EXPECT_EQ(bytes1 - bytes0, len);
    std::printf("[ engine ] file_to_file: +%llu ops, +%llu bytes\n", (unsigned long long)(ops1 - ops0),
                (unsigned long long)(bytes1 - bytes0));
    ::unlink(src.c_str());
    ::unlink(dst.c_str());
}

// The fallback, visible to the caller: a file that is not on a VM disk (the host's /tmp) is sent
// by libvpipe in the guest when fallback is on (lastResult says so and why, dom0 moves nothing),
// and is an OffloadUnavailableException (ENXIO) when it is off.
TEST_F(JavaLab, FallbackIsVisibleForAFileOffTheVmDisks) {
    const std::string file = tmp_ + "/not-on-a-vm-disk.bin";
    const uint64_t size = 3ull << 20, len = (2ull << 20) + 1;
    const auto [ops0, bytes0] = engine_op("file_to_socket");
    {
        LabProc vm("vm1", driver({"f2s", file, std::to_string(size), "16", "0", std::to_string(len), "9107", "fallback"}));
        ASSERT_FALSE(vm.line("READY").empty()) << vm.all;
        const Res c = on_client(driver({"recv", kVm1Ip, "9107"}));
        const std::string result = vm.line("RESULT");
        EXPECT_EQ(vm.wait(), 0) << vm.all;
        std::printf("[ vm, fallback on ] %s\n", result.c_str());
        EXPECT_EQ(field(result, "path"), "FALLBACK") << result;
        // the file was just written, so libvpipe's cache rule (the guest's own sendfile) comes
        // first; otherwise the file's not being on a VM disk: either way a visible fallback
        const std::string err = field(result, "error");
        EXPECT_TRUE((err == "EALREADY" &&
                     result.find("reason=\"the range is in the guest's page cache (cache rule)\"") != std::string::npos) ||
                    (err == "ENXIO" &&
                     result.find("reason=\"a file is not on one of this VM's virtual disks\"") != std::string::npos))
            << result;
        EXPECT_EQ(num(result, "guest"), len) << result;
        EXPECT_EQ(num(result, "offloaded"), 0u) << result;
        const std::string recv = c.out.substr(c.out.find("RECV"));
        EXPECT_EQ(field(recv, "sha"), field(result, "want_sha"));
    }
    {
        LabProc vm("vm1", driver({"f2s", file, std::to_string(size), "16", "0", std::to_string(len), "9108"}));
        ASSERT_FALSE(vm.line("READY").empty()) << vm.all;
        const Res c = on_client(driver({"recv", kVm1Ip, "9108"}));
        const std::string error = vm.line("ERROR");
        EXPECT_EQ(vm.wait(), 3) << vm.all;
        std::printf("[ vm, fallback off ] %s\n", error.c_str());
        EXPECT_EQ(field(error, "class"), "OffloadUnavailableException") << error;
        EXPECT_EQ(field(error, "errno"), "ENXIO") << error;
        EXPECT_NE(error.find("path=FAILED"), std::string::npos) << error;
        EXPECT_EQ(num(c.out.substr(c.out.find("RECV")), "n"), 0u) << c.out;
    }
    const auto [ops1, bytes1] = engine_op("file_to_socket");
    EXPECT_EQ(bytes1 - bytes0, 0u) << "dom0 moved bytes of a file that is not on a VM disk";
    ::unlink(file.c_str());
}

// Without -Djava.net.preferIPv4Stack=true the JDK's socket is AF_INET6 (IPv4-mapped), which the
// guest component does not move: EOPNOTSUPP, and the exception names the flag.
TEST_F(JavaLab, Inet6SocketIsRefusedWithAHint) {
    const std::string file = mount(1, 0) + "/java-v6.bin";
    LabProc vm("vm1", driver({"f2s", file, std::to_string(1 << 20), "17", "0", std::to_string(1 << 20), "9109"},
                             /*ipv4=*/false));
    ASSERT_FALSE(vm.line("READY").empty()) << vm.all;
    const Res c = on_client(driver({"recv", kVm1Ip, "9109"}));
    const std::string error = vm.line("ERROR");
    EXPECT_EQ(vm.wait(), 3) << vm.all;
    std::printf("[ vm, AF_INET6 ] %s\n", error.c_str());
    EXPECT_EQ(field(error, "class"), "OffloadUnavailableException") << error;
    EXPECT_EQ(field(error, "errno"), "EOPNOTSUPP") << error;
    EXPECT_NE(error.find("-Djava.net.preferIPv4Stack=true"), std::string::npos) << error;
    ::unlink(file.c_str());
}

TEST_F(JavaLab, HdfsBlockSenderHarnessWithVPipe) {
    serve_block(mount(1, 0), "vpipe", 9105, true);
}

TEST_F(JavaLab, HdfsBlockSenderHarnessWithTransferToAsControl) {
    serve_block(mount(1, 0), "transferTo", 9106, false);
}

}  // namespace
