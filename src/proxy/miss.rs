//! The own engine's cache miss: a caching route's request for a key the store holds nothing
//! for, relayed by the own relay and stored as Pingora's cache path stores it. The codec takes
//! it only when it holds the key's cache lock (the route's, which Pingora's path takes too):
//! a key another request is filling goes to Pingora's path, which waits on the lock.
//!
//! What it does on the response is `proxy_cache.rs`'s `cache_http_task` and the range header
//! filter: the verdict ([`crate::cache::storable`]), the variance of a `Vary` response, no fill
//! past `max_object` (and no `Accept-Ranges` when the length says so up front), the body stored
//! at its end and admitted to the LRU, the lock released as Pingora releases it (done, given up
//! on an uncacheable answer, or a transient error so that a waiting request fetches again).

use http::header::{ACCEPT_RANGES, CONTENT_LENGTH};
use http::HeaderValue;
use pingora::cache::lock::LockStatus;
use pingora::cache::CacheKey;
use pingora::http::{RequestHeader, ResponseHeader};

use super::relay::Tee;
use crate::cache::lock::OwnPermit;
use crate::cache::store::Fill;
use crate::cache::{RouteCache, Status};
use crate::headers::names::X_CACHE_STATUS;

/// A miss the own engine fills: the key, its write lock and the fill under way.
pub(super) struct Miss<'a> {
    cache: &'a RouteCache,
    key: CacheKey,
    permit: Option<OwnPermit>,
    fill: Option<Fill>,
    /// Body bytes gathered so far.
    taken: usize,
}

impl<'a> Miss<'a> {
    pub(super) fn new(cache: &'a RouteCache, key: CacheKey, permit: OwnPermit) -> Self {
        Miss {
            cache,
            key,
            permit: Some(permit),
            fill: None,
            taken: 0,
        }
    }

    /// Let the requests waiting on the key go on (`status` says how).
    fn release(&mut self, status: LockStatus) {
        if let Some(permit) = self.permit.take() {
            self.cache.lock.release_own(permit, status);
        }
    }
}

impl Drop for Miss<'_> {
    /// Refused before the cache step, or failed before the body's end: nothing is stored and
    /// the next request competes for the lock again.
    fn drop(&mut self) {
        self.release(LockStatus::TransientError);
    }
}

impl Tee for Miss<'_> {
    fn head(&mut self, req: &RequestHeader, resp: &mut ResponseHeader) {
        let c = self.cache;
        // The stored head keeps the response's length (only `no-cache="..."` and
        // `private="..."` names are taken out of it).
        let length = content_length(resp.headers.get(CONTENT_LENGTH));
        let mut ranges = true;
        match super::cache::storable(c, req, resp) {
            Ok(_) if length.is_some_and(|n| n > c.rules.max_object) => {
                // Too large to store: not served in ranges either.
                ranges = false;
                self.release(LockStatus::GiveUp);
            }
            Ok(s) => {
                let variance = s.variance(resp, req);
                let head = s.head(resp);
                let fill = c.store.fill(&self.key, &s, variance, &head, length);
                self.fill = Some(fill);
            }
            Err(_) => self.release(LockStatus::GiveUp),
        }
        // Straight into the map: a `ResponseHeader` insert spells each name out and parses
        // it back.
        let _ = crate::headers::edit_response(resp, |h, status| {
            if ranges && status == http::StatusCode::OK && length.is_some() {
                h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            }
            let miss = HeaderValue::from_static(Status::Miss.as_str());
            h.insert(X_CACHE_STATUS.clone(), miss);
        });
    }

    fn body(&mut self, piece: &[u8]) {
        let Some(fill) = self.fill.as_mut() else {
            return;
        };
        self.taken += piece.len();
        if self.taken > self.cache.rules.max_object {
            self.fill = None;
            self.release(LockStatus::TransientError);
            return;
        }
        fill.write(piece);
    }

    fn end(&mut self) {
        if let Some(fill) = self.fill.take() {
            fill.store();
            self.release(LockStatus::Done);
        }
    }
}

/// A `Content-Length` as Pingora's range filter reads it.
fn content_length(v: Option<&http::HeaderValue>) -> Option<usize> {
    std::str::from_utf8(v?.as_bytes()).ok()?.parse().ok()
}
