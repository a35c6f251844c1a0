"""torch.cuda of the stand-in PyTorch (see torch/__init__.py)."""
import os

import _standin_cache as _cache

_initialized = False
_current = 0


class OutOfMemoryError(RuntimeError):
    pass


def _index(device):
    if device is None:
        return _current
    if isinstance(device, int):
        return device
    text = str(device)
    return int(text.split(":")[1]) if ":" in text else _current


def _allocate(device, nbytes):
    global _initialized
    _initialized = True
    try:
        return _cache.Block(device, nbytes)
    except MemoryError as e:
        raise OutOfMemoryError("CUDA out of memory (error %s)" % e.args[0]) from None


def is_available():
    return True


def is_initialized():
    return _initialized


def init():
    global _initialized
    _initialized = True


def set_device(device):
    global _current
    _current = _index(device)
    _cache.lib.fc_set_device(_current)


def current_device():
    return _current


def memory_reserved(device=None):
    return _cache.stats(_index(device))[0]


def memory_allocated(device=None):
    return _cache.stats(_index(device))[1]


def memory_stats(device=None):
    if os.environ.get("STANDIN_TORCH_RAISE") == "memory_stats":
        raise RuntimeError("memory_stats failed (STANDIN_TORCH_RAISE)")
    reserved, allocated, count, retries = _cache.stats(_index(device))
    return {
        "allocation.all.allocated": count,
        "allocated_bytes.all.current": allocated,
        "reserved_bytes.all.current": reserved,
        "num_alloc_retries": retries,
    }


def empty_cache():
    _cache.lib.fc_empty(-1)
