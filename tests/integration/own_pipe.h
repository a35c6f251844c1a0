// The test process's own control pipe, for integration tests that send it commands.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

#include "control/client.h"
#include "tests/integration/integration_util.h"

namespace integ {

inline std::string own_pipe() {
  const char* dir = std::getenv("CUDAPOOL_CONTROL_DIR");
  return cudapool::pipe_path(dir != nullptr ? dir : "", getpid());
}

inline cudapool::ClientReply command(const std::string& line) {
  return cudapool::request(own_pipe(), line, milliseconds(20000));
}

}  // namespace integ
