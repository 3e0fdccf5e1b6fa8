//! Example routing policy, a national dial plan for Israel: a dialled number with one leading 0
//! (`0501234567`) goes to Teams as `+972501234567`; `web-<user>` rings only that user's web
//! phones (not their desk phones); everything else follows the built-in rule (local users,
//! `+…`/`00…` numbers).

#![no_std]

extern crate alloc;

use alloc::format;

use csps_policy_sdk::routing::{Guest, Route, RouteRequest, builtin};
use csps_policy_sdk::rules::dial_string;

/// The country code the leading 0 stands for.
const COUNTRY: &str = "972";

struct Policy;

impl Guest for Policy {
    fn route(request: RouteRequest) -> Route {
        if let Some(user) = request.dialled.strip_prefix("web-")
            && !user.is_empty()
        {
            return Route::WebUser(user.into());
        }
        if request.local_match.is_none() {
            let dial = dial_string(&request.dialled);
            if let Some(national) = dial.strip_prefix('0')
                && !national.starts_with('0')
                && !national.is_empty()
                && national.bytes().all(|b| b.is_ascii_digit())
            {
                return Route::Teams(format!("+{COUNTRY}{national}"));
            }
        }
        builtin(request)
    }
}

csps_policy_sdk::routing::export_routing!(Policy);
