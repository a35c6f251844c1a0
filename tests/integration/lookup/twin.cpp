// The later definition of lookup_twin (probe.cpp): what RTLD_NEXT from the probe must find.
extern "C" __attribute__((visibility("default"))) int lookup_twin() {
  return 2;
}
