//! tollgate's own HTTP/1 server codec, for the request that is most of the traffic: a complete,
//! bodiless head from an HTTP/1.0 or 1.1 client at the start of its read (not CONNECT, which
//! Pingora refuses). Pingora's session is heavy for it (a boxed future, a session, a head buffer,
//! a case-preserving header map), so this codec parses it into a [`RequestHeader`] and writes the
//! response itself. Anything else (a body, `Expect`, upgrades, a head split over reads) goes to
//! Pingora untouched, so none of its rules is restated here. A refused head is answered here (400,
//! JSON); bytes after a served head are a pipelined request (RFC 9112 §9.3.2), handed back.
//!
//! Kept as Pingora's session has it, so a client cannot tell them apart: the parse (httparse,
//! strict, Pingora's authority checks), keep-alive (1.1 unless `Connection: close`, 1.0 only with
//! `Connection: keep-alive`, off while shutting down), `Date` and `Connection` on every response,
//! body framing from the final head. On purpose, an HTTP/1.0 client never gets a chunked body
//! (RFC 9112 §6.1), and a connection closed after an error says `Connection: close`.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Stream;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::{encode_chunk, response_framing, Framing, LAST_CHUNK, SERVED_HEADERS};
use crate::downstream::Downstream;
use crate::policy::finish::Finish;
use crate::policy::guard::Limits;
use crate::policy::stamp::Stamp;

/// What a read holds, for this codec.
// Returned once per request and matched at once: moving the head beats boxing it.
#[allow(clippy::large_enum_variant)]
pub enum Head {
    /// A request it serves, and the bytes that followed its head in the read (the next
    /// request's).
    Serve(RequestHeader, Option<BytesMut>),
    /// A head Pingora would refuse too (its parse is the same): answered here with the JSON
    /// error contract, which Pingora's bare 400 does not follow, and the connection closed.
    /// `head_request`: the method read was HEAD (the answer has no body).
    Refuse {
        why: &'static str,
        head_request: bool,
    },
    /// Anything else, for Pingora, with its bytes: an incomplete head, bytes after it, a
    /// request line Pingora may repair (it percent-encodes some bytes of a target), a body,
    /// and every request `shape` declines.
    Pass(BytesMut),
}

/// Read a request head from `buf`, the bytes of one read. `shape` is the further test of the
/// request itself (the proxy's fast-path conditions).
pub fn parse(buf: BytesMut, shape: impl Fn(&RequestHeader) -> bool) -> Head {
    // Frozen, not copied: the header values are slices of the read itself. Handed back
    // unchanged (and uncopied: nothing else holds them by then) when Pingora is to have them.
    let buf = buf.freeze();
    let pass = |buf: Bytes| Head::Pass(BytesMut::from(buf));
    let mut headers = [httparse::EMPTY_HEADER; SERVED_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return pass(buf),
        Err(e) => {
            let head_request = parsed.method == Some("HEAD");
            return match refused(e) {
                Some(why) => Head::Refuse { why, head_request },
                None => pass(buf),
            };
        }
    };
    let Some(req) = request(&parsed, &buf) else {
        return pass(buf);
    };
    if !authority_valid(&req) {
        return Head::Refuse {
            why: "the Host header is repeated, or disagrees with the request target",
            head_request: req.method == http::Method::HEAD,
        };
    }
    match shape(&req) {
        // A copy of what follows (rare): the head's values are slices of the read.
        true => Head::Serve(req, (len < buf.len()).then(|| BytesMut::from(&buf[len..]))),
        false => {
            drop(req);
            pass(buf)
        }
    }
}

/// Why a head that fails the parse is refused, when Pingora would refuse it as well: not for
/// too many headers (Pingora takes more) or a request line (Pingora tries to repair it).
pub(crate) fn refused(e: httparse::Error) -> Option<&'static str> {
    match e {
        httparse::Error::HeaderName => Some("the request has an invalid header name"),
        httparse::Error::HeaderValue => Some("the request has an invalid header value"),
        httparse::Error::NewLine => Some("the request head has an invalid line ending"),
        _ => None,
    }
}

/// The parsed head as a [`RequestHeader`], or `None` for one only Pingora's head represents.
fn request(parsed: &httparse::Request, buf: &Bytes) -> Option<RequestHeader> {
    let version = match parsed.version? {
        1 => http::Version::HTTP_11,
        0 => http::Version::HTTP_10,
        _ => return None,
    };
    let target = parsed.path?.as_bytes();
    let base = buf.as_ptr() as usize;
    // `exact`: the URI is the target as received, by construction.
    let (mut parts, exact) = match origin_form(buf, target, base) {
        // What `RequestHeader::build_no_case` makes of it, with the target left where it was
        // read rather than checked for UTF-8 and copied.
        Some(uri) => {
            let (mut parts, ()) = http::Request::new(()).into_parts();
            parts.method = http::Method::from_bytes(parsed.method?.as_bytes()).ok()?;
            parts.uri = uri;
            parts.headers.reserve(parsed.headers.len());
            (parts, true)
        }
        None => {
            let hint = Some(parsed.headers.len());
            let req = RequestHeader::build_no_case(parsed.method?, target, hint).ok()?;
            (http::request::Parts::from(req), false)
        }
    };
    // The headers go into the map itself: Pingora's `append_header` parses each name twice.
    parts.version = version;
    // The values stay where they were read: slices of the head.
    for h in parsed.headers.iter() {
        let at = h.value.as_ptr() as usize - base;
        let value = http::HeaderValue::from_maybe_shared(buf.slice(at..at + h.value.len()));
        let name = crate::headers::names::parse(h.name.as_bytes());
        parts.headers.try_append(name.ok()?, value.ok()?).ok()?;
    }
    let req = RequestHeader::from(parts);
    // A target the URI does not carry as received (which only Pingora's head keeps).
    (exact || req.raw_path() == target).then_some(req)
}

/// Whether the request has one unambiguous authority, as Pingora's session checks it
/// (`validate_request_authority`). For the common origin-form target (not CONNECT), which
/// carries no authority, that is at most one `Host`, without userinfo: one lookup instead
/// of its two.
fn authority_valid(req: &RequestHeader) -> bool {
    if req.method != http::Method::CONNECT && req.raw_path().first() == Some(&b'/') {
        let mut hosts = req.headers.get_all(http::header::HOST).iter();
        let host = hosts.next();
        return hosts.next().is_none() && !host.is_some_and(|h| h.as_bytes().contains(&b'@'));
    }
    pingora::protocols::http::authority::validate_request_authority(req).is_ok()
}

/// An origin-form target of ASCII without a fragment as the `Uri` Pingora's head stores for
/// it (a path and query, nothing else), made on a slice of the read; `None` for any other
/// (Pingora's head is built for those).
fn origin_form(buf: &Bytes, target: &[u8], base: usize) -> Option<http::Uri> {
    if target.first() != Some(&b'/') || !target.is_ascii() || target.contains(&b'#') {
        return None;
    }
    let at = target.as_ptr() as usize - base;
    let pq = http::uri::PathAndQuery::from_maybe_shared(buf.slice(at..at + target.len())).ok()?;
    Some(http::Uri::from(pq))
}

/// Whether the client asked to keep the connection, as Pingora reads its first `Connection`
/// header: a whole value of `keep-alive` or `close` says so; in a list only `close` counts;
/// without either, HTTP/1.1 keeps it and HTTP/1.0 does not.
fn client_keepalive(req: &RequestHeader) -> bool {
    if let Some(v) = req.headers.get(CONNECTION) {
        let v = v.as_bytes();
        if v.eq_ignore_ascii_case(b"keep-alive") {
            return true;
        }
        if crate::headers::tokens(v).any(|t| t.eq_ignore_ascii_case(b"close")) {
            return false;
        }
    }
    req.version == http::Version::HTTP_11
}

/// What [`H1::framing_of`] saw of a response's headers besides its framing.
#[derive(Default)]
struct Seen {
    length: bool,
    date: bool,
    connection: bool,
}

/// One request on a connection this codec serves.
pub struct H1<'s> {
    stream: &'s mut Stream,
    req: RequestHeader,
    peer_ip: Option<IpAddr>,
    tls: bool,
    /// The client asked to keep the connection and the server is not shutting down: the
    /// most `keepalive` may be.
    allowed: bool,
    keepalive: bool,
    response: Option<Box<ResponseHeader>>,
    framing: Framing,
    /// What is written but not yet sent: a head waits for its body's first piece, so a small
    /// response leaves in one segment.
    out: Vec<u8>,
    sent: usize,
    /// The response ended as framed.
    complete: bool,
    /// `limits.send_timeout`, once admission set it.
    write_timeout: Option<Duration>,
}

impl<'s> H1<'s> {
    pub fn new(stream: &'s mut Stream, req: RequestHeader, shutting_down: bool) -> Self {
        let peer_ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let tls = stream.get_ssl_digest().is_some();
        let allowed = !shutting_down && client_keepalive(&req);
        H1 {
            stream,
            req,
            peer_ip,
            tls,
            allowed,
            keepalive: allowed,
            response: None,
            framing: Framing::Done,
            out: Vec::new(),
            sent: 0,
            complete: false,
            write_timeout: None,
        }
    }

    /// Whether the connection can carry another request: the response went out whole and
    /// nothing asked to close.
    pub fn reusable(&self) -> bool {
        self.keepalive && self.complete
    }

    async fn send(&mut self) -> Result<()> {
        let out = std::mem::take(&mut self.out);
        let written = crate::downstream::write_within(self.stream, &out, self.write_timeout).await;
        written.map_err(|e| {
            self.keepalive = false;
            let kind = match e.kind() {
                std::io::ErrorKind::TimedOut => ErrorType::WriteTimedout,
                _ => ErrorType::WriteError,
            };
            Error::because(kind, "writing the response", e).into_down()
        })?;
        // Keep the allocation for the next write of this response.
        self.out = out;
        self.out.clear();
        Ok(())
    }

    /// How the response's body is framed, and whether it names its length, from one pass
    /// over its headers (each lookup by name would hash it). Also whether it has the
    /// `Date` or `Connection` the codec writes itself.
    fn framing_of(&self, resp: &ResponseHeader) -> (Framing, Seen) {
        let (mut last_coding, mut length, mut seen) = (None, None, Seen::default());
        for (name, v) in &resp.headers {
            if name == TRANSFER_ENCODING {
                last_coding = Some(v);
            } else if name == CONTENT_LENGTH {
                length = length.or(Some(v));
            } else if name == DATE {
                seen.date = true;
            } else if name == CONNECTION {
                seen.connection = true;
            }
        }
        seen.length = length.is_some();
        let chunked = last_coding.is_some_and(|v| crate::headers::ends_chunked(v.as_bytes()));
        let length = length.and_then(|v| crate::headers::parse_length(v.as_bytes()));
        let head_request = self.req.method == http::Method::HEAD;
        let framing = response_framing(resp.status.as_u16(), head_request, chunked, length);
        (framing, seen)
    }

    async fn write_header(
        &mut self,
        mut resp: Box<ResponseHeader>,
        stamp: Option<Stamp<'_>>,
        end: bool,
    ) -> Result<()> {
        if self.response.is_some() {
            return Ok(());
        }
        let seen;
        (self.framing, seen) = self.framing_of(&resp);
        if matches!(self.framing, Framing::Chunked(_)) && self.req.version == http::Version::HTTP_10
        {
            // An HTTP/1.0 client does not know chunked framing (RFC 9112 §6.1): its body is
            // sent as it is and ends with the connection.
            resp.remove_header(&TRANSFER_ENCODING);
            self.framing = Framing::Close;
        }
        if self.framing == Framing::Close {
            self.keepalive = false;
        }
        // `Date` and `Connection` are the codec's, written after the head's own headers rather
        // than inserted into its map: `ResponseHeader` inserts parse the name again, and its
        // map is reachable only by taking the head apart and building it anew. A remove
        // parses nothing.
        if seen.date {
            resp.remove_header(&DATE);
        }
        if seen.connection {
            resp.remove_header(&CONNECTION);
        }
        let date = pingora::protocols::http::date::get_cached_date();
        self.out.reserve(384 + resp.headers.len() * 48);
        let version = match resp.version {
            http::Version::HTTP_10 => "HTTP/1.0 ",
            _ => "HTTP/1.1 ",
        };
        self.out.extend_from_slice(version.as_bytes());
        self.out.extend_from_slice(resp.status.as_str().as_bytes());
        self.out.push(b' ');
        self.out
            .extend_from_slice(resp.get_reason_phrase().unwrap_or("").as_bytes());
        self.out.extend_from_slice(b"\r\n");
        resp.header_to_h1_wire(&mut self.out);
        if let Some(stamp) = stamp {
            stamp.write(&mut self.out);
        }
        self.out.extend_from_slice(b"Date: ");
        self.out.extend_from_slice(date.as_bytes());
        let connection: &[u8] = match self.keepalive {
            true => b"\r\nConnection: keep-alive\r\n\r\n",
            false => b"\r\nConnection: close\r\n\r\n",
        };
        self.out.extend_from_slice(connection);
        // A body of unknown length may be produced as it goes: its head goes out now, as
        // Pingora's does.
        let streaming = !seen.length;
        self.response = Some(resp);
        if end {
            self.finish_body();
        }
        if end || streaming {
            self.send().await?;
        }
        Ok(())
    }

    /// The body's end: the terminating chunk, and whether the response is whole.
    fn finish_body(&mut self) {
        match self.framing {
            Framing::Length(left) => self.complete = left == 0,
            Framing::Chunked(_) => {
                self.out.extend_from_slice(LAST_CHUNK);
                self.complete = true;
            }
            Framing::Close | Framing::Done => self.complete = true,
        }
    }

    async fn write_body(&mut self, body: Option<Bytes>, end: bool) -> Result<()> {
        if self.response.is_none() || self.complete {
            return Ok(());
        }
        let data = body.as_deref().unwrap_or_default();
        match self.framing {
            Framing::Length(left) => {
                // Never more than the head promised.
                let take = data.len().min(left as usize);
                self.out.extend_from_slice(&data[..take]);
                self.framing = Framing::Length(left - take as u64);
                self.sent += take;
            }
            Framing::Chunked(_) => {
                encode_chunk(&mut self.out, data);
                self.sent += data.len();
            }
            Framing::Done => {}
            Framing::Close => {
                self.out.extend_from_slice(data);
                self.sent += data.len();
            }
        }
        if end {
            self.finish_body();
        }
        if !self.out.is_empty() {
            self.send().await?;
        }
        Ok(())
    }
}

impl Downstream for H1<'_> {
    fn req_header(&self) -> &RequestHeader {
        &self.req
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.req
    }

    fn raw_head(&self) -> Option<Bytes> {
        // Only asked for with a Transfer-Encoding, which never comes this way.
        None
    }

    fn peer_ip(&self) -> Option<IpAddr> {
        self.peer_ip
    }

    fn tls(&self) -> bool {
        self.tls
    }

    fn tls_digest(&self) -> Option<std::sync::Arc<pingora::protocols::tls::SslDigest>> {
        self.stream.get_ssl_digest()
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.response.as_deref()
    }

    fn is_body_empty(&mut self) -> bool {
        true
    }

    fn set_keepalive(&mut self, secs: Option<u64>) {
        // Never on against the client's word or a shutdown (as Pingora's session).
        self.keepalive = self.allowed && self.keepalive && secs.is_some();
    }

    /// No body is read here, and the idle wait between requests is the keep-alive loop's.
    fn set_limits(&mut self, limits: &Limits) {
        self.write_timeout = Some(limits.send_timeout);
    }

    fn body_bytes_read(&self) -> usize {
        0
    }

    fn body_bytes_sent(&self) -> usize {
        self.sent
    }

    fn retry_buffer_truncated(&self) -> bool {
        false
    }

    fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
        stamp: Option<Stamp<'_>>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        self.write_header(resp, stamp, end)
    }

    /// The stamp is written as lines after the head's own when it can be: cheaper than
    /// inserting it into the head's map.
    fn finish_head<'a>(
        &self,
        resp: &mut ResponseHeader,
        finish: Finish<'a>,
    ) -> Result<Option<Stamp<'a>>> {
        let origin = self.req.headers.get(http::header::ORIGIN);
        finish.apply_but_stamp(resp, origin)
    }

    fn write_response_body(
        &mut self,
        body: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        self.write_body(body, end)
    }

    async fn cut_short(&mut self) {
        // Every piece was sent as it came; what is missing stays missing, and the connection
        // ends so the client sees the response was cut.
        self.keepalive = false;
        let _ = self.send().await;
    }

    fn pingora(&mut self) -> Option<&mut Session> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Head {
        parse(BytesMut::from(bytes), |_| true)
    }

    /// The authority check of an origin-form target is Pingora's.
    #[test]
    fn the_authority_of_a_request_is_judged_as_pingora_judges_it() {
        let hosts: [&[&str]; 6] = [&[], &["a"], &["a", "a"], &["u@a"], &["a:1"], &["a", "b"]];
        for method in ["GET", "CONNECT", "OPTIONS"] {
            for target in ["/x", "*", "http://a/x", "a:1", "//a/x", "http://u@a/"] {
                for h in hosts {
                    let mut req = RequestHeader::build_no_case(method, target.as_bytes(), None)
                        .expect(target);
                    for v in h {
                        req.append_header("host", *v).unwrap();
                    }
                    let theirs =
                        pingora::protocols::http::authority::validate_request_authority(&req);
                    assert_eq!(
                        authority_valid(&req),
                        theirs.is_ok(),
                        "{method} {target} {h:?}"
                    );
                }
            }
        }
    }

    /// A target made into a `Uri` on the read itself is the one Pingora's head makes.
    #[test]
    fn an_origin_form_target_reads_as_pingoras_head_does() {
        for target in [
            "/",
            "/a",
            "/a/b?c=d&e",
            "/%41%zz",
            "/a?",
            "/a??b",
            "/~x!$&'()*+,;=:@",
            "/a//b",
            "/a?b=/c?d",
            "/\x7f",
            "/a b",
            "/é",
            "/a#f",
            "*",
            "http://h/a",
            "/a\"x",
        ] {
            let buf = Bytes::copy_from_slice(target.as_bytes());
            let ours = origin_form(&buf, &buf, buf.as_ptr() as usize);
            let theirs = RequestHeader::build_no_case("GET", target.as_bytes(), None);
            match ours {
                Some(uri) => {
                    let theirs = theirs.expect(target);
                    assert_eq!(uri, theirs.uri, "{target}");
                    assert_eq!(
                        uri.path_and_query().unwrap().as_str().as_bytes(),
                        theirs.raw_path()
                    );
                }
                None => assert!(
                    !target.starts_with('/')
                        || !target.is_ascii()
                        || target.contains('#')
                        || theirs.is_err(),
                    "{target}: ours refused a target Pingora's head takes as it is"
                ),
            }
        }
    }

    fn kind(h: Head) -> &'static str {
        match h {
            Head::Serve(..) => "serve",
            Head::Refuse { .. } => "refuse",
            Head::Pass(_) => "pass",
        }
    }

    /// What this codec takes, answers, and leaves to Pingora, by the shape of one read.
    #[test]
    fn serves_complete_heads_alone_in_their_read_and_leaves_the_rest() {
        let get = b"GET /a?b=1 HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n\r\n";
        let Head::Serve(req, None) = head(get) else {
            panic!("a plain head is served");
        };
        assert_eq!(req.raw_path(), b"/a?b=1");
        assert_eq!(req.headers.get("x-a").unwrap(), "1");
        let many: Vec<u8> = [
            &b"GET / HTTP/1.1\r\nHost: gw\r\n"[..],
            &b"X-N: n\r\n".repeat(SERVED_HEADERS),
            b"\r\n",
        ]
        .concat();
        let cases: &[(&str, &[u8], &str)] = &[
            ("pipelined", &[&get[..], &get[..]].concat(), "serve"),
            ("incomplete", b"GET / HTTP/1.1\r\nHost: gw\r\n", "pass"),
            ("HTTP/1.0", b"GET / HTTP/1.0\r\n\r\n", "serve"),
            (
                "bad header name",
                b"GET / HTTP/1.1\r\nHost: gw\r\nX A: b\r\n\r\n",
                "refuse",
            ),
            (
                "bad header value",
                b"GET / HTTP/1.1\r\nHost: gw\r\nX: a\x01\r\n\r\n",
                "refuse",
            ),
            (
                "userinfo in Host",
                b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
                "refuse",
            ),
            // Pingora may repair a request line (it percent-encodes a target's spaces).
            (
                "space in target",
                b"GET /a b HTTP/1.1\r\nHost: gw\r\n\r\n",
                "pass",
            ),
            ("bad method", b"G(T / HTTP/1.1\r\nHost: gw\r\n\r\n", "pass"),
            ("more headers than taken here", &many, "pass"),
        ];
        for (name, bytes, want) in cases {
            let got = head(bytes);
            // What Pingora is left is the read, byte for byte.
            if let Head::Pass(back) = &got {
                assert_eq!(&back[..], *bytes, "{name}");
            }
            assert_eq!(kind(got), *want, "{name}");
        }
        let Head::Pass(back) = parse(BytesMut::from(&get[..]), |_| false) else {
            panic!("a shape the proxy declines is passed");
        };
        assert_eq!(&back[..], &get[..]);
        // Pipelined: the first is served, the rest handed back with it, whole.
        let next = b"GET /b HTTP/1.1\r\nHost: gw\r\n\r\nGET /c HT";
        let Head::Serve(req, Some(rest)) = head(&[&get[..], &next[..]].concat()) else {
            panic!("a pipelined head is served");
        };
        assert_eq!((req.raw_path(), &rest[..]), (&b"/a?b=1"[..], &next[..]));
    }

    #[test]
    fn keep_alive_is_read_as_pingora_reads_it() {
        let ka = |version: &str, conn: Option<&str>| {
            let c = conn.map_or(String::new(), |c| format!("Connection: {c}\r\n"));
            let raw = format!("GET / HTTP/{version}\r\nHost: gw\r\n{c}\r\n");
            match head(raw.as_bytes()) {
                Head::Serve(req, _) => client_keepalive(&req),
                _ => panic!("{raw}"),
            }
        };
        assert!(ka("1.1", None));
        assert!(!ka("1.0", None));
        assert!(ka("1.0", Some("Keep-Alive")));
        assert!(!ka("1.1", Some("close")));
        // In a list only `close` counts (RFC 9112 §9.3: close wins).
        assert!(!ka("1.1", Some("keep-alive, close")));
        assert!(!ka("1.0", Some("keep-alive, keep-alive")));
        assert!(ka("1.1", Some("keep-alive, foo")));
    }
}
