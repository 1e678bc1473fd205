// The engine's and the agents' TOML configuration files, written by `up`.
#pragma once

#include <string>

namespace vpipe::lab {

struct LabState;
struct VmState;

std::string engine_config_text(const LabState& s);
std::string agent_config_text(const VmState& vm);

}  // namespace vpipe::lab
