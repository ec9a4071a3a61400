-- wrk script for benchmarks/load_ceiling.py: the ceiling workload as one fixed request
-- (streamed, 16 tokens, usage). The API comes from the URL path; wrk.path is set by wrk.
local chat = string.find(wrk.path or "", "chat") ~= nil
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local words = string.rep("hello ", 31) .. "hello"
if chat then
  wrk.body = '{"model":"sim-model","messages":[{"role":"user","content":"' .. words .. '"}],'
    .. '"max_tokens":16,"stream":true,"stream_options":{"include_usage":true},"ignore_eos":true}'
else
  wrk.body = '{"model":"sim-model","prompt":"' .. words .. '",'
    .. '"max_tokens":16,"stream":true,"stream_options":{"include_usage":true},"ignore_eos":true}'
end
