// The client side of the control pipe, for cudapoolctl and the tests: send one command to
// <dir>/<pid>.ctl and wait for its answer on a private reply FIFO.
//
// The reply FIFO is made next to the control pipe (<dir>/reply-<own pid>-<n>.fifo, mode 0600, in
// the 0700 control folder), named in the command as reply=PATH, read until the server closes it
// and then removed. Run as root against another user's process, the reply FIFO is given to that
// user (the server only answers FIFOs of its own user).
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

namespace cudapool {

struct ClientReply {
  enum class Status {
    kOk,        // the last line was OK; body = the lines before it
    kRefused,   // ERR <reason>; error = the reason, body = lines before it
    kNoPipe,    // <pid>.ctl does not exist
    kNoServer,  // it exists but nobody serves it (a dead process's leftover)
    kTimeout,   // no complete answer in time
    kError,     // anything else (error says what)
  };
  Status status = Status::kError;
  std::string body;
  std::string error;
};

// Sends `command` (one line, without reply= and newline) and waits up to `timeout` for the answer.
ClientReply request(const std::string& pipe_path, std::string_view command,
                    std::chrono::milliseconds timeout);

// Writes `line` (a newline is added) without waiting for an answer. False with a reason.
bool send_line(const std::string& pipe_path, std::string_view line, std::string* error);

// The control pipe of `pid` in `dir`.
std::string pipe_path(const std::string& dir, int pid);

// The pids of every <pid>.ctl in `dir` (whatever their state), sorted.
std::vector<int> list_pipes(const std::string& dir);

// True when /proc/<pid> exists (the process is alive, possibly as another user's).
bool process_alive(int pid);

}  // namespace cudapool
