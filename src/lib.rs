//! tollgate: an API gateway on Cloudflare's Pingora.
//!
//! The request's walk is told in [`proxy`]; every step lives in its own module. The config is
//! loaded and compiled once by [`config`]; [`server`] assembles the Pingora services.

pub mod admin;
pub mod alloc;
pub mod auth;
pub mod client;
pub mod clock;
pub mod compress;
pub mod config;
pub mod conn;
pub mod cors;
pub mod ctx;
pub mod demo;
pub mod downstream;
pub mod error;
pub mod explain;
pub mod grpc;
pub mod guard;
pub mod handover;
pub mod headers;
pub mod limit;
pub mod listen;
pub mod observe;
pub mod path;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod upstream;
pub mod websocket;
