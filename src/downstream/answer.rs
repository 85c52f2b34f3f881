//! Writing a local answer (a refusal, a preflight's empty answer) to the client through either
//! engine's [`Downstream`], in the error contract of [`crate::error`].

use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

use super::Downstream;
use crate::ctx::Ctx;
use crate::error::{body, head, Reject};

/// Write a local error answer: JSON, or the gRPC form for a gRPC call (`grpc`, decided once
/// per request by [`crate::grpc::is_grpc`]). The connection is not kept alive when a request
/// body may be left unread, so it can never be parsed as the next request.
pub async fn respond<D: Downstream>(
    session: &mut D,
    reject: Reject,
    message: &str,
    request_id: Option<&HeaderValue>,
    extra: &[(HeaderName, HeaderValue)],
    grpc: bool,
) -> pingora::Result<()> {
    if let (true, Some(session)) = (grpc, session.pingora()) {
        return crate::grpc::respond(session, reject, message, request_id, extra).await;
    }
    let id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    let body = body(reject, message, id);
    let head = head(reject, body.len(), request_id, extra)?;
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(head), None, head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Answer locally with the JSON error contract (a gRPC status to a gRPC call) and remember
/// the status for the log.
pub async fn reject<D: Downstream>(
    session: &mut D,
    ctx: &mut Ctx,
    reject: Reject,
    message: &str,
    extra: &[(HeaderName, HeaderValue)],
) -> pingora::Result<bool> {
    ctx.local_status = Some(reject.status());
    let id = Some(&ctx.request_id);
    if ctx.grpc {
        ctx.grpc_status = Some(crate::grpc::status(reject));
    }
    respond(session, reject, message, id, extra, ctx.grpc).await?;
    Ok(true)
}

/// A local answer without a body (a CORS preflight), with the gateway's headers.
pub async fn answer_empty<D: Downstream>(
    session: &mut D,
    ctx: &mut Ctx,
    status: u16,
    extra: &[(HeaderName, HeaderValue)],
) -> pingora::Result<bool> {
    ctx.local_status = Some(status);
    // No case map: `edit_response` below hands the head back without one anyway.
    let mut h = ResponseHeader::build_no_case(status, Some(extra.len() + 3))?;
    for (k, v) in extra {
        h.insert_header(k.clone(), v.clone())?;
    }
    h.insert_header(http::header::CONTENT_LENGTH, 0)?;
    crate::headers::edit_response(&mut h, |headers, _| {
        crate::policy::stamp::Stamp::new(&ctx.request_id, None, None).insert(headers);
    })?;
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(h), None, true)
        .await?;
    Ok(true)
}
