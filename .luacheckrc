std = "max"
max_line_length = 80
files["spec"] = { std = "+busted" }
files["lua/langfuse/ngx.lua"] = { globals = { "ngx" } }
files["examples/nginx"] = { globals = { "ngx" } }
