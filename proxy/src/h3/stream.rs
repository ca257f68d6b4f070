//! One HTTP/3 request stream as the data path's client connection (`tls::Conn::H3`): the
//! [`crate::exchange`] of a stream over the `h3` crate. The client's STOP_SENDING (what an
//! HTTP/3 client sends, with RESET_STREAM, to cancel a request), or the end of its connection,
//! is the reset the exchange waits for.

use std::io;

use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::server::RequestStream;
use http::Response;

use super::quic::{BidiStream, Shared};
use crate::exchange::{Exchange, Finish, Wire};

/// One HTTP/3 stream, read and written as an HTTP/1.1 request and answer.
pub type H3Stream = Exchange<H3Wire>;

/// The `h3` crate's side of a request stream.
pub struct H3Wire {
    stream: RequestStream<BidiStream, Bytes>,
    /// The connection, for the stream's STOP_SENDING.
    st: Shared,
    id: quinn_proto::StreamId,
}

impl H3Stream {
    /// A stream whose request head is `parts`, on connection `st`.
    pub(crate) fn h3(
        parts: &http::request::Parts,
        stream: RequestStream<BidiStream, Bytes>,
        st: Shared,
        inbound: Vec<u8>,
    ) -> Self {
        let id = quinn_proto::VarInt::from_u64(stream.send_id().into_inner())
            .map(quinn_proto::StreamId::from)
            .unwrap_or_else(|_| quinn_proto::StreamId::from(quinn_proto::VarInt::MAX));
        // HTTP/3 says nothing before the first DATA frame about whether a body follows: a
        // method that carries one (MCP's POST) is read to the stream's end, others are not.
        let has_body = parts.headers.contains_key(http::header::CONTENT_LENGTH)
            || !matches!(
                parts.method,
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::DELETE
                    | http::Method::OPTIONS
            );
        let wire = H3Wire { stream, st, id };
        Exchange::new(parts, has_body, wire, true, inbound)
    }
}

fn other(e: h3::error::StreamError) -> io::Error {
    io::Error::other(e)
}

impl Wire for H3Wire {
    async fn recv(&mut self) -> Option<io::Result<Bytes>> {
        match self.stream.recv_data().await {
            Ok(Some(mut b)) => Some(Ok(b.copy_to_bytes(b.remaining()))),
            Ok(None) => None,
            Err(e) => Some(Err(other(e))),
        }
    }

    async fn send_head(&mut self, head: Response<()>, end: bool) -> io::Result<()> {
        self.stream.send_response(head).await.map_err(other)?;
        if end {
            self.stream.finish().await.map_err(other)?;
        }
        Ok(())
    }

    async fn send_data(&mut self, data: &[u8], end: bool) -> io::Result<()> {
        if !data.is_empty() {
            self.stream
                .send_data(Bytes::copy_from_slice(data))
                .await
                .map_err(other)?;
        }
        if end {
            self.stream.finish().await.map_err(other)?;
        }
        Ok(())
    }

    async fn finish(&mut self, how: Finish) {
        match how {
            Finish::Ended => {
                let _ = self.stream.finish().await;
            }
            Finish::CutShort => self.stream.stop_stream(Code::H3_INTERNAL_ERROR),
            Finish::NoAnswer => self.stream.stop_stream(Code::H3_REQUEST_CANCELLED),
        }
    }

    async fn reset(&mut self) {
        let (st, id) = (&self.st, self.id);
        std::future::poll_fn(|cx| st.borrow_mut().poll_stopped(id, cx)).await
    }
}
