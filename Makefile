# lumen - one Makefile: make, make deps, make test, make demo, make bench, make fuzz
B       ?= build
CC      ?= cc
CFLAGS  ?= -O2
OPENMP  ?= -fopenmp
# -Wno-psabi: the f32 kernels' 8-lane vector helpers (internal.h) are always
# inlined, so the notes on how such vectors would be passed are moot.
override CFLAGS += -std=c11 -D_GNU_SOURCE -fPIC $(OPENMP) -Wall -Wextra -Wno-unused-parameter -Wno-psabi
LUAJIT_CFLAGS := $(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)
LUAJIT_LIBS   := $(shell pkg-config --libs luajit 2>/dev/null || echo -lluajit-5.1)
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)

LIB_SRC := $(wildcard src/core/*.c src/ops/*.c src/cpu/*.c src/io/*.c)
LIB_OBJ := $(LIB_SRC:src/%.c=$(B)/obj/%.o)
HEADERS := src/lumen.h src/plugin.h src/backend.h src/lowp.h src/core/internal.h

# Debian packages the build, the tests and the benchmarks need.
# libmaxflow-dev (35 kB) is the reference max-flow the crf plugin's graph
# cuts are checked against: GPL, so only a test and benchmark peer
# (plugins/crf/spec/maxflow_peer.cpp, built by the spec), never linked
# into lumen; without it that check is skipped.
DEB_PKGS := build-essential pkg-config luajit libluajit-5.1-dev libopenblas-dev \
            libpng-dev zlib1g-dev lua-busted python3-torch python3-numpy \
            python3-nibabel python3-pydicom libmaxflow-dev

# Plugins: each plugins/<name>/ holds the C sources of one, built to
# $(B)/plugins/<name>.so without liblumen (it reaches the engine through the
# host table of src/plugin.h). The test plugins live in tests/plugin/.
PLUGINS      := $(patsubst plugins/%/,$(B)/plugins/%.so,$(wildcard plugins/*/))
TEST_PLUGINS := $(B)/tests/plugins/clip_relu.so $(B)/tests/plugins/clip_relu_abi99.so $(B)/tests/plugins/fake_device.so
PLUGIN_CFLAGS = $(filter-out $(OPENMP),$(CFLAGS)) -Isrc -shared

TARGETS := $(B)/liblumen.so $(B)/lumen $(PLUGINS)
ifneq ($(NVCC),)
TARGETS += $(B)/liblumen_cuda.so
TEST_PLUGINS += $(B)/tests/plugins/cuda_emulated.so
endif

.PHONY: all deps test demo bench cdef clean bundle fuzz
all: $(TARGETS)

$(B)/obj/%.o: src/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The optimizer updates take square roots in loops that only vectorise when
# sqrt need not set errno.
$(B)/obj/ops/optim.o: override CFLAGS += -fno-math-errno

# -z nodelete: LuaJIT unloads liblumen at exit, which must not unmap libgomp
# while an OpenMP worker still spins in it.
# RPATH (not RUNPATH: --disable-new-dtags) $ORIGIN: in a bundle the libraries
# lie beside liblumen, and an RPATH also serves the dependencies of its
# dependencies (OpenBLAS's libgfortran), which a RUNPATH would not.
RPATH_ORIGIN := -Wl,--disable-new-dtags -Wl,-rpath,'$$ORIGIN'
$(B)/liblumen.so: $(LIB_OBJ)
	$(CC) -shared $(OPENMP) $(LDFLAGS) -Wl,-z,nodelete $(RPATH_ORIGIN) -o $@ $^ -lopenblas -lpng -lz -lm -lpthread -ldl

# The host embeds LuaJIT but does not link liblumen: the Lua module loads it
# after choosing OpenBLAS's kernel set (OpenBLAS reads that when it loads).
$(B)/lumen: src/host/main.c src/lumen.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LUAJIT_CFLAGS) -DLUMEN_ROOT='"$(CURDIR)"' -o $@ src/host/main.c $(LUAJIT_LIBS) -ldl -lm -Wl,-E \
	  -Wl,--disable-new-dtags -Wl,-rpath,'$$ORIGIN/../lib'

# The CUDA backend: its own library, loaded at run time when a GPU is there
# (lumen info says why not otherwise). It links the shared CUDA runtime from
# the toolkit nvcc belongs to, found again at run time through the rpath
# ($ORIGIN first: a bundle carries libcudart beside it). sm_90 code plus
# compute_90 PTX for newer GPUs. -z nodelete: tensors freed while LuaJIT
# closes may reach the backend after its ffi namespace was collected.
CUDA_LIB := $(patsubst %/bin/nvcc,%,$(NVCC))/lib64
$(B)/liblumen_cuda.so: $(wildcard src/cuda/*.cu src/cuda/*.cuh) $(HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) -O2 -shared -Xcompiler -fPIC -Xcompiler -Wall -gencode arch=compute_90,code=sm_90 \
	  -gencode arch=compute_90,code=compute_90 -o $@ $(wildcard src/cuda/*.cu) \
	  -cudart shared -L$(CUDA_LIB) -lcudart -ldl -Xlinker --disable-new-dtags -Xlinker -rpath,'$$ORIGIN:$(CUDA_LIB)' \
	  -Xlinker -znodelete

.SECONDEXPANSION:
$(B)/plugins/%.so: $$(wildcard plugins/$$*/*.c plugins/$$*/*.h) src/plugin.h src/lumen.h
	@mkdir -p $(dir $@)
	$(CC) $(PLUGIN_CFLAGS) -Iplugins/$* -o $@ $(wildcard plugins/$*/*.c) -lm

$(B)/tests/plugins/clip_relu.so: tests/plugin/clip_relu.c src/plugin.h src/lumen.h
	@mkdir -p $(dir $@)
	$(CC) $(PLUGIN_CFLAGS) -o $@ $<

# The same plugin claiming ABI major 99, which the loader must refuse.
$(B)/tests/plugins/clip_relu_abi99.so: tests/plugin/clip_relu.c src/plugin.h src/lumen.h
	@mkdir -p $(dir $@)
	$(CC) $(PLUGIN_CFLAGS) -DCLIP_RELU_ABI_MAJOR=99 -o $@ $<

# A device backend whose memory is host memory, so that the device paths
# (transfers, the device cache, the CPU ops' refusals) are tested without a GPU.
$(B)/tests/plugins/fake_device.so: tests/plugin/fake_device.c src/backend.h src/lowp.h src/lumen.h
	@mkdir -p $(dir $@)
	$(CC) $(PLUGIN_CFLAGS) -Wl,-z,nodelete -o $@ $<

# The CUDA backend's kernel files built for the host (LMCUDA_EMULATE): every
# thread of a kernel run in turn, cuBLAS replaced by stand-ins, so that the
# specs check the kernels' logic on machines without a GPU.
$(B)/tests/plugins/cuda_emulated.so: tests/plugin/cuda_emulated.cu $(filter-out src/cuda/backend.cu,$(wildcard src/cuda/*.cu)) $(wildcard src/cuda/*.cuh) $(HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) -O1 -shared -Xcompiler -fPIC -DLMCUDA_EMULATE -gencode arch=compute_90,code=compute_90 -o $@ \
	  tests/plugin/cuda_emulated.cu $(filter-out src/cuda/backend.cu,$(wildcard src/cuda/*.cu)) -Xlinker -znodelete

# make bundle: build/bundle/, a folder that runs on a machine without
# LuaJIT, OpenBLAS or a compiler (the CUDA driver and, for convolutions,
# cuDNN are found there at run time): tools/bundle.sh says what it holds.
bundle: all
	@B=$(B) NVCC='$(NVCC)' sh tools/bundle.sh

# lua/lumen/cdef.lua is generated from the marked region of lumen.h.
cdef:
	luajit src/tools/gen_cdef.lua src/lumen.h lua/lumen/cdef.lua

deps:
	@sh tools/deps.sh $(DEB_PKGS)

test: deps
	@$(MAKE) --no-print-directory all $(TEST_PLUGINS)
	@B=$(B) sh tests/run.sh

demo: deps
	@$(MAKE) --no-print-directory all
	$(B)/lumen run examples/tour.lua
	$(B)/lumen data fetch colin27
	$(B)/lumen run recipes/segment/brain_unet2d.lua

bench: deps
	@$(MAKE) --no-print-directory all
	@LUA_PATH='$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;' luajit bench/check_workloads.lua
	@sh bench/run.sh
	@sh bench/run.sh workloads
	@sh bench/run.sh images
	@LUA_PATH='$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;' luajit bench/crf.lua

clean:
	rm -rf build build-fuzz

# make fuzz: a libFuzzer target per image reader (tests/fuzz/), each run for
# FUZZ_SECONDS against a liblumen built with clang, AddressSanitizer and
# UBSan in build-fuzz/ (no OpenMP: one thread; LM_SANITIZE: no allocator
# cache). Reports in build-fuzz/report/; fails when any reader has a finding.
FUZZ_B       := build-fuzz
FUZZ_CC      ?= clang
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_READERS ?= nifti mha png dicom
FUZZ_SECONDS ?= 600
FUZZ_MAX_LEN ?= 65536

fuzz: deps
	@sh tools/deps.sh clang libclang-rt-dev
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory B=$(FUZZ_B) CC=$(FUZZ_CC) OPENMP= LDFLAGS='$(FUZZ_SAN)' \
	  CFLAGS='-O1 -g -fno-omit-frame-pointer $(FUZZ_SAN) -fsanitize=fuzzer-no-link -DLM_SANITIZE' $(FUZZ_B)/liblumen.so
	@$(MAKE) --no-print-directory $(FUZZ_READERS:%=$(FUZZ_B)/fuzz_%)
	@B=$(B) FUZZ_B=$(FUZZ_B) FUZZ_READERS='$(FUZZ_READERS)' FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_MAX_LEN=$(FUZZ_MAX_LEN) \
	  sh tests/fuzz/run.sh

$(FUZZ_B)/fuzz_%: tests/fuzz/fuzz_image.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer -Wall -Wextra $(LUAJIT_CFLAGS) -DREADER='"$*"' \
	  -DLUMEN_ROOT='"$(CURDIR)"' -o $@ $< $(LUAJIT_LIBS) -lz -ldl -lm

# C unit tests: every tests/c/*.c, linked against the library.
$(B)/tests/c_tests: $(wildcard tests/c/*.c tests/c/*.h) $(B)/liblumen.so
	@mkdir -p $(B)/tests
	$(CC) $(CFLAGS) -o $@ $(wildcard tests/c/*.c) -L$(B) -llumen -Wl,-rpath,'$$ORIGIN/..' -lm
