// Small helpers shared by the lab tool: errors, child processes (argv, never a shell), files.
#pragma once

#include <sys/types.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace vpipe::lab {

// Fatal lab error: the message is shown to the user as is.
class LabError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Fixed names and paths of the lab (the contract other tools rely on).
inline constexpr const char* kRunDir = "/run/vpipe-lab";
inline constexpr const char* kStatePath = "/run/vpipe-lab/state.json";
inline constexpr const char* kDefaultImageDir = "/var/lib/vpipe-lab";
inline constexpr const char* kImageDirMarker = ".vpipe-lab";  // file in an image dir the lab uses
inline constexpr const char* kNetnsPrefix = "vpl-";
inline constexpr const char* kDom0Netns = "vpl-dom0";
inline constexpr const char* kClientNetns = "vpl-client";
inline constexpr const char* kBridge = "xenbr0";
inline constexpr const char* kSubnetPrefix = "10.199.0.";
inline constexpr const char* kCgroupRoot = "vpipe-lab";

struct RunResult {
    int status = -1;     // exit code, or 128+signal
    std::string output;  // stdout+stderr when captured
};

// Runs argv[0] (PATH lookup) with argv; stdin is /dev/null. Captures stdout+stderr when
// `capture`; otherwise they go to ours only if `verbose`, else to /dev/null.
RunResult run(const std::vector<std::string>& argv, bool capture = true);
// Like run() but throws LabError (with the command's output) on a non-zero exit.
std::string run_checked(const std::vector<std::string>& argv);
std::string join_argv(const std::vector<std::string>& argv);

// Decoded wait status: exit code, or 128+signal.
int decode_wait_status(int wstatus);

bool path_exists(const std::string& p);
bool is_dir(const std::string& p);
std::optional<std::string> read_file(const std::string& p);
void write_file(const std::string& p, const std::string& data, mode_t mode = 0644);
// Writes `data` to an existing kernel file (cgroupfs, procfs); throws LabError on failure.
void write_sysfs(const std::string& p, const std::string& data);
void write_file_atomic(const std::string& p, const std::string& data, mode_t mode = 0644);
void mkdir_p(const std::string& p, mode_t mode = 0755);
// rm -rf that never crosses into another mounted filesystem; returns false if something remained.
bool remove_tree(const std::string& p);
std::string dirname_of(const std::string& p);
std::string trim(const std::string& s);
std::vector<std::string> split(const std::string& s, char sep);
// Last lines of a text file (for error messages).
std::string tail_file(const std::string& p, int lines);

// CPU lists ("0", "0-2,5"): parse to sorted ids; throws LabError on bad syntax.
std::vector<int> parse_cpu_list(const std::string& list);
std::string format_cpu_list(const std::vector<int>& cpus);
std::vector<int> online_cpus();

// Directory of /proc/self/exe.
std::string self_exe_dir();
std::string self_exe();
// Finds a sibling binary of vpipe-lab, else one in PATH; empty when absent.
std::string find_binary(const std::string& name);

bool is_verbose();
void set_verbose(bool v);

}  // namespace vpipe::lab

namespace vpipe::lab {

struct MountEntry {
    std::string mount_point, fstype, source, super_options;
};
// Parses /proc/self/mountinfo (octal escapes decoded).
std::vector<MountEntry> read_mounts();

}  // namespace vpipe::lab
