//! `tollgate explain`: what the gateway would do with a request, without sending anything.
//!
//! The verdict comes from the same compiled structures the proxy runs (the path normaliser,
//! the router, the upstreams); the per-route reasons only annotate it.

use std::fmt::Write;

use http::Method;
use pingora::tls::x509::X509;

use crate::gateway::Gateway;
use crate::listen::client_auth::PeerCert;
use crate::policy::router::Match;

/// A request to explain: method, URL (`http://host/path?query` or `/path`), headers, and
/// the client certificate (leaf first, then its intermediates) it would present.
pub struct Request {
    pub method: Method,
    pub host: Option<String>,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub client_cert: Vec<X509>,
}

impl Request {
    pub fn parse(method: &str, url: &str, headers: &[String]) -> Result<Request, String> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("bad method {method:?}"))?;
        let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        let mut hdrs = Vec::new();
        for h in headers {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| format!("bad header {h:?}: write 'Name: value'"))?;
            hdrs.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let host = hdrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.clone())
            .or_else(|| uri.authority().map(|a| a.to_string()));
        Ok(Request {
            method,
            host,
            path_and_query: uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.to_string()),
            headers: hdrs,
            client_cert: Vec::new(),
        })
    }

    /// Present the certificate (and chain) in the PEM file `path`.
    pub fn with_client_cert(mut self, path: &str) -> Result<Request, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        self.client_cert = X509::stack_from_pem(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("{path:?} holds no PEM certificate"))?;
        Ok(self)
    }
}

/// The explanation, as text for a terminal.
pub fn explain(gw: &Gateway, req: &Request) -> String {
    let mut o = String::new();
    let (raw_path, query) = match req.path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path_and_query.as_str(), None),
    };
    let _ = writeln!(
        o,
        "request:  {} {}{}",
        req.method,
        req.host.as_deref().unwrap_or("(no host)"),
        req.path_and_query
    );
    let path = match crate::policy::path::normalise(raw_path) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(o, "answer:   400 bad_request: {}", e.message());
            return o;
        }
    };
    if path != raw_path {
        let _ = writeln!(o, "path:     normalised to {path}");
    }
    let host = req.host.as_deref().map(str::as_bytes);
    // The head as the proxy would see it: `match` rules read its headers and query.
    let head = match request_header(req) {
        Ok(h) => h,
        Err(e) => {
            let _ = writeln!(o, "answer:   400 bad_request: {e}");
            return o;
        }
    };
    let verdict = gw.router.find(host, &path, &req.method, &head);
    let chosen = match &verdict {
        Match::Route(r) => Some(r.id),
        _ => None,
    };
    o.push_str("routes:\n");
    for r in gw.router.routes() {
        let candidate = r.admits_host(host) && r.admits_path(&path);
        let rules = match &r.match_rules {
            Some(m) if candidate => m.explain(&head),
            _ => Vec::new(),
        };
        let why = if Some(r.id) == chosen {
            "MATCH".to_owned()
        } else if !r.admits_host(host) {
            format!("host is not {}", describe_host(r))
        } else if !r.admits_path(&path) {
            format!("path is not under {}", r.prefix)
        } else if rules.iter().any(|(_, held)| !held) {
            "match rules fail".to_owned()
        } else if r.methods.is_some_and(|m| !m.contains(&req.method)) {
            format!(
                "method {} not in [{}]",
                req.method,
                r.methods.map(|m| m.allow_header()).unwrap_or_default()
            )
        } else {
            "a route before it decides (host, longer prefix, priority, more match rules)".to_owned()
        };
        let _ = writeln!(
            o,
            "  {:<20} {} {:<24} {}",
            r.name,
            describe_host(r),
            r.prefix,
            why
        );
        if r.priority != 0 && candidate {
            let _ = writeln!(o, "  {:<20} priority {}", "", r.priority);
        }
        for (rule, held) in rules {
            let verdict = if held { "holds" } else { "fails" };
            let _ = writeln!(o, "  {:<20} match {rule}: {verdict}", "");
        }
    }
    match verdict {
        Match::NotFound => {
            let _ = writeln!(o, "answer:   404 no_route");
        }
        Match::MethodNotAllowed(allow) => {
            let _ = writeln!(
                o,
                "answer:   405 method_not_allowed (Allow: {})",
                allow.to_str().unwrap_or("")
            );
        }
        Match::Route(r) => {
            let mut auth = String::new();
            // As the proxy does: a key carried in the query is not forwarded.
            let key_param = explain_auth(&mut auth, gw, r, req);
            let target =
                match r.forwarded_target(&path, query, key_param.as_deref(), path != raw_path) {
                    Ok(t) => t.unwrap_or_else(|| req.path_and_query.clone()),
                    Err(e) => format!("refused, 400: {}", crate::policy::transform::refusal(e)),
                };
            let up = &gw.upstreams[r.upstream];
            match &r.split {
                None => {
                    let _ = writeln!(o, "route:    {} -> upstream {}", r.name, up.name);
                }
                Some(split) => explain_split(&mut o, gw, r, split, req),
            }
            let _ = writeln!(o, "forward:  {} {target}", req.method);
            if let Some(m) = &gw.mirrors[r.id] {
                let _ = writeln!(
                    o,
                    "mirror:   a copy of {}% to upstream {} (timeout {:?}, body up to {} bytes)",
                    m.sample * 100.0,
                    m.upstream.name,
                    m.timeout,
                    m.max_body
                );
            }
            o.push_str(&auth);
            explain_limits(&mut o, gw, r);
            if let Some(c) = &gw.caches[r.id] {
                explain_cache(&mut o, gw, r, c, req);
            }
            let _ = writeln!(
                o,
                "backends: {} ({}; connect {:?}, read {:?}, retries {})",
                up.backends()
                    .iter()
                    .map(|b| format!("{} w{}", b.addr, b.weight))
                    .collect::<Vec<_>>()
                    .join(", "),
                up.balance.as_str(),
                up.timeouts.connect,
                up.timeouts.read,
                up.retries
            );
            if !r.response_headers.is_empty() || r.response_headers.renders() {
                let fixed = r
                    .response_headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("")));
                let rendered = r
                    .response_headers
                    .rendered_names()
                    .map(|k| format!("{k}: (its variables, per request)"));
                let hs: Vec<_> = fixed.chain(rendered).collect();
                let _ = writeln!(o, "response: + {}", hs.join(", "));
            }
            let removed = r.response_headers.removed();
            if !removed.is_empty() {
                let hs: Vec<&str> = removed.iter().map(|h| h.as_str()).collect();
                let _ = writeln!(o, "response: - {}", hs.join(", "));
            }
        }
    }
    o
}

/// A split's branches, and where this request goes when its sticky key decides it (the
/// consumer is not known offline). The backends shown after are the first branch's.
fn explain_split(
    o: &mut String,
    gw: &Gateway,
    r: &crate::policy::router::Route,
    split: &crate::policy::split::Split,
    req: &Request,
) {
    let total: u32 = split.branches.iter().map(|b| b.1).sum();
    let branches: Vec<_> = split
        .branches
        .iter()
        .map(|&(u, w)| format!("{} {w}/{total}", gw.upstreams[u].name))
        .collect();
    let _ = writeln!(o, "route:    {} -> split {}", r.name, branches.join(", "));
    let failover = if split.failover {
        "a branch without a healthy backend yields"
    } else {
        "no failover"
    };
    let Some(sticky) = &split.sticky else {
        let _ = writeln!(o, "          a random branch by weight; {failover}");
        return;
    };
    let head = request_header(req).ok();
    let key = head.as_ref().and_then(|h| {
        split.key(&crate::policy::split::Caller {
            client_ip: None,
            consumer: None,
            headers: &h.headers,
        })
    });
    let by = match sticky {
        crate::policy::split::Sticky::ClientIp => "client_ip".to_owned(),
        crate::policy::split::Sticky::Consumer => "consumer".to_owned(),
        crate::policy::split::Sticky::Header(n) => format!("header:{n}"),
        crate::policy::split::Sticky::Cookie(n) => format!("cookie:{n}"),
    };
    match key {
        Some(k) => {
            let up = split.choose(Some(k), |u| gw.upstreams[u].available());
            let name = &gw.upstreams[up].name;
            let _ = writeln!(
                o,
                "          sticky by {by}: key hash {k:016x} -> {name}; {failover}"
            );
        }
        None => {
            let _ = writeln!(
                o,
                "          sticky by {by}: not known here, so not decided; {failover}"
            );
        }
    }
}

/// Which providers the route requires, its consumers/claims constraints, and whether the
/// given headers pass: the compiled verifiers run offline (keys are hashed, tokens checked
/// with the configured keys; nothing is fetched). Returns the query parameter that carried
/// an accepted key (removed before forwarding).
fn explain_auth(
    o: &mut String,
    gw: &Gateway,
    r: &crate::policy::router::Route,
    req: &Request,
) -> Option<std::sync::Arc<str>> {
    let Some(ra) = &r.auth else {
        o.push_str("auth:     none (public route)\n");
        return None;
    };
    let providers: Vec<String> = ra.providers.iter().map(|p| gw.auth.describe(*p)).collect();
    let _ = writeln!(o, "auth:     one of {}", providers.join(", "));
    if let Some(c) = &ra.consumers {
        let _ = writeln!(o, "          consumers: {}", c.join(", "));
    }
    for (claim, values) in &ra.claims {
        let _ = writeln!(o, "          claim {claim} in [{}]", values.join(", "));
    }
    let head = match request_header(req) {
        Ok(h) => h,
        Err(e) => {
            let _ = writeln!(o, "          cannot check the headers: {e}");
            return None;
        }
    };
    let cert = match ra.mtls {
        true => explain_cert(o, gw, req),
        false => None,
    };
    if ra.mtls && cert.is_none() && !req.client_cert.is_empty() {
        return None;
    }
    // Offline: an introspection provider is described, never asked.
    let asks: Vec<&str> = gw
        .auth
        .introspections()
        .filter(|(n, _)| ra.providers.iter().any(|p| gw.auth.names[*p] == *n))
        .map(|(_, i)| i.endpoint.text.as_str())
        .collect();
    let bearer = head.headers.contains_key(http::header::AUTHORIZATION);
    if bearer && !asks.is_empty() {
        let _ = writeln!(
            o,
            "          would call {} to introspect the token (not called: explain is offline)",
            asks.join(", ")
        );
    }
    let refusal = |f: &crate::policy::auth::Failure| {
        let (status, code) = (f.reject.status(), f.reject.code());
        format!("{status} {code} ({}): {}", f.reason.as_str(), f.message)
    };
    match gw.auth.check(ra, &head, cert.as_ref()) {
        // The answer is the endpoint's: what the other providers say is only part of it.
        Err(f) if bearer && !asks.is_empty() => {
            if f.reason != crate::policy::auth::Reason::Missing {
                let _ = writeln!(
                    o,
                    "          the other providers refuse it: {}",
                    refusal(&f)
                );
            }
            None
        }
        Ok(id) => {
            let who = id
                .consumer
                .as_ref()
                .and_then(|c| c.to_str().ok())
                .unwrap_or("(no consumer)");
            let _ = writeln!(o, "          passes: caller {who}");
            id.credential_query
        }
        Err(f) => {
            let _ = writeln!(o, "answer:   {}", refusal(&f));
            None
        }
    }
}

/// Whether the request would take the route's cache, and under which key (the key as text:
/// the store hashes it).
fn explain_cache(
    o: &mut String,
    gw: &Gateway,
    r: &crate::policy::router::Route,
    c: &crate::cache::RouteCache,
    req: &Request,
) {
    let rules = &c.rules;
    let _ = writeln!(
        o,
        "cache:    store {} (ttl {:?} when the response says none; lock {:?}; max_object {} bytes)",
        c.store.name, rules.ttl, rules.lock, rules.max_object
    );
    let Ok(head) = request_header(req) else {
        return;
    };
    if !c.takes(&req.method) {
        let _ = writeln!(
            o,
            "          not cached: {} is answered by the upstream (BYPASS)",
            req.method
        );
        return;
    }
    let identity = match (&r.auth, rules.shared) {
        (Some(ra), false) => gw.auth.check(ra, &head, None).ok(),
        _ => None,
    };
    let input = crate::cache::KeyInput {
        host: req.host.as_deref().unwrap_or_default().as_bytes(),
        target: req.path_and_query.as_bytes(),
        path: req.path_and_query.split('?').next().unwrap_or("/"),
        headers: &head.headers,
        identity: identity.as_ref(),
        branch: None,
    };
    let key = String::from_utf8_lossy(&c.key_text(&input)).into_owned();
    let split = if r.split.is_some() {
        " + the split branch"
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "          cached (from the upstream's Cache-Control, Expires or ttl); key: {}{split}",
        key.trim_end()
    );
}

/// What a route reading client certificates needs, and what becomes of the certificate of
/// `req` (if any): the listeners' handshake verdicts, then the certificate as the provider
/// gets it (`None` when there is none, or no listener would accept it).
fn explain_cert(o: &mut String, gw: &Gateway, req: &Request) -> Option<PeerCert> {
    let asking: Vec<_> = gw
        .listen
        .iter()
        .filter_map(|l| Some((l, l.tls.as_ref()?.client_auth.as_ref()?)))
        .collect();
    for (l, ca) in &asking {
        let _ = writeln!(
            o,
            "          client certificate from {} (listener {}, {})",
            ca.ca_file,
            l.addr,
            if ca.required {
                "required at the handshake"
            } else {
                "optional at the handshake"
            }
        );
    }
    let Some((leaf, chain)) = req.client_cert.split_first() else {
        o.push_str("          (no client certificate given: --cert FILE checks one)\n");
        return None;
    };
    let mut accepted = false;
    for (l, ca) in &asking {
        match ca.verify(leaf, chain) {
            Ok(()) => {
                accepted = true;
                let _ = writeln!(o, "          certificate accepted by listener {}", l.addr);
            }
            Err(why) => {
                let _ = writeln!(
                    o,
                    "          certificate refused by listener {} at the handshake: {why}",
                    l.addr
                );
            }
        }
    }
    if !accepted {
        o.push_str("answer:   TLS handshake refused: no listener accepts this certificate\n");
        return None;
    }
    PeerCert::new(leaf.clone())
}

/// The route's rate-limit policies, described; no budget is consumed.
fn explain_limits(o: &mut String, gw: &Gateway, r: &crate::policy::router::Route) {
    if r.rate_limits.is_empty() {
        o.push_str("limits:   none\n");
        return;
    }
    for (i, p) in r.rate_limits.iter().enumerate() {
        let lead = if i == 0 { "limits:  " } else { "         " };
        let _ = writeln!(
            o,
            "{lead} {} (not consumed)",
            gw.rate_limits.policies[*p].describe()
        );
    }
}

/// The request as the proxy would see its head.
fn request_header(req: &Request) -> Result<pingora::http::RequestHeader, String> {
    let mut h = pingora::http::RequestHeader::build(
        req.method.clone(),
        req.path_and_query.as_bytes(),
        Some(req.headers.len()),
    )
    .map_err(|e| e.to_string())?;
    for (k, v) in &req.headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("bad header name {k:?}"))?;
        let value =
            http::HeaderValue::from_str(v).map_err(|_| format!("bad value for header {k}"))?;
        h.append_header(name, value).map_err(|e| e.to_string())?;
    }
    Ok(h)
}

fn describe_host(r: &crate::policy::router::Route) -> String {
    r.host.as_ref().map_or("*".to_owned(), |h| h.describe())
}
