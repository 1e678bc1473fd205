// The VMs' disks: sparse ext4 image files, attached to loop devices, mounted under /run/vpipe-lab.
#pragma once

#include <string>
#include <vector>

namespace vpipe::lab {

struct LoopDevice {
    std::string device;     // /dev/loopN
    std::string back_file;  // without a " (deleted)" suffix
    bool direct_io = false;
};

// Xen's xvd numbering: disk `index` of a VM is 202*256 + 16*index (xvda = 51712).
constexpr unsigned vdev_of(int index) { return 202u * 256u + 16u * static_cast<unsigned>(index); }

// Sparse file of `mib` MiB with an ext4 filesystem (4 KiB blocks).
void create_image(const std::string& path, int mib);
// losetup --find --show --direct-io=on (falls back to buffered); returns the device.
LoopDevice attach_loop(const std::string& image);
void mount_disk(const std::string& device, const std::string& mount_point);

std::vector<LoopDevice> list_loops();
// Loops whose backing file is a lab image: listed in `known`, or <dir>/vmN/diskK.img in a directory
// carrying the lab marker, or mounted under /run/vpipe-lab.
std::vector<LoopDevice> find_lab_loops(const std::vector<std::string>& known_images);
void detach_loop(const std::string& device);

// Mount points at or below `prefix`, deepest first.
std::vector<std::string> mounts_under(const std::string& prefix);
// Unmounts everything under prefix (lazy as last resort); returns what could not be unmounted.
std::vector<std::string> unmount_under(const std::string& prefix);

}  // namespace vpipe::lab
