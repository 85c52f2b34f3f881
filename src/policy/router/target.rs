//! The request target a route sends upstream: its path, minus the route's prefix when it
//! strips it, with the query the client sent (less an API key that came in the query).

use super::Route;

impl Route {
    /// The request target the upstream receives: the normalised `path`, minus the route
    /// prefix when `strip_prefix` is on, plus `query`. `None` when the target is unchanged
    /// (`changed`: the path was rewritten).
    pub fn upstream_target(
        &self,
        path: &str,
        query: Option<&str>,
        changed: bool,
    ) -> Option<String> {
        let strip = self.strip_prefix && self.prefix != "/";
        if !strip && !changed {
            return None;
        }
        let rest = if strip {
            &path[self.prefix.len().min(path.len())..]
        } else {
            path
        };
        let rest = if rest.is_empty() { "/" } else { rest };
        let mut t = String::with_capacity(rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
        if !rest.starts_with('/') {
            t.push('/');
        }
        t.push_str(rest);
        if let Some(q) = query {
            t.push('?');
            t.push_str(q);
        }
        Some(t)
    }

    /// [`Self::upstream_target`] for a request whose API key may sit in the query parameter
    /// `key_param`: that parameter is never forwarded. A route's `rewrite` makes the path and
    /// its `query` edits the query (`crate::policy::transform`); a rewrite the result of which
    /// is no path the upstream may get is the error.
    pub fn forwarded_target(
        &self,
        path: &str,
        query: Option<&str>,
        key_param: Option<&str>,
        changed: bool,
    ) -> Result<Option<String>, crate::policy::path::PathError> {
        let kept;
        let (query, changed) = match key_param {
            Some(k) => {
                kept = query.and_then(|q| crate::policy::auth::strip_query_param(q, k));
                (kept.as_deref(), true)
            }
            None => (query, changed),
        };
        let Some(t) = &self.transform else {
            return Ok(self.upstream_target(path, query, changed));
        };
        let rewritten = match &t.rewrite {
            Some(rw) => rw.apply(path)?,
            None => None,
        };
        let edited = t.query.as_ref().map(|q| q.apply(query));
        let query = edited.as_ref().map_or(query, |e| e.as_deref());
        match rewritten {
            // The rewritten path is the target's start: no second copy.
            Some(mut target) => {
                if let Some(q) = query {
                    target.push('?');
                    target.push_str(q);
                }
                Ok(Some(target))
            }
            None => Ok(self.upstream_target(path, query, changed || edited.is_some())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::route as named;
    use super::Route;

    fn route(prefix: &str, strip: bool) -> Route {
        Route {
            strip_prefix: strip,
            ..named("r", None, prefix, None)
        }
    }
    #[test]
    fn targets() {
        let r = route("/private", true);
        assert_eq!(
            r.upstream_target("/private/data", Some("a=1"), false)
                .unwrap(),
            "/data?a=1"
        );
        assert_eq!(r.upstream_target("/private", None, false).unwrap(), "/");
        assert_eq!(r.upstream_target("/private/", None, false).unwrap(), "/");
        assert_eq!(route("/", true).upstream_target("/x", None, false), None);
        assert_eq!(
            route("/p", false).upstream_target("/p/x", None, false),
            None
        );
        assert_eq!(
            route("/p", false)
                .upstream_target("/p/x", Some("q"), true)
                .unwrap(),
            "/p/x?q"
        );
    }
}
