#include "shim/python.h"

#include <dlfcn.h>

#include <mutex>
#include <new>

namespace cudapool::python {

// Opaque CPython objects; PyMethodDef and the constants below are stable ABI.
using PyObject = void;
using PyCFunction = PyObject* (*)(PyObject*, PyObject*);
struct PyMethodDef {
  const char* ml_name;
  PyCFunction ml_meth;
  int ml_flags;
  const char* ml_doc;
};
constexpr int kMethNoArgs = 0x0004;  // METH_NOARGS
constexpr int kPyFileInput = 257;    // Py_file_input
using GilState = int;                // PyGILState_STATE

struct Api {
  int (*Py_IsInitialized)();
  int (*is_finalizing)();  // Py_IsFinalizing (3.13) or _Py_IsFinalizing; may be null
  GilState (*PyGILState_Ensure)();
  void (*PyGILState_Release)(GilState);
  void* (*PyEval_SaveThread)();
  void (*PyEval_RestoreThread)(void*);
  void* (*PyInterpreterState_Head)();
  void* (*PyInterpreterState_Next)(void*);
  PyObject* (*PyDict_New)();
  int (*PyDict_SetItemString)(PyObject*, const char*, PyObject*);
  PyObject* (*PyDict_GetItemString)(PyObject*, const char*);  // borrowed
  PyObject* (*PyRun_StringFlags)(const char*, int, PyObject*, PyObject*, void*);
  const char* (*PyUnicode_AsUTF8)(PyObject*);
  PyObject* (*PyCFunction_NewEx)(PyMethodDef*, PyObject*, PyObject*);
  void (*PyErr_Clear)();
  void (*Py_IncRef)(PyObject*);
  void (*Py_DecRef)(PyObject*);
  PyObject* none;  // &_Py_NoneStruct
};

namespace {

// The exit gate (python.h). Constant-initialised: usable before any constructor runs.
struct ExitGate {
  std::mutex mutex;
  bool exiting = false;
  bool hook_registered = false;
};
ExitGate g_gate;
const Api* g_api = nullptr;  // set before the hook is registered

PyObject* exit_hook(PyObject*, PyObject*) {
  // Called by atexit with the GIL held. A run waiting for the GIL holds the gate: let go of the
  // GIL while taking it.
  void* thread_state = g_api->PyEval_SaveThread();
  {
    std::lock_guard lock(g_gate.mutex);
    g_gate.exiting = true;
  }
  g_api->PyEval_RestoreThread(thread_state);
  g_api->Py_IncRef(g_api->none);
  return g_api->none;
}

PyMethodDef g_exit_hook_def = {"cudapool_interpreter_exit", &exit_hook, kMethNoArgs,
                               "cudapool: the framework adapters stop taking the GIL."};

template <typename F>
bool resolve(F* out, const char* name) {
  *out = reinterpret_cast<F>(dlsym(RTLD_DEFAULT, name));
  return *out != nullptr;
}

// Copies the string global `name`, or "" when it is missing or not a str.
std::string string_global(const Api& api, PyObject* globals, const char* name) {
  PyObject* value = api.PyDict_GetItemString(globals, name);
  if (value == nullptr) return {};
  const char* text = api.PyUnicode_AsUTF8(value);
  if (text == nullptr) {
    api.PyErr_Clear();
    return {};
  }
  return text;
}

// Runs `code` with the GIL held; `exit_fn` (or null) is bound to the global cudapool_exit.
RunResult run_with_gil(const Api& api, const std::string& code, PyObject* exit_fn) {
  RunResult r;
  PyObject* globals = api.PyDict_New();
  if (globals == nullptr) {
    api.PyErr_Clear();
    r.status = RunStatus::kFailed;
    r.error = "no memory for a dict";
    return r;
  }
  if (exit_fn != nullptr) api.PyDict_SetItemString(globals, "cudapool_exit", exit_fn);
  const std::string full = "out = ''\nerr = ''\n" + code;
  PyObject* result = api.PyRun_StringFlags(full.c_str(), kPyFileInput, globals, globals, nullptr);
  if (result == nullptr) {
    api.PyErr_Clear();
    r.status = RunStatus::kFailed;
    r.error = "the adapters' code raised an exception it did not handle";
  } else {
    api.Py_DecRef(result);
    r.status = RunStatus::kOk;
    r.out = string_global(api, globals, "out");
    r.error = string_global(api, globals, "err");
  }
  api.Py_DecRef(globals);
  return r;
}

// Registers the exit hook (first run). The interpreter must be the only one and hold a GIL.
constexpr const char* kAttachCode = R"(import sys
if 't' in getattr(sys, 'abiflags', '') or not getattr(sys, '_is_gil_enabled', lambda: True)():
    err = 'a free-threaded build of CPython'
else:
    import atexit
    atexit.register(cudapool_exit)
    out = '%d.%d.%d' % tuple(sys.version_info[:3])
)";

// First run, GIL held: checks the build and registers the exit hook.
RunResult attach(const Api& api) {
  g_api = &api;
  PyObject* exit_fn = api.PyCFunction_NewEx(&g_exit_hook_def, nullptr, nullptr);
  if (exit_fn == nullptr) {
    api.PyErr_Clear();
    return {RunStatus::kFailed, "", "cannot make the exit hook"};
  }
  RunResult r = run_with_gil(api, kAttachCode, exit_fn);
  api.Py_DecRef(exit_fn);
  if (r.status == RunStatus::kOk && r.out.empty()) r.status = RunStatus::kUnsupported;
  g_gate.hook_registered = r.status == RunStatus::kOk;
  return r;
}

}  // namespace

const Api* find_api() {
  static const Api* api = []() -> const Api* {
    static Api a;
    bool ok = resolve(&a.Py_IsInitialized, "Py_IsInitialized") &&
              resolve(&a.PyGILState_Ensure, "PyGILState_Ensure") &&
              resolve(&a.PyGILState_Release, "PyGILState_Release") &&
              resolve(&a.PyEval_SaveThread, "PyEval_SaveThread") &&
              resolve(&a.PyEval_RestoreThread, "PyEval_RestoreThread") &&
              resolve(&a.PyInterpreterState_Head, "PyInterpreterState_Head") &&
              resolve(&a.PyInterpreterState_Next, "PyInterpreterState_Next") &&
              resolve(&a.PyDict_New, "PyDict_New") &&
              resolve(&a.PyDict_SetItemString, "PyDict_SetItemString") &&
              resolve(&a.PyDict_GetItemString, "PyDict_GetItemString") &&
              resolve(&a.PyRun_StringFlags, "PyRun_StringFlags") &&
              resolve(&a.PyUnicode_AsUTF8, "PyUnicode_AsUTF8") &&
              resolve(&a.PyCFunction_NewEx, "PyCFunction_NewEx") &&
              resolve(&a.PyErr_Clear, "PyErr_Clear") && resolve(&a.Py_IncRef, "Py_IncRef") &&
              resolve(&a.Py_DecRef, "Py_DecRef") && resolve(&a.none, "_Py_NoneStruct");
    if (!ok) return nullptr;
    if (!resolve(&a.is_finalizing, "Py_IsFinalizing"))
      resolve(&a.is_finalizing, "_Py_IsFinalizing");
    return &a;
  }();
  return api;
}

RunResult run(const Api& api, const std::string& code) {
  RunResult r;
  std::lock_guard gate(g_gate.mutex);  // held until the GIL is let go (python.h)
  if (g_gate.exiting) {
    r.status = RunStatus::kExiting;
    return r;
  }
  if (api.Py_IsInitialized() == 0) return r;  // kNotStarted
  if (api.is_finalizing != nullptr && api.is_finalizing() != 0) {
    r.status = RunStatus::kExiting;
    return r;
  }
  const GilState gil = api.PyGILState_Ensure();
  if (api.PyInterpreterState_Next(api.PyInterpreterState_Head()) != nullptr) {
    // PyGILState_Ensure serves the main interpreter only; another one may run any framework.
    r.status = RunStatus::kUnsupported;
    r.error = "the process runs sub-interpreters";
  } else {
    if (!g_gate.hook_registered) r = attach(api);
    if (g_gate.hook_registered) r = run_with_gil(api, code, nullptr);
  }
  api.PyGILState_Release(gil);
  return r;
}

void after_fork_child() {
  // Only the forking thread exists in the child; the parent's run may have held the gate. The
  // hook registration and the exiting flag are the interpreter's, which the child inherits.
  new (&g_gate.mutex) std::mutex();
}

}  // namespace cudapool::python
