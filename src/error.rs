//! The error contract: every answer tollgate makes itself is
//! `{"error": code, "message": text, "request_id": id}` as `application/json`, except to a
//! gRPC call, which gets the same refusal as a gRPC status ([`crate::grpc`]). This module is
//! the vocabulary (what a refusal is, its status, code and body); `crate::downstream::answer`
//! writes it to a client.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};

use crate::headers::names::{GATEWAY_NAME, X_GATEWAY, X_REQUEST_ID};

/// What went wrong, with its status and stable code. The code is the contract clients key on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    BadRequest,
    Unauthorized,
    Forbidden,
    NoRoute,
    MethodNotAllowed,
    PayloadTooLarge,
    UriTooLong,
    HeadersTooLarge,
    RateLimited,
    Internal,
    BadGateway,
    Unavailable,
    GatewayTimeout,
}

impl Reject {
    pub const ALL: [Reject; 13] = [
        Reject::BadRequest,
        Reject::Unauthorized,
        Reject::Forbidden,
        Reject::NoRoute,
        Reject::MethodNotAllowed,
        Reject::PayloadTooLarge,
        Reject::UriTooLong,
        Reject::HeadersTooLarge,
        Reject::RateLimited,
        Reject::Internal,
        Reject::BadGateway,
        Reject::Unavailable,
        Reject::GatewayTimeout,
    ];

    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest => 400,
            Reject::Unauthorized => 401,
            Reject::Forbidden => 403,
            Reject::NoRoute => 404,
            Reject::MethodNotAllowed => 405,
            Reject::PayloadTooLarge => 413,
            Reject::UriTooLong => 414,
            Reject::HeadersTooLarge => 431,
            Reject::RateLimited => 429,
            Reject::Internal => 500,
            Reject::BadGateway => 502,
            Reject::Unavailable => 503,
            Reject::GatewayTimeout => 504,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Reject::BadRequest => "bad_request",
            Reject::Unauthorized => "unauthorized",
            Reject::Forbidden => "forbidden",
            Reject::NoRoute => "no_route",
            Reject::MethodNotAllowed => "method_not_allowed",
            Reject::PayloadTooLarge => "payload_too_large",
            Reject::UriTooLong => "uri_too_long",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::RateLimited => "rate_limited",
            Reject::Internal => "internal_error",
            Reject::BadGateway => "bad_gateway",
            Reject::Unavailable => "unavailable",
            Reject::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The answer for a proxying error Pingora reports, by its type and where it came from.
    /// `None`: the client is gone, nothing to answer.
    pub fn from_proxy_error(e: &Error) -> Option<Reject> {
        use ErrorType::*;
        Some(match e.etype() {
            HTTPStatus(400) => Reject::BadRequest,
            HTTPStatus(413) => Reject::PayloadTooLarge,
            HTTPStatus(414) => Reject::UriTooLong,
            HTTPStatus(431) => Reject::HeadersTooLarge,
            HTTPStatus(503) => Reject::Unavailable,
            HTTPStatus(504) => Reject::GatewayTimeout,
            HTTPStatus(s) if *s >= 500 => Reject::BadGateway,
            HTTPStatus(_) => Reject::BadRequest,
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
                if e.esource() == &ErrorSource::Upstream
                    || matches!(e.etype(), ConnectTimedout) =>
            {
                Reject::GatewayTimeout
            }
            _ => match e.esource() {
                ErrorSource::Upstream => Reject::BadGateway,
                ErrorSource::Downstream => match e.etype() {
                    ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout => {
                        return None
                    }
                    _ => Reject::BadRequest,
                },
                ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                    InvalidHTTPHeader => Reject::BadRequest,
                    _ => Reject::Internal,
                },
            },
        })
    }
}

/// The JSON body, with the message and request id escaped as JSON strings.
pub fn body(reject: Reject, message: &str, request_id: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: &'a str,
        message: &'a str,
        request_id: &'a str,
    }
    let body = Body {
        error: reject.code(),
        message,
        request_id,
    };
    let mut v = serde_json::to_vec(&body).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Build the response head of a local error answer.
pub fn head(
    reject: Reject,
    len: usize,
    request_id: Option<&HeaderValue>,
    extra: &[(HeaderName, HeaderValue)],
) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(reject.status(), Some(4 + extra.len()))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, len)?;
    gateway_headers(&mut h, request_id, extra)?;
    Ok(h)
}

/// What every local answer carries, JSON or gRPC: `X-Gateway`, `X-Request-Id` and the
/// refusal's own headers (`Allow`, `Retry-After`, ...).
pub fn gateway_headers(
    h: &mut ResponseHeader,
    request_id: Option<&HeaderValue>,
    extra: &[(HeaderName, HeaderValue)],
) -> pingora::Result<()> {
    h.insert_header(X_GATEWAY.clone(), GATEWAY_NAME.clone())?;
    if let Some(id) = request_id {
        h.insert_header(X_REQUEST_ID.clone(), id.clone())?;
    }
    for (k, v) in extra {
        h.append_header(k.clone(), v.clone())?;
    }
    Ok(())
}

/// Why no backend of `upstream` is left to try. When retries (`retried`) used up every usable
/// backend, the client sees the last failure (504 for a timeout, 502 otherwise), not
/// "unavailable".
pub fn no_backend(upstream: &str, retried: bool, last_failure: Option<Reject>) -> Box<Error> {
    if retried {
        let status = last_failure.map_or(502, Reject::status);
        return Error::explain(
            ErrorType::HTTPStatus(status),
            format!("every backend of upstream {upstream} failed"),
        );
    }
    Error::explain(
        ErrorType::HTTPStatus(503),
        format!("no backend available in upstream {upstream}"),
    )
}

/// The message of the answer to a proxying failure ([`Reject::from_proxy_error`]).
pub fn proxy_error_message(reject: Reject, upstream: Option<&str>) -> String {
    let up = upstream.unwrap_or("?");
    match reject {
        Reject::BadGateway => {
            format!("upstream {up} refused the connection or sent an invalid response")
        }
        Reject::GatewayTimeout => format!("upstream {up} did not answer in time"),
        Reject::Unavailable => format!("no backend of upstream {up} is available"),
        Reject::BadRequest => "the request is malformed".to_owned(),
        Reject::PayloadTooLarge => "the request body is larger than this route accepts".to_owned(),
        _ => "the gateway could not complete the request".to_owned(),
    }
}
