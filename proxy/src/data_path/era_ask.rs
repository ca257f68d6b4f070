//! A 2025-era client's call to a 2026-07-28 backend that asks for input (an `input_required`
//! result): the bytes of `session::era_input`. The call's answer becomes an SSE stream
//! carrying one server-to-client request per input request; the client's answers, POSTed in
//! its session (to any core), are collected here; the call is retried with them
//! (`inputResponses`, the backend's `requestState`) as often as the backend asks again; the
//! final answer ends the stream under the call's own id.

use std::future::Future as _;
use std::task::Poll;
use std::time::Duration;

use lb::{retry_decision, Retry, RetryContext};
use protocol::Method;
use serde_json::Value;

use crate::data_path::era_bridge::{
    era_answer, open_answer, put_chunk, read, send, start_stream, Read, Source,
};
use crate::data_path::request::{ClientConn, Next};
use crate::data_path::response::{self, forward_response, Framing};
use crate::data_path::upstream::{self, Held};
use crate::data_path::waiting::{Registered, Table};
use crate::runtime::core::Core;
use crate::session::era;
use crate::session::era_input::{self, InputRound};
use crate::tls::Conn;

/// How long a call waits for its client's answers to one round of input requests.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a call waiting for its client's answers tells it it is alive (and learns whether
/// the client still is).
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Most rounds of input one call may ask for.
const MAX_ROUNDS: usize = 16;
/// Most calls waiting for their clients' answers, over all cores.
const MAX_WAITING: usize = 1024;

/// Whether a 2025-era client's request of `method` may be answered with `input_required` by
/// a 2026-07-28 backend (the requests the spec lets ask for input).
pub(crate) fn may_ask(method: Method) -> bool {
    matches!(
        method,
        Method::ToolsCall | Method::PromptsGet | Method::ResourcesRead
    )
}

/// What a waiting call's client has answered so far, one slot per input request.
type Answers = Vec<Option<Result<Vec<u8>, Value>>>;

/// Calls waiting for answers, by token (`data_path::waiting`: an answer, POSTed to any core,
/// wakes its call). Off the request path: touched when a backend asks for input, by the
/// client's answers and when the woken call looks.
static WAITING: Table<Answers> = Table::new(MAX_WAITING);

/// A 2025-era client's POSTed response (in `c`): handed to the call waiting for it. Whether it
/// answered a request of mcplb's (it is accepted either way, as a server would).
pub(crate) fn deliver(c: &ClientConn) -> bool {
    let Some(a) = era_input::client_answer(c.req.body()) else {
        return false;
    };
    let Some(session) = c.req.session_id() else {
        return false;
    };
    let (index, outcome) = (a.index, a.outcome);
    WAITING.hand_over(a.token, session, |answers| match answers.get_mut(index) {
        Some(slot) => {
            *slot = Some(outcome);
            true
        }
        None => false,
    })
}

/// Where a call goes and in what form (the 2026-07-28 body and mirror headers).
pub(crate) struct Call<'a> {
    pub gi: usize,
    pub bi: usize,
    pub backend_tag: u32,
    pub body: &'a [u8],
    pub headers: &'a [u8],
}

/// Forwards a 2026-07-28 backend's answer (`up`, its head in `buf`) to a 2025-era client's
/// call that may ask for input. Returns what to do with the client connection and the
/// upstream connection when it may be pooled.
pub(crate) async fn forward(
    core: &Core,
    c: &mut ClientConn,
    mut up: Conn,
    buf: Vec<u8>,
    head_len: usize,
    keep: bool,
    call: Call<'_>,
) -> (Next, Option<Conn>) {
    if era::status_of(buf.get(..head_len).unwrap_or_default()) != Some(200) {
        // An HTTP error: as it is.
        let a = era_answer(&mut up, buf, head_len, call.backend_tag, false);
        let (next, reusable) = forward_response(core, c, a, keep).await;
        return (next, reusable.then_some(up));
    }
    let opened = open_answer(core, c, up, buf, head_len, keep, call.backend_tag).await;
    let turn = match opened {
        Ok(o) => Turn {
            src: o.src,
            is_sse: o.is_sse,
            streaming: o.is_sse,
            client_close: o.client_close,
        },
        Err(done) => return done,
    };
    rounds(core, c, turn, &call).await
}

/// A 2025-era client's call whose SSE answer is open already (mcplb asked its user to approve
/// it there, `data_path::confirm`), sent to a 2026-07-28 backend whose answer head is in `buf`
/// (`n` bytes): the answer goes into that stream, the backend's own `input_required` rounds
/// asked of the client as on any call of a bridged session. `Err`: why the backend's answer
/// could not be read (nothing was relayed).
pub(crate) async fn continue_stream(
    core: &Core,
    c: &mut ClientConn,
    up: Conn,
    buf: Vec<u8>,
    n: usize,
    client_close: bool,
    call: Call<'_>,
) -> Result<(Next, Option<Conn>), String> {
    let (src, is_sse) = retried(core, c, up, buf, n, &call).await?;
    let turn = Turn {
        src,
        is_sse,
        streaming: true,
        client_close,
    };
    Ok(rounds(core, c, turn, &call).await)
}

/// The state of a call between rounds.
struct Turn {
    /// The current answer's source.
    src: Source,
    is_sse: bool,
    /// The client's answer is an SSE stream whose head went out.
    streaming: bool,
    client_close: bool,
}

/// Reads the backend's answers round by round until the call's own answer.
async fn rounds(
    core: &Core,
    c: &mut ClientConn,
    mut t: Turn,
    call: &Call<'_>,
) -> (Next, Option<Conn>) {
    // The answer fills the response cache as a 2026-07-28 client's would (the backend's hints,
    // the group's rules for tools), but only when it came at once: one given after the client's
    // input depends on that input, which is not in the key.
    let mut fill = c.cache_fill.take();
    for _ in 0..MAX_ROUNDS {
        let got = if t.is_sse {
            sse_answer(core, c, &mut t.src, call).await
        } else {
            json_answer(core, &mut t.src, call).await
        };
        let msg = match got {
            Ok(m) => m,
            Err(Gone::Client) => return (Next::Close, None),
            Err(Gone::Backend(why)) => return end_with_error(c, t, &why).await,
        };
        let value: Option<Value> = serde_json::from_slice(&msg).ok();
        let round = match value.as_ref().map(era_input::classify) {
            None | Some(era_input::Answer::Final) => {
                if let Some(f) = fill.take() {
                    crate::data_path::cache::store(core, c, f, &msg, false);
                }
                return end_with(c, t, &msg).await;
            }
            Some(era_input::Answer::Unbridgeable(why)) => {
                let why = format!("mcplb cannot bridge this call for a 2025-era client: {why}");
                return end_with_error(c, t, &why).await;
            }
            Some(era_input::Answer::Input(round)) => round,
        };
        fill = None;
        // The answer to this round is read: its connection is done with.
        let reusable = done_reading(&t.src);
        if !t.streaming {
            if !start_stream(c, t.client_close).await {
                return (Next::Close, None);
            }
            t.streaming = true;
        }
        let answers = match ask(c, &round).await {
            Ok(a) => a,
            Err(Gone::Client) => return (Next::Close, None),
            Err(Gone::Backend(why)) => return end_with_error(c, t, &why).await,
        };
        let Some(retry) = era_input::retry_body(call.body, &answers, round.state.as_deref()) else {
            return end_with_error(c, t, "mcplb could not make the call's retry").await;
        };
        match retry_call(core, c, call, &retry).await {
            Ok((src, is_sse)) => {
                let old = std::mem::replace(&mut t.src, src);
                t.is_sse = is_sse;
                if reusable {
                    core.put_upstream(call.gi, call.bi, old.up);
                }
            }
            Err(why) => return end_with_error(c, t, &why).await,
        }
    }
    let why = format!("the backend asked for input more than {MAX_ROUNDS} times in one call");
    end_with_error(c, t, &why).await
}

/// Why a round ended early.
enum Gone {
    /// The client went away.
    Client,
    /// The backend (or the client's answers) failed the call: why.
    Backend(String),
}

/// Whether the answer of `src` has been read to its end on a connection that stays open.
fn done_reading(src: &Source) -> bool {
    let done = match &src.framing {
        Framing::Chunked(d) => d.is_done(),
        Framing::Length(n) => *n == 0,
        _ => false,
    };
    done && !src.up_close && src.pending.is_empty()
}

/// The whole JSON answer of `src`.
async fn json_answer(core: &Core, src: &mut Source, call: &Call<'_>) -> Result<Vec<u8>, Gone> {
    let mut err = false;
    loop {
        let (_, done) =
            upstream::collect_events_step(&mut src.framing, &src.avail, &mut src.pending, &mut err);
        src.avail.clear();
        if err {
            return Err(Gone::Backend("the backend's answer was cut short".into()));
        }
        let held = src.pending.rest().len();
        if upstream::over_bound(core, call.gi, call.bi, held, Held::Json) {
            return Err(Gone::Backend(
                "the backend's answer is too large (over 64 MiB)".into(),
            ));
        }
        if done {
            break;
        }
        match read(core, src, false).await {
            Read::Bytes => {}
            Read::End => break,
            Read::Failed => return Err(Gone::Backend("the backend's answer was cut short".into())),
        }
    }
    Ok(src.pending.take_rest())
}

/// The response event of the SSE answer of `src` (its data), the events before it relayed to
/// the client (progress, logging).
async fn sse_answer(
    core: &Core,
    c: &mut ClientConn,
    src: &mut Source,
    call: &Call<'_>,
) -> Result<Vec<u8>, Gone> {
    let mut err = false;
    loop {
        let (_, done) =
            upstream::collect_events_step(&mut src.framing, &src.avail, &mut src.pending, &mut err);
        src.avail.clear();
        if err {
            return Err(Gone::Backend("the backend's stream broke".into()));
        }
        let mut chunk = Vec::new();
        let mut answer = None;
        while let Some(event) = src.pending.next_event() {
            let data = era::event_data(event);
            if era::answer_message(&data, false).is_some_and(|m| m.get("method").is_none()) {
                answer = Some(data.into_owned());
                break;
            }
            chunk.extend_from_slice(event);
        }
        if !chunk.is_empty() {
            c.meta
                .first_event
                .get_or_insert_with(crate::runtime::clock::fresh_ns);
            put_chunk(c, &chunk);
            if !send(c).await {
                return Err(Gone::Client);
            }
        }
        if let Some(data) = answer {
            return Ok(data);
        }
        if done {
            return Err(Gone::Backend(
                "the backend's stream ended without the call's answer".into(),
            ));
        }
        // What is left is one event's first bytes: past the bound the call fails without them.
        let held = src.pending.rest().len();
        if upstream::over_bound(core, call.gi, call.bi, held, Held::Event) {
            return Err(Gone::Backend(
                "the backend's stream sent an event over mcplb's max_sse_event_bytes".into(),
            ));
        }
        match read(core, src, true).await {
            Read::Bytes => {}
            Read::End | Read::Failed => {
                return Err(Gone::Backend(
                    "the backend's stream ended without the call's answer".into(),
                ))
            }
        }
    }
}

/// Sends the client one request per input request of `round` and waits for its answers:
/// `(key, result)` in the round's order.
async fn ask(c: &mut ClientConn, round: &InputRound) -> Result<Vec<(String, Vec<u8>)>, Gone> {
    let token: u64 = rand::random();
    let Some(session) = c.req.session_id() else {
        return Err(Gone::Backend("the call has no session to answer in".into()));
    };
    let Some(waiting) = WAITING.register(token, session, vec![None; round.requests.len()]) else {
        return Err(Gone::Backend(format!(
            "more than {MAX_WAITING} calls wait for their clients' input: try again later"
        )));
    };
    let mut chunk = Vec::new();
    for (i, (_, method, params)) in round.requests.iter().enumerate() {
        era_input::request_event(
            &mut chunk,
            &era_input::ask_id(token, i),
            method,
            params.as_ref(),
        );
    }
    if !chunk.is_empty() {
        put_chunk(c, &chunk);
        if !send(c).await {
            return Err(Gone::Client);
        }
    }
    let deadline = monoio::time::Instant::now() + ANSWER_TIMEOUT;
    let answers = loop {
        match wait(&waiting, deadline).await {
            Waited::Answers(a) => break a,
            Waited::TimedOut => {
                return Err(Gone::Backend(format!(
                    "the client did not answer the backend's input requests within {} s",
                    ANSWER_TIMEOUT.as_secs()
                )))
            }
            Waited::Keepalive => {
                // A comment on the call's stream: a client that left is noticed here.
                put_chunk(c, b": keepalive\n\n");
                if !send(c).await {
                    return Err(Gone::Client);
                }
            }
        }
    };
    drop(waiting);
    let mut out = Vec::with_capacity(answers.len());
    for ((key, method, _), a) in round.requests.iter().zip(answers) {
        match a {
            Ok(result) => out.push((key.clone(), result)),
            Err(e) => {
                let text = e.get("message").and_then(Value::as_str).unwrap_or("?");
                return Err(Gone::Backend(format!(
                    "the client answered the backend's {method} request with an error: {text}"
                )));
            }
        }
    }
    Ok(out)
}

/// What a call waiting for its client's answers woke for.
enum Waited {
    /// Every answer came (in the round's order).
    Answers(Vec<Result<Vec<u8>, Value>>),
    /// `deadline` passed.
    TimedOut,
    /// [`KEEPALIVE`] passed without the answers.
    Keepalive,
}

/// Waits until the answers of `waiting` have all come (woken by each), `deadline`, or the
/// next keepalive.
async fn wait(waiting: &Registered<Answers>, deadline: monoio::time::Instant) -> Waited {
    let all = |answers: &mut Answers| {
        answers
            .iter()
            .all(Option::is_some)
            .then(|| answers.iter_mut().filter_map(Option::take).collect())
    };
    let mut timeout = std::pin::pin!(monoio::time::sleep_until(deadline));
    let mut sign = std::pin::pin!(monoio::time::sleep(KEEPALIVE));
    std::future::poll_fn(|cx| {
        if let Some(a) = waiting.poll(cx.waker(), all) {
            return Poll::Ready(Waited::Answers(a));
        }
        if timeout.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Waited::TimedOut);
        }
        if sign.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Waited::Keepalive);
        }
        Poll::Pending
    })
    .await
}

/// Sends the call's retry (`body`) to its backend: the new answer's source (its head read,
/// checked for 200) and whether it streams.
async fn retry_call(
    core: &Core,
    c: &mut ClientConn,
    call: &Call<'_>,
    body: &[u8],
) -> Result<(Source, bool), String> {
    let group = core.shared.config.servers.get(call.gi);
    let (Some(group), Some(backend)) = (group, group.and_then(|g| g.backends.get(call.bi))) else {
        return Err("the call's backend is gone (a reload)".into());
    };
    let hop = c.hop();
    let forwarding = (&core.shared.config.proxy.client_address, &hop);
    let rewrite = upstream::Rewrite {
        version: Some(era::MODERN.as_bytes()),
        body: Some(body),
        headers: call.headers,
        trace: c.trace.as_ref(),
    };
    let mut out = Vec::new();
    upstream::build_request(
        &mut out,
        &c.req,
        backend,
        None,
        &rewrite,
        &group.auth.upstream,
        forwarding,
    );
    let mut fresh = false;
    loop {
        let failed = |_| "the backend could not be reached for the call's retry".to_string();
        let (mut up, reused) = core
            .upstream(call.gi, call.bi, fresh)
            .await
            .map_err(failed)?;
        let len = out.len();
        let (w, back) = up.write_range(out, 0..len).await;
        out = back;
        let mut buf = Vec::new();
        let err = match w {
            Err(_) => lb::UpstreamError::new(lb::UpstreamErrorKind::WriteFailed, reused, false),
            Ok(_) => {
                let deadline =
                    monoio::time::Instant::now() + core.shared.config.proxy.upstream_timeout;
                match upstream::read_head(&mut up, &mut buf, Some(deadline)).await {
                    Ok(n) => return retried(core, c, up, buf, n, call).await,
                    Err(e) => e.upstream(reused),
                }
            }
        };
        let cx = RetryContext {
            read_only: false,
            sticky: true,
            can_fail_over: false,
            fresh_retry_used: fresh,
        };
        if retry_decision(&err, &cx) != Retry::FreshConnection {
            return Err(format!(
                "the backend failed the call's retry: {}",
                err.status().1
            ));
        }
        fresh = true;
    }
}

/// The source of a retry's answer (head of `n` bytes in `buf`).
async fn retried(
    core: &Core,
    c: &mut ClientConn,
    mut up: Conn,
    buf: Vec<u8>,
    n: usize,
    call: &Call<'_>,
) -> Result<(Source, bool), String> {
    let status = era::status_of(buf.get(..n).unwrap_or_default());
    if status != Some(200) {
        return Err(format!(
            "the backend answered the call's retry with HTTP {}",
            status.unwrap_or(0)
        ));
    }
    let mut a = era_answer(&mut up, buf, n, call.backend_tag, false);
    let got = response::final_head(core, c, &mut a).await;
    // The client's stream is under way: the head made for it is not sent.
    c.out.clear();
    let (head, head_len) = got.map_err(|r| r.message.to_string())?;
    let is_sse = head.is_sse;
    let buf = a.buf;
    let (src, _) = Source::after_head(up, head, buf, head_len);
    Ok((src, is_sse))
}

/// Ends the client's answer with the call's answer `msg` (a JSON-RPC response; its id is the
/// call's, the retries having kept it).
async fn end_with(c: &mut ClientConn, t: Turn, msg: &[u8]) -> (Next, Option<Conn>) {
    c.meta.upstream_done = Some(crate::runtime::clock::fresh_ns());
    let reusable = done_reading(&t.src);
    if t.streaming {
        let mut chunk = Vec::with_capacity(msg.len() + 32);
        chunk.extend_from_slice(b"event: message\n");
        protocol::sse::write_data(&mut chunk, msg);
        put_chunk(c, &chunk);
        c.out.extend_from_slice(crate::http::LAST_CHUNK);
    } else {
        use std::io::Write as _;
        let _ = write!(c.out, "content-length: {}\r\n", msg.len());
        if t.client_close {
            c.out.extend_from_slice(b"connection: close\r\n");
        }
        c.out.extend_from_slice(b"\r\n");
        c.out.extend_from_slice(msg);
    }
    if !send(c).await {
        return (Next::Close, None);
    }
    (
        Next::keep_unless(t.client_close),
        reusable.then_some(t.src.up),
    )
}

/// Ends the client's answer with a JSON-RPC error for the call: `why`.
async fn end_with_error(c: &mut ClientConn, mut t: Turn, why: &str) -> (Next, Option<Conn>) {
    let id = c.req.id().unwrap_or_default().to_vec();
    let msg = era_input::call_error(&id, why);
    // The backend's answer was not read to its end: its connection is not pooled.
    t.src.up_close = true;
    end_with(c, t, &msg).await
}
