rockspec_format = "3.0"
package = "weft"
version = "scm-1"

source = {
  url = "git+https://github.com/weft-lua/weft",
}

description = {
  summary = "Job orchestration for Lua 5.4: worker pools, contexts, error groups, channels",
  detailed = [[
weft runs Lua jobs in parallel on bounded pools of OS threads, each worker
with its own lua_State, under a tree of cancellation contexts (Go's context
package), with error groups, bounded channels and deadlock detection.
The engine is written in C; durations are parsed by an LPeg grammar.
]],
  homepage = "https://github.com/weft-lua/weft",
  license = "MIT",
  labels = { "concurrency", "threads", "workers", "context" },
}

dependencies = {
  "lua >= 5.4",
  "lpeg",
}

build = {
  type = "builtin",
  modules = {
    ["weft.core"] = {
      sources = {
        "engine/alloc.c",
        "engine/channel.c",
        "engine/context.c",
        "engine/cycle.c",
        "engine/exec.c",
        "engine/future.c",
        "engine/host.c",
        "engine/lchan.c",
        "engine/lcontext.c",
        "engine/lexec.c",
        "engine/lpool.c",
        "engine/lprogress.c",
        "engine/lsignal.c",
        "engine/lwait.c",
        "engine/lweft.c",
        "engine/object.c",
        "engine/pmap.c",
        "engine/pool.c",
        "engine/runtime.c",
        "engine/timer.c",
        "engine/value.c",
        "engine/wait.c",
      },
      defines = { "_GNU_SOURCE" },
      libraries = { "pthread" },
      incdirs = { "engine" },
    },
    weft = "lua/weft/init.lua",
    ["weft.duration"] = "lua/weft/duration.lua",
    ["weft.cli"] = "lua/weft/cli.lua",
    ["weft.grammar"] = "lua/weft/grammar.lua",
    ["weft.group"] = "lua/weft/group.lua",
    ["weft.pipeline"] = "lua/weft/pipeline.lua",
    ["weft.runlog"] = "lua/weft/runlog.lua",
    ["weft.template"] = "lua/weft/template.lua",
  },
  install = {
    bin = { weft = "bin/weft" },
  },
}
