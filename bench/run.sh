#!/bin/sh
# bench/run.sh - lumen against PyTorch, side by side (see ../shared/BENCH.md).
#
#   sh bench/run.sh [case ...]         (no cases: every case in bench/micro.lua)
#   sh bench/run.sh images [name ...]     reading NIfTI and 3-D augmentation
#                                      (bench/images.lua against nibabel and
#                                      scipy.ndimage, bench/images_peer.py)
#   sh bench/run.sh workloads [name ...]  training steps of the BENCH.md
#                                      networks (bench/workloads_time.lua
#                                      against bench/workloads_torch.py)
#
# Absolute times on shared machines drift by tens of percent within
# minutes, so the two sides run interleaved, A B A B ..., BENCH_PAIRS times;
# each run reports the median of its timed iterations per case, and the
# table shows each side's median over the runs and the median over the
# pairs of the ratio lumen/torch.
#
# Both sides get the same threads (BENCH_THREADS, default 2) and the same
# OpenBLAS kernel set: the one lumen chooses from /proc/cpuinfo (or the
# OPENBLAS_CORETYPE the user set), read back from a lumen process.
#
# lumen makes OpenMP threads sleep at once (OMP_WAIT_POLICY=PASSIVE, see
# lua/lumen/core.lua). BENCH_SPIN=1 runs a third side in each round, lumen
# with libgomp's spinning default (GOMP_SPINCOUNT=300000), and adds its time
# and its ratio to lumen's default run.
#
# A new workload is a case of the same name in bench/micro.lua and
# bench/micro_torch.py (each prints "<case> <median s> <iters>" or
# "<case> NA <reason>").
cd "$(dirname "$0")/.." || exit 1
PY=${LUMEN_PYTHON:-/usr/bin/python3}
lumen_side="bench/micro.lua"
torch_side="bench/micro_torch.py"
if [ "$1" = images ]; then
  shift
  lumen_side="bench/images.lua"
  torch_side="bench/images_peer.py"
elif [ "$1" = workloads ]; then
  shift
  lumen_side="bench/workloads_time.lua"
  torch_side="bench/workloads_torch.py time"
fi
THREADS=${BENCH_THREADS:-2}
PAIRS=${BENCH_PAIRS:-3}
export BENCH_THREADS=$THREADS
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;"

core=$(luajit -e "require 'lumen'; io.write(os.getenv('OPENBLAS_CORETYPE') or '')") || {
  echo "bench: lumen does not load (run make first?)" >&2
  exit 1
}
blas=$(luajit -e "io.write(require('lumen').blas_info())")
torchv=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) || {
  echo "bench: $PY cannot import torch" >&2
  exit 1
}
echo "cpu: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1), $(nproc) cores"
echo "lumen: $blas"
echo "torch: $torchv; both sides: OPENBLAS_CORETYPE=${core:-unset} OPENBLAS_NUM_THREADS=$THREADS, $THREADS threads"
echo "lumen: OMP_WAIT_POLICY=$(luajit -e "require 'lumen'; io.write(os.getenv('OMP_WAIT_POLICY') or 'default')"); $PAIRS interleaved rounds"

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
res="$tmp/results"
: >"$res"

# side NAME CMD...: one run of one side, its lines tagged "round side".
side() {
  name=$1; shift
  if env OPENBLAS_NUM_THREADS="$THREADS" ${core:+OPENBLAS_CORETYPE=$core} "$@" >"$tmp/out" 2>"$tmp/err"; then :; else
    echo "bench: the $name run failed (round $round):" >&2
    tail -n 5 "$tmp/err" >&2
  fi
  sed "s/^/$round $name /" "$tmp/out" >>"$res"
}

round=1
while [ "$round" -le "$PAIRS" ]; do
  side lumen luajit $lumen_side "$@"
  side torch "$PY" $torch_side "$@"
  if [ -n "$BENCH_SPIN" ]; then
    side spin env GOMP_SPINCOUNT=300000 luajit $lumen_side "$@"
  fi
  round=$((round + 1))
done

luajit bench/summarize.lua "$res"
