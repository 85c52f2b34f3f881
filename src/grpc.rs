//! gRPC requests: recognised once per request by their `Content-Type`, and answered the gRPC
//! way when tollgate itself refuses one.
//!
//! A gRPC client reads the outcome of a call from `grpc-status`, not from the HTTP status: a
//! JSON 401 would surface as a vague UNKNOWN or INTERNAL error. So a refused gRPC call gets a
//! *trailers-only* answer (gRPC PROTOCOL-HTTP2.md): HTTP 200, `content-type: application/grpc`
//! (a gRPC-Web call's own type, see [`answer_content_type`]), `grpc-status` and a
//! percent-encoded `grpc-message` in one HEADERS frame that ends the stream, plus the
//! gateway's usual headers (`x-request-id`, `Retry-After`, `RateLimit-*`,
//! `WWW-Authenticate`).
//!
//! Which status: tollgate stands where the gRPC library would, so the codes are those
//! gRPC's `statuscodes.md` lists for library-made errors, with the cause known exactly:
//! see [`status`]. Like the libraries, tollgate never answers INVALID_ARGUMENT, NOT_FOUND or
//! the other codes left to applications, so a client seeing one knows the backend said it.

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;

use crate::error::Reject;

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// Is this a gRPC call? `Content-Type: application/grpc`, optionally followed by `+proto`,
/// `+json`, ..., parameters, or `-web` (gRPC-Web clients read a trailers-only answer too).
pub fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| is_grpc_type(ct.as_bytes()))
}

/// Whether a `Content-Type` value is gRPC's ([`is_grpc`]).
pub fn is_grpc_type(ct: &[u8]) -> bool {
    const PREFIX: &[u8] = b"application/grpc";
    ct.len() >= PREFIX.len()
        && ct[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(ct.get(PREFIX.len()), None | Some(b'+' | b';' | b'-'))
}

/// The `Content-Type` of tollgate's answer to a gRPC call: `application/grpc`, or for a
/// gRPC-Web call the media type it sent (`application/grpc-web+proto`, `…+json`,
/// `application/grpc-web-text…`), lower-cased and without parameters. gRPC-Web clients pick
/// the decoder by it (PROTOCOL-WEB.md), and some refuse an answer in plain `application/grpc`.
pub fn answer_content_type(req: &RequestHeader) -> HeaderValue {
    const WEB: &[u8] = b"application/grpc-web";
    let ct = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .map_or(&[][..], |v| v.as_bytes());
    let media = ct
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if media.len() >= WEB.len() && media[..WEB.len()].eq_ignore_ascii_case(WEB) {
        if let Ok(v) = HeaderValue::from_bytes(&media.to_ascii_lowercase()) {
            return v;
        }
    }
    APPLICATION_GRPC.clone()
}

/// The gRPC status code of a refusal:
///
/// | refusal | gRPC status |
/// |---|---|
/// | 401 unauthorized | 16 UNAUTHENTICATED |
/// | 403 forbidden | 7 PERMISSION_DENIED |
/// | 404 no_route, 405 method_not_allowed | 12 UNIMPLEMENTED ("method not found at server") |
/// | 429 rate_limited | 8 RESOURCE_EXHAUSTED ("server temporarily out of resources") |
/// | 413, 414, 431 (size limits) | 8 RESOURCE_EXHAUSTED ("larger than configured limit") |
/// | 400 bad_request, 500 internal_error | 13 INTERNAL (the HTTP mapping's choice for 400) |
/// | 502 bad_gateway, 503 unavailable | 14 UNAVAILABLE |
/// | 504 gateway_timeout | 4 DEADLINE_EXCEEDED |
pub fn status(reject: Reject) -> u8 {
    match reject {
        Reject::Unauthorized => 16,
        Reject::Forbidden => 7,
        Reject::NoRoute | Reject::MethodNotAllowed => 12,
        Reject::RateLimited
        | Reject::PayloadTooLarge
        | Reject::UriTooLong
        | Reject::HeadersTooLarge => 8,
        Reject::BadRequest | Reject::Internal => 13,
        Reject::BadGateway | Reject::Unavailable => 14,
        Reject::GatewayTimeout => 4,
    }
}

/// `grpc-message` as the spec writes it: bytes outside printable ASCII, and `%`, become `%XX`.
pub fn message_value(message: &str) -> HeaderValue {
    let plain = |b: u8| (0x20..=0x7e).contains(&b) && b != b'%';
    let encoded = if message.bytes().all(plain) {
        HeaderValue::from_str(message)
    } else {
        let mut out = String::with_capacity(message.len() * 3);
        for b in message.bytes() {
            if plain(b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        HeaderValue::from_str(&out)
    };
    encoded.unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `grpc-status` a response reports, from its headers (trailers-only) or its trailers.
pub fn reported_status(headers: &http::HeaderMap) -> Option<u8> {
    headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// Build the trailers-only answer. `Content-Length: 0` frames it for an HTTP/1.1 (gRPC-Web)
/// client; over HTTP/2 the HEADERS frame ends the stream, and a zero length agrees with that.
/// `content_type`: [`answer_content_type`].
pub fn head(
    reject: Reject,
    message: &str,
    content_type: HeaderValue,
    request_id: Option<&HeaderValue>,
    extra: &[(HeaderName, HeaderValue)],
) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(200, Some(6 + extra.len()))?;
    h.insert_header(http::header::CONTENT_TYPE, content_type)?;
    h.insert_header(
        GRPC_STATUS.clone(),
        HeaderValue::from(u16::from(status(reject))),
    )?;
    h.insert_header(GRPC_MESSAGE.clone(), message_value(message))?;
    h.insert_header(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
    crate::error::gateway_headers(&mut h, request_id, extra)?;
    Ok(h)
}

/// Write the trailers-only answer; as for JSON answers, an HTTP/1.1 connection with a request
/// body left unread is not kept alive.
///
/// Over HTTP/2 the head goes straight to Pingora's h2 session: `Session::write_response_header`
/// drops its `end_of_stream` flag for h2 (it calls
/// `pingora_core::protocols::http::ServerSession::write_response_header`, which passes
/// `end: false`), so the stream would end with a
/// separate empty DATA frame (or, after `fail_to_proxy`, with RST_STREAM CANCEL), and gRPC
/// clients read headers without END_STREAM as initial metadata, not as the call's status.
pub async fn respond(
    session: &mut Session,
    reject: Reject,
    message: &str,
    request_id: Option<&HeaderValue>,
    extra: &[(HeaderName, HeaderValue)],
) -> pingora::Result<()> {
    let content_type = answer_content_type(session.req_header());
    let head = Box::new(head(reject, message, content_type, request_id, extra)?);
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    match session.as_downstream_mut() {
        ServerSession::H2(h2) => h2.write_response_header(head, true),
        _ => session.write_response_header(head, true).await,
    }
}

/// End a call whose answer already began (the backend's headers went out) with trailers
/// carrying the gateway's status, when the backend then fails (a read timeout, a reset):
/// without them the client sees a bare RST_STREAM and reports CANCELLED, whatever happened.
/// HTTP/2 only; `false` when the client is not on HTTP/2 (Pingora writes no HTTP/1
/// trailers) and nothing was written.
pub fn end_with_status(session: &mut Session, reject: Reject, message: &str) -> bool {
    let ServerSession::H2(h2) = session.as_downstream_mut() else {
        return false;
    };
    let mut trailers = http::HeaderMap::with_capacity(2);
    trailers.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(u16::from(status(reject))),
    );
    trailers.insert(GRPC_MESSAGE.clone(), message_value(message));
    h2.write_trailers(trailers).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ct: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/pkg.Svc/Call", None).unwrap();
        if let Some(ct) = ct {
            r.insert_header("content-type", ct).unwrap();
        }
        r
    }

    #[test]
    fn recognises_grpc_content_types() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc-web+proto",
            "application/grpc; charset=utf-8",
        ] {
            assert!(is_grpc(&req(Some(ct))), "{ct}");
        }
        for ct in [None, Some("application/json"), Some("application/grpcx")] {
            assert!(!is_grpc(&req(ct)), "{ct:?}");
        }
    }

    #[test]
    fn grpc_web_answers_in_the_calls_own_type() {
        let answer = |ct| answer_content_type(&req(Some(ct)));
        assert_eq!(answer("application/grpc"), "application/grpc");
        assert_eq!(answer("application/grpc+json"), "application/grpc");
        for (sent, type_) in [
            ("application/grpc-web", "application/grpc-web"),
            ("application/grpc-web+proto", "application/grpc-web+proto"),
            ("Application/gRPC-Web+JSON", "application/grpc-web+json"),
            ("application/grpc-web-text", "application/grpc-web-text"),
            (
                "application/grpc-web-text+proto; charset=utf-8",
                "application/grpc-web-text+proto",
            ),
        ] {
            assert_eq!(answer(sent), type_, "{sent}");
        }
    }

    #[test]
    fn every_refusal_has_a_library_status() {
        for r in Reject::ALL {
            let s = status(r);
            // Never a code reserved to applications (INVALID_ARGUMENT 3, NOT_FOUND 5, ...).
            assert!([4, 7, 8, 12, 13, 14, 16].contains(&s), "{r:?} -> {s}");
        }
        assert_eq!(status(Reject::Unauthorized), 16);
        assert_eq!(status(Reject::RateLimited), 8);
        assert_eq!(status(Reject::GatewayTimeout), 4);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message_value("no route"), "no route");
        assert_eq!(message_value("50% off"), "50%25 off");
        assert_eq!(message_value("caf\u{e9}\n"), "caf%C3%A9%0A");
    }

    #[test]
    fn trailers_only_head() {
        let id = HeaderValue::from_static("abc");
        let ct = APPLICATION_GRPC.clone();
        let h = head(Reject::NoRoute, "no route", ct, Some(&id), &[]).unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.headers["grpc-status"], "12");
        assert_eq!(h.headers["content-type"], "application/grpc");
        assert_eq!(h.headers["x-request-id"], "abc");
        assert_eq!(reported_status(&h.headers), Some(12));
    }
}
