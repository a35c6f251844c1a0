"""cupy.cuda of the stand-in CuPy: Device and runtime.getDevice (the thread's current device)."""
import types

import _standin_cache as _cache


def _get_device():
    return _cache.lib.fc_get_device()


runtime = types.SimpleNamespace(getDevice=_get_device)


class Device:
    def __init__(self, device=None):
        self.id = _get_device() if device is None else int(device)

    def __enter__(self):
        self._previous = _get_device()
        _cache.lib.fc_set_device(self.id)
        return self

    def __exit__(self, *exc):
        _cache.lib.fc_set_device(self._previous)

    def use(self):
        _cache.lib.fc_set_device(self.id)
