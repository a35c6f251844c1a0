// cudapoolctl doctor's pure parts (tools/doctor.h): the maps parser, the library names, the ELF
// inspection and static-runtime rule on real files built for the test (fixtures beside it, see
// CMakeLists.txt) and files the test writes, the stats and environ parsers, and the advice.
#include "tools/doctor.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <string>

namespace cudapool::doctor {
namespace {

std::string scratch_file(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "doctor-" + std::to_string(getpid()) + "-" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

bool advice_has(const Diagnosis& d, const std::string& part) {
  for (const std::string& a : advise(d))
    if (a.find(part) != std::string::npos) return true;
  return false;
}

std::string all_advice(const Diagnosis& d) {
  std::string out;
  for (const std::string& a : advise(d))
    out += a + "\n";
  return out;
}

TEST(DoctorMaps, FilesOnceInOrderWithoutSpecialMappingsAndWithBlanksAndDeleted) {
  const std::string maps =
      "55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234   /usr/bin/python3.11\n"
      "55d0c0a02000-55d0c0a08000 r-xp 00002000 08:01 1234   /usr/bin/python3.11\n"
      "55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0      [heap]\n"
      "7f0000000000-7f0000001000 r--p 00000000 08:01 99     /opt/my libs/libcudapool.so\n"
      "7f0000100000-7f0000101000 r--p 00000000 08:01 98     /usr/lib/libcuda.so.580.1 (deleted)\n"
      "7f0000200000-7f0000201000 rw-p 00000000 00:00 0 \n"
      "7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0      [vdso]\n";
  const std::vector<MappedFile> files = mapped_files(maps);
  ASSERT_EQ(3u, files.size());
  EXPECT_EQ("/usr/bin/python3.11", files[0].path);
  EXPECT_EQ("/opt/my libs/libcudapool.so", files[1].path);
  EXPECT_EQ("/usr/lib/libcuda.so.580.1", files[2].path);
  EXPECT_FALSE(files[0].deleted);
  EXPECT_TRUE(files[2].deleted);
  EXPECT_TRUE(mapped_files("").empty());
  EXPECT_TRUE(mapped_files("garbage\n\n7f-7f r--p\n").empty());
}

TEST(DoctorMaps, LibraryNames) {
  EXPECT_EQ(LibraryKind::kCudapool, classify_library("/usr/local/lib/libcudapool.so"));
  EXPECT_EQ(LibraryKind::kRuntime, classify_library("/usr/local/cuda/lib64/libcudart.so.13.0.48"));
  EXPECT_EQ(LibraryKind::kDriver, classify_library("/usr/lib/x86_64-linux-gnu/libcuda.so.1"));
  EXPECT_EQ(LibraryKind::kOther, classify_library("/usr/lib/libcudnn.so.9"));
  EXPECT_EQ(LibraryKind::kOther, classify_library("/usr/lib/libcudadevrt.a"));
  EXPECT_EQ(LibraryKind::kTorch, classify_library("/venv/torch/lib/libtorch_cuda.so"));
  EXPECT_EQ(LibraryKind::kTorch, classify_library("/venv/torch/lib/libc10_cuda.so"));
  EXPECT_EQ(LibraryKind::kOther, classify_library("/venv/torch/lib/libtorch_cpu.so"));
  EXPECT_EQ(
      LibraryKind::kCupy,
      classify_library("/venv/cupy_backends/cuda/api/runtime.cpython-311-x86_64-linux-gnu.so"));
  EXPECT_EQ(LibraryKind::kCupy,
            classify_library("/venv/cupy/cuda/memory.cpython-311-x86_64-linux-gnu.so"));
  EXPECT_EQ(LibraryKind::kJax, classify_library("/venv/jaxlib/xla_extension.so"));
  EXPECT_EQ(LibraryKind::kJax, classify_library("/venv/jax_plugins/xla_cuda12/xla_cuda_plugin.so"));
  EXPECT_EQ(LibraryKind::kNumba,
            classify_library("/venv/numba/_helperlib.cpython-311-x86_64-linux-gnu.so"));
  EXPECT_EQ(LibraryKind::kOther, classify_library("/venv/numba/__init__.py"));
}

TEST(DoctorElf, TheStandInRuntimeAndDriverAreWhatTheirSonamesSay) {
  const ElfFacts runtime = inspect_elf(DOCTOR_STANDIN_RUNTIME);
  ASSERT_TRUE(runtime.is_elf) << runtime.error;
  EXPECT_EQ("libcudart.so.13", runtime.soname);
  EXPECT_TRUE(runtime.defines_cuda_malloc);
  EXPECT_EQ(RuntimeRole::kSharedRuntime, runtime_role("/any/name.so", runtime));
  const ElfFacts driver = inspect_elf(DOCTOR_STANDIN_DRIVER);
  ASSERT_TRUE(driver.is_elf) << driver.error;
  EXPECT_EQ("libcuda.so.1", driver.soname);
  EXPECT_EQ(RuntimeRole::kDriver, runtime_role("/any/name.so", driver));
}

TEST(DoctorElf, AProgramLinkedWithTheSharedRuntimeCarriesNone) {
  const ElfFacts f = inspect_elf(DOCTOR_SHARED_RUNTIME_PROGRAM);
  ASSERT_TRUE(f.is_elf) << f.error;
  bool needs_cudart = false;
  for (const std::string& n : f.needed)
    needs_cudart = needs_cudart || n == "libcudart.so.13";
  EXPECT_TRUE(needs_cudart);
  EXPECT_FALSE(f.defines_cuda_malloc);   // only an import
  EXPECT_FALSE(f.has_cuda_malloc_name);  // .dynstr is not searched
  EXPECT_EQ(RuntimeRole::kNone, runtime_role(DOCTOR_SHARED_RUNTIME_PROGRAM, f));
}

TEST(DoctorElf, AProgramWithItsOwnRuntimeIsStaticAlsoStripped) {
  const ElfFacts f = inspect_elf(DOCTOR_OWN_RUNTIME);
  ASSERT_TRUE(f.is_elf) << f.error;
  EXPECT_TRUE(f.defines_cuda_malloc);
  EXPECT_TRUE(f.has_driver_name);
  EXPECT_TRUE(f.has_cuda_malloc_name);
  EXPECT_EQ(RuntimeRole::kStaticRuntime, runtime_role(DOCTOR_OWN_RUNTIME, f));
  const std::string stripped = std::string(DOCTOR_OWN_RUNTIME) + ".stripped";
  const ElfFacts s = inspect_elf(stripped);
  ASSERT_TRUE(s.is_elf) << s.error;
  EXPECT_FALSE(s.defines_cuda_malloc);  // no .symtab left: the strings decide
  EXPECT_TRUE(s.has_driver_name && s.has_cuda_malloc_name);
  EXPECT_EQ(RuntimeRole::kStaticRuntime, runtime_role(stripped, s));
  EXPECT_NE(std::string::npos, static_runtime_evidence(s).find("names libcuda.so.1"));
  // The same facts with a libcudart dependency are a shared-runtime program (an interposer).
  ElfFacts with_dependency = s;
  with_dependency.needed.push_back("libcudart.so.12");
  EXPECT_EQ(RuntimeRole::kNone, runtime_role(stripped, with_dependency));
  // One of the two names alone is not enough.
  ElfFacts driver_only = s;
  driver_only.has_cuda_malloc_name = false;
  EXPECT_EQ(RuntimeRole::kNone, runtime_role(stripped, driver_only));
}

TEST(DoctorElf, NvidiasStaticRuntime) {
  if (std::string(DOCTOR_NVIDIA_STATIC).empty())
    GTEST_SKIP() << "the toolkit has no libcudart_static.a";
  const ElfFacts f = inspect_elf(DOCTOR_NVIDIA_STATIC);
  ASSERT_TRUE(f.is_elf) << f.error;
  EXPECT_TRUE(f.has_driver_name);
  EXPECT_TRUE(f.has_cuda_malloc_name);
  EXPECT_EQ(RuntimeRole::kStaticRuntime, runtime_role(DOCTOR_NVIDIA_STATIC, f));
}

TEST(DoctorElf, FilesThatAreNotElfOrCutShortAreSaidSo) {
  EXPECT_FALSE(inspect_elf("/nonexistent/doctor/file").readable);
  const ElfFacts text = inspect_elf(scratch_file("text", "libcuda.so.1\0cudaMalloc\0"));
  EXPECT_TRUE(text.readable);
  EXPECT_FALSE(text.is_elf);
  EXPECT_EQ(RuntimeRole::kNone, runtime_role("/x/text", text));
  EXPECT_FALSE(inspect_elf(scratch_file("empty", "")).is_elf);
  std::ifstream in(DOCTOR_OWN_RUNTIME, std::ios::binary);
  std::string head(200, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  const ElfFacts cut = inspect_elf(scratch_file("cut", head));
  EXPECT_TRUE(cut.readable);
  EXPECT_FALSE(cut.is_elf) << "section headers past the end of the file";
}

TEST(DoctorParse, EnvironAndStats) {
  const std::string env("LD_PRELOAD=/a/libcudapool.so\0CUDAPOOL_LIMIT=1GiB\0EMPTY=\0junk\0", 57);
  const auto e = parse_environ(env);
  EXPECT_EQ("/a/libcudapool.so", e.at("LD_PRELOAD"));
  EXPECT_EQ("1GiB", e.at("CUDAPOOL_LIMIT"));
  EXPECT_EQ("", e.at("EMPTY"));
  EXPECT_EQ(0u, e.count("junk"));
  PipeStats s;
  ASSERT_TRUE(
      parse_stats("pid=42 command=python3 devices=1 runtime_calls=7 driver_calls=3 dlsym_lookups=2 "
                  "proc_address_lookups=1\n"
                  "device=0 held=2097152 in_use=1048576 idle=1048576 framework_reserved=64 "
                  "framework_allocated=32 reuse=fence framework=torch\n",
                  &s));
  EXPECT_EQ(7u, s.runtime_calls);
  EXPECT_EQ(3u, s.driver_calls);
  EXPECT_EQ(2u, s.dlsym_lookups);
  EXPECT_EQ(1u, s.proc_address_lookups);
  ASSERT_EQ(1u, s.devices.size());
  EXPECT_EQ(2097152u, s.devices[0].held);
  EXPECT_EQ("torch", s.devices[0].framework);
  EXPECT_EQ(64u, s.devices[0].framework_reserved);
  PipeStats none;
  EXPECT_FALSE(parse_stats("ERR what\n", &none));
}

Diagnosis pooled_process() {
  Diagnosis d;
  d.pid = 42;
  d.maps_read = d.environ_read = true;
  d.cudapool_libs = {"/usr/lib/libcudapool.so"};
  d.shared_runtimes = {"/usr/local/cuda/lib64/libcudart.so.13"};
  d.drivers = {"/usr/lib/libcuda.so.1"};
  d.pipe_answered = true;
  d.stats.runtime_calls = 10;
  return d;
}

TEST(DoctorAdvice, EachCaseItsLine) {
  Diagnosis d = pooled_process();
  EXPECT_TRUE(advice_has(d, "nothing to do")) << all_advice(d);

  Diagnosis no_lib = pooled_process();
  no_lib.cudapool_libs.clear();
  no_lib.pipe_answered = false;
  EXPECT_TRUE(advice_has(no_lib, "start it with cudapoolctl run or")) << all_advice(no_lib);
  EXPECT_FALSE(advice_has(no_lib, "nothing to do"));

  Diagnosis static_rt = pooled_process();
  static_rt.shared_runtimes.clear();
  static_rt.static_runtimes = {{"/srv/app", "defines cudaMalloc"}};
  static_rt.stats.runtime_calls = 0;
  EXPECT_TRUE(advice_has(static_rt,
                         "its runtime is linked statically (app): cudapool pools it "
                         "only through the driver API"))
      << all_advice(static_rt);
  static_rt.stats.driver_calls = 5;
  EXPECT_TRUE(advice_has(static_rt, "pools it through the driver API (driver_calls=5)"))
      << all_advice(static_rt);

  Diagnosis torch = pooled_process();
  torch.frameworks = {{"torch", "/venv/torch/lib/libtorch_cuda.so"}};
  EXPECT_TRUE(advice_has(torch, "PyTorch's cache is on and not trimmed")) << all_advice(torch);
  torch.stats.devices = {DeviceSeen{0, 1, 1, "torch", 1, 1}};
  EXPECT_TRUE(advice_has(torch, "cudapool trims it")) << all_advice(torch);
  torch.torch_no_caching = "1";
  EXPECT_TRUE(advice_has(torch, "PyTorch's cache is off")) << all_advice(torch);

  Diagnosis no_cuda;
  no_cuda.maps_read = true;
  EXPECT_TRUE(advice_has(no_cuda, "no CUDA runtime or driver is mapped")) << all_advice(no_cuda);

  Diagnosis no_pipe = pooled_process();
  no_pipe.pipe_answered = false;
  no_pipe.pipe_error = "no control pipe";
  EXPECT_TRUE(advice_has(no_pipe, "no cudaMalloc reached cudapool yet")) << all_advice(no_pipe);

  Diagnosis unreadable;
  unreadable.maps_error = "Permission denied";
  EXPECT_TRUE(advice_has(unreadable, "not readable (Permission denied)")) << all_advice(unreadable);
}

TEST(DoctorFormat, JsonAndTextCarryTheFields) {
  Diagnosis d = pooled_process();
  d.environ_read = false;
  d.environ_error = "Permission denied";
  d.stats.devices = {DeviceSeen{0, 2048, 1024, "torch", 64, 32}};
  d.advice = advise(d);
  const std::string json = format_json(d);
  for (const char* part :
       {"\"cudapool_mapped\":true", "\"runtime\":\"shared\"", "\"runtime_calls\":10",
        "\"environ_readable\":false", "\"environ_error\":\"Permission denied\"",
        "\"framework\":\"torch\"", "\"framework_reserved\":64", "\"advice\":["})
    EXPECT_NE(std::string::npos, json.find(part)) << part << " in " << json;
  const std::string text = format_text(d);
  EXPECT_NE(std::string::npos, text.find("environment  not readable: Permission denied")) << text;
  EXPECT_NE(std::string::npos, text.find("runtime      shared: /usr/local/cuda/lib64/")) << text;
  EXPECT_NE(std::string::npos, text.find("what to do\n  - ")) << text;
}

}  // namespace
}  // namespace cudapool::doctor
