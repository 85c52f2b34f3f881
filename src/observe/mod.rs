//! What tollgate tells operators about each request.

pub mod access_log;
