//! `rewrite: {regex, to}`: the path the upstream gets, from the normalised client path.
//!
//! The regex (the `regex` crate: linear time) and `to` are compiled once; `to` names
//! captures as `$name`, `${name}` or `$1` (`$$`: a literal `$`). The result is normalised
//! again and must stay absolute: a rewrite that climbs above the root or makes an encoded `/`
//! is refused (400 at run time; a config error where the text of `to` alone shows it).

use regex::Regex;

use crate::policy::path::{normalise, PathError};

#[derive(Debug, Clone)]
enum To {
    Literal(Box<str>),
    Group(usize),
}

/// A compiled `rewrite`.
#[derive(Debug, Clone)]
pub struct Rewrite {
    regex: Regex,
    /// `Some(literal)` when the regex is `^literal(.*)$` (the common "move this prefix"):
    /// matching is then a prefix test and group 1 the rest, with no regex run.
    prefix: Option<Box<str>>,
    to: Box<[To]>,
}

/// Which key of `rewrite` is wrong, and why.
pub struct RewriteError {
    pub key: &'static str,
    pub message: String,
}

fn error(key: &'static str, message: impl Into<String>) -> RewriteError {
    RewriteError {
        key,
        message: message.into(),
    }
}

impl Rewrite {
    pub fn compile(regex: &str, to: &str) -> Result<Rewrite, RewriteError> {
        let regex = Regex::new(regex).map_err(|e| error("regex", e.to_string()))?;
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = to;
        while let Some(at) = rest.find('$') {
            lit.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            let (name, after) = if let Some(r) = rest.strip_prefix('$') {
                lit.push('$');
                rest = r;
                continue;
            } else if let Some(r) = rest.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or_else(|| error("to", "a '${' has no closing '}'"))?;
                (&r[..end], &r[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            rest = after;
            let group = match name.parse::<usize>() {
                Ok(n) if n < regex.captures_len() => n,
                Ok(n) => {
                    return Err(error(
                        "to",
                        format!(
                            "${n}: the regex has no group {n} (groups: {})",
                            regex.captures_len() - 1
                        ),
                    ))
                }
                Err(_) if name.is_empty() => return Err(error(
                    "to",
                    "a '$' must name a capture ($name, ${name} or $1); write $$ for a literal $",
                )),
                Err(_) => regex
                    .capture_names()
                    .position(|n| n == Some(name))
                    .ok_or_else(|| error("to", format!("${name}: the regex has no such group")))?,
            };
            if !lit.is_empty() {
                parts.push(To::Literal(std::mem::take(&mut lit).into()));
            }
            parts.push(To::Group(group));
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(To::Literal(lit.into()));
        }
        statically_safe(&parts).map_err(|why| error("to", why))?;
        let prefix = literal_prefix(regex.as_str());
        Ok(Rewrite {
            regex,
            prefix,
            to: parts.into(),
        })
    }

    /// The rewritten, normalised path; `Ok(None)` when the regex does not match `path` (it
    /// then goes upstream as it is).
    pub fn apply(&self, path: &str) -> Result<Option<String>, PathError> {
        let rest = self.prefix.as_deref().map(|p| path.strip_prefix(p));
        let out = match rest {
            // `.` does not match a line feed (a normalised path has none).
            Some(Some(rest)) if !rest.contains('\n') => {
                self.render(path.len(), |g| [path, rest][g])
            }
            Some(None) => return Ok(None),
            _ => {
                let Some(caps) = self.regex.captures(path) else {
                    return Ok(None);
                };
                self.render(path.len(), |g| caps.get(g).map_or("", |m| m.as_str()))
            }
        };
        let normal = match normalise(&out)? {
            std::borrow::Cow::Owned(n) => Some(n),
            std::borrow::Cow::Borrowed(_) => None,
        };
        Ok(Some(normal.unwrap_or(out)))
    }
}

impl Rewrite {
    /// `to` with each group's text from `group`, with room for the query the caller appends.
    fn render<'a>(&self, len: usize, group: impl Fn(usize) -> &'a str) -> String {
        let mut out = String::with_capacity(len + 64);
        for p in &*self.to {
            match p {
                To::Literal(l) => out.push_str(l),
                To::Group(g) => out.push_str(group(*g)),
            }
        }
        out
    }
}

/// The literal of a regex that is exactly `^literal(.*)$`, `^literal(.*)` or with a named
/// group: anchored at the start, then one group of any characters but a line feed to the end.
fn literal_prefix(regex: &str) -> Option<Box<str>> {
    use regex_syntax::hir::{Dot, Hir, HirKind, Look};
    let hir = regex_syntax::parse(regex).ok()?;
    let HirKind::Concat(parts) = hir.kind() else {
        return None;
    };
    let (start, literal, group, end) = match parts.as_slice() {
        [s, l, g] => (s, l, g, None),
        [s, l, g, e] => (s, l, g, Some(e)),
        _ => return None,
    };
    let (HirKind::Look(Look::Start), HirKind::Literal(lit), HirKind::Capture(cap)) =
        (start.kind(), literal.kind(), group.kind())
    else {
        return None;
    };
    let anchored_end = match end.map(Hir::kind) {
        None => false,
        Some(HirKind::Look(Look::End)) => true,
        Some(_) => return None,
    };
    let HirKind::Repetition(rep) = cap.sub.kind() else {
        return None;
    };
    let any = *rep.sub == Hir::dot(Dot::AnyCharExceptLF);
    let whole = rep.min == 0 && rep.max.is_none() && (rep.greedy || anchored_end);
    if cap.index != 1 || !any || !whole {
        return None;
    }
    std::str::from_utf8(&lit.0).ok().map(Into::into)
}

/// Refuse at load what `to` shows on its own: a `to` without captures that is not a normal
/// absolute path, a literal start that is not `/` or climbs above the root, an encoded
/// separator anywhere in the literal text.
fn statically_safe(parts: &[To]) -> Result<(), String> {
    for p in parts {
        if let To::Literal(l) = p {
            if l.contains(['?', '#']) {
                return Err(
                    "has a '?' or '#': the rewrite makes the path only (the route's query: edits the query)"
                        .into(),
                );
            }
            if http::uri::PathAndQuery::try_from(format!("/{l}")).is_err() {
                return Err(format!("{l:?} has characters not allowed in a path"));
            }
            let lower = l.to_ascii_lowercase();
            if ["%2f", "%5c", "%00"].iter().any(|s| lower.contains(s)) {
                return Err(
                    "has an encoded '/', '\\' or NUL, which upstreams read differently".into(),
                );
            }
        }
    }
    match parts {
        [] => Err("must not be empty: the rewritten path starts with /".into()),
        [To::Literal(l)] => normalise(l)
            .map(drop)
            .map_err(|e| format!("{l:?} is not a path the upstream may get: {}", e.message())),
        [To::Literal(l), ..] => {
            if !l.starts_with('/') {
                return Err(format!("{l:?} must start with / (the path stays absolute)"));
            }
            // The segments before the first capture are fixed: they must not climb.
            let fixed = &l[..=l.rfind('/').unwrap_or(0)];
            match normalise(fixed) {
                Err(PathError::AboveRoot) => Err(format!("{l:?} climbs above the root with '..'")),
                _ => Ok(()),
            }
        }
        // Starts with a capture: its text decides, at run time.
        _ => Ok(()),
    }
}

/// What a client is told when its path's rewrite is refused (400 `bad_request`).
pub fn refusal(e: PathError) -> &'static str {
    match e {
        PathError::AboveRoot => "the route's rewrite of this path climbs above the root with '..'",
        PathError::EncodedSeparator => {
            "the route's rewrite of this path makes an encoded '/', '\\' or NUL"
        }
        PathError::NotAbsolute => "the route's rewrite of this path does not start with /",
        _ => "the route's rewrite of this path is not a valid path",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(regex: &str, to: &str) -> Rewrite {
        Rewrite::compile(regex, to).unwrap_or_else(|e| panic!("{}: {}", e.key, e.message))
    }

    #[test]
    fn named_and_numbered_captures() {
        let r = rw("^/api/v1/(?P<rest>.*)$", "/v1-legacy/$rest");
        assert_eq!(
            r.apply("/api/v1/items/7").unwrap().unwrap(),
            "/v1-legacy/items/7"
        );
        assert_eq!(r.apply("/other").unwrap(), None);
        let r = rw("^/u/([^/]+)/p/([^/]+)$", "/people/$2/of/${1}x");
        assert_eq!(r.apply("/u/ann/p/9").unwrap().unwrap(), "/people/9/of/annx");
        let r = rw("^/a/(?P<id>[0-9]+)", "/b/${id}/$$");
        assert_eq!(r.apply("/a/42/z").unwrap().unwrap(), "/b/42/$");
        // A group that did not take part is empty.
        let r = rw("^/x(/(?P<opt>y))?", "/z$opt");
        assert_eq!(r.apply("/x").unwrap().unwrap(), "/z");
    }

    #[test]
    fn prefix_moves_skip_the_regex_and_agree_with_it() {
        for (regex, prefix) in [
            ("^/api/v1/(?P<rest>.*)$", Some("/api/v1/")),
            ("^/api/(.*)", Some("/api/")),
            ("^/a(.*?)$", Some("/a")),
            ("^/a(.*?)", None),
            ("^/a(.+)$", None),
            ("^/a/(.*)/$", None),
            ("/a(.*)$", None),
            ("^(?i)/a(.*)$", None),
            ("^(?s)/a(.*)$", None),
            ("^/a(x*)$", None),
            ("^/(a)(.*)$", None),
        ] {
            assert_eq!(literal_prefix(regex).as_deref(), prefix, "{regex}");
        }
        let paths = [
            "/api",
            "/api/",
            "/api/x",
            "/api/v1/",
            "/api/v1/a/b",
            "/apix",
            "/b/api/",
        ];
        for (regex, to) in [
            ("^/api/v1/(?P<rest>.*)$", "/v1-legacy/$rest"),
            ("^/api/(.*)", "/b/$1/${1}x"),
            ("^/api(.*?)$", "/c$0"),
        ] {
            let fast = rw(regex, to);
            assert!(fast.prefix.is_some(), "{regex}");
            let slow = Rewrite {
                prefix: None,
                ..fast.clone()
            };
            for p in paths {
                assert_eq!(fast.apply(p), slow.apply(p), "{regex} on {p}");
            }
        }
    }

    #[test]
    fn results_are_normalised_and_escapes_refused() {
        let r = rw("^/api/(.*)$", "/base/$1");
        assert_eq!(r.apply("/api/a//b").unwrap().unwrap(), "/base/a/b");
        let r = rw("^/api/(.*)$", "/base/../$1");
        assert_eq!(r.apply("/api/x").unwrap().unwrap(), "/x");
        let r = rw("^/api/(.*)$", "/$1/../../..");
        assert_eq!(r.apply("/api/x").unwrap_err(), PathError::AboveRoot);
        let r = rw("^/api/(?P<a>.*)%(?P<b>.*)$", "/$a%2${b}");
        assert_eq!(
            r.apply("/api/q%Fz").unwrap_err(),
            PathError::EncodedSeparator
        );
        let r = rw("^/api/(.*)$", "$1");
        assert_eq!(r.apply("/api/x").unwrap_err(), PathError::NotAbsolute);
        assert_eq!(r.apply("/api//x").unwrap().unwrap(), "/x");
    }

    #[test]
    fn config_errors() {
        for (regex, to, key, why) in [
            ("^/(", "/x", "regex", "unclosed group"),
            ("^/a", "/../x", "to", "above the root"),
            ("^/a", "/b/%2fc", "to", "encoded"),
            ("^/(.*)", "/b/%2F$1", "to", "encoded"),
            ("^/(.*)", "/../$1", "to", "above the root"),
            ("^/(.*)", "x/$1", "to", "must start with /"),
            ("^/a", "b", "to", "not a path"),
            ("^/a", "", "to", "must not be empty"),
            ("^/(.*)", "/$2", "to", "no group 2 (groups: 1)"),
            ("^/(.*)", "/$rest", "to", "no such group"),
            ("^/(.*)", "/${1", "to", "no closing"),
            ("^/(.*)", "/$-", "to", "write $$"),
            ("^/(.*)", "/x?a=$1", "to", "path only"),
            ("^/(.*)", "/x y/$1", "to", "not allowed in a path"),
        ] {
            let e = Rewrite::compile(regex, to)
                .err()
                .unwrap_or_else(|| panic!("{to:?}"));
            assert_eq!(e.key, key, "{to:?}");
            assert!(e.message.contains(why), "{to:?}: {}", e.message);
        }
    }
}
