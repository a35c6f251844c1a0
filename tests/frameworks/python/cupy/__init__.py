"""A stand-in for CuPy: its default memory pool's API (what cudapool's adapter reads), over
tests/frameworks/framework_cache.cpp. Not CuPy."""
import _standin_cache as _cache

from . import cuda


class MemoryPool:
    """One pool per device; every method acts on the current device's."""

    def total_bytes(self):
        return _cache.stats(cuda.runtime.getDevice())[0]

    def used_bytes(self):
        return _cache.stats(cuda.runtime.getDevice())[1]

    def free_all_blocks(self, stream=None):
        _cache.lib.fc_empty(cuda.runtime.getDevice())


_pool = MemoryPool()


def get_default_memory_pool():
    return _pool


class ndarray:
    def __init__(self, block):
        self.data = block
        self.nbytes = block.nbytes


def empty(nbytes, dtype="uint8"):
    """`nbytes` bytes on the current device."""
    return ndarray(_cache.Block(cuda.runtime.getDevice(), nbytes))
