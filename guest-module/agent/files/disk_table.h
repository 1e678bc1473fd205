// DiskTable: the VM's virtual disks as the guest sees them, and which one a file lives on.
//
// The engine addresses a virtual disk by its vdev (Xen virtual-device number) and a byte offset
// on that WHOLE disk. FIEMAP reports offsets relative to the block device the filesystem sits on,
// which may be a partition of the virtual disk; the table supplies the partition's start so
// extent_map can turn filesystem offsets into virtual-disk offsets.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace vpipe::agent {

struct DiskInfo {
    uint32_t vdev;              // the virtual disk, as named on the ring
    std::string device;         // block device path (as given to add(), or /dev/<name> of a partition)
    dev_t devno;                // device number of `device`: what st_dev of a file on it reads
    uint64_t partition_offset;  // byte offset of `device` on the virtual disk (0 for a whole disk)
    dev_t disk_devno = 0;       // device number of the whole disk (== devno for a whole disk)
};

class DiskTable {
public:
    // Registers `device_path` (a whole virtual disk, e.g. /dev/xvda or /dev/loop3, or one of its
    // partitions) as virtual disk `vdev`. A partition's parent and start come from
    // /sys/dev/block/MAJ:MIN/{partition,start}. For a whole disk, its partitions present at this
    // moment are registered too (a fs on /dev/xvda1 then maps to vdev with xvda1's offset); call
    // add() again after repartitioning (re-adding the same vdev is -EEXIST: make a new table).
    // Returns 0 or -errno: -ENOTBLK not a block device, -EEXIST vdev or device already present,
    // -ENODEV no sysfs entry (the partition offset cannot be known, so the disk is refused).
    int add(uint32_t vdev, const std::string& device_path);

    // The disk a filesystem lives on, by that filesystem's device number (st_dev of a file on it);
    // nullptr if it is on none of the table's disks. The pointer stays valid until the next add().
    const DiskInfo* find_by_devno(dev_t fs_dev) const;

    // The disks registered with add(), in order (not the partitions found under them).
    const std::vector<DiskInfo>& disks() const { return disks_; }

private:
    std::vector<DiskInfo> disks_;
    std::vector<DiskInfo> partitions_;  // partitions discovered under whole disks in disks_
};

}  // namespace vpipe::agent
