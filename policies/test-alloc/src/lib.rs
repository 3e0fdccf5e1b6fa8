//! Test policy (never deploy): a routing module that allocates without bound, to show that the
//! 16 MiB memory cap stops it (the allocation fails, the guest aborts) and the call is routed by
//! the built-in rule.

#![no_std]

extern crate alloc;

use alloc::vec::Vec;

use csps_policy_sdk::routing::{Guest, Route, RouteRequest};

struct Policy;

impl Guest for Policy {
    fn route(request: RouteRequest) -> Route {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Reserve without writing: memory grows at almost no fuel, so the cap (not fuel)
            // is what stops it.
            let mut block = Vec::with_capacity(1 << 20);
            block.push(request.dialled.len() as u8);
            hoard.push(core::hint::black_box(block));
        }
    }
}

csps_policy_sdk::routing::export_routing!(Policy);
