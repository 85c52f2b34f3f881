//! The client side of one request, whoever serves it.
//!
//! Most requests are served by Pingora's session (HTTP/2, TLS handshakes, request bodies,
//! upgrades); the common plain one by tollgate's own HTTP/1 codec ([`h1`]), which costs a
//! fraction of Pingora's per request. The policy (route, authenticate, limit, relay, answer,
//! log) is written once, against [`Downstream`], so both serve the same decisions.
//!
//! The trait holds what the policy needs of a client session and nothing else; what only a
//! Pingora session has (gRPC answers over h2, WebSocket tunnels) is reached through
//! [`Downstream::pingora`], and such requests never take the other codec.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::tls::SslDigest;
use pingora::proxy::Session;
use pingora::Result;

use crate::policy::finish::Finish;
use crate::policy::guard::Limits;
use crate::policy::stamp::Stamp;

pub mod answer;

/// A client's request and the means to answer it.
pub trait Downstream: Send + Sync {
    fn req_header(&self) -> &RequestHeader;

    /// The request head, to edit before anything reads it (admission only).
    fn req_header_mut(&mut self) -> &mut RequestHeader;

    /// The request head as received, for the checks that must see it before any parser's
    /// repairs (only asked for when the request has a `Transfer-Encoding`).
    fn raw_head(&self) -> Option<Bytes>;

    /// The address of the connection's peer (before any `X-Forwarded-For`).
    fn peer_ip(&self) -> Option<IpAddr>;

    /// Whether the client connection is TLS.
    fn tls(&self) -> bool;

    /// The TLS connection's digest (with the client's certificate, when it sent one).
    fn tls_digest(&self) -> Option<Arc<SslDigest>>;

    /// The response head sent, once it is.
    fn response_written(&self) -> Option<&ResponseHeader>;

    /// Whether the request has no body left unread.
    fn is_body_empty(&mut self) -> bool;

    /// Keep the connection for another request (`Some`, for that many seconds idle) or not.
    fn set_keepalive(&mut self, secs: Option<u64>);

    /// The connection's `limits`: how long a write of the response may wait on a client that
    /// takes none of it (`send_timeout`), a read of the request body (`body_idle_timeout`),
    /// and an idle kept-alive connection (`keepalive_timeout`).
    fn set_limits(&mut self, limits: &Limits);

    fn body_bytes_read(&self) -> usize;
    fn body_bytes_sent(&self) -> usize;

    /// Whether the request body outgrew what is kept for a retry.
    fn retry_buffer_truncated(&self) -> bool;

    /// Make a backend's response head the client's, as `finish` says, the way this writer
    /// does it: the stamp it leaves for [`Self::write_response_header`] to write, if any.
    /// Pingora's session writes only the head's map, so everything goes there.
    fn finish_head<'a>(
        &self,
        resp: &mut ResponseHeader,
        finish: Finish<'a>,
    ) -> Result<Option<Stamp<'a>>> {
        let origin = self.req_header().headers.get(http::header::ORIGIN);
        finish.apply(resp, origin).map(|()| None)
    }

    /// Write the response head; `stamp`: with the gateway's headers, which are not in the
    /// head's map yet (left by [`Self::finish_head`]).
    fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
        stamp: Option<Stamp<'_>>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    fn write_response_body(
        &mut self,
        body: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The response body was cut short by the backend: send what is held, and end the
    /// connection after, so the client sees a truncated response (one framed by length or
    /// chunks; a body delimited by the close itself looks whole, as on any proxy).
    fn cut_short(&mut self) -> impl Future<Output = ()> + Send;

    /// The Pingora session, when that is what serves the request.
    fn pingora(&mut self) -> Option<&mut Session>;
}

impl Downstream for Session {
    fn req_header(&self) -> &RequestHeader {
        self.as_downstream().req_header()
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.as_downstream_mut().req_header_mut()
    }

    fn raw_head(&self) -> Option<Bytes> {
        self.as_http1().map(|h1| h1.get_headers_raw_bytes())
    }

    fn peer_ip(&self) -> Option<IpAddr> {
        self.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
    }

    fn tls(&self) -> bool {
        // Only a TLS listener gives the connection an SSL digest (HTTP/1 and HTTP/2 alike).
        self.digest().is_some_and(|d| d.ssl_digest.is_some())
    }

    fn tls_digest(&self) -> Option<Arc<SslDigest>> {
        self.digest()?.ssl_digest.clone()
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.as_downstream().response_written()
    }

    fn is_body_empty(&mut self) -> bool {
        self.as_downstream_mut().is_body_empty()
    }

    fn set_keepalive(&mut self, secs: Option<u64>) {
        self.as_downstream_mut().set_keepalive(secs)
    }

    fn set_limits(&mut self, limits: &Limits) {
        let s = self.as_downstream_mut();
        s.set_write_timeout(Some(limits.send_timeout));
        s.set_read_timeout(Some(limits.body_idle_timeout));
        if s.get_keepalive().is_some() {
            s.set_keepalive(Some(limits.keepalive_timeout.as_secs()));
        }
    }

    fn body_bytes_read(&self) -> usize {
        self.as_downstream().body_bytes_read()
    }

    fn body_bytes_sent(&self) -> usize {
        self.as_downstream().body_bytes_sent()
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.as_ref().retry_buffer_truncated()
    }

    async fn write_response_header(
        &mut self,
        mut resp: Box<ResponseHeader>,
        stamp: Option<Stamp<'_>>,
        end: bool,
    ) -> Result<()> {
        if let Some(stamp) = stamp {
            crate::headers::edit_response(&mut resp, |h, _| stamp.insert(h))?;
        }
        Session::write_response_header(self, resp, end).await
    }

    fn write_response_body(
        &mut self,
        body: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        Session::write_response_body(self, body, end)
    }

    async fn cut_short(&mut self) {
        use pingora::protocols::http::HttpTask;
        // Two tasks: Pingora flushes before a failure only on its many-task path.
        let failed = HttpTask::Failed(pingora::Error::explain(
            pingora::ErrorType::ReadError,
            "upstream body cut short",
        ));
        let _ = self
            .as_downstream_mut()
            .response_duplex_vec(vec![HttpTask::Body(None, false), failed])
            .await;
    }

    fn pingora(&mut self) -> Option<&mut Session> {
        Some(self)
    }
}

/// Write all of `buf` to the client and flush it, failing with `TimedOut` when the client
/// takes nothing for `limit` (`None`: no limit). As nginx's `send_timeout`, the limit is
/// between two writes that make progress, not on the whole response.
///
/// Why not `timeout(write_all)`: nearly every response fits the socket's buffer and leaves at
/// once, and arming a timer per write would cost every request a timer-wheel insertion and
/// removal. So the write is first polled as far as it goes, and timers are armed only once
/// the socket is full.
pub(crate) async fn write_within(
    stream: &mut pingora::protocols::Stream,
    buf: &[u8],
    limit: Option<std::time::Duration>,
) -> std::io::Result<()> {
    use std::pin::Pin;
    use std::task::Poll;
    use tokio::io::{AsyncWrite, AsyncWriteExt};

    let mut sent = 0;
    let done = std::future::poll_fn(|cx| {
        while sent < buf.len() {
            match Pin::new(&mut *stream).poll_write(cx, &buf[sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Ready(Ok(false)),
            }
        }
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|()| true)),
            Poll::Pending => Poll::Ready(Ok(false)),
        }
    })
    .await?;
    if done {
        return Ok(());
    }
    while sent < buf.len() {
        match within(limit, stream.write(&buf[sent..])).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => sent += n,
        }
    }
    within(limit, stream.flush()).await
}

/// `io` within `limit`, else `TimedOut`.
async fn within<T>(
    limit: Option<std::time::Duration>,
    io: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let Some(limit) = limit else { return io.await };
    tokio::time::timeout(limit, io).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client took nothing of the response for limits.send_timeout",
        ))
    })
}
