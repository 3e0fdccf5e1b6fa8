//! Test policy (never deploy): a routing module that spins forever, to show that fuel and the
//! epoch deadline stop it and the call is routed by the built-in rule.

#![no_std]

use csps_policy_sdk::routing::{Guest, Route, RouteRequest};

struct Policy;

impl Guest for Policy {
    fn route(request: RouteRequest) -> Route {
        let mut n: u64 = request.dialled.len() as u64;
        loop {
            // Opaque to the optimiser, so the loop is not removed.
            n = core::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

csps_policy_sdk::routing::export_routing!(Policy);
