# weft: build, test, sanitize, bench.  `make help` lists the targets.
#
# The test logic lives in spec/run (a bash script); this file only builds
# and hands over.  Variables below are exported so spec/run compiles the C
# tests with the same flags.

LUA        ?= lua5.4
LUA_CFLAGS ?= $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUA_LIBS   ?= $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4)
CC         ?= cc
CFLAGS     ?= -O2 -g
WARN        = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
SAN        ?=
BUILD      ?= build

# sanitizer builds: flags and output folders (make sanitize builds both)
TSAN_FLAGS  = -fsanitize=thread -fno-omit-frame-pointer
ASAN_FLAGS  = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
SAN_CFLAGS  = -O1 -g

export LUA LUA_CFLAGS LUA_LIBS CC CFLAGS WARN TSAN_FLAGS ASAN_FLAGS SAN_CFLAGS

SRCS := $(wildcard engine/*.c)
HDRS := $(wildcard engine/*.h)

all: $(BUILD)/weft/core.so

$(BUILD)/weft/core.so: $(SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(CFLAGS) $(SAN) $(LUA_CFLAGS) -fPIC -shared -o $@ $(SRCS) -pthread

# build/tsan/weft/core.so and build/asan/weft/core.so
tsan:
	@$(MAKE) --no-print-directory BUILD=build/tsan CFLAGS="$(SAN_CFLAGS)" SAN="$(TSAN_FLAGS)"
asan:
	@$(MAKE) --no-print-directory BUILD=build/asan CFLAGS="$(SAN_CFLAGS)" SAN="$(ASAN_FLAGS)"

# installs missing packages (as root) or says which are missing
deps:
	@spec/run deps

# busted specs + C tests + luarocks check; spec/run builds (make all) itself
test:
	@spec/run test

# the same specs and C tests under ThreadSanitizer, then ASan+UBSan
sanitize:
	@spec/run sanitize

# the same specs and C tests with the collector at its most eager everywhere
gc-stress:
	@spec/run gc-stress

# the same specs and C tests under valgrind's memcheck (slow: minutes)
valgrind:
	@spec/run valgrind

# the allocation-failure sweep (spec/faults/allocfail_test.c; CI runs it
# with ALLOCFAIL_POLICY=both)
allocfail:
	@spec/run allocfail

# libFuzzer on the value copier (fuzz/README.md) for FUZZ_SECONDS (60)
fuzz:
	@FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) spec/run fuzz

# the machine figures the pool bench reports beside its own: the signal
# delivery floor under cancel latency, the core-to-core cache line round
# trip under the overhead case
$(BUILD)/signal_floor: bench/signal_floor.c
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(CFLAGS) -o $@ $< -pthread
$(BUILD)/core_rtt: bench/core_rtt.c
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(CFLAGS) -o $@ $< -pthread

bench: deps all $(BUILD)/signal_floor $(BUILD)/core_rtt
	@WEFT_SIGNAL_FLOOR=$(BUILD)/signal_floor WEFT_CORE_RTT=$(BUILD)/core_rtt LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/?.so;;" $(LUA) bench/run.lua $(BENCH)

# the C embedding example (examples/host), run from the repository root
example: deps
	@mkdir -p $(BUILD)
	$(CC) $(WARN) $(CFLAGS) $(LUA_CFLAGS) -Iengine -o $(BUILD)/example-host examples/host/host.c $(SRCS) $(LUA_LIBS) -lm -pthread
	./$(BUILD)/example-host

demo: deps all
	@LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/?.so;;" $(LUA) scripts/hello.lua

lint:
	@spec/run deps lint
	luacheck lua spec scripts bench examples

format-check:
	clang-format --dry-run --Werror engine/*.c engine/*.h $(wildcard spec/c/*.c tools/*.c)

clean:
	rm -rf build

help:
	@echo "weft make targets:"
	@echo "  make              build $(BUILD)/weft/core.so from engine/*.c"
	@echo "  make test         install missing packages, build, run the busted specs,"
	@echo "                    the C tests (spec/c/*.c) and a luarocks make check"
	@echo "  make sanitize     the same specs and C tests under TSan, then ASan+UBSan"
	@echo "                    (builds into build/tsan and build/asan)"
	@echo "  make gc-stress    the specs and C tests with the most eager collector in"
	@echo "                    every state (WEFT_GC_STRESS=1 for the workers)"
	@echo "  make valgrind     the specs and C tests under valgrind memcheck"
	@echo "  make fuzz         libFuzzer on the value copier (FUZZ_SECONDS=60)"
	@echo "  make allocfail    the allocation-failure sweep (spec/faults)"
	@echo "  make bench        run bench/*_bench.lua (BENCH=name runs one file)"
	@echo "  make demo         run scripts/hello.lua"
	@echo "  make example      build and run the C embedding example (examples/host)"
	@echo "  make lint         luacheck lua/ spec/ scripts/ bench/"
	@echo "  make format-check clang-format check of the C sources (not part of CI)"
	@echo "  make deps         install what is missing (apt-get, as root)"
	@echo "  make clean        remove build/"
	@echo "Environment: WEFT_TEST_TIMEOUT (seconds per spec file, default 600)."

.PHONY: all tsan asan deps test sanitize gc-stress valgrind fuzz allocfail bench demo example lint format-check clean help
