-- luacheck configuration (make lint)
std = "lua54"
max_line_length = 120
codes = true

files["spec"] = { std = "+busted" }
