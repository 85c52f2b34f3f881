//! What the gateway decides about a request, apart from how it travels: which route it takes
//! ([`router`], over the normalised [`path`]), whether its head is acceptable ([`guard`]),
//! who the caller is ([`auth`]), whether it is within its rate ([`limit`]), what a
//! cross-origin caller may do ([`cors`]), the gateway's own response headers ([`stamp`]) and
//! how a backend's response head is finished ([`finish`]); which upstream of a `split` a
//! request goes to ([`split`]).
//! Each part parses its own config and answers with data; none touches a session, a stream
//! or a socket, so both HTTP engines apply the same decisions.

pub mod auth;
pub mod cors;
pub mod finish;
pub mod guard;
pub mod limit;
pub mod path;
pub mod router;
pub mod split;
pub mod stamp;
pub mod transform;
