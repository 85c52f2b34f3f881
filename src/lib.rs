//! tollgate: an API gateway on Cloudflare's Pingora.
//!
//! The request's walk is told in [`proxy`]; every step lives in its own module. The config is
//! loaded and compiled once by [`config`]; [`server`] assembles the Pingora services.
//!
//! No `unsafe` outside the modules allowed it below, each a system call or foreign function
//! the standard library does not wrap, with a `// SAFETY:` comment on every block.

#![deny(unsafe_code)]

pub mod admin;
#[allow(unsafe_code)] // prctl(2), mimalloc's mi_collect
pub mod alloc;
pub mod cache;
pub mod client;
#[allow(unsafe_code)] // clock_gettime(2)
pub mod clock;
pub mod compress;
pub mod config;
pub mod conn;
pub mod ctx;
pub mod demo;
pub mod downstream;
pub mod error;
pub mod explain;
pub mod fastpath;
pub mod gateway;
pub mod grpc;
pub mod handover;
pub mod headers;
pub mod inplace;
pub mod listen;
pub mod live;
pub mod mirror;
pub mod notify;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod random;
#[allow(unsafe_code)] // kill(2)
pub mod reload;
pub mod reloadctl;
pub mod server;
pub mod state;
pub mod timer;
pub mod trace;
pub mod upstream;
pub mod websocket;
