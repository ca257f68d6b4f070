-- A tools/call inside one MCP session, with an API key: MCP_SESSION and API_KEY come from the
-- environment (bench/ab.sh MODE=session-auth opens the session through the proxy first).
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"query":"what is the weather in Paris today","limit":10},"_meta":{"progressToken":"tok-42"}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Protocol-Version"] = "2025-06-18"
wrk.headers["Mcp-Session-Id"] = os.getenv("MCP_SESSION")
wrk.headers["X-Api-Key"] = os.getenv("API_KEY")
