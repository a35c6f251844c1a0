#include "control/pipe_server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "control/log.h"

namespace cudapool {
namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

bool fail(std::string* error, std::string why) {
  if (error != nullptr) *error = std::move(why);
  return false;
}

// A log-friendly copy of a command line: printable, short.
std::string printable(std::string_view text, std::size_t max = 80) {
  std::string out;
  for (char c : text.substr(0, max)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f) ? c : '?';
  }
  if (text.size() > max) out += "...";
  return out;
}

std::string one_line(std::string_view text) {
  std::string out(text);
  while (!out.empty() && out.back() == '\n')
    out.pop_back();
  for (char& c : out)
    if (c == '\n') c = ';';
  return out;
}

// Servers live as long as the process (their detached threads use them); this list keeps them
// reachable for leak checkers once a thread has stopped.
std::atomic<PipeServer*> g_servers{nullptr};

// Consumes a SIGPIPE raised for this thread (blocked here) by a write to a vanished reader.
void consume_sigpipe() {
  sigset_t pipe_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  const timespec zero{0, 0};
  while (sigtimedwait(&pipe_set, nullptr, &zero) == SIGPIPE) {
  }
}

bool in_my_groups(gid_t gid) {
  if (gid == getegid()) return true;
  const int n = getgroups(0, nullptr);
  if (n <= 0) return false;
  std::vector<gid_t> groups(static_cast<std::size_t>(n));
  const int got = getgroups(n, groups.data());
  for (int i = 0; i < got; ++i)
    if (groups[static_cast<std::size_t>(i)] == gid) return true;
  return false;
}

std::string mode_text(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

}  // namespace

bool prepare_control_dir(const std::string& dir, std::string* error, ControlDirAccess* access) {
  if (dir.empty() || dir.front() != '/')
    return fail(error, "control folder \"" + dir + "\" is not an absolute path");
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return fail(error, "cannot create control folder " + dir + ": " + errno_text(errno));
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0)
    return fail(error, "cannot inspect control folder " + dir + ": " + errno_text(errno));
  if (S_ISLNK(st.st_mode)) return fail(error, "control folder " + dir + " is a symlink; refused");
  if (!S_ISDIR(st.st_mode)) return fail(error, "control folder " + dir + " is not a folder");
  if ((st.st_mode & S_IWOTH) != 0) {
    return fail(error, "control folder " + dir + " has mode " + mode_text(st.st_mode) +
                           " (writable by others); it must be 0700, or 2770 for a group; refused");
  }
  const bool my_group = in_my_groups(st.st_gid);
  const bool group_shared = my_group && (st.st_mode & S_IRWXG) == S_IRWXG;
  if (st.st_uid != geteuid() && !group_shared) {
    return fail(
        error,
        "control folder " + dir + " belongs to uid " + std::to_string(st.st_uid) +
            ", not to this process's uid " + std::to_string(geteuid()) +
            (my_group
                 ? ", and its group may not use it (mode " + mode_text(st.st_mode) + ", needs 2770)"
                 : ", nor to one of its groups (gid " + std::to_string(st.st_gid) + ")") +
            "; refused");
  }
  if ((st.st_mode & S_IWGRP) != 0 && !my_group) {
    return fail(error, "control folder " + dir + " has mode " + mode_text(st.st_mode) +
                           " and is writable by gid " + std::to_string(st.st_gid) +
                           ", a group this process is not in; refused");
  }
  if (access != nullptr) {
    access->shared = my_group && (st.st_mode & S_IRWXG) != 0;
    access->gid = st.st_gid;
  }
  return true;
}

bool write_reply(const std::string& path, std::string_view text, std::string* error,
                 std::chrono::milliseconds timeout, const std::string& shared_dir,
                 unsigned shared_gid) {
  if (path.empty() || path.front() != '/')
    return fail(error, "reply path is not absolute: " + printable(path));
  struct stat before {};
  if (lstat(path.c_str(), &before) != 0)
    return fail(error, "reply path " + printable(path) + ": " + errno_text(errno));
  if (!S_ISFIFO(before.st_mode))
    return fail(error, "reply path " + printable(path) +
                           " is not a FIFO (symlink or file); "
                           "refused");
  // A group member's FIFO in the shared folder itself (not below it), that others cannot write.
  const std::size_t slash = path.rfind('/');
  const bool group_reply = !shared_dir.empty() && slash != std::string::npos &&
                           path.compare(0, slash, shared_dir) == 0 && slash == shared_dir.size() &&
                           before.st_gid == shared_gid && (before.st_mode & S_IWOTH) == 0;
  if (before.st_uid != geteuid() && !group_reply)
    return fail(error, "reply FIFO " + printable(path) + " belongs to another user; refused");
  // A reader that opens the FIFO just after sending its command (`echo ... > pipe; cat reply`)
  // gets until the deadline to do so.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int fd = -1;
  for (;;) {
    fd = open(path.c_str(), O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0) break;
    const int err = errno;
    if (err == ENXIO && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    return fail(error, "reply FIFO " + printable(path) + ": " +
                           (err == ENXIO ? std::string("nobody reads it") : errno_text(err)));
  }
  struct stat after {};
  if (fstat(fd, &after) != 0 || !S_ISFIFO(after.st_mode) || after.st_uid != before.st_uid ||
      after.st_gid != before.st_gid || after.st_dev != before.st_dev ||
      after.st_ino != before.st_ino) {
    close(fd);
    return fail(error, "reply FIFO " + printable(path) + " changed while opening it; refused");
  }
  std::size_t done = 0;
  bool ok = true;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            deadline - std::chrono::steady_clock::now())
                            .count();
      pollfd p{fd, POLLOUT, 0};
      if (left > 0 && poll(&p, 1, static_cast<int>(left)) > 0 && (p.revents & POLLOUT) != 0)
        continue;
      ok = fail(error, "reply FIFO " + printable(path) + ": the reader does not read; gave up");
      break;
    }
    const int err = errno;
    if (err == EPIPE) consume_sigpipe();
    ok = fail(error, "reply FIFO " + printable(path) + ": " +
                         (err == EPIPE ? std::string("the reader went away") : errno_text(err)));
    break;
  }
  close(fd);
  return ok;
}

PipeServer::PipeServer(ControlTarget& target, std::string path, int fd, unsigned long long dev,
                       unsigned long long ino)
    : target_(target), path_(std::move(path)), fd_(fd), dev_(dev), ino_(ino) {}

PipeServer* PipeServer::start(const std::string& dir, ControlTarget& target) {
  try {
    std::string why;
    ControlDirAccess access;
    if (!prepare_control_dir(dir, &why, &access)) {
      log_warn("control pipe off: {}", why);
      return nullptr;
    }
    const std::string path = dir + "/" + std::to_string(getpid()) + ".ctl";
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0) {
      // Only a FIFO of ours can be a leftover (a dead process with the same pid): replace it.
      if (!S_ISFIFO(st.st_mode) || st.st_uid != geteuid()) {
        log_warn("control pipe off: {} exists and is {}; refused", path,
                 S_ISLNK(st.st_mode)     ? "a symlink"
                 : !S_ISFIFO(st.st_mode) ? "not a FIFO"
                                         : "owned by another user");
        return nullptr;
      }
      unlink(path.c_str());
    }
    const mode_t fifo_mode = access.shared ? 0660 : 0600;
    if (mkfifo(path.c_str(), fifo_mode) != 0) {
      log_warn("control pipe off: cannot create {}: {}", path, errno_text(errno));
      return nullptr;
    }
    const int fd = open(path.c_str(), O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      log_warn("control pipe off: cannot open {}: {}", path, errno_text(errno));
      unlink(path.c_str());
      return nullptr;
    }
    if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_uid != geteuid()) {
      log_warn("control pipe off: {} was replaced while it was being opened; refused", path);
      close(fd);
      return nullptr;
    }
    // Whatever the umask did; in a shared folder the FIFO belongs to the folder's group (without
    // the setgid bit on the folder it would get this process's group).
    if (access.shared && st.st_gid != access.gid &&
        fchown(fd, static_cast<uid_t>(-1), static_cast<gid_t>(access.gid)) != 0) {
      log_warn("control pipe {}: cannot give it to the folder's group {}: {}; it stays private",
               path, access.gid, errno_text(errno));
      access.shared = false;
    }
    fchmod(fd, access.shared ? 0660 : 0600);
    auto* server = new PipeServer(target, path, fd, st.st_dev, st.st_ino);  // lives as long as the
                                                                            // process (its thread)
    if (access.shared) {
      server->shared_dir_ = dir;
      server->shared_gid_ = access.gid;
    }
    // The thread starts with every signal blocked: the host's handlers keep running on its own
    // threads, and a SIGPIPE from a vanished reply reader stays pending here to be consumed.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    try {
      std::thread([server] { server->run(); }).detach();
    } catch (...) {
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      log_warn("control pipe off: cannot start its thread");
      unlink(path.c_str());
      close(fd);
      delete server;
      return nullptr;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    server->next_ = g_servers.load();
    while (!g_servers.compare_exchange_weak(server->next_, server)) {
    }
    log_debug("control pipe ready: {}", path);
    return server;
  } catch (...) {
    log_warn("control pipe off: internal error while creating it");
    return nullptr;
  }
}

void PipeServer::shutdown() noexcept {
  if (stopping_.exchange(true)) return;
  struct stat st {};
  if (lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_)
    unlink(path_.c_str());
  // Wakes the thread so that it returns (it ignores the blank line). The descriptor stays open:
  // the thread may still be polling it.
  const char newline = '\n';
  [[maybe_unused]] ssize_t n = write(fd_, &newline, 1);
}

void PipeServer::abandon_after_fork() noexcept {
  stopping_.store(true);
  close(fd_);
}

std::string PipeServer::handle_line(std::string_view line) {
  const ParsedLine parsed = parse_command(line);
  if (parsed.blank) return "";
  CommandResult result;
  if (parsed.command) {
    result = execute_command(*parsed.command, target_);
  } else {
    result.ok = false;
    result.error = parsed.error;
  }
  if (!parsed.reply_path.empty()) {
    std::string reply = format_reply(result);
    std::string why;
    if (!write_reply(parsed.reply_path, reply, &why, kReplyTimeout, shared_dir_, shared_gid_))
      log_warn_ratelimited("control-reply", "control: no reply for \"{}\": {}", printable(line),
                           why);
    return reply;
  }
  if (result.ok) {
    std::string text = one_line(result.body);
    log_ratelimited(LogLevel::kInfo, "control-result", "control: {}: {}", printable(line),
                    text.empty() ? "OK" : text);
    return text;
  }
  log_warn_ratelimited("control-refused", "control: refused \"{}\": {}", printable(line),
                       result.error);
  return "ERR " + result.error;
}

void PipeServer::run() noexcept {
  std::string line;
  bool overlong = false;  // dropping the rest of a line that was too long
  char chunk[4096];
  while (!stopping_.load(std::memory_order_acquire)) {
    pollfd p{fd_, POLLIN, 0};
    const int ready = poll(&p, 1, -1);
    if (ready < 0 && errno != EINTR) {
      log_warn("control pipe {}: poll failed ({}); the pipe is off", path_, errno_text(errno));
      return;
    }
    if (ready <= 0) continue;
    for (;;) {
      const ssize_t n = read(fd_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // EAGAIN: drained (never 0: this server is a writer too)
      for (ssize_t i = 0; i < n; ++i) {
        const char c = chunk[i];
        if (c == '\n') {
          if (overlong) {
            overlong = false;
            log_warn_ratelimited("control-overlong", "control: dropped a line longer than {} bytes",
                                 kMaxLineBytes - 1);
          } else if (!stopping_.load(std::memory_order_acquire)) {
            try {
              handle_line(line);
            } catch (...) {
              log_warn_ratelimited("control-error", "control: internal error on a command");
            }
          }
          line.clear();
        } else if (!overlong) {
          line += c;
          if (line.size() >= kMaxLineBytes) {
            overlong = true;
            line.clear();
          }
        }
      }
    }
  }
}

}  // namespace cudapool
