// Logging for the daemons and tools: spdlog to stderr, level from the config or --log-level.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace vpipe {

// Sets up the default logger named `program`; `level` is an spdlog level name
// ("trace".."critical", "off"). Unknown names fall back to "info".
void init_logging(const std::string& program, const std::string& level);

}  // namespace vpipe
