// The pipe server (control/pipe_server.h) with a fake target, and the client (control/client.h):
// folder and FIFO security, replies, hostile input, floods.
#include "control/pipe_server.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

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

// ---- a control folder shared with a group (a pod's: fsGroup, mode 2770) ------------------------

// A gid this process is not in (for folders of a foreign group).
gid_t foreign_gid() {
  for (gid_t g = 54321;; ++g) {
    if (g == getegid()) continue;
    std::vector<gid_t> groups(static_cast<std::size_t>(std::max(getgroups(0, nullptr), 0)));
    const int n = getgroups(static_cast<int>(groups.size()), groups.data());
    if (std::find(groups.begin(), groups.begin() + std::max(n, 0), g) ==
        groups.begin() + std::max(n, 0))
      return g;
  }
}

gid_t gid_of(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0 ? st.st_gid : static_cast<gid_t>(-1);
}

// A folder owned by `uid` (-1: unchanged), of group `gid`, with `mode`.
std::string make_folder(const TempDir& tmp, const char* name, uid_t uid, gid_t gid, mode_t mode) {
  const std::string dir = tmp.path() + "/" + name;
  EXPECT_EQ(0, mkdir(dir.c_str(), 0700));
  EXPECT_EQ(0, chown(dir.c_str(), uid, gid));
  EXPECT_EQ(0, chmod(dir.c_str(), mode));
  return dir;
}

TEST(SharedControlFolder, AnotherUsersFolderSharedWithOurGroupIsUsedAndTheFifoIs0660) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give a folder to another user";
  TempDir tmp;
  const std::string dir = make_folder(tmp, "pod", nobody_uid(), getegid(), 02770);
  std::string why;
  ControlDirAccess access;
  ASSERT_TRUE(prepare_control_dir(dir, &why, &access)) << why;
  EXPECT_TRUE(access.shared);
  EXPECT_EQ(getegid(), access.gid);
  FakeTarget target;
  PipeServer* server = PipeServer::start(dir, target);
  ASSERT_NE(nullptr, server);
  EXPECT_EQ(0660u, mode_of(server->path()));
  EXPECT_EQ(getegid(), gid_of(server->path()));

  // A group member's reply FIFO in the folder (another user's, of the folder's group, 0620) gets
  // the answer; one that others may write, or of another group, or outside the folder, does not.
  auto answered = [&](const std::string& fifo, uid_t uid, gid_t gid, mode_t mode) {
    EXPECT_EQ(0, mkfifo(fifo.c_str(), 0600));
    EXPECT_EQ(0, chown(fifo.c_str(), uid, gid));
    EXPECT_EQ(0, chmod(fifo.c_str(), mode));
    const int fd = open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
    EXPECT_GE(fd, 0);
    server->handle_line("stats reply=" + fifo);
    char buf[8192];
    const ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    unlink(fifo.c_str());
    return n > 0 &&
           std::string(buf, static_cast<std::size_t>(n)).find("\nOK\n") != std::string::npos;
  };
  EXPECT_TRUE(answered(dir + "/reply-member.fifo", nobody_uid(), getegid(), 0620));
  EXPECT_FALSE(answered(dir + "/reply-open.fifo", nobody_uid(), getegid(), 0622));
  EXPECT_FALSE(answered(dir + "/reply-foreign.fifo", nobody_uid(), foreign_gid(), 0620));
  const std::string elsewhere = make_folder(tmp, "elsewhere", nobody_uid(), getegid(), 02770);
  EXPECT_FALSE(answered(elsewhere + "/reply-member.fifo", nobody_uid(), getegid(), 0620));
  server->shutdown();
}

TEST(SharedControlFolder, OwnFolderOfOurGroupIsSharedAndOwnPrivateFolderIsNot) {
  TempDir tmp;
  std::string why;
  ControlDirAccess access;
  const std::string shared = make_folder(tmp, "shared", static_cast<uid_t>(-1), getegid(), 02770);
  ASSERT_TRUE(prepare_control_dir(shared, &why, &access)) << why;
  EXPECT_TRUE(access.shared);
  FakeTarget target;
  PipeServer* server = PipeServer::start(shared, target);
  ASSERT_NE(nullptr, server);
  EXPECT_EQ(0660u, mode_of(server->path()));
  server->shutdown();

  const std::string own = make_folder(tmp, "own", static_cast<uid_t>(-1), getegid(), 0700);
  ASSERT_TRUE(prepare_control_dir(own, &why, &access)) << why;
  EXPECT_FALSE(access.shared);
  server = PipeServer::start(own, target);
  ASSERT_NE(nullptr, server);
  EXPECT_EQ(0600u, mode_of(server->path()));
  server->shutdown();
}

TEST(SharedControlFolder, AnotherUsersFolderOfAGroupWeAreNotInIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give a folder to another user and group";
  TempDir tmp;
  const std::string dir = make_folder(tmp, "theirs", nobody_uid(), foreign_gid(), 02770);
  std::string why;
  EXPECT_FALSE(prepare_control_dir(dir, &why));
  EXPECT_NE(std::string::npos, why.find("nor to one of its groups")) << why;
  FakeTarget target;
  EXPECT_EQ(nullptr, PipeServer::start(dir, target));
  EXPECT_FALSE(is_fifo(pipe_path(dir, getpid())));
}

TEST(SharedControlFolder, AnotherUsersFolderOfOurGroupWithoutGroupAccessIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give a folder to another user";
  TempDir tmp;
  const std::string dir = make_folder(tmp, "closed", nobody_uid(), getegid(), 0750);
  std::string why;
  EXPECT_FALSE(prepare_control_dir(dir, &why));
  EXPECT_NE(std::string::npos, why.find("needs 2770")) << why;
}

TEST(SharedControlFolder, WritableByOthersIsRefusedEvenForOurGroup) {
  TempDir tmp;
  const std::string dir = make_folder(tmp, "world", static_cast<uid_t>(-1), getegid(), 02777);
  std::string why;
  EXPECT_FALSE(prepare_control_dir(dir, &why));
  EXPECT_NE(std::string::npos, why.find("writable by others")) << why;
  FakeTarget target;
  EXPECT_EQ(nullptr, PipeServer::start(dir, target));
}

TEST(SharedControlFolder, OwnFolderWritableByAGroupWeAreNotInIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give a folder to a group it is not in";
  TempDir tmp;
  const std::string dir = make_folder(tmp, "foreign", static_cast<uid_t>(-1), foreign_gid(), 02770);
  std::string why;
  EXPECT_FALSE(prepare_control_dir(dir, &why));
  EXPECT_NE(std::string::npos, why.find("a group this process is not in")) << why;
}

TEST(SharedControlFolder, SymlinkToASharedFolderIsRefused) {
  TempDir tmp;
  const std::string real = make_folder(tmp, "real", static_cast<uid_t>(-1), getegid(), 02770);
  const std::string link = tmp.path() + "/link";
  ASSERT_EQ(0, symlink(real.c_str(), link.c_str()));
  std::string why;
  EXPECT_FALSE(prepare_control_dir(link, &why));
  EXPECT_NE(std::string::npos, why.find("symlink")) << why;
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
