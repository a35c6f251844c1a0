"""A stand-in for PyTorch: its CUDA caching allocator's Python API (the names and return types
cudapool's adapter reads), over tests/frameworks/framework_cache.cpp. Not PyTorch."""
from . import cuda


class Tensor:
    def __init__(self, block):
        self._block = block

    def nbytes(self):
        return self._block.nbytes

    def data_ptr(self):
        return self._block.ptr


def empty(nbytes, device="cuda"):
    """A tensor of `nbytes` bytes on `device` ("cuda", "cuda:1")."""
    return Tensor(cuda._allocate(cuda._index(device), nbytes))
