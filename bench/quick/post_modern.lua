-- A 2026-07-28 tools/call as the spec writes it: the revision, client capabilities and client
-- info in _meta, the Mcp-Method/Mcp-Name mirror headers (bench/ab.sh MODE=era).
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"query":"what is the weather in Paris today","limit":10},"_meta":{"progressToken":"tok-42","io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"wrk","version":"4"}}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "echo"
