//! Records the store keeps, shaped for JSON (REST) and BSON (MongoDB) alike.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Digest hash algorithm of a stored HA1 (RFC 8760).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashAlgorithm {
    /// MD5 (RFC 2617).
    #[serde(rename = "MD5")]
    Md5,
    /// SHA-256 (RFC 8760).
    #[serde(rename = "SHA-256")]
    Sha256,
}

/// H(username:realm:password) for one realm and algorithm; the password itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ha1 {
    /// The realm the hash was computed for.
    pub realm: String,
    /// Hash algorithm.
    pub algorithm: HashAlgorithm,
    /// Lower-case hex digest.
    pub hash: String,
}

/// A SIP account, later bound to a Teams user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Opaque id.
    pub id: Uuid,
    /// SIP username, unique per domain.
    pub username: String,
    /// SIP domain (realm of the account).
    pub domain: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Teams user principal name.
    pub upn: Option<String>,
    /// E.164 number.
    pub phone_number: Option<String>,
    /// A disabled account cannot register.
    pub enabled: bool,
    /// Activated for Teams: its calls may cross the Direct Routing trunk (the activation flow
    /// will set it; an admin can set it through the REST API). Absent in older records: false.
    #[serde(default)]
    pub activated: bool,
    /// HA1 values, one per realm and algorithm.
    pub ha1: Vec<Ha1>,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// What the activation bound to the account (absent in older records: nothing).
    #[serde(default)]
    pub teams: TeamsLink,
}

/// The Teams identity an activation bound to an account, and the user's refresh token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamsLink {
    /// Who signed in (from the validated ID token); `None` until an activation.
    pub identity: Option<TeamsIdentity>,
    /// The user's refresh token, sealed (AES-256-GCM under a key derived from the local
    /// `secret_key`, bound to the account id: see `auth::sealed`); never in clear.
    pub refresh_token: Option<String>,
    /// When the refresh token was obtained or last refreshed.
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Why the user must activate again (the identity provider refused the refresh token);
    /// `None` while the token is good.
    pub needs_reactivation: Option<String>,
}

/// A Teams (Entra ID) user as the activation saw them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TeamsIdentity {
    /// Tenant id (`tid`).
    pub tenant: String,
    /// The user's object id (`oid`).
    pub oid: String,
    /// The user principal name the ID token named.
    pub upn: String,
    /// The E.164 number Graph reported at activation, when it reported one.
    pub phone_number: Option<String>,
    /// When the user activated.
    pub activated_at: DateTime<Utc>,
}

/// What `POST /api/users` accepts (unknown fields are refused).
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"username": "alice", "password": "alice-secret-1",
    "domain": "csps.local", "display_name": "Alice", "phone_number": "+14255550100"}))]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// SIP username.
    pub username: String,
    /// Plain password, turned into HA1s at once.
    pub password: String,
    /// SIP domain; the default domain when absent.
    pub domain: Option<String>,
    /// Display name.
    pub display_name: Option<String>,
    /// Teams UPN.
    pub upn: Option<String>,
    /// E.164 number.
    pub phone_number: Option<String>,
}

/// What `PATCH /api/users/{id}` may change (JSON merge patch semantics; unknown fields are refused).
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"display_name": "Alice Smith", "phone_number": null}))]
pub struct UserPatch {
    /// New SIP username (needs `password` too: the HA1s cover it).
    #[schema(nullable = false)]
    pub username: Option<String>,
    /// New SIP domain (needs `password` too: the HA1s cover it).
    #[schema(nullable = false)]
    pub domain: Option<String>,
    /// New password (HA1s recomputed for the user's domain).
    #[schema(nullable = false)]
    pub password: Option<String>,
    /// Display name (`null` clears it).
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>, nullable)]
    pub display_name: Option<Option<String>>,
    /// Teams UPN (`null` clears it).
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>, nullable)]
    pub upn: Option<Option<String>>,
    /// E.164 number (`null` clears it).
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>, nullable)]
    pub phone_number: Option<Option<String>>,
    /// Enabled flag.
    #[schema(nullable = false)]
    pub enabled: Option<bool>,
    /// Activated for Teams (until the activation flow sets it, an admin does).
    #[schema(nullable = false)]
    pub activated: Option<bool>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// What identifies one binding: the AoR and either the RFC 5626 instance (`+sip.instance`
/// and `reg-id`) or, when the phone sends none, the Contact URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BindingKey {
    /// Address of record, `sip:user@domain`.
    pub aor: String,
    /// `instance:<+sip.instance>;reg-id=<n>` or `contact:<uri>`.
    pub binding: String,
}

/// A binding to remove, but only while `server` holds it: a phone that moved to another
/// server and then unregisters (or is removed) on the old one leaves the new one's document alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// The binding.
    pub key: BindingKey,
    /// The server removing it; the stored document must name it as host.
    pub server: String,
}

impl Removal {
    /// `server`'s removal of `key`.
    pub fn by(server: &str, key: BindingKey) -> Self {
        Removal {
            key,
            server: server.to_owned(),
        }
    }
}

/// One registered contact of an AoR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Address of record.
    pub aor: String,
    /// The binding part of the key (see [`BindingKey`]).
    pub binding: String,
    /// Contact as the phone sent it (name-addr without expires).
    pub contact: String,
    /// Server that holds the phone's flow.
    pub server: String,
    /// Transport the REGISTER came over (`udp`, `tcp`, `tls`, `ws`).
    pub transport: String,
    /// Source address and port of the REGISTER.
    pub source: String,
    /// Local address the REGISTER arrived on.
    pub local: String,
    /// User-Agent header.
    pub user_agent: Option<String>,
    /// When the binding lapses.
    pub expires_at: DateTime<Utc>,
    /// `+sip.instance`, when sent.
    pub instance_id: Option<String>,
    /// `reg-id`, when sent.
    pub reg_id: Option<u32>,
    /// Call-ID of the REGISTER (RFC 3261 §10.3 ordering).
    pub call_id: String,
    /// CSeq of the REGISTER.
    pub cseq: u32,
    /// Contact q-value ×1000.
    pub q: Option<u16>,
    /// True when the phone is behind NAT (reached at `source`, kept alive by the gateway).
    pub nat: bool,
}

impl Registration {
    /// The key of this binding.
    pub fn key(&self) -> BindingKey {
        BindingKey {
            aor: self.aor.clone(),
            binding: self.binding.clone(),
        }
    }
}

/// A configuration entry: `{"Data":{"System":{…},"SipConfig":{…},…}}`.
pub type ConfigEntry = serde_json::Value;

/// One administrative change, as the audit log keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who made it (`admin-token`, `localhost`, or the signed-in user's UPN).
    pub actor: String,
    /// What was done (`config.put`, `user.create`, `trusted-ips.add`, …).
    pub action: String,
    /// What it was done to (a configuration path, a user id, …).
    pub target: String,
    /// The value before, when there was one (secrets never appear in clear).
    pub old: Option<serde_json::Value>,
    /// The value after, when there is one (secrets never appear in clear).
    pub new: Option<serde_json::Value>,
}

/// A policy module as the store describes it (without its bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMeta {
    /// `routing`, `admission` or `quirks`.
    pub kind: String,
    /// 1 for the first upload of this kind, +1 for every later one.
    pub version: u64,
    /// SHA-256 of the component, lower-case hex.
    pub hash: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// When it was uploaded.
    pub uploaded_at: DateTime<Utc>,
    /// Who uploaded it.
    pub uploaded_by: String,
    /// Why it is switched off (`POST /api/policies/{kind}/disable`), when it is.
    pub disabled: Option<String>,
}

/// A policy module: its description and the component's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    /// What it is.
    pub meta: PolicyMeta,
    /// The WebAssembly component.
    pub wasm: Vec<u8>,
}

/// An ended call's record as the store keeps it (`GET /api/calls/history`, the `call.ended`
/// event): the in-memory record of the call plus who handled it and an id unique in a cluster.
/// The SIP messages stay in the handling server's memory (`GET /api/calls/{id}/messages`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndedCall {
    /// Unique across servers (the store's key).
    pub record_id: Uuid,
    /// The server that handled the call (its `server_name`).
    #[schema(example = "a")]
    pub server: String,
    /// The call's number on that server (as in `GET /api/calls`; not unique in a cluster).
    pub id: u64,
    /// The caller's Call-ID.
    pub call_id: String,
    /// The caller (`sip:user@domain`; `anonymous` for an unchallenged emergency call).
    #[schema(example = "sip:alice@csps.local")]
    pub caller: String,
    /// The callee (`sip:user@domain`).
    #[schema(example = "sip:bob@csps.local")]
    pub callee: String,
    /// When the INVITE arrived.
    pub started_at: DateTime<Utc>,
    /// When the callee answered; `null` for an unanswered call.
    pub answered_at: Option<DateTime<Utc>>,
    /// When the call ended (the order of the history, and what retention counts from).
    pub ended_at: DateTime<Utc>,
    /// Seconds from the answer to the end (0 for an unanswered call).
    pub talk_secs: u64,
    /// The final status the caller got (200 for an answered call, 486, 487, …).
    pub status: Option<u16>,
    /// Why it ended (`caller_hung_up`, `cancelled`, … as in the `call.ended` event). Kept as
    /// text so a record written by a newer server still reads back.
    #[schema(value_type = Option<crate::calls::b2bua::EndReason>)]
    pub end_reason: Option<String>,
    /// Whether the dialled number is an emergency number.
    pub emergency: bool,
    /// SIP messages the handling server kept for the call (while it still keeps them).
    pub messages: u64,
    /// SIP messages not kept because the call's log was full.
    pub messages_dropped: u64,
    /// What each leg sent to the gateway, caller's leg first (empty for a conference room, and
    /// in records written before 2026-11-28).
    #[serde(default)]
    pub media: Vec<LegMedia>,
}

/// What one leg of a call sent to the gateway over the whole call: the call record's media
/// quality summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LegMedia {
    /// The party (`sip:user@domain`).
    #[schema(example = "sip:alice@csps.local")]
    pub party: String,
    /// The codec it used last (`PCMU/8000`, `opus/48000`…); `null` when it never got to media.
    pub codec: Option<String>,
    /// RTP packets received from it.
    pub rtp_packets: u64,
    /// RTP packets lost on the way from it (RFC 3550 §6.4.1: expected from the sequence
    /// numbers, less received).
    pub rtp_lost: u64,
    /// Its interarrival jitter in milliseconds when the call ended (RFC 3550 §6.4.1); `null`
    /// when never measured (and in records written before 2026-11-28).
    #[serde(default)]
    pub jitter_ms: Option<f64>,
    /// The highest interarrival jitter in milliseconds over the call; `null` as `jitter_ms`.
    #[serde(default)]
    pub jitter_max_ms: Option<f64>,
    /// The fraction lost, in per mille, that the leg's own last RTCP report gave for the
    /// stream the gateway sent it (RFC 3550 §6.4.1); `null` when it sent no report on that
    /// stream (and in records written before 2026-11-28).
    #[serde(default)]
    pub remote_loss_permille: Option<u32>,
    /// The interarrival jitter in milliseconds that the same report gave; `null` as
    /// `remote_loss_permille`.
    #[serde(default)]
    pub remote_jitter_ms: Option<f64>,
}

/// Which ended calls to list, newest (latest `ended_at`) first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecordQuery {
    /// At most this many.
    pub limit: usize,
    /// Skip this many matching records first.
    pub offset: usize,
    /// Only calls that ended strictly before this time (the paging cursor: the `ended_at` of
    /// the last record of the previous page).
    pub before: Option<DateTime<Utc>>,
    /// Only calls that ended at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only calls whose caller or callee contains this text (case-insensitive).
    pub user: Option<String>,
}

impl Default for CallRecordQuery {
    fn default() -> Self {
        CallRecordQuery {
            limit: 100,
            offset: 0,
            before: None,
            since: None,
            user: None,
        }
    }
}

impl CallRecordQuery {
    /// Whether `r` passes the time and user filters (paging aside); the backends' reference.
    pub fn matches(&self, r: &EndedCall) -> bool {
        self.before.is_none_or(|b| r.ended_at < b)
            && self.since.is_none_or(|s| r.ended_at >= s)
            && self.user.as_deref().is_none_or(|u| {
                let u = u.to_lowercase();
                r.caller.to_lowercase().contains(&u) || r.callee.to_lowercase().contains(&u)
            })
    }
}
