-- luacheck configuration (make lint)
std = "lua54"
max_line_length = 120
codes = true

files["spec"] = { std = "+busted" }

-- Worker globals: jobs and init functions run in worker states, where these
-- are deliberately global (persisting between the jobs of one worker).
files["spec/pool_spec.lua"] = {
  globals = { "INIT_CALLS", "WORKER_INDEX", "JOB_COUNTER", "LOADED_BY_INIT",
              "ORDER", "RAN", "PANIC_HANDLER_RAN", "CLOSED_RAN", "PANICS" },
}

-- The example host's C functions, registered as globals by host.c.
files["examples/host/frame.lua"] = {
  read_globals = { "host_noise", "vec2", "player_position" },
}
