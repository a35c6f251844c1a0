# Checks the dynamic symbol table of a preload library (DESIGN §4.3, §4.12):
#   - every defined dynamic symbol starts with "cuda" or is one of the driver functions the pool
#     serves (spdlog, fmt, libunwind and the C++ runtime stay private);
#   - cudaMalloc and cudaFree are among them;
#   - none carries a version node (so they bind for callers of libcudart.so.12 and .13 alike);
#   - the library does not depend on libcudart or libcuda.
# Usage: cmake -DLIB=<file> -DNM=<nm> -DOBJDUMP=<objdump> -P check_exports.cmake
cmake_minimum_required(VERSION 3.22)
foreach(var LIB NM OBJDUMP)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "pass -D${var}=...")
  endif()
endforeach()

execute_process(COMMAND ${NM} -D --defined-only ${LIB}
                OUTPUT_VARIABLE nm_out RESULT_VARIABLE nm_rc)
if(NOT nm_rc EQUAL 0)
  message(FATAL_ERROR "nm failed on ${LIB}")
endif()
string(REPLACE "\n" ";" nm_lines "${nm_out}")
set(problems "")
set(names "")
foreach(line IN LISTS nm_lines)
  if(line STREQUAL "")
    continue()
  endif()
  # "<address> <type> <name>[@[@]VERSION]"
  string(REGEX REPLACE "^[0-9a-fA-F]* *[A-Za-z] " "" name "${line}")
  list(APPEND names "${name}")
  set(driver_names cuMemAlloc_v2 cuMemFree_v2 cuMemGetInfo_v2 cuMemGetAddressRange_v2
                   cuIpcGetMemHandle cuDevicePrimaryCtxReset_v2 cuCtxDestroy_v2
                   cuGetProcAddress cuGetProcAddress_v2 dlsym)
  if(NOT name MATCHES "^cuda" AND NOT name IN_LIST driver_names)
    string(APPEND problems "  exported symbol that is neither a cuda* function nor a pooled driver "
                           "function: ${name}\n")
  endif()
  if(name MATCHES "@")
    string(APPEND problems "  symbol with a version node: ${name}\n")
  endif()
endforeach()
foreach(required cudaMalloc cudaFree)
  if(NOT required IN_LIST names)
    string(APPEND problems "  ${required} is not exported\n")
  endif()
endforeach()

# objdump -T: the version column of every defined symbol must be empty or "Base".
execute_process(COMMAND ${OBJDUMP} -T ${LIB} OUTPUT_VARIABLE od_out RESULT_VARIABLE od_rc)
if(NOT od_rc EQUAL 0)
  message(FATAL_ERROR "objdump -T failed on ${LIB}")
endif()
string(REPLACE "\n" ";" od_lines "${od_out}")
foreach(line IN LISTS od_lines)
  # "<addr> <flags> <section>\t<size>  <version> <name>"; undefined symbols are in *UND*.
  if(NOT line MATCHES "^[0-9a-fA-F]+ " OR line MATCHES "\\*UND\\*")
    continue()
  endif()
  if(line MATCHES "[ \t]([0-9a-fA-F]+)[ \t]+(\\(?[^ \t]+\\)?)[ \t]+([^ \t]+)$")
    set(version "${CMAKE_MATCH_2}")
    set(sym "${CMAKE_MATCH_3}")
    if(NOT version STREQUAL "Base" AND NOT version STREQUAL "(Base)")
      string(APPEND problems "  ${sym} has version ${version}\n")
    endif()
  endif()
endforeach()

execute_process(COMMAND ${OBJDUMP} -p ${LIB} OUTPUT_VARIABLE deps_out)
string(REGEX MATCHALL "NEEDED +[^\n]+" needed "${deps_out}")
foreach(entry IN LISTS needed)
  if(entry MATCHES "libcudart|libcuda\\.")
    string(APPEND problems "  links the CUDA runtime or driver: ${entry}\n")
  endif()
endforeach()

if(problems)
  message(FATAL_ERROR "${LIB}:\n${problems}")
endif()
list(LENGTH names count)
message(STATUS "${LIB}: ${count} exported symbols, all cuda*, unversioned")
