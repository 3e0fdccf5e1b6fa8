//! The default quirks policy: the built-in per-family edits (DECT bases, Yealink, Polycom,
//! Grandstream, Cisco), as a component.

#![no_std]

extern crate alloc;

use alloc::vec::Vec;

use csps_policy_sdk::quirks::{Edits, Guest, Interest, Message, builtin, builtin_interests};

struct Policy;

impl Guest for Policy {
    /// Only the families the built-in quirks have edits for, only to the device.
    fn interests() -> Vec<Interest> {
        builtin_interests()
    }

    fn adjust(message: Message) -> Edits {
        builtin(message)
    }
}

csps_policy_sdk::quirks::export_quirks!(Policy);
