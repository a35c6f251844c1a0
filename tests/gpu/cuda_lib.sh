# Sourced by the GPU scripts: sets CUDA_LIB to the folder of NVIDIA's libcudart.so.13 (CUDA_HOME,
# /usr/local/cuda, else the runtime of NVIDIA's pip wheels, found with $PYTHON); empty when none.
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
CUDA_LIB="$CUDA_HOME/lib64"
[ -e "$CUDA_LIB/libcudart.so.13" ] || CUDA_LIB="$CUDA_HOME/targets/x86_64-linux/lib"
if [ ! -e "$CUDA_LIB/libcudart.so.13" ]; then
  CUDA_LIB="$("${PYTHON:-python3}" - <<'PY' 2>/dev/null
import glob, os, site
for d in site.getsitepackages():
    for p in glob.glob(os.path.join(d, "nvidia", "**", "libcudart.so.13"), recursive=True):
        print(os.path.dirname(p))
        raise SystemExit
PY
)"
fi
