//! How one attempt to reach a backend ended, and whether the request may be sent again.
//!
//! As in pingora, the error itself carries what a retry needs to know: how far the request
//! got (not sent, partly written, fully written), whether the connection was a reused
//! keep-alive one, and whether any answer byte came back. [`retry_decision`] is the one rule
//! that turns it into a [`Retry`]; its invariant, property-tested, is the proxy's central
//! promise: a request that may have reached a backend and is not read-only (a `tools/call`)
//! is never sent again.

use crate::FailureKind;

/// Where an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpstreamErrorKind {
    /// The backend refused the connection, or connecting failed otherwise.
    ConnectRefused,
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// The TLS handshake with an `https://` backend failed.
    TlsHandshake,
    /// Writing the request failed before all of it was written.
    WriteFailed,
    /// The connection closed or failed after the whole request was written, before any
    /// answer byte arrived.
    ResetBeforeAnswer,
    /// The connection closed or failed after some answer bytes, before a complete head.
    ResetInHead,
    /// No complete answer head within the upstream timeout.
    HeadTimeout,
    /// The answer head was not valid HTTP or too large.
    BadHead,
}

impl UpstreamErrorKind {
    /// Every kind, for exhaustive tests.
    pub const ALL: [UpstreamErrorKind; 8] = [
        UpstreamErrorKind::ConnectRefused,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::TlsHandshake,
        UpstreamErrorKind::WriteFailed,
        UpstreamErrorKind::ResetBeforeAnswer,
        UpstreamErrorKind::ResetInHead,
        UpstreamErrorKind::HeadTimeout,
        UpstreamErrorKind::BadHead,
    ];

    /// How much of the request the backend can have received when this happens.
    pub const fn written(self) -> Written {
        match self {
            UpstreamErrorKind::ConnectRefused
            | UpstreamErrorKind::ConnectTimeout
            | UpstreamErrorKind::TlsHandshake => Written::Nothing,
            UpstreamErrorKind::WriteFailed => Written::Partly,
            UpstreamErrorKind::ResetBeforeAnswer
            | UpstreamErrorKind::ResetInHead
            | UpstreamErrorKind::HeadTimeout
            | UpstreamErrorKind::BadHead => Written::Fully,
        }
    }
}

/// How much of a request went out before an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Written {
    /// No byte: the connection was never established.
    Nothing,
    /// Some bytes but not the whole request: a backend cannot act on a request whose body
    /// (framed by `Content-Length`) is incomplete.
    Partly,
    /// The whole request: the backend may be running it.
    Fully,
}

/// One failed attempt, with what a retry needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamError {
    kind: UpstreamErrorKind,
    reused: bool,
    answer_bytes: bool,
}

impl UpstreamError {
    /// An error of `kind` on a connection that was `reused` (pooled keep-alive) or fresh.
    /// Answer bytes are possible only for [`UpstreamErrorKind::ResetInHead`] and
    /// [`UpstreamErrorKind::BadHead`] (always true there) and
    /// [`UpstreamErrorKind::HeadTimeout`] (as given).
    pub const fn new(kind: UpstreamErrorKind, reused: bool, answer_bytes: bool) -> Self {
        let answer_bytes = match kind {
            UpstreamErrorKind::ResetInHead | UpstreamErrorKind::BadHead => true,
            UpstreamErrorKind::HeadTimeout => answer_bytes,
            _ => false,
        };
        let reused = match kind.written() {
            Written::Nothing => false,
            _ => reused,
        };
        UpstreamError {
            kind,
            reused,
            answer_bytes,
        }
    }

    /// A connection that could not be established (never reached the backend).
    pub const fn connect(kind: UpstreamErrorKind) -> Self {
        UpstreamError::new(kind, false, false)
    }

    /// Where the attempt failed.
    pub const fn kind(&self) -> UpstreamErrorKind {
        self.kind
    }

    /// How much of the request went out.
    pub const fn written(&self) -> Written {
        self.kind.written()
    }

    /// Whether the connection was a pooled keep-alive one.
    pub const fn reused(&self) -> bool {
        self.reused
    }

    /// Whether any answer byte arrived.
    pub const fn answer_bytes(&self) -> bool {
        self.answer_bytes
    }

    /// Whether the backend may have received the whole request (and may be running it).
    pub const fn may_have_reached(&self) -> bool {
        matches!(self.written(), Written::Fully)
    }

    /// How the health rules count it against the backend.
    pub const fn failure_kind(&self) -> FailureKind {
        match self.kind {
            UpstreamErrorKind::ConnectRefused | UpstreamErrorKind::TlsHandshake => {
                FailureKind::Connect
            }
            UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::HeadTimeout => {
                FailureKind::Timeout
            }
            _ => FailureKind::Reset,
        }
    }

    /// The HTTP status and message the client gets when no retry follows.
    pub const fn status(&self) -> (u16, &'static str) {
        match self.kind {
            UpstreamErrorKind::ConnectRefused => (502, "backend unreachable"),
            UpstreamErrorKind::ConnectTimeout => (504, "backend connect timed out"),
            UpstreamErrorKind::TlsHandshake => (502, "TLS handshake with the backend failed"),
            UpstreamErrorKind::WriteFailed => (502, "could not send the request to the backend"),
            UpstreamErrorKind::ResetBeforeAnswer | UpstreamErrorKind::ResetInHead => {
                (502, "backend closed the connection before answering")
            }
            UpstreamErrorKind::HeadTimeout => (504, "upstream timed out"),
            UpstreamErrorKind::BadHead => (502, "malformed response from backend"),
        }
    }
}

/// What the request is, as far as retrying it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetryContext {
    /// The method only reads (`tools/list`, `resources/read`, ...; see the proxy's method
    /// list). A `tools/call` is not.
    pub read_only: bool,
    /// The request belongs to a session pinned to the backend that failed.
    pub sticky: bool,
    /// A pinned session may move to another backend (`session_failover = "reinitialize"`).
    pub can_fail_over: bool,
    /// This request already used its one retry on a fresh connection to the same backend.
    pub fresh_retry_used: bool,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Answer the client with the error; nothing is sent again.
    No,
    /// Send again to the same backend on a new connection (the pooled one was stale).
    FreshConnection,
    /// Send to another backend of the group (the request never reached this one).
    OtherBackend,
    /// Send to another backend only if the retry budget allows (a read that may have run).
    OtherBackendIfBudget,
    /// Move the session to another backend (replaying its `initialize`), then send there.
    FailOver,
}

/// The retry rule, for every way an attempt can fail.
///
/// - Nothing or only part of the request went out: the backend cannot have acted on it. A
///   failed write gets one more try on a fresh connection to the same backend (a pooled
///   connection the backend had closed), then any other backend; a session's request can
///   only follow its session (fail over, or stop).
/// - The whole request went out: only a read-only method is sent again: on a fresh
///   connection when a reused one died before any answer byte (the classic keep-alive race),
///   else elsewhere within the retry budget, or by failing its session over.
pub const fn retry_decision(err: &UpstreamError, cx: &RetryContext) -> Retry {
    let fresh = match err.kind {
        UpstreamErrorKind::WriteFailed => true,
        UpstreamErrorKind::ResetBeforeAnswer => cx.read_only && err.reused && !err.answer_bytes,
        _ => false,
    };
    if fresh && !cx.fresh_retry_used {
        return Retry::FreshConnection;
    }
    if err.may_have_reached() && !cx.read_only {
        return Retry::No;
    }
    if cx.sticky {
        return if cx.can_fail_over {
            Retry::FailOver
        } else {
            Retry::No
        };
    }
    if err.may_have_reached() {
        Retry::OtherBackendIfBudget
    } else {
        Retry::OtherBackend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(read_only: bool, sticky: bool) -> RetryContext {
        RetryContext {
            read_only,
            sticky,
            can_fail_over: false,
            fresh_retry_used: false,
        }
    }

    #[test]
    fn a_tool_call_that_was_written_is_never_resent() {
        for kind in UpstreamErrorKind::ALL {
            let e = UpstreamError::new(kind, true, false);
            let d = retry_decision(&e, &cx(false, false));
            if e.may_have_reached() {
                assert_eq!(d, Retry::No, "{kind:?}");
            }
        }
    }

    #[test]
    fn the_keep_alive_race_retries_a_read_on_a_fresh_connection_once() {
        let e = UpstreamError::new(UpstreamErrorKind::ResetBeforeAnswer, true, false);
        assert_eq!(retry_decision(&e, &cx(true, false)), Retry::FreshConnection);
        let used = RetryContext {
            fresh_retry_used: true,
            ..cx(true, false)
        };
        assert_eq!(retry_decision(&e, &used), Retry::OtherBackendIfBudget);
        // On a fresh connection the same reset is no race: the backend may be running it.
        let e = UpstreamError::new(UpstreamErrorKind::ResetBeforeAnswer, false, false);
        assert_eq!(
            retry_decision(&e, &cx(true, false)),
            Retry::OtherBackendIfBudget
        );
    }

    #[test]
    fn never_reached_goes_elsewhere_unless_pinned() {
        let e = UpstreamError::connect(UpstreamErrorKind::ConnectRefused);
        assert!(!e.reused());
        assert_eq!(retry_decision(&e, &cx(false, false)), Retry::OtherBackend);
        assert_eq!(retry_decision(&e, &cx(false, true)), Retry::No);
        let failover = RetryContext {
            can_fail_over: true,
            ..cx(false, true)
        };
        assert_eq!(retry_decision(&e, &failover), Retry::FailOver);
    }
}
