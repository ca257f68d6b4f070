//! One HTTP/2 stream as the data path's client connection (`tls::Conn::H2`): the
//! [`crate::exchange`] of a stream over the `h2` crate. A client's RST_STREAM is the reset the
//! exchange waits for.

use std::io;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::Response;

use crate::exchange::{Exchange, Finish, Wire};

/// One HTTP/2 stream, read and written as an HTTP/1.1 request and answer.
pub type H2Stream = Exchange<H2Wire>;

/// The `h2` crate's side of a stream.
pub struct H2Wire {
    /// The request body, until it ends.
    body: Option<RecvStream>,
    /// Where the answer's head goes, until it is sent.
    respond: Option<SendResponse<Bytes>>,
    /// Where the answer's body goes, once its head is sent.
    send: Option<SendStream<Bytes>>,
}

impl H2Stream {
    /// A stream whose request head is `parts`; `body` is `None` when HEADERS ended the stream.
    pub(crate) fn h2(
        parts: &http::request::Parts,
        body: Option<RecvStream>,
        respond: SendResponse<Bytes>,
        tls: bool,
        inbound: Vec<u8>,
    ) -> Self {
        let has_body = body.is_some();
        let wire = H2Wire {
            body,
            respond: Some(respond),
            send: None,
        };
        Exchange::new(parts, has_body, wire, tls, inbound)
    }
}

impl Wire for H2Wire {
    async fn recv(&mut self) -> Option<io::Result<Bytes>> {
        let body = self.body.as_mut()?;
        match body.data().await {
            Some(Ok(data)) => {
                // The data path holds the body (capped by max_body_bytes): the window opens
                // again as soon as the bytes are here.
                let _ = body.flow_control().release_capacity(data.len());
                Some(Ok(data))
            }
            Some(Err(e)) => {
                self.body = None;
                Some(Err(io::Error::other(e)))
            }
            None => {
                self.body = None;
                None
            }
        }
    }

    async fn send_head(&mut self, head: Response<()>, end: bool) -> io::Result<()> {
        let Some(mut respond) = self.respond.take() else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        let send = respond.send_response(head, end).map_err(io::Error::other)?;
        if !end {
            self.send = Some(send);
        }
        Ok(())
    }

    async fn send_data(&mut self, data: &[u8], end: bool) -> io::Result<()> {
        let Some(send) = &mut self.send else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        send_flow(send, data, end).await
    }

    async fn finish(&mut self, how: Finish) {
        match how {
            Finish::Ended => {
                if let Some(s) = &mut self.send {
                    let _ = s.send_data(Bytes::new(), true);
                }
            }
            Finish::CutShort => {
                if let Some(s) = &mut self.send {
                    s.send_reset(h2::Reason::INTERNAL_ERROR);
                }
            }
            Finish::NoAnswer => {
                if let Some(mut r) = self.respond.take() {
                    r.send_reset(h2::Reason::CANCEL);
                }
            }
        }
    }

    async fn reset(&mut self) {
        std::future::poll_fn(|cx| {
            let r = match (&mut self.send, &mut self.respond) {
                (Some(s), _) => s.poll_reset(cx),
                (None, Some(r)) => r.poll_reset(cx),
                (None, None) => return std::task::Poll::Ready(()),
            };
            r.map(|_| ())
        })
        .await
    }
}

/// Sends `data` on `send` as the flow-control windows allow, the last piece with END_STREAM
/// when `end`.
async fn send_flow(send: &mut SendStream<Bytes>, mut data: &[u8], end: bool) -> io::Result<()> {
    if data.is_empty() {
        if end {
            send.send_data(Bytes::new(), true)
                .map_err(io::Error::other)?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let cap = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(io::Error::other(e)),
            None => return Err(io::ErrorKind::BrokenPipe.into()),
        };
        if cap == 0 {
            continue;
        }
        let (now, rest) = data.split_at(cap.min(data.len()));
        send.send_data(Bytes::copy_from_slice(now), end && rest.is_empty())
            .map_err(io::Error::other)?;
        data = rest;
    }
    Ok(())
}
