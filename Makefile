# lumen - one Makefile: make, make deps, make test, make demo, make bench
B       ?= build
CC      ?= cc
CFLAGS  ?= -O2
CFLAGS  += -std=c11 -D_GNU_SOURCE -fPIC -fopenmp -Wall -Wextra -Wno-unused-parameter
LUAJIT_CFLAGS := $(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)
LUAJIT_LIBS   := $(shell pkg-config --libs luajit 2>/dev/null || echo -lluajit-5.1)
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)

LIB_SRC := $(wildcard src/core/*.c src/ops/*.c src/cpu/*.c src/io/*.c)
LIB_OBJ := $(LIB_SRC:src/%.c=$(B)/obj/%.o)
HEADERS := src/lumen.h src/plugin.h src/core/internal.h

# Debian packages the build, the tests and the benchmarks need.
DEB_PKGS := build-essential pkg-config luajit libluajit-5.1-dev libopenblas-dev \
            libpng-dev zlib1g-dev lua-busted python3-torch python3-numpy

TARGETS := $(B)/liblumen.so $(B)/lumen
ifneq ($(NVCC),)
TARGETS += $(B)/liblumen_cuda.so
endif

.PHONY: all deps test demo bench cdef clean
all: $(TARGETS)

$(B)/obj/%.o: src/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/liblumen.so: $(LIB_OBJ)
	$(CC) -shared -fopenmp -o $@ $^ -lopenblas -lm -lpthread

# The host embeds LuaJIT but does not link liblumen: the Lua module loads it
# after choosing OpenBLAS's kernel set (OpenBLAS reads that when it loads).
$(B)/lumen: src/host/main.c src/lumen.h
	@mkdir -p build
	$(CC) $(CFLAGS) $(LUAJIT_CFLAGS) -DLUMEN_ROOT='"$(CURDIR)"' -o $@ src/host/main.c $(LUAJIT_LIBS) -ldl -lm -Wl,-E

# The CUDA backend: its own library, loaded at run time when a GPU is there.
$(B)/liblumen_cuda.so: $(wildcard src/cuda/*.cu) $(HEADERS)
	@mkdir -p build
	$(NVCC) -O2 -shared -Xcompiler -fPIC -gencode arch=compute_90,code=sm_90 \
	  -gencode arch=compute_90,code=compute_90 -o $@ $(wildcard src/cuda/*.cu) -lcudart

# lua/lumen/cdef.lua is generated from the marked region of lumen.h.
cdef:
	luajit src/tools/gen_cdef.lua src/lumen.h lua/lumen/cdef.lua

deps:
	@sh tools/deps.sh $(DEB_PKGS)

test: deps
	@$(MAKE) --no-print-directory all
	@sh tests/run.sh

demo: deps
	@$(MAKE) --no-print-directory all
	$(B)/lumen run examples/tour.lua

bench: deps
	@$(MAKE) --no-print-directory all
	@sh bench/run.sh

clean:
	rm -rf build

# C unit tests: every tests/c/*.c, linked against the library.
$(B)/tests/c_tests: $(wildcard tests/c/*.c tests/c/*.h) $(B)/liblumen.so
	@mkdir -p $(B)/tests
	$(CC) $(CFLAGS) -o $@ $(wildcard tests/c/*.c) -L$(B) -llumen -Wl,-rpath,'$$ORIGIN/..' -lm
