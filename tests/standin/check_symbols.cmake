# ctest -P script: the stand-in exports only cuda*/standin* symbols, each under the
# libcudart.so.13 version node (like NVIDIA's runtime), and a client binds with that version.
# Inputs: OBJDUMP, LIBRARY (libcudart.so.13), CLIENT (an executable linked against it), DRIVER
# (optional: the stand-in libcuda.so.1, whose exports are cu*/standin* without a version, like
# NVIDIA's).

function(dynamic_symbols file out)
  execute_process(COMMAND ${OBJDUMP} -T ${file} OUTPUT_VARIABLE text RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "objdump -T ${file} failed (${rc})")
  endif()
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

dynamic_symbols(${LIBRARY} lib)
string(REPLACE "\n" ";" lines "${lib}")
set(exported 0)
foreach(line IN LISTS lines)
  # Defined symbols: "<addr> g    DF .text  <size>  libcudart.so.13 cudaMalloc"
  if(NOT line MATCHES "^[0-9a-f]+ .* (\\.text|\\.data|\\.bss|\\.rodata|\\*ABS\\*)[ \t]")
    continue()
  endif()
  if(line MATCHES "[ \t]\\*UND\\*[ \t]")
    continue()
  endif()
  if(line MATCHES "\\*ABS\\*.*libcudart\\.so\\.13[ \t]+libcudart\\.so\\.13$")
    continue()  # the version node itself
  endif()
  if(NOT line MATCHES "[ \t]libcudart\\.so\\.13[ \t]+(cuda|standin)[A-Za-z0-9_]+$")
    message(FATAL_ERROR "unexpected export (not cuda*/standin* under libcudart.so.13): ${line}")
  endif()
  math(EXPR exported "${exported} + 1")
endforeach()
foreach(sym cudaMalloc cudaFree cudaMemGetInfo cudaStreamSynchronize cudaMemcpyAsync_ptsz
            cudaStreamGetCaptureInfo cudaGetDeviceProperties standinGetCounters)
  if(NOT lib MATCHES "libcudart\\.so\\.13[ \t]+${sym}\n")
    message(FATAL_ERROR "${LIBRARY} does not export ${sym}@@libcudart.so.13")
  endif()
endforeach()
if(exported LESS 100)
  message(FATAL_ERROR "only ${exported} exports found in ${LIBRARY}")
endif()

dynamic_symbols(${CLIENT} client)
foreach(sym cudaMalloc cudaFree)
  if(NOT client MATCHES "\\*UND\\*[^\n]*\\(?libcudart\\.so\\.13\\)?[ \t]+${sym}\n")
    message(FATAL_ERROR "${CLIENT} does not reference ${sym}@libcudart.so.13")
  endif()
endforeach()
message(STATUS "${exported} symbols exported, all cuda*/standin*@@libcudart.so.13")

if(DRIVER)
  dynamic_symbols(${DRIVER} drv)
  string(REPLACE "\n" ";" drv_lines "${drv}")
  set(driver_exported 0)
  foreach(line IN LISTS drv_lines)
    if(NOT line MATCHES "^[0-9a-f]+ .* (\\.text|\\.data|\\.bss|\\.rodata)[ \t]")
      continue()
    endif()
    # objdump shows "Base" for an unversioned symbol of a library that has version information
    # (the sanitizer trees link some).
    if(NOT line MATCHES "[ \t][0-9a-f]+[ \t]+(Base[ \t]+)?(cu|standin)[A-Za-z0-9_]+$")
      message(FATAL_ERROR "unexpected driver export (not cu*/standin*, or versioned): ${line}")
    endif()
    math(EXPR driver_exported "${driver_exported} + 1")
  endforeach()
  foreach(sym cuInit cuDriverGetVersion cuDeviceGet cuDeviceGetCount cuDeviceGetAttribute
              cuCtxGetDevice cuCtxGetCurrent cuMemGetAllocationGranularity cuMemCreate
              cuMemRelease cuMemAddressReserve cuMemAddressFree cuMemMap cuMemUnmap
              cuMemSetAccess cuMemGetAccess standinDriverAttach cuDevicePrimaryCtxRetain
              cuDevicePrimaryCtxRelease_v2 cuDevicePrimaryCtxReset_v2 cuDevicePrimaryCtxGetState
              cuCtxSetCurrent cuCtxPushCurrent_v2 cuCtxPopCurrent_v2 cuCtxSynchronize
              cuCtxDestroy_v2 cuMemAlloc_v2 cuMemFree_v2 cuMemGetInfo_v2 cuMemGetAddressRange_v2
              cuMemAllocManaged cuMemAllocPitch_v2 cuMemAllocAsync cuMemFreeAsync
              cuMemAllocAsync_ptsz cuMemFreeAsync_ptsz cuIpcGetMemHandle cuGetProcAddress_v2
              cuGetProcAddress cuMemAlloc cuMemFree standinGetCounters)
    if(NOT drv MATCHES "[ \t][0-9a-f]+[ \t]+(Base[ \t]+)?${sym}\n")
      message(FATAL_ERROR "${DRIVER} does not export ${sym} (unversioned)")
    endif()
  endforeach()
  message(STATUS "${driver_exported} driver symbols exported, all cu*/standin*, unversioned")
endif()
