//! Header edits that apply to a `HeaderMap`, or to an [`Overlay`] of one without copying it.
//!
//! Why: the fast path writes the upstream request straight from the client's head. Cloning
//! that head to edit it, and dropping the clone, would cost as much as the rest of the relay.
//! The forwarding and identity edits are written once, against
//! [`Edit`], and applied to Pingora's upstream head (a map) or to an overlay of the client's.

use http::header::ValueIter;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The header operations the upstream edits need. `'n`: how long the names set live (the
/// gateway's own are static, the config's live as long as the generation serving).
pub trait Edit<'n> {
    fn get(&self, name: &HeaderName) -> Option<&HeaderValue>;
    fn get_all(&self, name: &HeaderName) -> Values<'_>;
    fn contains_key(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }
    /// Replace every value of `name` with `value`.
    fn insert(&mut self, name: &'n HeaderName, value: HeaderValue);
    /// Add `value` after the values of `name`.
    fn append(&mut self, name: &'n HeaderName, value: HeaderValue);
    fn remove(&mut self, name: &'n HeaderName);
}

/// The values of one header name.
pub enum Values<'a> {
    One(Option<&'a HeaderValue>),
    All(ValueIter<'a, HeaderValue>),
    /// An overlay's values of the name, then those appended to it.
    Then(
        Box<Values<'a>>,
        HeaderName,
        std::slice::Iter<'a, (&'a HeaderName, HeaderValue)>,
    ),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a HeaderValue;

    fn next(&mut self) -> Option<&'a HeaderValue> {
        match self {
            Values::One(v) => v.take(),
            Values::All(it) => it.next(),
            Values::Then(first, name, added) => first
                .next()
                .or_else(|| added.find(|(n, _)| same(n, name)).map(|(_, v)| v)),
        }
    }
}

impl<'n> Edit<'n> for HeaderMap {
    fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        HeaderMap::get(self, name)
    }

    fn get_all(&self, name: &HeaderName) -> Values<'_> {
        Values::All(HeaderMap::get_all(self, name).iter())
    }

    fn insert(&mut self, name: &'n HeaderName, value: HeaderValue) {
        HeaderMap::insert(self, name.clone(), value);
    }

    fn append(&mut self, name: &'n HeaderName, value: HeaderValue) {
        HeaderMap::append(self, name.clone(), value);
    }

    fn remove(&mut self, name: &'n HeaderName) {
        HeaderMap::remove(self, name);
    }
}

/// A map seen through a few changes: a name set or removed here hides all its values there;
/// values appended come after the name's others. The names are borrowed, never copied: the
/// edits name statics and the config's names, which outlive the request.
pub struct Overlay<'a> {
    base: &'a HeaderMap,
    /// Each name once; `None`: removed.
    changes: Vec<(&'a HeaderName, Option<HeaderValue>)>,
    /// Bit `len % 64` of each changed name's length: most names looked up were not
    /// changed, and their length alone says so without comparing them to each change.
    lengths: u64,
    /// Appended values, in order (a route's `request_headers.add`).
    added: Vec<(&'a HeaderName, HeaderValue)>,
}

/// Whether two names are the same: at once when they are the same static or config name,
/// as the edits' names mostly are.
fn same(a: &HeaderName, b: &HeaderName) -> bool {
    std::ptr::eq(a, b) || a == b
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a HeaderMap) -> Self {
        Overlay {
            base,
            // The forwarding and identity edits, and a route's few header edits.
            changes: Vec::with_capacity(12),
            lengths: 0,
            added: Vec::new(),
        }
    }

    fn length_bit(name: &HeaderName) -> u64 {
        1 << (name.as_str().len() % 64)
    }

    fn change(&self, name: &HeaderName) -> Option<&Option<HeaderValue>> {
        if self.lengths & Self::length_bit(name) == 0 {
            return None;
        }
        self.changes
            .iter()
            .find(|(n, _)| same(n, name))
            .map(|(_, v)| v)
    }

    fn set(&mut self, name: &'a HeaderName, value: Option<HeaderValue>) {
        if !self.added.is_empty() {
            self.added.retain(|(n, _)| !same(n, name));
        }
        let bit = Self::length_bit(name);
        let slot = match self.lengths & bit {
            0 => None,
            _ => self.changes.iter_mut().find(|(n, _)| same(n, name)),
        };
        match slot {
            Some(slot) => slot.1 = value,
            None => {
                self.lengths |= bit;
                self.changes.push((name, value));
            }
        }
    }

    /// The headers as edited: the base's unchanged ones in their order, then the set ones.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let kept = self.base.iter().filter(|(n, _)| self.change(n).is_none());
        let set = self
            .changes
            .iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| (*n, v)));
        let added = self.added.iter().map(|(n, v)| (*n, v));
        kept.chain(set).chain(added)
    }
}

impl<'a> Edit<'a> for Overlay<'a> {
    fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        let first = match self.change(name) {
            Some(v) => v.as_ref(),
            None => self.base.get(name),
        };
        first.or_else(|| {
            let mut added = self.added.iter();
            added.find(|(n, _)| same(n, name)).map(|(_, v)| v)
        })
    }

    fn get_all(&self, name: &HeaderName) -> Values<'_> {
        let first = match self.change(name) {
            Some(v) => Values::One(v.as_ref()),
            None => Values::All(self.base.get_all(name).iter()),
        };
        if self.added.iter().any(|(n, _)| same(n, name)) {
            return Values::Then(Box::new(first), name.clone(), self.added.iter());
        }
        first
    }

    fn insert(&mut self, name: &'a HeaderName, value: HeaderValue) {
        self.set(name, Some(value));
    }

    fn append(&mut self, name: &'a HeaderName, value: HeaderValue) {
        self.added.push((name, value));
    }

    fn remove(&mut self, name: &'a HeaderName) {
        self.set(name, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append("a", HeaderValue::from_static("1"));
        h.append("a", HeaderValue::from_static("2"));
        h.append("b", HeaderValue::from_static("3"));
        h.append("c", HeaderValue::from_static("4"));
        h
    }

    /// A name that lives as long as an overlay may borrow it.
    fn leaked(name: &str) -> &'static HeaderName {
        Box::leak(Box::new(HeaderName::from_bytes(name.as_bytes()).unwrap()))
    }

    /// The same edits give the same headers on a map and on an overlay of it.
    #[test]
    fn an_overlay_reads_and_lists_as_the_edited_map_would() {
        let edits = |h: &mut dyn FnMut(&str, Option<&'static str>)| {
            h("a", Some("9"));
            h("c", None);
            h("d", Some("5"));
            h("d", Some("6"));
            h("e", None);
        };
        let mut map = base();
        edits(&mut |n, v| {
            let n = HeaderName::from_bytes(n.as_bytes()).unwrap();
            match v {
                Some(v) => Edit::insert(&mut map, &n, HeaderValue::from_static(v)),
                None => Edit::remove(&mut map, &n),
            }
        });
        let b = base();
        let mut overlay = Overlay::new(&b);
        edits(&mut |n, v| {
            // A name of its own for each edit: an overlay finds names equal, not only the same.
            let n = leaked(n);
            match v {
                Some(v) => overlay.insert(n, HeaderValue::from_static(v)),
                None => overlay.remove(n),
            }
        });
        let mut from_map: Vec<_> = map.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        let mut from_overlay: Vec<_> = overlay
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        from_map
            .sort_by(|x, y| (x.0.as_str(), x.1.as_bytes()).cmp(&(y.0.as_str(), y.1.as_bytes())));
        from_overlay
            .sort_by(|x, y| (x.0.as_str(), x.1.as_bytes()).cmp(&(y.0.as_str(), y.1.as_bytes())));
        assert_eq!(from_map, from_overlay);
        for name in ["a", "b", "c", "d", "e"] {
            let n = HeaderName::from_bytes(name.as_bytes()).unwrap();
            let m: Vec<_> = Edit::get_all(&map, &n).collect();
            let o: Vec<_> = overlay.get_all(&n).collect();
            assert_eq!(m, o, "{name}");
            assert_eq!(Edit::get(&map, &n), overlay.get(&n), "{name}");
        }
        // Unchanged names keep their order and all their values.
        let a_b: Vec<_> = overlay
            .iter()
            .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
            .collect();
        assert_eq!(a_b, ["b=3", "a=9", "d=6"]);
    }

    /// Appended values follow the name's others, on a map and on an overlay alike; a set
    /// after them replaces them.
    #[test]
    fn appended_values_come_last() {
        let n = leaked;
        let v = HeaderValue::from_static;
        let mut map = base();
        let b = base();
        let mut overlay = Overlay::new(&b);
        for h in [&mut map as &mut dyn Edit<'_>, &mut overlay] {
            h.append(n("a"), v("x"));
            h.append(n("z"), v("y"));
            h.remove(n("b"));
            h.append(n("b"), v("w"));
            h.append(n("c"), v("u"));
            h.insert(n("c"), v("t"));
        }
        for name in ["a", "b", "c", "z"] {
            let m: Vec<_> = Edit::get_all(&map, n(name)).collect();
            let o: Vec<_> = overlay.get_all(n(name)).collect();
            assert_eq!(m, o, "{name}");
            assert_eq!(Edit::get(&map, n(name)), overlay.get(n(name)), "{name}");
        }
        let listed: Vec<_> = overlay
            .iter()
            .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
            .collect();
        assert_eq!(listed, ["a=1", "a=2", "c=t", "a=x", "z=y", "b=w"]);
    }

    /// Many random edits of names of many lengths (some 64 apart) read the same on a map
    /// and on an overlay of it.
    #[test]
    fn random_edits_of_names_of_any_length_agree() {
        let names: Vec<HeaderName> = ["a", "bb", "x-tenant", "x-caller", "via", "host"]
            .into_iter()
            .map(String::from)
            .chain(["a", "q"].map(|c| c.repeat(65)))
            .chain(["b".repeat(64), "b".repeat(128)])
            .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
            .collect();
        // The same names again, elsewhere: an edit may name a header by another copy.
        let copies = names.clone();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        for _ in 0..200 {
            let mut base = HeaderMap::new();
            for _ in 0..next(6) {
                base.append(&names[next(names.len())], HeaderValue::from_static("base"));
            }
            let mut map = base.clone();
            let mut overlay = Overlay::new(&base);
            for i in 0..next(12) {
                let n = match next(2) {
                    0 => &names[next(names.len())],
                    _ => &copies[next(names.len())],
                };
                let v = HeaderValue::from(i);
                match next(3) {
                    0 => {
                        Edit::insert(&mut map, n, v.clone());
                        overlay.insert(n, v);
                    }
                    1 => {
                        Edit::append(&mut map, n, v.clone());
                        overlay.append(n, v);
                    }
                    _ => {
                        Edit::remove(&mut map, n);
                        overlay.remove(n);
                    }
                }
            }
            for n in &names {
                let m: Vec<_> = Edit::get_all(&map, n).collect();
                let o: Vec<_> = overlay.get_all(n).collect();
                assert_eq!(m, o, "{n}");
            }
            assert_eq!(overlay.iter().count(), map.len());
        }
    }
}
