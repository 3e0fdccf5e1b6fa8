//! A call's legs as the rest of the gateway sees them: what kind of party each is, and the
//! read-only views the REST API and the user-state bus get. A leg today is a registered phone;
//! the Teams leg (Direct Routing) and the browser leg (WebRTC) are further [`LegKind`]s: each
//! brings its own signalling behind the same call task and the same relay interface (an RTP
//! address to send to, a latch deciding what it accepts).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::media::LegCounters;

/// What is at the end of a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LegKind {
    /// A SIP phone registered to this server.
    Phone,
    /// Microsoft Teams through the Direct Routing trunk.
    Teams,
}

/// One leg of a call, for the API.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LegInfo {
    /// What it is.
    pub kind: LegKind,
    /// The party: `sip:user@domain`.
    pub party: String,
    /// Where its signalling comes from.
    pub signalling: String,
    /// The RTP source the relay latched on to, once it did.
    pub media: Option<String>,
    /// The codec this leg uses (`PCMU/8000`, `opus/48000`…), once answered; the two legs of a
    /// transcoded call name different ones.
    pub codec: Option<String>,
    /// Whether media is SRTP (SDES keys agreed with this leg).
    pub srtp: bool,
    /// What this leg sent to the gateway.
    pub counters: LegCounters,
    /// The gateway is playing music on hold to this leg (the other party holds it).
    pub music_on_hold: bool,
}

/// One call, for `GET /api/calls`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CallInfo {
    /// The call's number on this server (for `DELETE /api/calls/{id}`).
    pub id: u64,
    /// `ringing` or `answered`.
    #[schema(value_type = String, example = "answered")]
    pub state: &'static str,
    /// When the INVITE arrived.
    pub started_at: DateTime<Utc>,
    /// When the callee answered.
    pub answered_at: Option<DateTime<Utc>>,
    /// Seconds since the start.
    pub duration_secs: u64,
    /// Whether the dialled number is an emergency number.
    pub emergency: bool,
    /// Version of the routing policy module the call was routed with (`null`: the built-in
    /// rule); a module uploaded later applies to new calls only.
    pub routing_policy: Option<u64>,
    /// Version of the quirks policy module the call keeps for its length (`null`: built-in).
    pub quirks_policy: Option<u64>,
    /// For a conference room, its name; its legs are then the participants, in joining order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conference: Option<String>,
    /// Caller's leg first, then the callee's.
    pub legs: Vec<LegInfo>,
}

/// A user's line in one call, as the user-state bus carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LineState {
    /// The user's devices ring for this call (they are its callee; not answered yet). Busy
    /// presence ignores it; busy-lamp fields blink.
    Ringing,
    /// In the answered call.
    Busy,
    /// Out of the call: it ended, or its ringing stopped (cancelled, refused, picked up by
    /// someone else).
    Idle,
}

/// A user's call state as published on the internal bus (Teams presence and the busy-lamp
/// fields consume it): a user with any device in an answered call is busy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserState {
    /// `sip:user@domain`.
    pub aor: String,
    /// Where the user's line is in this call.
    pub state: LineState,
    /// The call.
    pub call: u64,
    /// The user placed the call (RFC 4235 `direction="initiator"`); false: they were called.
    pub caller: bool,
    /// While ringing: the early dialog with one of the user's ringing devices, which a call
    /// pickup's Replaces names (busy-lamp fields show it); `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dialog: Option<DialogIds>,
}

/// The early dialog between the gateway and a ringing device as that device holds it (RFC 4235
/// §4.1.6), and the caller it shows: what a BLF key needs to pick the call up (RFC 3891).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DialogIds {
    /// The Call-ID of the gateway's INVITE to the device.
    pub call_id: String,
    /// The device's tag (its To tag in its provisional response).
    pub local_tag: String,
    /// The gateway's tag (its From tag in that INVITE).
    pub remote_tag: String,
    /// The caller's URI as the device was shown it.
    pub remote: String,
    /// The caller's display name, if any.
    pub remote_name: Option<String>,
}
