//! The general JSON-RPC path of the mock: any message or batch, read into serde_json
//! values and answered from them, and the fast path's entry ([`Conn::post_fast`]).

use std::time::Duration;

use serde_json::{json, Value};

use crate::fast::{self, Call};
use crate::http;
use crate::server::{write_head, Conn, Head, Next, MAX_REQUEST, STATELESS_VERSION};

/// Where `echo` sits in [`crate::state::KNOWN_TOOLS`].
const ECHO: usize = 0;
/// Where `whoami` sits in [`crate::state::KNOWN_TOOLS`].
const WHOAMI: usize = 1;

impl Conn {
    /// Answers the request in `body` without serde_json values if the fast path applies
    /// ([`crate::fast`]) and the request needs no session check the general path would
    /// answer differently; None leaves it to the general path.
    async fn post_fast(&mut self, head: &Head, body: &[u8]) -> Option<std::io::Result<Next>> {
        let answers = self.sh.answers.as_ref()?;
        let req = fast::read(body)?;
        if !self.sh.cfg.stateless && !head.session().is_some_and(|s| self.sh.sessions.is_open(s)) {
            return None;
        }
        let counts = self.sh.counts.thread(self.index);
        counts.add_requests(1);
        let mut session = None;
        match req.call {
            Call::Ping => session = head.session(),
            Call::ToolsList => {}
            Call::Echo(_) | Call::Whoami => {
                counts.add_known_tool(if req.call == Call::Whoami {
                    WHOAMI
                } else {
                    ECHO
                });
                let latency = self.sh.cfg.latency;
                if !latency.is_zero() {
                    monoio::time::sleep(latency).await;
                }
            }
        }
        if self.sh.cfg.sse_calls
            && head.accept_sse
            && matches!(req.call, Call::Echo(_) | Call::Whoami)
        {
            // The event is ready before the head goes out; it follows in a write of its own.
            self.scratch.clear();
            self.scratch.extend_from_slice(b"event: message\ndata: ");
            answers.write(&mut self.scratch, &req);
            self.scratch.extend_from_slice(b"\n\n");
            return Some(self.sse_answer(head.close).await);
        }
        let extra: &[(&str, &str)] = match &session {
            Some(s) => &[("Mcp-Session-Id", s)],
            None => &[],
        };
        write_head(
            &mut self.out,
            200,
            "OK",
            Some("application/json"),
            extra,
            Some(answers.len(&req)),
            head.close,
        );
        answers.write(&mut self.out, &req);
        Some(self.flush_keep().await)
    }

    /// Answers a POST: the fast path when it applies, else the general one.
    pub(crate) async fn post(&mut self, head: &Head) -> std::io::Result<Next> {
        let body = std::mem::take(&mut self.body);
        let fast = self.post_fast(head, &body).await;
        self.body = body;
        if let Some(done) = fast {
            return done;
        }
        let msg: Value = match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(_) => {
                self.counts().add_requests(1);
                let body = rpc_error(&Value::Null, -32700, "Parse error");
                self.json_error(400, "Bad Request", &body, head.close);
                return self.flush_keep().await;
            }
        };
        match msg {
            Value::Array(items) => self.post_batch(head, items).await,
            Value::Object(_) => self.post_one(head, msg).await,
            _ => {
                self.counts().add_requests(1);
                let body = rpc_error(&Value::Null, -32600, "Invalid Request");
                self.json_error(400, "Bad Request", &body, head.close);
                self.flush_keep().await
            }
        }
    }

    /// Session check for a message that is not `initialize`; None if allowed.
    fn session_gate(&self, head: &Head, msg: &Value) -> Option<(u16, &'static str, Value)> {
        if self.sh.cfg.stateless || is_init_request(msg) || is_stateless_style(head, msg) {
            return None;
        }
        self.check_session(head).err().map(|(s, r, mut body)| {
            if let Some(id) = request_id(msg) {
                body["id"] = id.clone();
            }
            (s, r, body)
        })
    }

    async fn post_one(&mut self, head: &Head, msg: Value) -> std::io::Result<Next> {
        self.counts().add_requests(1);
        if let Some((status, reason, body)) = self.session_gate(head, &msg) {
            self.json_error(status, reason, &body, head.close);
            return self.flush_keep().await;
        }
        let Some(id) = request_id(&msg).cloned() else {
            // Notification or response.
            self.head(202, "Accepted", None, &[], Some(0), head.close);
            return self.flush_keep().await;
        };
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        if method == "tools/call" && tool_name(&msg) == Some("progress") && head.accept_sse {
            self.counts().add_tool("progress");
            return self.progress_stream(head, &id, &msg).await;
        }
        let (resp, mut session) = self.dispatch(&id, &msg).await;
        if method == "tools/call" && self.sh.cfg.sse_calls && head.accept_sse {
            self.scratch.clear();
            self.scratch.extend_from_slice(b"event: message\ndata: ");
            serde_json::to_writer(&mut self.scratch, &resp).map_err(std::io::Error::other)?;
            self.scratch.extend_from_slice(b"\n\n");
            return self.sse_answer(head.close).await;
        }
        if session.is_none() && method == "ping" {
            // Like several real servers, repeat the session id on later answers (here: ping),
            // so tests can check the proxy hands the client back the id it holds.
            session = head.session().map(str::to_string);
        }
        self.answer(head, &resp, session.as_deref()).await
    }

    async fn post_batch(&mut self, head: &Head, items: Vec<Value>) -> std::io::Result<Next> {
        self.counts().add_requests(items.len().max(1) as u64);
        if items.is_empty() {
            let body = rpc_error(&Value::Null, -32600, "Invalid Request: empty batch");
            self.json_error(400, "Bad Request", &body, head.close);
            return self.flush_keep().await;
        }
        if let Some((status, reason, body)) = items.iter().find_map(|m| self.session_gate(head, m))
        {
            self.json_error(status, reason, &body, head.close);
            return self.flush_keep().await;
        }
        let mut responses = Vec::new();
        let mut session = None;
        for msg in &items {
            let Some(id) = request_id(msg).cloned() else {
                continue;
            };
            if msg.get("method").and_then(Value::as_str) == Some("tools/call")
                && tool_name(msg) == Some("progress")
            {
                self.counts().add_tool("progress");
                let wait = self.sh.cfg.latency
                    + self.sh.cfg.progress_interval * self.sh.cfg.progress_events as u32;
                monoio::time::sleep(wait).await;
                responses.push(rpc_result(&id, text_content("progress done")));
                continue;
            }
            let (resp, s) = self.dispatch(&id, msg).await;
            if s.is_some() {
                session = s;
            }
            responses.push(resp);
        }
        if responses.is_empty() {
            self.head(202, "Accepted", None, &[], Some(0), head.close);
            return self.flush_keep().await;
        }
        self.answer(head, &Value::Array(responses), session.as_deref())
            .await
    }

    /// Sends the SSE event in `scratch` as a whole answer the way the SDKs' servers do
    /// (`MockConfig::sse_calls`): the head, the event, then the end of the stream, each
    /// written on its own.
    async fn sse_answer(&mut self, close: bool) -> std::io::Result<Next> {
        self.sse_head(close);
        self.flush().await?;
        http::push_chunk(&mut self.out, &self.scratch);
        self.flush().await?;
        self.out.extend_from_slice(http::LAST_CHUNK);
        self.flush_keep().await
    }

    /// Writes `value` as a 200 JSON answer, with `Mcp-Session-Id` when `session`.
    async fn answer(
        &mut self,
        head: &Head,
        value: &Value,
        session: Option<&str>,
    ) -> std::io::Result<Next> {
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, value).map_err(std::io::Error::other)?;
        let extra: &[(&str, &str)] = match &session {
            Some(s) => &[("Mcp-Session-Id", s)],
            None => &[],
        };
        let body = std::mem::take(&mut self.scratch);
        let ctype = Some("application/json");
        self.head(200, "OK", ctype, extra, Some(body.len()), head.close);
        self.out.extend_from_slice(&body);
        self.scratch = body;
        self.flush_keep().await
    }

    /// Answers one request; returns the response and a new session id if one
    /// was issued.
    async fn dispatch(&mut self, id: &Value, msg: &Value) -> (Value, Option<String>) {
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        let params = msg.get("params").unwrap_or(&Value::Null);
        let cfg = &self.sh.cfg;
        match method {
            "initialize" => {
                let version = params
                    .get("protocolVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("2025-06-18");
                let result = json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": true}},
                    "serverInfo": {"name": cfg.name, "version": "0.1"},
                });
                let session = (!cfg.stateless).then(|| self.sh.sessions.open());
                (rpc_result(id, result), session)
            }
            "ping" => (rpc_result(id, json!({})), None),
            "tools/list" => (rpc_result(id, self.sh.tools_list.clone()), None),
            "server/discover" => (
                rpc_result(
                    id,
                    json!({
                        "supportedVersions": [STATELESS_VERSION],
                        "capabilities": {"tools": {"listChanged": true}},
                        "serverInfo": {"name": cfg.name, "version": "0.1"},
                    }),
                ),
                None,
            ),
            "tools/call" => (self.call_tool(id, params).await, None),
            _ => (
                rpc_error(id, -32601, &format!("Method not found: {method}")),
                None,
            ),
        }
    }

    async fn call_tool(&mut self, id: &Value, params: &Value) -> Value {
        let name = params.get("name").and_then(Value::as_str).unwrap_or("");
        let args = params
            .get("arguments")
            .cloned()
            .unwrap_or_else(|| json!({}));
        self.counts().add_tool(name);
        let latency = self.sh.cfg.latency;
        if !latency.is_zero() {
            monoio::time::sleep(latency).await;
        }
        match name {
            "echo" => rpc_result(id, text_content(&args.to_string())),
            "whoami" => rpc_result(id, text_content(&self.sh.cfg.name)),
            "slow" => {
                let ms = args
                    .get("ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(100)
                    .min(600_000);
                monoio::time::sleep(Duration::from_millis(ms)).await;
                rpc_result(id, text_content(&format!("slept {ms} ms")))
            }
            "progress" => {
                let wait = self.sh.cfg.progress_interval * self.sh.cfg.progress_events as u32;
                monoio::time::sleep(wait).await;
                rpc_result(id, text_content("progress done"))
            }
            "big" => {
                let n = args
                    .get("bytes")
                    .and_then(Value::as_u64)
                    .unwrap_or(1024)
                    .min(MAX_REQUEST as u64) as usize;
                rpc_result(id, text_content(&"x".repeat(n)))
            }
            "fail" => rpc_error(id, -32603, "tool failed on purpose"),
            // How MCP servers report a tool that ran and failed, bad arguments included.
            "tool_error" => rpc_result(
                id,
                json!({"content": [{"type": "text", "text": "tool failed on purpose"}], "isError": true}),
            ),
            // A server bug a client must notice: the id comes back with another type.
            "wrong_id" => rpc_result(&Value::String(id.to_string()), text_content("wrong id")),
            _ => rpc_error(id, -32602, &format!("Unknown tool: {name}")),
        }
    }

    /// The `progress` tool answered as an SSE stream.
    async fn progress_stream(
        &mut self,
        head: &Head,
        id: &Value,
        msg: &Value,
    ) -> std::io::Result<Next> {
        let token = msg
            .pointer("/params/_meta/progressToken")
            .cloned()
            .unwrap_or_else(|| json!(0));
        self.sse_head(head.close);
        self.flush().await?;
        let latency = self.sh.cfg.latency;
        if !latency.is_zero() {
            monoio::time::sleep(latency).await;
        }
        let total = self.sh.cfg.progress_events;
        for i in 1..=total {
            if i > 1 {
                monoio::time::sleep(self.sh.cfg.progress_interval).await;
            }
            if self.sh.stopped() {
                return Ok(Next::Close);
            }
            let note = json!({
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": token, "progress": i, "total": total},
            });
            self.sse_event(&note);
            self.flush().await?;
        }
        if total > 0 {
            monoio::time::sleep(self.sh.cfg.progress_interval).await;
        }
        let resp = rpc_result(id, text_content("progress done"));
        self.sse_event(&resp);
        self.out.extend_from_slice(http::LAST_CHUNK);
        self.flush_keep().await
    }
}

fn request_id(msg: &Value) -> Option<&Value> {
    msg.get("method")?;
    msg.get("id").filter(|id| !id.is_null())
}

fn is_init_request(msg: &Value) -> bool {
    request_id(msg).is_some() && msg.get("method").and_then(Value::as_str) == Some("initialize")
}

fn is_stateless_style(head: &Head, msg: &Value) -> bool {
    msg.get("method").and_then(Value::as_str) == Some("server/discover")
        || head.stateless_version
        || msg
            .pointer("/params/_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
            .is_some()
}

fn tool_name(msg: &Value) -> Option<&str> {
    msg.pointer("/params/name").and_then(Value::as_str)
}

pub(crate) fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub(crate) fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

pub(crate) fn text_content(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": false})
}

pub(crate) fn tools_list() -> Value {
    let obj = |props: Value| json!({"type": "object", "properties": props});
    json!({"tools": [
        {"name": "echo", "description": "Returns its arguments as text.", "inputSchema": obj(json!({}))},
        {"name": "whoami", "description": "Returns the backend's name.", "inputSchema": obj(json!({}))},
        {"name": "slow", "description": "Sleeps `ms` milliseconds, then answers.",
         "inputSchema": obj(json!({"ms": {"type": "integer"}}))},
        {"name": "progress", "description": "Sends progress notifications over SSE, then answers.",
         "inputSchema": obj(json!({}))},
        {"name": "big", "description": "Returns a text of `bytes` bytes.",
         "inputSchema": obj(json!({"bytes": {"type": "integer"}}))},
        {"name": "fail", "description": "Always fails with JSON-RPC error -32603.", "inputSchema": obj(json!({}))},
        {"name": "tool_error", "description": "Always answers a result with `isError: true`.", "inputSchema": obj(json!({}))},
        {"name": "wrong_id", "description": "Answers with the request's id turned into a string (a broken server).", "inputSchema": obj(json!({}))},
    ]})
}

#[cfg(test)]
mod tests {
    use super::{ECHO, WHOAMI};
    use crate::state::{KNOWN_TOOLS, RECORDED_HEADERS};

    #[test]
    fn indexes_name_what_they_say() {
        assert_eq!(KNOWN_TOOLS[ECHO], "echo");
        assert_eq!(KNOWN_TOOLS[WHOAMI], "whoami");
        assert_eq!(
            RECORDED_HEADERS[crate::server::PROTOCOL_VERSION],
            "mcp-protocol-version"
        );
        // Every tool the server lists is counted without a lock.
        let list = super::tools_list();
        let names: Vec<&str> = list["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(names, KNOWN_TOOLS);
    }
}
