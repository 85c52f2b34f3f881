//! What the engine-parity suites run on both of their sides (`tests/codec_parity.rs`: HTTP/1
//! through the own codec or Pingora's session; `tests/h2_parity.rs`: HTTP/2 relayed by the own
//! upstream leg or by Pingora's proxy loop): one config whose routes exercise the policy and
//! the framing, its backends, and the masking of what no engine decides.

use super::{closed_port, echo, scripted};

/// The config, with its backends started: an echo (`/echo`, and behind the policy routes), a
/// raw backend (`/raw`: a chunked "hello"; `/claims`: an answer carrying the names the gateway
/// sets itself, and hop-by-hop fields) and a closed port (`/down`).
pub fn config() -> String {
    let up = echo("echo");
    let raw = scripted(|_, path| {
        if path.starts_with("/claims") {
            let claims = "HTTP/1.1 200 OK\r\nX-Gateway: backend\r\nx-request-id: backend-id\r\n\
                RateLimit-Policy: \"backend\";q=9;w=9\r\nRATELIMIT: \"backend\";r=8;t=9\r\n\
                X-RateLimit-Limit: 9\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                Cache-Control: public\r\nContent-Length: 2\r\n\r\nok";
            return (claims.as_bytes().to_vec(), false);
        }
        let chunked =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        (chunked.as_bytes().to_vec(), false)
    });
    let down = closed_port();
    format!(
        r#"
upstream_keepalive_pool_size: 0
consumers: {{alice: {{api_keys: ["alice-key-0123456789"]}}}}
auth: {{keys: {{type: api_key}}}}
rate_limits: {{two: {{requests: 2, per: 1h, burst: 2, headers: both}}}}
upstreams:
  echo: {{targets: ["{up}"]}}
  raw: {{targets: ["{raw}"]}}
  down: {{targets: ["{down}"], retries: 0}}
routes:
  - {{name: keys, path_prefix: /keys, upstream: echo, auth: [keys]}}
  - {{name: limited, path_prefix: /limited, upstream: echo, rate_limit: two}}
  - {{name: get-only, path_prefix: /get-only, methods: [GET], upstream: echo}}
  - {{name: decorated, path_prefix: /decorated, upstream: echo,
      response_headers: {{Cache-Control: no-store, X-Frame-Options: DENY}}}}
  - {{name: cors, path_prefix: /cors, upstream: echo,
      cors: {{origins: ["https://app.example"], methods: [GET, PUT], headers: [X-Api-Key], max_age: 1h}}}}
  - {{name: raw, path_prefix: /raw, upstream: raw}}
  - {{name: claims-limited, path_prefix: /claims/limited, upstream: raw, rate_limit: two,
      strip_prefix: false, response_headers: {{Cache-Control: no-store}}}}
  - {{name: claims, path_prefix: /claims, upstream: raw, strip_prefix: false}}
  - {{name: down, path_prefix: /down, upstream: down}}
  - {{name: echo, path_prefix: /echo, upstream: echo}}
  - {{name: zip, path_prefix: /zip, upstream: echo, compression: {{gzip: 6, min_size: 10}}}}
"#
    )
}

/// `body` with the echo's `"connection_requests": N` as `<n>`: which pooled upstream
/// connection a request rides is no engine's doing.
pub fn mask_pooled(body: &str) -> String {
    const KEY: &str = "\"connection_requests\": ";
    let Some(at) = body.find(KEY).map(|i| i + KEY.len()) else {
        return body.to_owned();
    };
    let digits = body[at..].bytes().take_while(u8::is_ascii_digit).count();
    format!("{}<n>{}", &body[..at], &body[at + digits..])
}

/// The request headers an echo answer says the upstream received; their request id, which
/// must be the answer's `id`, as `<id>`.
pub fn echoed_headers(answer: &serde_json::Value, id: &str, side: &str) -> serde_json::Value {
    let mut h = answer["headers"].clone();
    assert_eq!(
        h["x-request-id"], *id,
        "{side}: the upstream got another id"
    );
    h["x-request-id"] = "<id>".into();
    h
}

/// An answer's `X-Request-Id` is a gateway-made one: 32 hex digits.
pub fn check_request_id(id: &str, side: &str, answer: &dyn std::fmt::Debug) {
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{side}: {answer:?}"
    );
}
