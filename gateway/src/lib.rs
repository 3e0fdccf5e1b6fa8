//! csps: the gateway that makes standard SIP phones work as Microsoft Teams endpoints.
//!
//! Modules: `sip` (transports and the SIP driver around the sans-IO core in `csps-sip`), `store`
//! (the `Store` trait and its backends), `config` (local file, command line, live configuration),
//! `api` (REST over axum), `serve` (start-up, drain, shutdown), `metrics` (Prometheus).
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod store;
