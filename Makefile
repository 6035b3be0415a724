# The one build of hstu.
#   make          library, the hstu command, tests, fuzz target
#   make test     everything above, then the whole test suite (tests/run_all.sh)
#   make demo     the demo: a small model and returning users, no GPU, no download
#   make bench    the CPU benchmark against PyTorch (bench/cpu_vs_torch.sh)
#   make soak     the server under ASan/LSan/UBSan: thousands of requests (tests/soak.sh)
# CPU-only when nvcc is absent; with nvcc the CUDA sources compile too (a GPU
# is needed only to run them). Set CUDA=0 to skip them, ARCH=x86-64-v3 for a
# portable binary.

CC      ?= gcc
ARCH    ?= native
BUILD   ?= build
PYTHON  ?= /usr/bin/python3

# OpenBLAS: prefer Debian's OpenMP variant, which runs single-threaded when
# called inside our own OpenMP regions (no nested oversubscription).
OPENBLAS_OMP := /usr/lib/x86_64-linux-gnu/openblas-openmp
ifneq ($(wildcard $(OPENBLAS_OMP)/libopenblas.so),)
  BLAS_CFLAGS := -I/usr/include/x86_64-linux-gnu/openblas-openmp
  BLAS_LIBS   := -L$(OPENBLAS_OMP) -Wl,-rpath,$(OPENBLAS_OMP) -lopenblas
else
  BLAS_LIBS   := -lopenblas
endif

CFLAGS  ?= -O2 -g
CFLAGS  += -std=c17 -D_GNU_SOURCE -march=$(ARCH) -fopenmp -Wall -Wextra -Wno-unused-parameter \
           -Iinclude -Isrc $(BLAS_CFLAGS) -MMD -MP
LDLIBS  := $(BLAS_LIBS) -ljansson -lmicrohttpd -lm -lpthread

# CUDA: compiled when nvcc exists (CI has nvcc and no GPU).
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA    ?= $(if $(NVCC),1,0)
CU_SRCS := $(shell find src -name '*.cu' 2>/dev/null | sort)
ifeq ($(CUDA),1)
ifneq ($(CU_SRCS),)
  CUDA_HOME   ?= $(patsubst %/bin/nvcc,%,$(NVCC))
  # sm_90a: Hopper (H100/H200) with its own instructions (wgmma).
  NVCCFLAGS   ?= -O3 -gencode=arch=compute_90a,code=sm_90a -lineinfo
  NVCCFLAGS   += -std=c++17 -Iinclude -Isrc -DHSTU_HAVE_CUDA -Xcompiler -fPIC -MMD -MP
  CFLAGS      += -DHSTU_HAVE_CUDA -I$(CUDA_HOME)/include
  # cudart static; cuBLASLt from the toolkit or the GPU machine's CUDA.
  LDLIBS      += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -Wl,-rpath,/usr/local/cuda/lib64 \
                 -lcublasLt -lcublas -lcudart_static -ldl -lrt -lstdc++
  CU_OBJS     := $(CU_SRCS:%.cu=$(BUILD)/%.o)
endif
endif

SRCS     := $(shell find src -name '*.c' | sort)
OBJS     := $(SRCS:%.c=$(BUILD)/%.o)
LIB      := $(BUILD)/libhstu.a
CLI_SRCS := $(sort $(wildcard tools/hstu/*.c))
CLI_OBJS := $(CLI_SRCS:%.c=$(BUILD)/%.o)
TEST_SRCS:= $(sort $(wildcard tests/test_*.c))
TESTS    := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
HARNESS  := $(BUILD)/tests/harness.o

FUZZ_CC  ?= clang
FUZZ     := $(BUILD)/fuzz_safetensors

.PHONY: all test demo bench clean setup fuzz soak
.SECONDARY:  # keep objects make would treat as intermediate (tests' .o)
all: $(BUILD)/hstu $(TESTS) fuzz

# Objects depend on the flags they were built with: the stamp changes when
# they do (CUDA on/off, ARCH, CFLAGS), so nothing stale is linked.
FLAGS_STAMP := $(BUILD)/.flags
FLAGS_NOW   := $(CC) $(CFLAGS) | $(NVCC) $(NVCCFLAGS) | $(LDLIBS)
$(shell mkdir -p $(BUILD) && (printf '%s\n' '$(FLAGS_NOW)' | cmp -s - $(FLAGS_STAMP) || \
        printf '%s\n' '$(FLAGS_NOW)' > $(FLAGS_STAMP)))

$(BUILD)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(LIB): $(OBJS) $(CU_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/hstu: $(CLI_OBJS) $(LIB)
	$(CC) $(CFLAGS) $(CLI_OBJS) $(LIB) $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(HARNESS) $(LIB)
	$(CC) $(CFLAGS) $< $(HARNESS) $(LIB) $(LDLIBS) -o $@

# libFuzzer target for the safetensors reader (clang from Debian).
fuzz: $(FUZZ)
FUZZ_SRCS := tests/fuzz/fuzz_safetensors.c src/core/safetensors.c src/core/status.c
$(FUZZ): $(FUZZ_SRCS) src/core/safetensors.h src/core/status.h include/hstu.h
	@mkdir -p $(dir $@)
	@if command -v $(FUZZ_CC) >/dev/null; then \
	  $(FUZZ_CC) -g -O1 -std=c17 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter \
	    -fsanitize=fuzzer,address,undefined -Iinclude -Isrc $(FUZZ_SRCS) -ljansson -o $@; \
	else echo "note: $(FUZZ_CC) not found, fuzz target not built"; fi

test: all
	PYTHON=$(PYTHON) BUILD=$(BUILD) sh tests/run_all.sh

demo: $(BUILD)/hstu
	$(BUILD)/hstu demo

bench: $(BUILD)/hstu
	PYTHON=$(PYTHON) BUILD=$(BUILD) sh bench/cpu_vs_torch.sh

# The server under the sanitizers, in its own build directory (CPU only).
SOAK_BUILD ?= $(BUILD)/asan
soak:
	CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined" \
	  $(MAKE) BUILD=$(SOAK_BUILD) CUDA=0 $(SOAK_BUILD)/hstu $(SOAK_BUILD)/tests/test_serve
	BUILD=$(SOAK_BUILD) sh tests/soak.sh

clean:
	rm -rf $(BUILD)

-include $(OBJS:.o=.d) $(CU_OBJS:.o=.d) $(CLI_OBJS:.o=.d) $(TESTS:=.d) $(HARNESS:.o=.d)
