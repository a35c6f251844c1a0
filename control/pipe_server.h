// The control pipe: a FIFO <dir>/<pid>.ctl served by one detached thread (DESIGN §3).
//
// Safety rules, for a thread that lives inside someone else's process:
//   - the folder is created 0700 and the FIFO 0600, both owned by the process's user; an existing
//     folder that is a symlink, not a folder, owned by another user or writable by group or others
//     is refused, and so is an existing <pid>.ctl that is not a FIFO of ours (a leftover FIFO of
//     ours, from a dead process with the same pid, is replaced). Refused means: one log line, and
//     the process runs without a pipe;
//   - the FIFO is opened O_RDWR|O_NONBLOCK: the server is a writer of its own FIFO, so writers that
//     come and go never make it see end-of-file (no busy loop), and poll() sleeps until a byte
//     arrives;
//   - lines are at most kMaxLineBytes (command.h); a longer one is dropped whole with a log line;
//   - a reply path is checked with lstat (a FIFO of the same user, not a symlink) before it is
//     opened with O_WRONLY|O_NONBLOCK|O_NOFOLLOW, and checked again with fstat (same inode);
//     nobody reading it, or a reader that does not read, costs at most kReplyTimeout;
//   - the thread blocks every signal (SIGPIPE from a vanished reader is consumed, never delivered)
//     and holds no pool lock while it does I/O (execute_command takes snapshots, then the reply
//     is written);
//   - the thread is detached and sleeps in poll(): it never delays process exit. shutdown()
//     (process exit) stops it from acting and removes the FIFO; after fork the child forgets the
//     parent's server (abandon_after_fork) and makes its own at its first CUDA call.
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <string_view>

#include "control/command.h"

namespace cudapool {

inline constexpr std::chrono::milliseconds kReplyTimeout{2000};

// Creates `dir` (mode 0700) or checks an existing one (see above). False with a reason.
bool prepare_control_dir(const std::string& dir, std::string* error);

// Writes `text` to the reply FIFO at `path` and closes it, under the rules above. False with a
// reason (nothing written, or only part of it when the reader went away or stalled).
bool write_reply(const std::string& path, std::string_view text, std::string* error,
                 std::chrono::milliseconds timeout = kReplyTimeout);

class PipeServer {
 public:
  // Makes the folder and <dir>/<pid>.ctl and starts the thread. Null after logging one line when
  // anything is refused or fails; never throws.
  static PipeServer* start(const std::string& dir, ControlTarget& target);

  PipeServer(const PipeServer&) = delete;
  PipeServer& operator=(const PipeServer&) = delete;

  const std::string& path() const { return path_; }

  // Process exit: no command runs after this returns (one in progress finishes), and the FIFO is
  // removed if it is still the one this server made.
  void shutdown() noexcept;
  // In a fork child: closes the inherited descriptor; the FIFO is the parent's and stays.
  void abandon_after_fork() noexcept;

  // Runs one line as the thread would (tests). Returns the reply text that was (or would be)
  // written, or the log text when there is no reply path.
  std::string handle_line(std::string_view line);

 private:
  PipeServer(ControlTarget& target, std::string path, int fd, unsigned long long dev,
             unsigned long long ino);
  void run() noexcept;

  ControlTarget& target_;
  PipeServer* next_ = nullptr;  // every server ever started, from a global: never a "leak"
  const std::string path_;
  const int fd_;
  const unsigned long long dev_;  // of the FIFO this server made
  const unsigned long long ino_;
  std::atomic<bool> stopping_{false};
};

}  // namespace cudapool
