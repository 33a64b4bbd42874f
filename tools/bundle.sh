#!/bin/sh
# tools/bundle.sh (make bundle): writes $B/bundle/, a folder that runs on a
# Linux x86-64 machine without LuaJIT, OpenBLAS, libpng or a compiler:
#
#   bin/lumen            the host (RPATH $ORIGIN/../lib)
#   lib/                 liblumen.so, liblumen_cuda.so (when nvcc built it)
#                        and the shared libraries they need, found with ldd
#                        (LuaJIT, OpenBLAS and its libgfortran, libpng,
#                        zlib, libgomp, the CUDA runtime libcudart)
#   lib/plugins/         the built plugins
#   lua/ datasets/ examples/ recipes/ bench/ tests/gpu/ plugins/*/*.lua   the Lua side and scripts
#
# Not carried: the C library (glibc, libm, libdl, libpthread, librt), the
# compiler's C++ runtime (libstdc++, libgcc_s: a GPU machine's cuDNN or
# cuBLAS may need a newer one than ours, and only one can be loaded), and
# the NVIDIA driver (libcuda). cuBLAS and cuDNN are too large to carry: the
# CUDA backend finds them at run time (lua/lumen/device.lua says where).
set -e
B=${B:-build}
out=$B/bundle
tmp=$B/bundle.tmp
rm -rf "$tmp"
mkdir -p "$tmp/bin" "$tmp/lib/plugins" "$tmp/tests"
cp "$B/lumen" "$tmp/bin/"
cp "$B/liblumen.so" "$tmp/lib/"
[ -f "$B/liblumen_cuda.so" ] && cp "$B/liblumen_cuda.so" "$tmp/lib/"
for p in "$B"/plugins/*.so; do [ -f "$p" ] && cp "$p" "$tmp/lib/plugins/"; done

# ldd lists every library an object needs, its dependencies' too; copy each
# under its soname (dereferencing the distribution's symlinks).
skip='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|libgcc_s|libcuda|libnvidia)[.-]'
for obj in "$tmp/bin/lumen" "$tmp"/lib/*.so "$tmp"/lib/plugins/*.so; do
  [ -f "$obj" ] || continue
  ldd "$obj" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
done | sort -u | while read -r name path; do
  echo "$name" | grep -Eq "$skip" && continue
  [ -f "$tmp/lib/$name" ] || cp -L "$path" "$tmp/lib/$name"
done
missing=$(for obj in "$tmp/bin/lumen" "$tmp"/lib/*.so; do ldd "$obj" | grep 'not found' || true; done)
if [ -n "$missing" ]; then
  echo "make bundle: libraries not found:"; echo "$missing"; exit 1
fi

cp -r lua datasets examples recipes "$tmp/"
# a plugin's Lua face lives beside its sources (lua/lumen/crf.lua loads it)
for d in plugins/*/; do mkdir -p "$tmp/$d" && cp "$d"*.lua "$tmp/$d"; done
mkdir -p "$tmp/bench"
cp bench/*.lua bench/*.py "$tmp/bench/" 2>/dev/null || true
cp -r tests/gpu "$tmp/tests/"
cat >"$tmp/README" <<'TXT'
lumen, bundled by `make bundle`: runs where it is unpacked, on Linux x86-64
with glibc 2.36 or newer, without LuaJIT, OpenBLAS or a compiler.

  bin/lumen info                 what it found: BLAS, the GPU, cuBLAS, cuDNN
  bin/lumen run examples/tour.lua
  bin/lumen run recipes/segment/brain_unet2d.lua --device cuda
  sh tests/gpu/run.sh            the GPU checks (on a machine with a GPU)

The GPU needs the NVIDIA driver (CUDA 13 or newer). cuBLAS and cuDNN are
found at run time: $LUMEN_CUDA_LIBS (folders) and $LUMEN_CUDNN (libcudnn.so.9
or its folder), LD_LIBRARY_PATH, /usr/local/cuda/lib64, the system's
library folders, and the nvidia/*/lib folders of Python's site-packages (a
pip-installed PyTorch for CUDA 13 carries both).
TXT
rm -rf "$out"
mv "$tmp" "$out"
echo "make bundle: $out ($(du -sh "$out" | cut -f1))"
