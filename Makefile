# weft: build, test, sanitize, bench.  `make help` lists the targets.

LUA        ?= lua5.4
LUA_CFLAGS ?= $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
CC         ?= cc
CFLAGS     ?= -O2 -g
WARN        = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
BUILD      ?= build

SRCS := $(wildcard engine/*.c)
HDRS := $(wildcard engine/*.h)

all: $(BUILD)/weft/core.so

$(BUILD)/weft/core.so: $(SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(CFLAGS) $(LUA_CFLAGS) -fPIC -shared -o $@ $(SRCS) -pthread

clean:
	rm -rf build

.PHONY: all clean
