# Dependencies come from the system (Debian packages); nothing third-party is vendored.
#
# spdlog and fmt are used header-only so that libcudapool.so carries its own private copy (hidden
# by the export list) and needs no shared library beyond libc/libstdc++ on the machine it runs on.

set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)
find_package(CUDAToolkit REQUIRED)  # headers only: nothing links libcudart or libcuda
find_package(spdlog REQUIRED)
find_package(fmt REQUIRED)

add_library(cudapool_spdlog INTERFACE)
get_target_property(_spdlog_inc spdlog::spdlog_header_only INTERFACE_INCLUDE_DIRECTORIES)
get_target_property(_fmt_inc fmt::fmt-header-only INTERFACE_INCLUDE_DIRECTORIES)
target_include_directories(cudapool_spdlog SYSTEM INTERFACE ${_spdlog_inc} ${_fmt_inc})
target_compile_definitions(cudapool_spdlog INTERFACE SPDLOG_FMT_EXTERNAL FMT_HEADER_ONLY=1)
target_link_libraries(cudapool_spdlog INTERFACE Threads::Threads)

# CUDA runtime API headers, without linking the runtime.
add_library(cudapool_cuda_headers INTERFACE)
target_include_directories(cudapool_cuda_headers SYSTEM INTERFACE ${CUDAToolkit_INCLUDE_DIRS})

if(CUDAPOOL_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
