//! Header values with variables (`X-Tenant: "$claim.tenant"`), compiled once at load into
//! parts, literal or variable: a request only fills them in, it never parses the text.
//!
//! The variables: `$client_ip`, `$consumer`, `$request_id`, `$route`, `$claim.NAME` (or
//! `${claim.NAME}` for a name with other characters than letters, digits and `_`), `$host`;
//! `$$` is a literal `$`. A value whose variable has nothing this request (no consumer, no
//! such claim) is absent, and its header is not set.

use bytes::Bytes;
use http::HeaderValue;

use crate::policy::auth::Identity;

/// The names [`Template::compile`] knows, for its messages.
pub const VARIABLES: &str = "$client_ip, $consumer, $request_id, $route, $claim.NAME, $host";

/// What a request knows that a template may name.
pub struct Vars<'a> {
    /// The client's address as a header value (the one X-Real-IP gets).
    pub client_ip: Option<&'a HeaderValue>,
    pub identity: Option<&'a crate::policy::auth::Identity>,
    pub request_id: &'a HeaderValue,
    /// The client's `Host` (or HTTP/2 authority).
    pub host: Option<&'a HeaderValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<[u8]>),
    ClientIp,
    Consumer,
    RequestId,
    Host,
    Claim(Box<str>),
}

/// A compiled header value.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Box<[Part]>,
    /// The whole value, when it names no variable.
    fixed: Option<HeaderValue>,
}

impl Template {
    /// Compile `text`; `route`: the route's name, which `$route` stands for. The error says
    /// what is wrong, for the key path the caller knows.
    pub fn compile(text: &str, route: &str) -> Result<Template, String> {
        let mut parts: Vec<Part> = Vec::new();
        let mut lit = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'$' {
                lit.push(b[i]);
                i += 1;
                continue;
            }
            let (name, next) = variable_name(text, i + 1)?;
            i = next;
            let part = match name {
                "$" => {
                    lit.push(b'$');
                    continue;
                }
                "route" => {
                    lit.extend_from_slice(route.as_bytes());
                    continue;
                }
                "client_ip" => Part::ClientIp,
                "consumer" => Part::Consumer,
                "request_id" => Part::RequestId,
                "host" => Part::Host,
                _ => match name.strip_prefix("claim.") {
                    Some(claim) if !claim.is_empty() => Part::Claim(claim.into()),
                    _ => {
                        return Err(format!(
                            "unknown variable ${name} (known: {VARIABLES}; $$ is a literal $)"
                        ))
                    }
                },
            };
            if !lit.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut lit).into()));
            }
            parts.push(part);
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit.into()));
        }
        for p in &parts {
            if let Part::Literal(l) = p {
                if HeaderValue::from_bytes(l).is_err() {
                    return Err("value has characters not allowed in a header".into());
                }
            }
        }
        let fixed = match parts.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Part::Literal(l)] => HeaderValue::from_bytes(l)
                .ok()
                .map(crate::headers::names::lasting_value),
            _ => None,
        };
        Ok(Template {
            parts: parts.into(),
            fixed,
        })
    }

    /// The value, when it names no variable: the same for every request.
    pub fn fixed(&self) -> Option<&HeaderValue> {
        self.fixed.as_ref()
    }

    /// Whether the value names `$host` (the caller then looks it up).
    pub fn uses_host(&self) -> bool {
        self.parts.contains(&Part::Host)
    }

    /// The value for this request; `None` when a variable it names is absent.
    pub fn render(&self, v: &Vars) -> Option<HeaderValue> {
        if let Some(f) = &self.fixed {
            return Some(f.clone());
        }
        if let [one] = &*self.parts {
            // A value that is one variable: that value itself, no copy.
            return match one {
                Part::ClientIp => v.client_ip.cloned(),
                Part::Consumer => v.identity?.consumer.clone(),
                Part::RequestId => Some(v.request_id.clone()),
                Part::Host => v.host.cloned(),
                Part::Claim(name) => claim(v.identity?, name),
                Part::Literal(_) => None,
            };
        }
        let mut out = Vec::with_capacity(64);
        for p in &*self.parts {
            match p {
                Part::Literal(l) => out.extend_from_slice(l),
                Part::ClientIp => out.extend_from_slice(v.client_ip?.as_bytes()),
                Part::Consumer => out.extend_from_slice(v.identity?.consumer.as_ref()?.as_bytes()),
                Part::RequestId => out.extend_from_slice(v.request_id.as_bytes()),
                Part::Host => out.extend_from_slice(v.host?.as_bytes()),
                Part::Claim(name) => out.extend_from_slice(claim(v.identity?, name)?.as_bytes()),
            }
        }
        HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
    }
}

/// A verified claim as a header value (a string as it is, anything else as JSON text), as
/// `forward_claims` forwards it.
fn claim(id: &Identity, name: &str) -> Option<HeaderValue> {
    crate::policy::auth::jwt::claim_value(id.claim(name)?)
}

/// The variable after a `$` at `at`: `$` itself (`$$`), a `{name}` in braces, or the run of
/// name characters (with one `.NAME` after `claim`); and where the text goes on.
fn variable_name(text: &str, at: usize) -> Result<(&str, usize), String> {
    let b = text.as_bytes();
    let word = |from: usize| {
        from + b[from..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count()
    };
    match b.get(at) {
        Some(b'$') => Ok(("$", at + 1)),
        Some(b'{') => match text[at + 1..].find('}') {
            Some(n) => Ok((&text[at + 1..at + 1 + n], at + n + 2)),
            None => Err("a '${' has no closing '}'".into()),
        },
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
            let end = word(at);
            if &text[at..end] == "claim" && b.get(end) == Some(&b'.') {
                return Ok((&text[at..word(end + 1)], word(end + 1)));
            }
            Ok((&text[at..end], end))
        }
        _ => Err(format!(
            "a '$' must start a variable ({VARIABLES}); write $$ for a literal $"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn identity() -> Identity {
        let claims: crate::policy::auth::jwt::Claims = serde_json::from_str(
            r#"{"sub": "u1", "tenant": "acme", "level": 3, "my-claim": "x", "bad": "a\nb"}"#,
        )
        .unwrap();
        Identity {
            consumer: Some(HeaderValue::from_static("alice")),
            headers: vec![],
            credential: None,
            credential_query: None,
            claims: Some(Arc::new(claims)),
        }
    }

    fn render(text: &str, id: Option<&Identity>) -> Option<String> {
        let t = Template::compile(text, "api").unwrap();
        let rid = HeaderValue::from_static("rid1");
        let host = HeaderValue::from_static("shop.test");
        let ip = HeaderValue::from_static("10.1.2.3");
        let v = Vars {
            client_ip: Some(&ip),
            identity: id,
            request_id: &rid,
            host: Some(&host),
        };
        t.render(&v).map(|h| h.to_str().unwrap().to_owned())
    }

    #[test]
    fn literals_and_every_variable() {
        let id = identity();
        let id = Some(&id);
        assert_eq!(render("plain", id).unwrap(), "plain");
        assert_eq!(render("", id).unwrap(), "");
        assert_eq!(render("$client_ip", id).unwrap(), "10.1.2.3");
        assert_eq!(render("ip=$client_ip;", id).unwrap(), "ip=10.1.2.3;");
        assert_eq!(render("$consumer", id).unwrap(), "alice");
        assert_eq!(render("$request_id", id).unwrap(), "rid1");
        assert_eq!(render("$route", id).unwrap(), "api");
        assert_eq!(render("$host", id).unwrap(), "shop.test");
        assert_eq!(render("$claim.tenant", id).unwrap(), "acme");
        assert_eq!(render("t-$claim.tenant-x", id).unwrap(), "t-acme-x");
        assert_eq!(render("$claim.level", id).unwrap(), "3");
        assert_eq!(render("${claim.my-claim}", id).unwrap(), "x");
        assert_eq!(render("${consumer}s", id).unwrap(), "alices");
        assert_eq!(render("$$5 for $consumer", id).unwrap(), "$5 for alice");
        assert_eq!(render("$$$$", id).unwrap(), "$$");
        assert_eq!(
            render("$route/$consumer/$request_id", id).unwrap(),
            "api/alice/rid1"
        );
    }

    #[test]
    fn absent_variables_leave_no_value() {
        let id = identity();
        assert_eq!(render("$consumer", None), None);
        assert_eq!(render("x-$consumer", None), None);
        assert_eq!(render("$claim.tenant", None), None);
        assert_eq!(render("$claim.nope", Some(&id)), None);
        assert_eq!(render("a $claim.nope b", Some(&id)), None);
        // A claim that is no valid header value is absent too.
        assert_eq!(render("$claim.bad", Some(&id)), None);
    }

    #[test]
    fn a_literal_only_value_is_compiled_to_its_value() {
        let t = Template::compile("no-store $$ $route", "r1").unwrap();
        assert_eq!(t.fixed.as_ref().unwrap(), "no-store $ r1");
        assert!(!t.uses_host());
        assert!(Template::compile("a $host", "r").unwrap().uses_host());
    }

    #[test]
    fn unknown_variables_and_stray_dollars_are_errors() {
        for (text, why) in [
            ("$nope", "unknown variable $nope"),
            ("$claim", "unknown variable $claim"),
            ("$claim.", "unknown variable $claim."),
            ("${claim.}", "unknown variable $claim."),
            ("${}", "unknown variable $"),
            ("${consumer", "no closing"),
            ("a $", "write $$ for a literal $"),
            ("$ x", "write $$"),
            ("$1", "write $$"),
            ("a\nb", "not allowed in a header"),
        ] {
            let e = Template::compile(text, "r").unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
