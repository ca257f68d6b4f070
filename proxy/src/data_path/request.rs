//! The types one request carries through the stages of the data path. They live in a module
//! of their own so that the stages and the connection loop both use them and the imports run
//! one way (loop -> stages -> these types).
//!
//! A request's bytes are owned by its [`Request`]: the head and the body exactly as they
//! arrived (bytes of a pipelined next request are split off into the connection's `pending`
//! buffer as soon as the body is complete), so ranges into it stay valid for the whole
//! request and no stage has to remember to drain anything. Accessors return empty slices
//! rather than panic on a range that does not fit.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use protocol::Method;

use crate::config::ClientAddress;
use crate::control::stats;
use crate::data_path::client_address::{self, Hop, IpText};
use crate::tls::Conn;

/// Byte ranges of one request's header names and values.
pub(crate) type HeaderTable = Vec<(Range<usize>, Range<usize>)>;

/// The request head as ranges into the request's buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ReqHead {
    pub method: Range<usize>,
    pub path: Range<usize>,
    pub query: Range<usize>,
    pub minor: u8,
    pub headers: HeaderTable,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// A `Connection` header names fields (other than hop-by-hop ones) to drop before
    /// forwarding.
    pub conn_fields: bool,
    /// The head has an `X-Forwarded-For` or `Forwarded` header (whose values an appended
    /// forwarding header carries on).
    pub forwarded_for: bool,
    pub close: bool,
    pub expect_continue: bool,
    pub session: Option<Range<usize>>,
    pub mcp_method: Option<Range<usize>>,
    pub mcp_name: Option<Range<usize>>,
    /// Length of the head through its blank line.
    pub len: usize,
}

impl ReqHead {
    /// Whether a body follows the head.
    pub fn has_body(&self) -> bool {
        self.chunked || self.content_length.unwrap_or(0) > 0
    }
}

/// The HTTP method, as far as MCP's Streamable HTTP goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpMethod {
    Post,
    Get,
    Delete,
    Other,
}

/// Where a request's body is.
#[derive(Debug, Clone, Default)]
enum BodyAt {
    /// No body read (yet).
    #[default]
    None,
    /// In the request buffer, after the head.
    Buf(Range<usize>),
    /// De-chunked into [`Request::decoded`].
    Decoded,
}

/// One request's bytes and what was learned of them.
#[derive(Default)]
pub(crate) struct Request {
    /// The head, then the body as it arrived (raw chunked bodies: only the undecoded rest).
    pub buf: Vec<u8>,
    pub head: ReqHead,
    /// The de-chunked body of a chunked request.
    pub decoded: Vec<u8>,
    body: BodyAt,
    /// The JSON-RPC id, as a range of the body, once the envelope was read.
    id: Option<Range<usize>>,
    /// The whole request (head and body) has been read; the buffer holds nothing else.
    complete: bool,
}

impl Request {
    fn at(&self, r: &Range<usize>) -> &[u8] {
        self.buf.get(r.clone()).unwrap_or_default()
    }

    /// Clears what the last request learned (its buffers keep their bytes: see the loop).
    pub fn reset_facts(&mut self) {
        self.body = BodyAt::None;
        self.id = None;
        self.complete = false;
    }

    /// Whether the whole request has been read.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The request method's bytes.
    pub fn method_bytes(&self) -> &[u8] {
        self.at(&self.head.method)
    }

    /// The request method.
    pub fn method(&self) -> HttpMethod {
        match self.method_bytes() {
            b"POST" => HttpMethod::Post,
            b"GET" => HttpMethod::Get,
            b"DELETE" => HttpMethod::Delete,
            _ => HttpMethod::Other,
        }
    }

    /// The path of the request target (without the query).
    pub fn path(&self) -> &[u8] {
        self.at(&self.head.path)
    }

    /// The query of the request target, with its `?` (or empty).
    pub fn query(&self) -> &[u8] {
        self.at(&self.head.query)
    }

    /// Path and query.
    pub fn target(&self) -> &[u8] {
        self.at(&(self.head.path.start..self.head.query.end))
    }

    /// Every header as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.head
            .headers
            .iter()
            .map(|(n, v)| (self.at(n), self.at(v)))
    }

    /// The first header of this name (ASCII case-insensitive), trimmed.
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim_ascii())
    }

    /// Whether the request's `Connection` header names the field `name` (which then describes
    /// this hop only and is not forwarded, RFC 9110 §7.6.1).
    pub fn connection_names(&self, name: &[u8]) -> bool {
        self.head.conn_fields
            && self.headers().any(|(n, v)| {
                n.eq_ignore_ascii_case(b"connection") && crate::http::has_token(v, name)
            })
    }

    /// The `Mcp-Session-Id` the client sent, trimmed.
    pub fn session_id(&self) -> Option<&[u8]> {
        self.head.session.as_ref().map(|r| self.at(r).trim_ascii())
    }

    /// The `Mcp-Method` header, trimmed.
    pub fn mcp_method(&self) -> Option<&[u8]> {
        self.head
            .mcp_method
            .as_ref()
            .map(|r| self.at(r).trim_ascii())
    }

    /// The `Mcp-Name` header, trimmed.
    pub fn mcp_name(&self) -> Option<&[u8]> {
        self.head.mcp_name.as_ref().map(|r| self.at(r).trim_ascii())
    }

    /// Notes that the body is `buf[range]`.
    pub fn set_body_in_buf(&mut self, range: Range<usize>) {
        self.body = BodyAt::Buf(range);
    }

    /// Notes that the body is the de-chunked [`Request::decoded`].
    pub fn set_body_decoded(&mut self) {
        self.body = BodyAt::Decoded;
    }

    /// The body (empty until read).
    pub fn body(&self) -> &[u8] {
        match &self.body {
            BodyAt::None => &[],
            BodyAt::Buf(r) => self.at(r),
            BodyAt::Decoded => &self.decoded,
        }
    }

    /// Remembers where the JSON-RPC id is (a slice of [`Request::body`]).
    pub fn set_id(&mut self, id: Option<Range<usize>>) {
        self.id = id;
    }

    /// The request's raw JSON-RPC id, once the envelope was read.
    pub fn id(&self) -> Option<&[u8]> {
        let r = self.id.clone()?;
        Some(self.body().get(r).unwrap_or(b"null"))
    }
}

/// Where `part` (a subslice of `base`) sits in `base`.
pub(crate) fn offset_of(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
    start..start + part.len()
}

/// Per-client-connection state, reused across its requests.
pub(crate) struct ClientConn {
    pub stream: Conn,
    /// The current request (its buffer first receives the bytes read from the client).
    pub req: Request,
    /// Bytes of the next request(s) that arrived with the current one.
    pub pending: Vec<u8>,
    /// Outgoing bytes (upstream request, then response head).
    pub out: Vec<u8>,
    /// Bytes read from upstream.
    pub ubuf: Vec<u8>,
    /// The peer: the TCP peer, or the source a trusted balancer's PROXY protocol header gave.
    pub peer: SocketAddr,
    /// The current request's client address (rate-limit key `client-ip`, hashing, the access
    /// log): the peer's, or the one a trusted proxy's forwarding header gives.
    pub client_ip: IpAddr,
    /// The peer is a trusted proxy (for the current request's configuration).
    pub peer_trusted: bool,
    /// The peer's address (canonical) as text, for the forwarding headers: formatted once,
    /// when the connection's task starts.
    pub peer_text: IpText,
    /// `client_ip` as text: the peer's, formatted again only when a trusted proxy names
    /// another client.
    pub client_text: IpText,
    /// The sealed session id of the last answer that started a session.
    pub new_sid: Vec<u8>,
    /// The last session id this connection's requests carried that opened, and what it
    /// opened to (`SessionSealer::open_memo`): its next request in the session skips the
    /// decryption. Boxed, and filled from the second request with an id: connections without
    /// a session pay nothing; a parked one keeps it only when the warm task that parked it
    /// serves it again (`runtime/park.rs`).
    pub session_memo: crate::session::MemoSlot,
    /// What the current request did, for statistics.
    pub meta: ReqMeta,
    /// Who the current request's credential says it is (`[servers.auth]`).
    pub caller: crate::auth::Caller,
    /// The owner the caller's sessions are sealed with and must carry: `None` in groups
    /// without authentication.
    pub owner: Option<crate::session::Owner>,
    /// The current request lists tools, prompts or resources that the caller's policy
    /// filters: its answer goes through this filter.
    pub list_filter: Option<crate::data_path::policy::ListFilter>,
    /// For a request the response cache missed: what its answer fills.
    pub cache_fill: Option<crate::data_path::cache::Fill>,
    /// A 2026-07-28 call its user approved: an `input_required` round of the backend's own in
    /// its answer gets its `requestState` wrapped with this approval (`data_path::confirm`).
    pub confirm_wrap: Option<Box<crate::policy::confirm::StateFacts>>,
    /// A virtual server's 2026-07-28 retry whose bridged member call waits nowhere here: the
    /// rounds its member's bridged answer is replayed with (`era_bridge::resume`).
    pub era_replay: Option<Box<crate::data_path::era_bridge::Rounds>>,
    /// The policy class of the connection's last caller.
    pub policy_class: Option<crate::data_path::policy::ConnClass>,
    /// The current request's trace (`[telemetry]` only), once decided.
    pub trace: Option<crate::telemetry::TraceContext>,
    /// The deadline of the wait for a backend's answer head, kept from one request to the
    /// next (`runtime::timer`).
    pub head_timer: crate::runtime::timer::Timer,
}

impl ClientConn {
    /// A connection's state before its first request.
    pub fn new(stream: Conn, peer: SocketAddr) -> Self {
        let peer_text = IpText::new(peer.ip().to_canonical());
        ClientConn {
            stream,
            req: Request::default(),
            pending: Vec::new(),
            out: Vec::new(),
            ubuf: Vec::new(),
            peer,
            client_ip: peer_text.ip(),
            peer_trusted: false,
            peer_text,
            client_text: peer_text,
            new_sid: Vec::new(),
            session_memo: crate::session::MemoSlot::default(),
            meta: ReqMeta::default(),
            caller: crate::auth::Caller::default(),
            owner: None,
            list_filter: None,
            cache_fill: None,
            confirm_wrap: None,
            era_replay: None,
            policy_class: None,
            trace: None,
            head_timer: crate::runtime::timer::Timer::default(),
        }
    }

    /// Who the current request's client is, once its head is read.
    pub fn identify(&mut self, cfg: &ClientAddress) {
        let peer = self.peer_text.ip();
        self.peer_trusted = cfg.trusted.contains(peer);
        self.client_ip = if self.peer_trusted {
            client_address::client_ip(&cfg.trusted, cfg.header, peer, self.req.headers())
        } else {
            peer
        };
        self.client_text = if self.client_ip == peer {
            self.peer_text
        } else {
            self.client_text.of(self.client_ip)
        };
    }

    /// The hop the current request arrived on, for its forwarding headers.
    pub fn hop(&self) -> Hop {
        Hop {
            peer: self.peer_text,
            client: self.client_text,
            peer_trusted: self.peer_trusted,
            tls: match &self.stream {
                Conn::Server(_) => true,
                Conn::H2(s) => s.tls,
                Conn::H3(s) => s.tls,
                _ => false,
            },
        }
    }

    /// The request is complete in `req.buf[..end]`: bytes after it (a pipelined request) move
    /// to `pending`, so the request owns exactly its own bytes.
    pub fn complete_request(&mut self, end: usize) {
        if let Some(rest) = self.req.buf.get(end..).filter(|r| !r.is_empty()) {
            self.pending.extend_from_slice(rest);
            self.req.buf.truncate(end);
        }
        self.req.complete = true;
    }

    /// After a request: the pipelined bytes become the next request's start.
    pub fn next_request(&mut self) {
        self.list_filter = None;
        self.cache_fill = None;
        self.confirm_wrap = None;
        self.era_replay = None;
        self.req.buf.clear();
        self.req.decoded.clear();
        self.req.reset_facts();
        if !self.pending.is_empty() {
            std::mem::swap(&mut self.req.buf, &mut self.pending);
        }
    }
}

/// How a 2026-07-28 retry carrying a bridged call's input went on (the audit trail says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EraInput {
    /// The call waited here: the input went to it.
    Resumed,
    /// The call waits nowhere here: it was sent again, answered from the rounds its request
    /// state carries.
    Replayed,
}

impl EraInput {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EraInput::Resumed => "resumed",
            EraInput::Replayed => "replayed",
        }
    }
}

/// Per-request facts gathered along the path and recorded when it ends.
#[derive(Clone, Copy)]
pub(crate) struct ReqMeta {
    pub group: Option<usize>,
    pub backend: Option<usize>,
    /// The MCP method of a JSON-RPC request.
    pub method: Method,
    /// The statistics row: [`stats::METHODS`] index.
    pub row: usize,
    pub tool: Option<usize>,
    pub status: u16,
    pub by_proxy: bool,
    /// When the request was written to the backend, and when the answer's body ended:
    /// [`clock::now_ns`](crate::runtime::clock::now_ns) readings (nanoseconds since the
    /// clock's anchor; a difference is one subtraction, not a call into std).
    pub sent: Option<u64>,
    pub upstream_done: Option<u64>,
    pub bytes_out: u64,
    pub new_session: bool,
    pub ended_session: bool,
    pub sse: bool,
    pub retried: bool,
    /// Attempts after the first (other backends, fresh connections, failovers).
    pub retries: u8,
    /// The JSON-RPC error code of the answer: mcplb's own refusals always, a backend's when
    /// the request is traced and its answer arrived whole as JSON.
    pub rpc_code: Option<i64>,
    /// The backend's answer was a JSON-RPC error object.
    pub jsonrpc_error: bool,
    /// SSE answers: when the first event bytes were forwarded (as `sent`).
    pub first_event: Option<u64>,
    /// Keyed hash of the session id (access log only; the id itself is never logged).
    pub session_hash: u64,
    /// What the group's policy decided, where it has one.
    pub policy: Option<crate::policy::Decision>,
    /// What became of a call that needed its user's approval.
    pub confirm: Option<crate::policy::confirm::Outcome>,
    /// The session's client declared `elicitation` (sealed into a new session id), in a
    /// group whose policy asks for approval.
    pub elicits: bool,
    /// The answer may carry the group's `notifications/tools/list_changed`, which
    /// `confirm_destructive` must see.
    pub watch_tools: bool,
    /// The JSON-RPC error code of an answer mcplb made itself (0: none).
    pub code: i32,
    /// A 2026-07-28 retry carrying the input a bridged call asked for: how it went on.
    pub era_input: Option<EraInput>,
    /// Where the envelope's parts sit in the body (noted only for the audit trail).
    pub rpc: RpcSpans,
}

/// Where a JSON-RPC message's parts sit in the request body: byte ranges `(start, end)` of
/// string contents between their quotes (escapes as received) and of `params.arguments`.
#[derive(Clone, Copy, Default)]
pub(crate) struct RpcSpans {
    /// The message is a request (not a notification or a response).
    pub request: bool,
    /// `method`.
    pub method: Option<(u32, u32)>,
    /// `params.name`.
    pub name: Option<(u32, u32)>,
    /// `params.uri`.
    pub uri: Option<(u32, u32)>,
    /// `params.arguments`.
    pub arguments: Option<(u32, u32)>,
}

impl RpcSpans {
    /// The spans of `env`, parsed from `body`.
    pub fn of(body: &[u8], env: &protocol::Envelope<'_>) -> RpcSpans {
        let span = |part: &[u8]| {
            let r = offset_of(body, part);
            (r.start as u32, r.end as u32)
        };
        RpcSpans {
            request: env.kind == protocol::MessageKind::Request,
            method: env.method.map(|m| span(m.raw())),
            name: env.name.map(|n| span(n.raw())),
            uri: env.uri.map(|u| span(u.raw())),
            arguments: env.arguments.map(span),
        }
    }
}

impl Default for ReqMeta {
    fn default() -> Self {
        ReqMeta {
            group: None,
            backend: None,
            method: Method::Other,
            row: stats::M_GET,
            tool: None,
            status: 0,
            by_proxy: false,
            sent: None,
            upstream_done: None,
            bytes_out: 0,
            new_session: false,
            ended_session: false,
            sse: false,
            retried: false,
            retries: 0,
            rpc_code: None,
            jsonrpc_error: false,
            first_event: None,
            session_hash: 0,
            policy: None,
            confirm: None,
            elicits: false,
            watch_tools: false,
            code: 0,
            era_input: None,
            rpc: RpcSpans::default(),
        }
    }
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep the client connection for the next request.
    KeepAlive,
    /// Close the client connection.
    Close,
    /// Close the client connection after the answer with a lingering close: request bytes
    /// may still be on their way (a body never read, a head that could not be read), and
    /// closing a socket with unread input makes the kernel reset the connection, which can
    /// destroy the answer before the client reads it. The write side is shut first, what the
    /// client still sends is read and dropped for a bounded time (`runtime::linger`), then
    /// the socket closes.
    Linger,
}

impl Next {
    /// `KeepAlive` unless `close`.
    pub fn keep_unless(close: bool) -> Next {
        if close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }
}

/// An answer mcplb makes itself: a JSON-RPC error object carrying the request's id where it
/// was read, with a fitting HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    pub code: i32,
    pub message: &'static str,
    /// Close the connection after the answer (the request could not be delimited).
    pub close: bool,
    /// Extra header lines, each ending in CRLF.
    pub headers: Option<String>,
    /// The error's `data` member (JSON).
    pub data: Option<String>,
}

impl Refusal {
    /// A refusal with JSON-RPC code `code`.
    pub const fn new(status: u16, code: i32, message: &'static str) -> Self {
        Refusal {
            status,
            code,
            message,
            close: false,
            headers: None,
            data: None,
        }
    }

    /// Closing the connection after the answer.
    pub const fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// An "invalid request" refusal (-32600).
    pub const fn invalid(status: u16, message: &'static str) -> Self {
        Refusal::new(status, -32600, message)
    }

    /// With extra header lines (each ending in CRLF).
    pub fn with_headers(mut self, headers: String) -> Self {
        self.headers = Some(headers);
        self
    }

    /// With a JSON `data` member.
    pub fn with_data(mut self, data: String) -> Self {
        self.data = Some(data);
        self
    }
}

/// Why a stage ended a request early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Answer the client with this refusal.
    Refuse(Refusal),
    /// The client closed the connection, or it failed: close without an answer.
    Closed,
    /// A notification over a rate limit: dropped, answered 202 (clients expect no error).
    DroppedNotification,
    /// A `cluster` rate limit has no lease for this caller yet: wait a moment and check again
    /// (`data_path::envelope_leased`).
    LeasePending,
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Stop {
        Stop::Refuse(r)
    }
}
