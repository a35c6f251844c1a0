// The pipe server (control/pipe_server.h) with a fake target, and the client (control/client.h):
// folder and FIFO security, replies, hostile input, floods.
#include "control/pipe_server.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <thread>

#include "control/client.h"
#include "tests/unit/control/fake_target.h"

namespace cudapool {
namespace {

using namespace std::chrono_literals;
using testing_support::FakeTarget;

// A fresh folder (mode 0700) removed with everything in it at the end.
class TempDir {
 public:
  TempDir() {
    char templ[] = "/tmp/cudapool-unit.XXXXXX";
    path_ = mkdtemp(templ);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool is_fifo(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
}

unsigned mode_of(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0 ? (st.st_mode & 07777) : 0;
}

uid_t nobody_uid() {
  const passwd* pw = getpwnam("nobody");
  return pw != nullptr ? pw->pw_uid : 65534;
}

TEST(PipeServer, CreatesAPrivateFolderAndFifoAndAnswers) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/control";
  FakeTarget target;
  PipeServer* server = PipeServer::start(dir, target);
  ASSERT_NE(nullptr, server);
  EXPECT_EQ(pipe_path(dir, getpid()), server->path());
  EXPECT_EQ(0700u, mode_of(dir));
  EXPECT_TRUE(is_fifo(server->path()));
  EXPECT_EQ(0600u, mode_of(server->path()));

  ClientReply r = request(server->path(), "stats", 5s);
  ASSERT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  EXPECT_NE(std::string::npos, r.body.find("pid=4242 command=server")) << r.body;

  r = request(server->path(), "set LIMIT 3GiB", 5s);
  ASSERT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  r = request(server->path(), "get limit", 5s);
  ASSERT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  EXPECT_EQ("3GiB\n", r.body);

  r = request(server->path(), "frobnicate", 5s);
  EXPECT_EQ(ClientReply::Status::kRefused, r.status);
  EXPECT_NE(std::string::npos, r.error.find("unknown command")) << r.error;

  // The reply FIFOs are gone again.
  EXPECT_EQ(std::vector<int>{getpid()}, list_pipes(dir));

  server->shutdown();
  EXPECT_FALSE(is_fifo(server->path())) << "shutdown must remove the FIFO";
  EXPECT_EQ(ClientReply::Status::kNoPipe, request(server->path(), "stats", 1s).status);
}

TEST(PipeServer, FireAndForgetLinesAndWritersThatComeAndGo) {
  TempDir tmp;
  FakeTarget target;
  PipeServer* server = PipeServer::start(tmp.path(), target);
  ASSERT_NE(nullptr, server);
  for (int i = 0; i < 20; ++i) {
    std::string error;
    ASSERT_TRUE(send_line(server->path(), "trim", &error)) << error;
  }
  // A line in two writes, from two openings of the pipe.
  std::string error;
  const int fd = open(server->path().c_str(), O_WRONLY | O_NONBLOCK);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(3, write(fd, "tri", 3));
  close(fd);
  ASSERT_TRUE(send_line(server->path(), "m", &error));
  ASSERT_EQ(ClientReply::Status::kOk, request(server->path(), "help", 5s).status);
  EXPECT_EQ(21, target.trims.load());

  // No busy loop after the writers left: the thread sleeps in poll().
  const clock_t before = clock();
  std::this_thread::sleep_for(300ms);
  const double cpu_ms = 1000.0 * static_cast<double>(clock() - before) / CLOCKS_PER_SEC;
  EXPECT_LT(cpu_ms, 50) << "the control thread spins";
  server->shutdown();
}

TEST(PipeServer, RefusesAFolderWritableByOthers) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/open";
  ASSERT_EQ(0, mkdir(dir.c_str(), 0700));
  ASSERT_EQ(0, chmod(dir.c_str(), 0777));
  FakeTarget target;
  std::string why;
  EXPECT_FALSE(prepare_control_dir(dir, &why));
  EXPECT_NE(std::string::npos, why.find("0777")) << why;
  EXPECT_EQ(nullptr, PipeServer::start(dir, target));
  EXPECT_FALSE(is_fifo(pipe_path(dir, getpid())));
}

TEST(PipeServer, RefusesAFolderThatIsASymlinkOrAFile) {
  TempDir tmp;
  const std::string real = tmp.path() + "/real";
  const std::string link = tmp.path() + "/link";
  ASSERT_EQ(0, mkdir(real.c_str(), 0700));
  ASSERT_EQ(0, symlink(real.c_str(), link.c_str()));
  FakeTarget target;
  std::string why;
  EXPECT_FALSE(prepare_control_dir(link, &why));
  EXPECT_NE(std::string::npos, why.find("symlink")) << why;
  EXPECT_EQ(nullptr, PipeServer::start(link, target));
  EXPECT_FALSE(is_fifo(pipe_path(real, getpid())));

  const std::string file = tmp.path() + "/file";
  close(open(file.c_str(), O_CREAT | O_WRONLY, 0600));
  EXPECT_FALSE(prepare_control_dir(file, &why));
  EXPECT_FALSE(prepare_control_dir("relative/dir", &why));
}

TEST(PipeServer, RefusesAFolderOfAnotherUser) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give a folder to another user";
  TempDir tmp;
  const std::string dir = tmp.path() + "/theirs";
  ASSERT_EQ(0, mkdir(dir.c_str(), 0700));
  ASSERT_EQ(0, chown(dir.c_str(), nobody_uid(), static_cast<gid_t>(-1)));
  FakeTarget target;
  std::string why;
  EXPECT_FALSE(prepare_control_dir(dir, &why));
  EXPECT_NE(std::string::npos, why.find("belongs to uid")) << why;
  EXPECT_EQ(nullptr, PipeServer::start(dir, target));
}

TEST(PipeServer, RefusesWhatIsPlantedAtThePipePath) {
  TempDir tmp;
  FakeTarget target;
  const std::string path = pipe_path(tmp.path(), getpid());
  const std::string victim = tmp.path() + "/victim";
  close(open(victim.c_str(), O_CREAT | O_WRONLY, 0600));

  ASSERT_EQ(0, symlink(victim.c_str(), path.c_str()));
  EXPECT_EQ(nullptr, PipeServer::start(tmp.path(), target)) << "followed a planted symlink";
  EXPECT_FALSE(is_fifo(victim));
  unlink(path.c_str());

  close(open(path.c_str(), O_CREAT | O_WRONLY, 0600));
  EXPECT_EQ(nullptr, PipeServer::start(tmp.path(), target)) << "accepted a regular file";
  struct stat st {};
  ASSERT_EQ(0, lstat(path.c_str(), &st));
  EXPECT_TRUE(S_ISREG(st.st_mode)) << "the planted file must stay as it is";
  unlink(path.c_str());

  if (geteuid() == 0) {
    ASSERT_EQ(0, mkfifo(path.c_str(), 0600));
    ASSERT_EQ(0, chown(path.c_str(), nobody_uid(), static_cast<gid_t>(-1)));
    EXPECT_EQ(nullptr, PipeServer::start(tmp.path(), target)) << "took another user's FIFO";
    unlink(path.c_str());
  }

  // A leftover FIFO of ours (a dead process with this pid) is replaced.
  ASSERT_EQ(0, mkfifo(path.c_str(), 0666 & ~0077));
  PipeServer* server = PipeServer::start(tmp.path(), target);
  ASSERT_NE(nullptr, server);
  EXPECT_EQ(ClientReply::Status::kOk, request(path, "help", 5s).status);
  server->shutdown();
}

TEST(WriteReply, RefusesSymlinksFilesAndOtherUsersFifos) {
  TempDir tmp;
  std::string why;
  const std::string file = tmp.path() + "/file";
  close(open(file.c_str(), O_CREAT | O_WRONLY, 0600));
  EXPECT_FALSE(write_reply(file, "OK\n", &why, 100ms));
  EXPECT_NE(std::string::npos, why.find("not a FIFO")) << why;
  struct stat st {};
  ASSERT_EQ(0, stat(file.c_str(), &st));
  EXPECT_EQ(0, st.st_size) << "wrote into a regular file";

  const std::string fifo = tmp.path() + "/fifo";
  ASSERT_EQ(0, mkfifo(fifo.c_str(), 0600));
  const std::string link = tmp.path() + "/link";
  ASSERT_EQ(0, symlink(fifo.c_str(), link.c_str()));
  const int reader = open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0);
  EXPECT_FALSE(write_reply(link, "OK\n", &why, 100ms)) << "followed a symlink";
  char buf[16];
  EXPECT_LE(read(reader, buf, sizeof buf), 0) << "something came through the symlink";

  EXPECT_TRUE(write_reply(fifo, "OK\n", &why, 100ms)) << why;
  EXPECT_EQ(3, read(reader, buf, sizeof buf));
  close(reader);

  EXPECT_FALSE(write_reply(tmp.path() + "/missing", "OK\n", &why, 100ms));
  EXPECT_FALSE(write_reply("relative", "OK\n", &why, 100ms));
  // Nobody reads: gives up after the timeout instead of blocking.
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(write_reply(fifo, "OK\n", &why, 200ms));
  EXPECT_NE(std::string::npos, why.find("nobody reads")) << why;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);

  if (geteuid() == 0) {
    const std::string theirs = tmp.path() + "/theirs";
    ASSERT_EQ(0, mkfifo(theirs.c_str(), 0666));
    ASSERT_EQ(0, chown(theirs.c_str(), nobody_uid(), static_cast<gid_t>(-1)));
    const int their_reader = open(theirs.c_str(), O_RDONLY | O_NONBLOCK);
    EXPECT_FALSE(write_reply(theirs, "OK\n", &why, 100ms));
    EXPECT_NE(std::string::npos, why.find("another user")) << why;
    EXPECT_LE(read(their_reader, buf, sizeof buf), 0);
    close(their_reader);
  }
}

TEST(PipeServer, HostileInputLeavesItWorking) {
  TempDir tmp;
  FakeTarget target;
  PipeServer* server = PipeServer::start(tmp.path(), target);
  ASSERT_NE(nullptr, server);
  const std::string before = *target.get_option("HIGH_WATERMARK");
  const int fd = open(server->path().c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);

  // An overlong line (in several writes) that would set an option if it were read in pieces.
  std::string overlong = "set HIGH_WATERMARK 1MiB " + std::string(3 * kMaxLineBytes, ' ');
  overlong += "\nset HIGH_WATERMARK 1MiB" + std::string(kMaxLineBytes, 'x') + "\n";
  ASSERT_EQ(static_cast<ssize_t>(overlong.size()), write(fd, overlong.data(), overlong.size()));

  // Random bytes, newlines included.
  std::mt19937 rng(99);
  std::string noise(64 * 1024, '\0');
  for (char& c : noise)
    c = static_cast<char>(rng());
  for (std::size_t off = 0; off < noise.size(); off += 4096)
    ASSERT_EQ(4096, write(fd, noise.data() + off, 4096));
  ASSERT_EQ(1, write(fd, "\n", 1));
  close(fd);

  // The reply path of a hostile line: a regular file must stay untouched.
  const std::string file = tmp.path() + "/victim";
  close(open(file.c_str(), O_CREAT | O_WRONLY, 0600));
  std::string error;
  ASSERT_TRUE(send_line(server->path(), "stats reply=" + file, &error)) << error;

  ClientReply r = request(server->path(), "get HIGH_WATERMARK", 5s);
  ASSERT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  EXPECT_EQ(before + "\n", r.body) << "garbage changed a setting";
  struct stat st {};
  ASSERT_EQ(0, stat(file.c_str(), &st));
  EXPECT_EQ(0, st.st_size);
  server->shutdown();
}

TEST(PipeServer, ABurstOfThousandsOfCommandsLosesNothing) {
  TempDir tmp;
  FakeTarget target;
  PipeServer* server = PipeServer::start(tmp.path(), target);
  ASSERT_NE(nullptr, server);
  constexpr int kWriters = 4, kLines = 1000;
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&] {
      const int fd = open(server->path().c_str(), O_WRONLY);
      for (int i = 0; i < kLines; ++i) {
        const char line[] = "reset-peaks\n";
        ASSERT_EQ(static_cast<ssize_t>(sizeof line - 1), write(fd, line, sizeof line - 1));
      }
      close(fd);
    });
  }
  for (std::thread& t : writers)
    t.join();
  ClientReply r = request(server->path(), "help", 10s);
  ASSERT_EQ(ClientReply::Status::kOk, r.status) << r.error;
  EXPECT_EQ(kWriters * kLines, target.peak_resets.load());
  server->shutdown();
}

TEST(Client, SaysWhenThereIsNoPipeOrNoServer) {
  TempDir tmp;
  ClientReply r = request(pipe_path(tmp.path(), 999999), "stats", 1s);
  EXPECT_EQ(ClientReply::Status::kNoPipe, r.status);
  // A leftover FIFO that nobody serves.
  ASSERT_EQ(0, mkfifo(pipe_path(tmp.path(), 999998).c_str(), 0600));
  r = request(pipe_path(tmp.path(), 999998), "stats", 1s);
  EXPECT_EQ(ClientReply::Status::kNoServer, r.status) << r.error;
  EXPECT_EQ((std::vector<int>{999998}), list_pipes(tmp.path()));
  EXPECT_TRUE(process_alive(getpid()));
  EXPECT_FALSE(process_alive(0));
}

}  // namespace
}  // namespace cudapool
