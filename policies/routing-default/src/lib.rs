//! The default routing policy: csps's built-in rule (a local account when the dialled string
//! names one, else an E.164 number to the Teams trunk, else 484/404), as a component.

#![no_std]

use csps_policy_sdk::routing::{Guest, Route, RouteRequest, builtin};

struct Policy;

impl Guest for Policy {
    fn route(request: RouteRequest) -> Route {
        builtin(request)
    }
}

csps_policy_sdk::routing::export_routing!(Policy);
