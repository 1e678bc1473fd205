// One relayed connection: connect to the backend, relay both directions the way --mode (and
// --vpipe-framing) say, log one line, close both.
#pragma once

#include <string>

namespace vpipe::proxy {

// Serves an accepted client connection (in its own thread); closes it.
void serve(int cfd, const std::string& peer);

}  // namespace vpipe::proxy
