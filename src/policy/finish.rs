//! What the gateway does to a backend's response head before the client gets it, decided
//! once as data for both engines: the hop-by-hop headers out, the route's CORS headers, then
//! the gateway's and the route's own headers (the [`Stamp`]), each replacing the backend's of
//! the same name. Each engine's writer applies it its own way (`crate::downstream`):
//! Pingora's session writes only the head's map, so everything goes there; tollgate's codec
//! writes the stamp as lines after the head's own when nothing reads the map after it.

use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::Result;

use super::cors::Cors;
use super::stamp::Stamp;
use crate::headers;

/// The edits of one response head.
#[derive(Clone, Copy)]
pub struct Finish<'a> {
    pub stamp: Stamp<'a>,
    /// The route's CORS policy.
    pub cors: Option<&'a Cors>,
    /// The route compresses: compression reads the finished map (`Content-Type`,
    /// `Cache-Control`, `Vary`) after these edits.
    pub compresses: bool,
}

impl<'a> Finish<'a> {
    /// Every edit, in the head's map. `origin`: the request's `Origin`, for CORS.
    pub fn apply(&self, resp: &mut ResponseHeader, origin: Option<&HeaderValue>) -> Result<()> {
        self.edit(resp, origin, true)
    }

    /// Every edit but the stamp, when the stamp may be written after the head's lines
    /// instead ([`Stamp::write`]): nothing reads the map after it (no CORS, no compression)
    /// and the route sets none of the gateway's names. Returns the stamp left to write, or
    /// `None` when it went into the map with the rest.
    pub fn apply_but_stamp(
        &self,
        resp: &mut ResponseHeader,
        origin: Option<&HeaderValue>,
    ) -> Result<Option<Stamp<'a>>> {
        if self.cors.is_some() || self.compresses || !self.stamp.writable() {
            return self.apply(resp, origin).map(|()| None);
        }
        self.edit(resp, origin, false)?;
        Ok(Some(self.stamp))
    }

    fn edit(
        &self,
        resp: &mut ResponseHeader,
        origin: Option<&HeaderValue>,
        stamp: bool,
    ) -> Result<()> {
        headers::edit_response(resp, |h, status| {
            headers::remove_hop_by_hop(h, status);
            if let Some(cors) = self.cors {
                cors.decorate(h, origin);
            }
            if stamp {
                self.stamp.insert(h);
            }
        })
    }
}
