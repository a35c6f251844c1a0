// A library the lookup test links: it defines lookup_twin, as does the library it depends on
// (twin.cpp), and looks names up with RTLD_NEXT from its own code.
#include <dlfcn.h>

extern "C" __attribute__((visibility("default"))) int lookup_twin() {
  return 1;
}

// Not a tail call: glibc takes "next after the caller" from dlsym's return address, which must be
// in this library.
extern "C" __attribute__((visibility("default"), optimize("no-optimize-sibling-calls"))) void*
lookup_probe_next(const char* name) {
  void* volatile found = dlsym(RTLD_NEXT, name);
  return found;
}
