//! csps: the gateway that makes standard SIP phones work as Microsoft Teams endpoints.
//!
//! Modules: `sip` (transports and the core task around the sans-IO SIP core in `csps-sip`),
//! `store` (the `Store` trait and its backends), `config` (local file, live configuration),
//! `api` (REST over axum), `auth` (admin sign-in: JWT validation, group membership), `serve`
//! (start-up, drain, shutdown), `metrics` (Prometheus), `demo` (the `--demo` account), `calls`
//! (the B2BUA: one task per call), `media` (the RTP relay and its port pool), `trunk` (the
//! Teams Direct Routing trunk: proxies, keep-alive, failover), `policy` (sandboxed WASM
//! policies: routing, admission, quirks), `presence` (Teams Busy/InACall through Graph while a
//! user is in a call), `blf` (busy-lamp fields: the SIP dialog event package for desk phones).
// `deny`, not `forbid`: the WASM policy bindings that wasmtime's `bindgen!` generates implement
// its unsafe component traits (policy/sandbox.rs allows it there, and only there).
#![deny(unsafe_code)]

pub mod api;
pub mod auth;
pub mod blf;
pub mod calls;
pub mod config;
pub mod demo;
pub mod events;
pub mod media;
pub mod metrics;
pub mod policy;
pub mod presence;
pub mod serve;
pub mod sip;
pub mod store;
pub mod trunk;
pub mod webphone;
