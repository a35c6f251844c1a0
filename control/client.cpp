#include "control/client.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

namespace cudapool {
namespace {

using Clock = std::chrono::steady_clock;

int millis_left(Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(std::min<long long>(left, 1000000)) : 0;
}

// Writes all of `text` to a non-blocking descriptor before the deadline.
bool write_all(int fd, std::string_view text, Clock::time_point deadline, std::string* error) {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      if (millis_left(deadline) > 0 && poll(&p, 1, millis_left(deadline)) > 0) continue;
      *error = "the control pipe is full (the process does not read it)";
      return false;
    }
    *error = std::string("writing the control pipe: ") + std::strerror(errno);
    return false;
  }
  return true;
}

// Opens the control pipe for writing; kNoPipe / kNoServer / kError on failure.
int open_pipe(const std::string& path, ClientReply* reply) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) {
    reply->status = ClientReply::Status::kNoPipe;
    reply->error = "no control pipe " + path;
    return -1;
  }
  if (!S_ISFIFO(st.st_mode)) {
    reply->status = ClientReply::Status::kError;
    reply->error = path + " is not a FIFO";
    return -1;
  }
  const int fd = open(path.c_str(), O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    reply->status = errno == ENXIO ? ClientReply::Status::kNoServer : ClientReply::Status::kError;
    reply->error = errno == ENXIO ? "nobody serves " + path + " (the process is gone?)"
                                  : "cannot open " + path + ": " + std::strerror(errno);
  }
  return fd;
}

std::string dir_of(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

}  // namespace

std::string pipe_path(const std::string& dir, int pid) {
  return dir + "/" + std::to_string(pid) + ".ctl";
}

bool process_alive(int pid) {
  if (pid <= 0) return false;
  struct stat st {};
  return stat(("/proc/" + std::to_string(pid)).c_str(), &st) == 0;
}

std::vector<int> list_pipes(const std::string& dir) {
  std::vector<int> pids;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return pids;
  while (dirent* e = readdir(d)) {
    const std::string_view name = e->d_name;
    if (name.size() < 5 || !name.ends_with(".ctl")) continue;
    const std::string_view digits = name.substr(0, name.size() - 4);
    if (digits.empty() || digits.size() > 9 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    pids.push_back(std::stoi(std::string(digits)));
  }
  closedir(d);
  std::sort(pids.begin(), pids.end());
  return pids;
}

bool send_line(const std::string& path, std::string_view line, std::string* error) {
  ClientReply reply;
  const int fd = open_pipe(path, &reply);
  if (fd < 0) {
    *error = reply.error;
    return false;
  }
  std::string text(line);
  text += '\n';
  const bool ok = write_all(fd, text, Clock::now() + std::chrono::seconds(5), error);
  close(fd);
  return ok;
}

ClientReply request(const std::string& path, std::string_view command,
                    std::chrono::milliseconds timeout) {
  ClientReply reply;
  const auto deadline = Clock::now() + timeout;
  signal(SIGPIPE, SIG_IGN);  // a process that dies mid-request must not kill the client

  struct stat pipe_st {};
  if (lstat(path.c_str(), &pipe_st) != 0) {
    reply.status = ClientReply::Status::kNoPipe;
    reply.error = "no control pipe " + path;
    return reply;
  }
  static std::atomic<int> counter{0};
  const std::string reply_path = dir_of(path) + "/reply-" + std::to_string(getpid()) + "-" +
                                 std::to_string(counter.fetch_add(1)) + ".fifo";
  unlink(reply_path.c_str());  // a leftover of an earlier client with this pid
  if (mkfifo(reply_path.c_str(), 0600) != 0) {
    reply.error = "cannot create the reply FIFO " + reply_path + ": " + std::strerror(errno);
    return reply;
  }
  struct Cleanup {
    const std::string& path;
    int fd = -1;
    ~Cleanup() {
      if (fd >= 0) close(fd);
      unlink(path.c_str());
    }
  } cleanup{reply_path};
  // The server answers FIFOs of its own user: root asking another user's process hands the FIFO
  // over. In a folder shared with a group (the pipe is group-writable), another member's FIFO is
  // answered when it belongs to that group and only the group can write it: 0620.
  if (geteuid() == 0 && pipe_st.st_uid != 0 &&
      chown(reply_path.c_str(), pipe_st.st_uid, pipe_st.st_gid) != 0) {
    reply.error = "cannot give the reply FIFO to uid " + std::to_string(pipe_st.st_uid);
    return reply;
  }
  if (geteuid() != 0 && pipe_st.st_uid != geteuid() && (pipe_st.st_mode & S_IWGRP) != 0 &&
      (chown(reply_path.c_str(), static_cast<uid_t>(-1), pipe_st.st_gid) != 0 ||
       chmod(reply_path.c_str(), 0620) != 0)) {
    reply.error = "cannot give the reply FIFO to the control folder's group " +
                  std::to_string(pipe_st.st_gid);
    return reply;
  }
  cleanup.fd = open(reply_path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (cleanup.fd < 0) {
    reply.error = "cannot open the reply FIFO: " + std::string(std::strerror(errno));
    return reply;
  }

  const int out = open_pipe(path, &reply);
  if (out < 0) return reply;
  std::string line(command);
  line += " reply=" + reply_path + "\n";
  std::string error;
  const bool sent = write_all(out, line, deadline, &error);
  close(out);
  if (!sent) {
    reply.status = ClientReply::Status::kError;
    reply.error = error;
    return reply;
  }

  // Read until the server closes its end after a complete answer.
  std::string text;
  char buf[4096];
  for (;;) {
    const ssize_t n = read(cleanup.fd, buf, sizeof buf);
    if (n > 0) {
      text.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    const bool complete = !text.empty() && text.back() == '\n';
    if (n == 0 && complete) break;  // the writer came, wrote and went
    if (millis_left(deadline) == 0) {
      reply.status = ClientReply::Status::kTimeout;
      reply.error = "no answer within " + std::to_string(timeout.count()) + " ms";
      return reply;
    }
    if (n == 0) {
      // No writer yet (a FIFO without writers reads as end-of-file): wait a little.
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      continue;
    }
    pollfd p{cleanup.fd, POLLIN, 0};
    poll(&p, 1, std::min(millis_left(deadline), 50));
  }

  // The last line is OK or ERR <reason>.
  text.pop_back();
  const std::size_t nl = text.rfind('\n');
  const std::string last = nl == std::string::npos ? text : text.substr(nl + 1);
  reply.body = nl == std::string::npos ? "" : text.substr(0, nl + 1);
  if (last == "OK") {
    reply.status = ClientReply::Status::kOk;
  } else if (last.rfind("ERR", 0) == 0) {
    reply.status = ClientReply::Status::kRefused;
    reply.error = last.size() > 4 ? last.substr(4) : "refused";
  } else {
    reply.status = ClientReply::Status::kError;
    reply.error = "incomplete answer";
    reply.body = text;
  }
  return reply;
}

}  // namespace cudapool
