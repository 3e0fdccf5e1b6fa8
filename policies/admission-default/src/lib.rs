//! The default admission policy: cSPS's trusted-IP rule — a REGISTER from one of the configured
//! trusted ranges is bound without a challenge, every other one is challenged.

#![no_std]

use csps_policy_sdk::admission::{Guest, RegisterRequest, Verdict, builtin};

struct Policy;

impl Guest for Policy {
    fn admit(request: RegisterRequest) -> Verdict {
        builtin(request)
    }
}

csps_policy_sdk::admission::export_admission!(Policy);
