"""The stand-in frameworks' caching allocator (tests/frameworks/framework_cache.cpp), loaded once.

ctypes.PyDLL keeps the GIL across each call, as C++ code called from Python may: cudaMalloc and
cudaFree then run with the GIL held.
"""
import ctypes
import os

lib = ctypes.PyDLL(os.environ["STANDIN_FRAMEWORK_CACHE"])
lib.fc_malloc.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
lib.fc_free.argtypes = [ctypes.c_void_p]
lib.fc_empty.argtypes = [ctypes.c_int]
lib.fc_stats.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
lib.fc_driver_held.argtypes = [ctypes.c_int]
lib.fc_driver_held.restype = ctypes.c_uint64
lib.fc_set_device.argtypes = [ctypes.c_int]

CUDA_ERROR_MEMORY_ALLOCATION = 2


class Block:
    """Device memory from the cache; goes back to the cache when dropped."""

    def __init__(self, device, nbytes):
        ptr = ctypes.c_void_p()
        err = lib.fc_malloc(device, nbytes, ctypes.byref(ptr))
        if err != 0:
            raise MemoryError(err)
        self.ptr, self.nbytes, self.device = ptr.value, nbytes, device

    def __del__(self):
        lib.fc_free(self.ptr)


def stats(device):
    """(reserved, allocated, allocation count, out-of-memory retries) of one device."""
    out = (ctypes.c_uint64 * 4)()
    lib.fc_stats(device, out)
    return tuple(out)
