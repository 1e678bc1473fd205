#include "disks.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "util.h"
#include "util/unique_fd.h"

namespace vpipe::lab {

void create_image(const std::string& path, int mib) {
    {
        UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
        if (!fd) throw LabError("cannot create image " + path + ": " + strerror(errno));
        if (ftruncate(fd.get(), static_cast<off_t>(mib) * 1024 * 1024) != 0)
            throw LabError("cannot size image " + path + ": " + strerror(errno));
    }
    run_checked({"mkfs.ext4", "-q", "-F", "-b", "4096", path});
}

LoopDevice attach_loop(const std::string& image) {
    LoopDevice ld;
    ld.back_file = image;
    auto r = run({"losetup", "--find", "--show", "--direct-io=on", image});
    if (r.status == 0) {
        ld.device = trim(r.output);
        // losetup may attach and silently keep buffered I/O; read back what we got
        for (const auto& l : list_loops())
            if (l.device == ld.device) ld.direct_io = l.direct_io;
    } else {
        spdlog::warn("losetup --direct-io=on refused for {} ({}); using buffered loop", image, trim(r.output));
        ld.device = trim(run_checked({"losetup", "--find", "--show", image}));
        ld.direct_io = false;
    }
    if (ld.device.rfind("/dev/loop", 0) != 0) throw LabError("unexpected losetup output: " + ld.device);
    return ld;
}

void mount_disk(const std::string& device, const std::string& mount_point) {
    mkdir_p(mount_point);
    run_checked({"mount", "-t", "ext4", device, mount_point});
    if (chmod(mount_point.c_str(), 01777) != 0)
        throw LabError("chmod 1777 " + mount_point + ": " + strerror(errno));
}

std::vector<LoopDevice> list_loops() {
    std::vector<LoopDevice> out;
    auto r = run({"losetup", "-J", "-l", "-O", "NAME,BACK-FILE,DIO"});
    if (r.status != 0 || trim(r.output).empty()) return out;
    try {
        auto j = nlohmann::json::parse(r.output);
        for (const auto& d : j.value("loopdevices", nlohmann::json::array())) {
            LoopDevice l;
            l.device = d.value("name", "");
            std::string bf = d.contains("back-file") && d["back-file"].is_string() ? d["back-file"].get<std::string>() : "";
            const std::string del = " (deleted)";
            if (bf.size() > del.size() && bf.compare(bf.size() - del.size(), del.size(), del) == 0)
                bf.resize(bf.size() - del.size());
            l.back_file = bf;
            if (d.contains("dio")) {
                const auto& v = d["dio"];
                l.direct_io = v.is_boolean() ? v.get<bool>() : (v.is_string() && v.get<std::string>() == "1") ||
                                                                   (v.is_number() && v.get<int>() == 1);
            }
            out.push_back(l);
        }
    } catch (const nlohmann::json::exception& e) {
        spdlog::warn("cannot parse losetup -J output: {}", e.what());
    }
    return out;
}

std::vector<LoopDevice> find_lab_loops(const std::vector<std::string>& known_images) {
    static const std::regex image_re(R"(^(.*)/vm[0-9]+/disk[0-9]+\.img$)");
    std::vector<std::string> mounted_sources;
    for (const auto& m : read_mounts())
        if (m.mount_point == kRunDir || m.mount_point.rfind(std::string(kRunDir) + "/", 0) == 0)
            mounted_sources.push_back(m.source);
    std::vector<LoopDevice> out;
    for (const auto& l : list_loops()) {
        bool lab = std::find(known_images.begin(), known_images.end(), l.back_file) != known_images.end() ||
                   std::find(mounted_sources.begin(), mounted_sources.end(), l.device) != mounted_sources.end();
        std::smatch m;
        if (!lab && std::regex_match(l.back_file, m, image_re)) {
            std::string dir = m[1].str();
            lab = path_exists(dir + "/" + kImageDirMarker) || dir == kDefaultImageDir;
        }
        if (lab) out.push_back(l);
    }
    return out;
}

void detach_loop(const std::string& device) {
    for (int attempt = 0; attempt < 20; ++attempt) {
        auto r = run({"losetup", "-d", device});
        bool still = false;
        for (const auto& l : list_loops()) still = still || l.device == device;
        if (!still) return;
        if (r.status != 0) spdlog::debug("losetup -d {}: {}", device, trim(r.output));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    throw LabError("cannot detach " + device + " (still in use?)");
}

std::vector<std::string> mounts_under(const std::string& prefix) {
    std::vector<std::string> out;
    for (const auto& m : read_mounts())
        if (m.mount_point == prefix || m.mount_point.rfind(prefix + "/", 0) == 0) out.push_back(m.mount_point);
    std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
        return a.size() > b.size();  // deeper paths are longer
    });
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

std::vector<std::string> unmount_under(const std::string& prefix) {
    for (int pass = 0; pass < 5; ++pass) {
        auto mps = mounts_under(prefix);
        if (mps.empty()) return {};
        for (const auto& mp : mps) {
            auto r = run({"umount", mp});
            if (r.status != 0) {
                spdlog::debug("umount {} failed: {}", mp, trim(r.output));
                if (pass >= 3) run({"umount", "-l", mp});
            }
        }
        if (pass > 0) std::this_thread::sleep_for(std::chrono::milliseconds(100 * pass));
    }
    return mounts_under(prefix);
}

}  // namespace vpipe::lab
