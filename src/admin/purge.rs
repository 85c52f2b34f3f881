//! `POST /cache/purge`: remove a caching route's entries under one path
//! (`{"route": "catalog", "path": "/catalog/a"}`) or a prefix (`{"route": "catalog", "prefix":
//! "/catalog/"}`, on segment boundaries), across hosts, queries, consumers and variants.
//! Answers `{"purged": N}`.

use pingora::protocols::http::ServerSession;

use crate::cache::Purge;
use crate::gateway::Gateway;

/// The largest purge request body read.
const MAX_BODY: usize = 64 * 1024;

/// The answer to a purge request: its status and JSON.
pub async fn purge(gw: &Gateway, session: &mut ServerSession) -> (u16, serde_json::Value) {
    if session.req_header().method != http::Method::POST {
        return bad(
            405,
            "method_not_allowed",
            "POST a JSON body to /cache/purge",
        );
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(b)) if body.len() + b.len() <= MAX_BODY => body.extend_from_slice(&b),
            Ok(Some(_)) => return bad(413, "payload_too_large", "the body is over 64 KiB"),
            Ok(None) => break,
            Err(_) => return bad(400, "bad_request", "the body could not be read"),
        }
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return bad(400, "bad_request", "the body is not JSON");
    };
    let Some(route) = v["route"].as_str() else {
        return bad(400, "bad_request", "\"route\" (a route name) is required");
    };
    let what = match (v["path"].as_str(), v["prefix"].as_str()) {
        (Some(p), None) => Purge::Path(p),
        (None, Some(p)) => Purge::Prefix(p),
        _ => return bad(400, "bad_request", "give one of \"path\" or \"prefix\""),
    };
    let routes = gw.router.routes();
    let cached = routes
        .iter()
        .any(|r| &*r.name == route && gw.caches[r.id].is_some());
    if !cached {
        return bad(404, "no_route", "no route with a cache has this name");
    }
    (
        200,
        serde_json::json!({"purged": gw.stores.purge(route, &what)}),
    )
}

fn bad(status: u16, code: &str, message: &str) -> (u16, serde_json::Value) {
    (
        status,
        serde_json::json!({"error": code, "message": message, "request_id": ""}),
    )
}

/// `tollgate cache purge`: ask the admin listener of the config `conf` to purge `route`'s
/// entries under `path` (or `prefix`); the number purged.
pub fn send(
    conf: &str,
    route: &str,
    path: Option<&str>,
    prefix: Option<&str>,
) -> Result<u64, String> {
    let loaded = crate::gateway::load_file(conf).map_err(|errs| format!("{conf}: {errs}"))?;
    let admin = loaded
        .gateway
        .admin
        .as_ref()
        .ok_or_else(|| format!("{conf} has no admin listener to ask"))?;
    let body = match (path, prefix) {
        (Some(p), None) => serde_json::json!({"route": route, "path": p}),
        (None, Some(p)) => serde_json::json!({"route": route, "prefix": p}),
        _ => return Err("give one of --path or --prefix".into()),
    }
    .to_string();
    let token = admin.token.as_deref();
    let a = super::client::request(&admin.address, "POST", "/cache/purge", token, Some(&body))?;
    match a.json["purged"].as_u64() {
        Some(n) if a.ok() => Ok(n),
        _ => Err(format!(
            "{}: {}",
            a.status_line,
            a.json["message"].as_str().unwrap_or(&a.body)
        )),
    }
}
