//! Test policy (never deploy): a routing module that traps (a panic, which aborts with
//! `unreachable` under `panic = "abort"`), to show that the call is routed by the built-in rule.

#![no_std]

use csps_policy_sdk::routing::{Guest, Route, RouteRequest};

struct Policy;

impl Guest for Policy {
    fn route(request: RouteRequest) -> Route {
        panic!("test-trap policy asked to route {}", request.dialled);
    }
}

csps_policy_sdk::routing::export_routing!(Policy);
