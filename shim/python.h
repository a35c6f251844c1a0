// The CPython interpreter of the host process, as the framework adapters use it
// (docs/frameworks.md).
//
// The C API is found with dlsym(RTLD_DEFAULT): the python3 executable exports it, and so does a
// shared libpython in the global scope. cudapool never loads a libpython and includes no Python
// header: the few declarations it needs are part of CPython's stable ABI.
//
// Finalisation. A thread that takes the GIL while the interpreter finalises is ended (CPython
// <= 3.13: pthread_exit) or blocked for ever (3.14); checking Py_IsFinalizing first is a race.
// So the first run registers an atexit hook through the interpreter, and every run holds the exit
// gate (a mutex) from before it takes the GIL until after it has let go of it. The hook (run by
// the interpreter before finalisation starts) lets go of the GIL, takes the gate and marks the
// interpreter exiting: once it returns, no run takes the GIL again, and a run in progress has
// finished. The first run itself, before the hook exists, happens on the adapters' own thread,
// where an end or a hang harms nobody (its callers wait with deadlines).
#pragma once

#include <string>

namespace cudapool::python {

struct Api;

// The interpreter's C API, or null when the process has none (or lacks a function used here).
const Api* find_api();

enum class RunStatus {
  kOk,           // the code ran; out and error hold its `out` and `err` strings
  kNotStarted,   // no initialised interpreter (yet): try again later
  kExiting,      // the interpreter is finalising, or did: never again
  kUnsupported,  // sub-interpreters or a free-threaded build: never again (error says which)
  kFailed,       // the code raised past its own handler (error: what)
};

struct RunResult {
  RunStatus status = RunStatus::kNotStarted;
  std::string out;
  std::string error;
};

// Runs `code` (statements) in a fresh globals dict with the GIL taken through PyGILState_Ensure,
// on the calling thread, which must hold no lock the host could wait for while it holds the GIL.
// The code reports through the string globals `out` and `err` (both preset to '').
RunResult run(const Api& api, const std::string& code);

// fork(): the child's exit gate starts unlocked (the parent's run may have held it).
void after_fork_child();

}  // namespace cudapool::python
