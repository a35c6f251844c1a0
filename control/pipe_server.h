// The control pipe: a FIFO <dir>/<pid>.ctl served by one detached thread (DESIGN §3).
//
// Safety rules, for a thread that lives inside someone else's process:
//   - the folder is created 0700 and the FIFO 0600, both owned by the process's user; an existing
//     folder may also be shared with a group (prepare_control_dir: the FIFO is then 0660, of that
//     group); a folder that is a symlink, not a folder, writable by others, or another user's not
//     shared with one of our groups is refused, and so is an existing <pid>.ctl that is not a FIFO
//     of ours (a leftover FIFO of ours, from a dead process with the same pid, is replaced).
//     Refused means: one log line, and the process runs without a pipe;
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

// How the control folder is shared: privately (the FIFO is 0600), or with a group (a folder the
// operator made for a pod: group-owned, mode 2770 as Kubernetes' fsGroup gives it; the FIFO is
// 0660 and belongs to that group, reply FIFOs of that group's members are answered).
struct ControlDirAccess {
  bool shared = false;
  unsigned gid = 0;  // the folder's group, when shared
};

// Creates `dir` (mode 0700) or checks an existing one. Accepted: a folder (not a symlink) that
// nobody but its owner and group can write (no write bit for others), owned by this process's
// user, or owned by another user but shared with a group this process is in (group rwx). Refused,
// with a reason: a symlink, not a folder, writable by others, owned by another user and not shared
// with one of this process's groups, writable by a group this process is not in.
bool prepare_control_dir(const std::string& dir, std::string* error,
                         ControlDirAccess* access = nullptr);

// Writes `text` to the reply FIFO at `path` and closes it, under the rules above. False with a
// reason (nothing written, or only part of it when the reader went away or stalled). With
// `shared_dir`, a FIFO directly in that folder that belongs to its group (`shared_gid`) and that
// others cannot write is answered too, whoever made it (a member of the group: a sidecar).
bool write_reply(const std::string& path, std::string_view text, std::string* error,
                 std::chrono::milliseconds timeout = kReplyTimeout,
                 const std::string& shared_dir = "", unsigned shared_gid = 0);

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
  std::string shared_dir_;  // the folder, when it is shared with a group (ControlDirAccess)
  unsigned shared_gid_ = 0;
  std::atomic<bool> stopping_{false};
};

}  // namespace cudapool
