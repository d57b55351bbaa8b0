# lua-langfuse: build, test, benchmark and install.
#
#   make              build langfuse.core for Lua 5.4 and LuaJIT
#   make test         run the specs under Lua 5.4 and LuaJIT (installs
#                     what is missing, starts the local test server)
#   make demo         run the demo against the local server, or a real
#                     Langfuse when LANGFUSE_* variables are set
#   make bench        benchmarks, printed side by side with ratios
#   make sanitize     the specs against an ASan/UBSan build
#   make test-valgrind  the specs under valgrind memcheck
#   make lint         luacheck and the 80-column check
#   make install      install into the system Lua 5.4 and LuaJIT paths

CC      ?= cc
PREFIX  ?= /usr/local
BUILD   ?= build

LUA54_INC ?= /usr/include/lua5.4
JIT_INC   ?= /usr/include/luajit-2.1

WARN = -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wcast-qual \
       -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wundef \
       -Wvla -Wdeclaration-after-statement
OPT    ?= -O2 -g
CFLAGS_ALL = -std=c99 -D_GNU_SOURCE -fPIC -fvisibility=hidden $(WARN) \
             $(OPT) $(CFLAGS)
LIBS   = -lcurl -lz -lpthread

SRCS = $(sort $(wildcard src/*.c))
HDRS = $(wildcard src/*.h)

SAN_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=all \
            -fno-omit-frame-pointer

.PHONY: all test test-5.4 test-jit demo bench sanitize test-valgrind lint \
        install clean deps fuzz rock rock-install

all: $(BUILD)/5.4/langfuse/core.so $(BUILD)/jit/langfuse/core.so

$(BUILD)/5.4/langfuse/core.so: $(SRCS) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -I$(LUA54_INC) -shared -o $@ $(SRCS) $(LIBS)

$(BUILD)/jit/langfuse/core.so: $(SRCS) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -I$(JIT_INC) -shared -o $@ $(SRCS) $(LIBS)

$(BUILD)/san/langfuse/core.so: $(SRCS) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -O1 $(SAN_FLAGS) -I$(LUA54_INC) -shared -o $@ \
	  $(SRCS) $(LIBS)

deps:
	@tools/deps

test: deps all
	tools/run-tests all

test-5.4: deps all
	tools/run-tests 5.4

test-jit: deps all
	tools/run-tests jit

sanitize: deps $(BUILD)/san/langfuse/core.so
	tools/run-tests san

test-valgrind: deps all
	tools/run-tests valgrind

demo: deps all
	tools/demo

bench: deps all
	tools/run-bench

lint: deps
	luacheck lua spec bench examples
	tools/check-style

install: all
	install -d $(DESTDIR)$(PREFIX)/lib/lua/5.4/langfuse
	install -m 755 $(BUILD)/5.4/langfuse/core.so \
	  $(DESTDIR)$(PREFIX)/lib/lua/5.4/langfuse/core.so
	install -d $(DESTDIR)$(PREFIX)/lib/lua/5.1/langfuse
	install -m 755 $(BUILD)/jit/langfuse/core.so \
	  $(DESTDIR)$(PREFIX)/lib/lua/5.1/langfuse/core.so
	for v in 5.4 5.1; do \
	  install -d $(DESTDIR)$(PREFIX)/share/lua/$$v/langfuse; \
	  install -m 644 lua/langfuse/*.lua \
	    $(DESTDIR)$(PREFIX)/share/lua/$$v/langfuse/; \
	done

# LuaRocks builds through these two targets (rockspec/*.rockspec): it
# passes the interpreter's headers and its install folders.
LUA_INCDIR  ?= $(LUA54_INC)
INST_LIBDIR ?= $(PREFIX)/lib/lua/5.4
INST_LUADIR ?= $(PREFIX)/share/lua/5.4
INST_BINDIR ?= $(PREFIX)/bin

ROCK_INC = $(if $(CURL_INCDIR),-I$(CURL_INCDIR)) \
           $(if $(ZLIB_INCDIR),-I$(ZLIB_INCDIR))

rock: $(SRCS) $(HDRS)
	@mkdir -p $(BUILD)/rock/langfuse
	$(CC) $(filter-out -Werror,$(CFLAGS_ALL)) -I$(LUA_INCDIR) $(ROCK_INC) \
	  -shared \
	  -o $(BUILD)/rock/langfuse/core.so $(SRCS) $(LIBS)

rock-install:
	install -d $(INST_LIBDIR)/langfuse $(INST_LUADIR)/langfuse
	install -m 755 $(BUILD)/rock/langfuse/core.so $(INST_LIBDIR)/langfuse/
	install -m 644 lua/langfuse/*.lua $(INST_LUADIR)/langfuse/

clean:
	rm -rf $(BUILD)

# Fuzzing with libFuzzer (clang).  "make fuzz" builds each target of
# fuzz/ with ASan and UBSan and fuzzes it for FUZZ_SECONDS, starting from
# its seed corpus (fuzz/corpus/<target>) and the kept crash inputs
# (fuzz/regress/<target>); new inputs go to $(BUILD)/fuzz/corpus-<target>
# and a crash stops the run with its input in $(BUILD)/fuzz/.  Copy a
# crash input into fuzz/regress/<target>/ once fixed.  "make
# fuzz-regress" replays the committed inputs once each, without clang.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TARGETS  = encode resp spool exchange
FUZZ_FLAGS    = -std=c99 -D_GNU_SOURCE $(WARN) -O1 -g \
                -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_SRCS_encode = fuzz/fuzz_encode.c fuzz/json_check.c src/lf_encode.c \
                   src/lf_json.c src/lf_schema.c src/lf_time.c \
                   src/lf_uuid.c src/lf_buf.c
FUZZ_LIBS_encode = -I$(LUA54_INC) -llua5.4 -lm
FUZZ_SRCS_resp   = fuzz/fuzz_resp.c src/lf_resp.c src/lf_jread.c \
                   src/lf_buf.c src/lf_http.c
FUZZ_LIBS_resp   = -lcurl -lz -lm
FUZZ_SRCS_spool  = fuzz/fuzz_spool.c src/lf_spool.c src/lf_buf.c
FUZZ_LIBS_spool  = -lz -lpthread
FUZZ_SRCS_exchange = fuzz/fuzz_exchange.c fuzz/json_check.c \
                     src/lf_exchange.c src/lf_jread.c src/lf_json.c \
                     src/lf_time.c src/lf_span.c src/lf_buf.c
FUZZ_LIBS_exchange = -I$(LUA54_INC) -lm

.PHONY: fuzz-build fuzz-regress install-bin

fuzz-build: $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)

$(BUILD)/fuzz/fuzz_%: fuzz/*.c fuzz/*.h $(SRCS) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $(FUZZ_SRCS_$*) $(FUZZ_LIBS_$*)

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(BUILD)/fuzz/corpus-$$t || exit 1; \
	  echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	  $(BUILD)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) \
	    -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz/ $(BUILD)/fuzz/corpus-$$t \
	    fuzz/corpus/$$t fuzz/regress/$$t || exit 1; \
	done

fuzz-regress:
	tests/run-fuzz-regress-test all

# The command-line tool, installed beside the modules.
install: install-bin

install-bin:
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 bin/langfuse $(DESTDIR)$(PREFIX)/bin/langfuse
