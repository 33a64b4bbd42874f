#!/bin/sh
# tests/gpu/run.sh [BUNDLE] [--fake=PATH] [--mb=N]: the GPU checks.
#
# Runs through a bundle's bin/lumen (make bundle), so the GPU machine needs
# no LuaJIT, OpenBLAS or compiler: `lumen info` first, then
# tests/gpu/checks.lua, whose table of results comes last. Exit status 0
# when every check passed. BUNDLE defaults to the bundle holding this
# script, else build/bundle beside it.
#
#   here:             make bundle && sh tests/gpu/run.sh build/bundle --fake=build/tests/plugins/fake_device.so
#   the GPU machine:  sh tests/gpu/run.sh build/bundle   (build/bundle carried there from here)
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "$1" ] && [ "${1#-}" = "$1" ]; then
  bundle=$1
  shift
elif [ -x "$here/../../bin/lumen" ]; then
  bundle=$here/../..
else
  bundle=$here/../../build/bundle
fi
if [ ! -x "$bundle/bin/lumen" ]; then
  echo "tests/gpu/run.sh: no $bundle/bin/lumen (run make bundle first)" >&2
  exit 2
fi
"$bundle/bin/lumen" info
echo
exec "$bundle/bin/lumen" run "$here/checks.lua" "$@"
