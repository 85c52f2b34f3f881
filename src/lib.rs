//! tollgate: an API gateway on Cloudflare's Pingora.
//!
//! The request's walk is told in [`proxy`]; every step lives in its own module. The config is
//! loaded and compiled once by [`config`]; [`server`] assembles the Pingora services.

pub mod admin;
pub mod alloc;
pub mod client;
pub mod clock;
pub mod compress;
pub mod config;
pub mod conn;
pub mod ctx;
pub mod demo;
pub mod downstream;
pub mod error;
pub mod explain;
pub mod gateway;
pub mod grpc;
pub mod handover;
pub mod headers;
pub mod listen;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod upstream;
pub mod websocket;
