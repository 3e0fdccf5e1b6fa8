//! The default quirks policy: the built-in per-family edits (DECT bases, Yealink, Polycom,
//! Grandstream, Cisco), as a component.

#![no_std]

use csps_policy_sdk::quirks::{Edits, Guest, Message, builtin};

struct Policy;

impl Guest for Policy {
    fn adjust(message: Message) -> Edits {
        builtin(message)
    }
}

csps_policy_sdk::quirks::export_quirks!(Policy);
