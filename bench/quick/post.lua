wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"query":"what is the weather in Paris today","limit":10},"_meta":{"progressToken":"tok-42"}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Protocol-Version"] = "2026-07-28"
