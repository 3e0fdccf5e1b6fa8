//! Example quirks policy for one DECT base ("ACME DECT-200", a made-up model standing for bases
//! whose radio side carries G.711 only): offers sent to it keep only PCMU/PCMA, use 20 ms
//! packets, lose `rtcp-fb` lines, carry no `Session-Expires` (its firmware refreshes at the
//! wrong time) and advertise no INFO in `Allow` (the base answers an in-dialog INFO with 501 and
//! drops the call). Every other device gets the built-in defaults.

#![no_std]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use csps_policy_sdk::quirks::{
    Direction, Edits, Guest, Header, HeaderEdit, Interest, Message, SdpEdit, builtin,
    builtin_interests,
};

struct Policy;

/// The User-Agent prefix of the base, lower-case.
const ACME_BASE: &str = "acme dect-200";

/// True for the base this policy is for.
fn is_acme_base(message: &Message) -> bool {
    message
        .user_agent
        .as_deref()
        .is_some_and(|ua| ua.to_ascii_lowercase().starts_with(ACME_BASE))
}

impl Guest for Policy {
    /// Every message to the base (its header edits apply to all of them), and what the built-in
    /// quirks want for the other devices; nothing else enters the module.
    fn interests() -> Vec<Interest> {
        let mut wanted = builtin_interests();
        wanted.push(Interest {
            user_agents: vec![ACME_BASE.into()],
            direction: Some(Direction::ToDevice),
            methods: None,
            responses: true,
            sdp_only: false,
        });
        wanted
    }

    fn adjust(message: Message) -> Edits {
        if !is_acme_base(&message) || message.direction != Direction::ToDevice {
            return builtin(message);
        }
        let mut sdp = Vec::new();
        if message.sdp.is_some() {
            for codec in ["opus", "G722", "G729", "iLBC", "SILK"] {
                sdp.push(SdpEdit::DropCodec(codec.into()));
            }
            sdp.push(SdpEdit::ForcePtime(20));
            sdp.push(SdpEdit::StripAttribute("rtcp-fb".into()));
        }
        Edits {
            headers: vec![
                HeaderEdit::Remove("Session-Expires".into()),
                HeaderEdit::Set(Header {
                    name: "Allow".into(),
                    value: "INVITE, ACK, CANCEL, BYE, OPTIONS".into(),
                }),
            ],
            sdp,
        }
    }
}

csps_policy_sdk::quirks::export_quirks!(Policy);
