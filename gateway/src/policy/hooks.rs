//! Where the SIP side asks the policies: the registrar's admission ([`PolicyGatekeeper`], behind
//! the sans-IO core's [`Gatekeeper`] seam) and the device quirks of a call's messages
//! ([`CallQuirks`]). Routing is asked by `calls::route`.
//!
//! Each hook has a fast path for the common case — no module loaded (or it is switched off) —
//! that decides with the built-in rule on borrowed data, without building a policy request: the
//! trusted-IP rule for a REGISTER, and "nothing to edit" for a device of no known family.

use std::sync::Arc;

use bytes::Bytes;
use csps_sip::Headers;
use csps_sip::registrar::{Admission, AdmissionRequest, Gatekeeper, TrustedIps};
use ipnet::IpNet;

use super::rules::{self, Direction, Edits, HeaderEdit, IpRange, StartLine, Transport};
use super::sandbox::QuirksInstance;
use super::{Pinned, PolicyEngine, PolicyKind, QuirkMessage, RegisterRequest, Verdict};

/// The registrar's admission decision through the admission policy.
pub struct PolicyGatekeeper(pub Arc<PolicyEngine>);

impl Gatekeeper for PolicyGatekeeper {
    fn admit(&self, req: &AdmissionRequest<'_>) -> Admission {
        let pinned = self.0.pin(PolicyKind::Admission);
        if !pinned.is_active() {
            self.0.count_builtin_decision(PolicyKind::Admission);
            return TrustedIps.admit(req);
        }
        let ask = RegisterRequest {
            source: req.source,
            transport: transport(req.transport),
            user_agent: req.user_agent.map(str::to_owned),
            aor: req.aor.to_owned(),
            trusted: req.trusted.iter().map(range).collect(),
        };
        match self.0.admit_with(&pinned, &ask).value {
            Verdict::Admit => Admission::Admit,
            Verdict::Reject { code, reason } => Admission::Reject { code, reason },
            _ => Admission::Challenge,
        }
    }
}

fn transport(t: csps_sip::Transport) -> Transport {
    match t {
        csps_sip::Transport::Udp => Transport::Udp,
        csps_sip::Transport::Tcp => Transport::Tcp,
        csps_sip::Transport::Tls => Transport::Tls,
        csps_sip::Transport::Ws => Transport::Ws,
        csps_sip::Transport::Wss => Transport::Wss,
        // A transport added later: the closest the WIT knows, by reliability.
        t if t.is_reliable() => Transport::Tcp,
        _ => Transport::Udp,
    }
}

fn range(n: &IpNet) -> IpRange {
    IpRange {
        addr: n.network(),
        prefix: n.prefix_len(),
    }
}

/// Headers no quirk may touch: they carry the transaction, the dialog, the route and the body's
/// framing, and an edit there would break the call rather than smooth a device's quirk.
const PROTECTED: &[&str] = &[
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "contact",
    "route",
    "record-route",
    "max-forwards",
    "content-length",
    "content-type",
];

/// A device a call exchanges messages with, as the quirks hook sees it.
#[derive(Clone, Debug, Default)]
pub struct Device {
    user_agent: Option<String>,
    /// The built-in quirks know its family (so they may have edits for it).
    known_family: bool,
}

impl Device {
    /// A device with this User-Agent (or Server).
    pub fn new(user_agent: Option<&str>) -> Device {
        Device {
            user_agent: user_agent.map(str::to_owned),
            known_family: user_agent.and_then(rules::family).is_some(),
        }
    }
}

/// The quirks of one call: the module it began with (pinned for its length) and the engine.
pub struct CallQuirks {
    engine: Arc<PolicyEngine>,
    pinned: Pinned,
    /// The module's instance for this call (see [`PolicyEngine::quirks_in`]).
    instance: Option<QuirksInstance>,
}

impl Clone for CallQuirks {
    /// The same pinned module; the clone gets its own instance when it first needs one.
    fn clone(&self) -> CallQuirks {
        CallQuirks {
            engine: self.engine.clone(),
            pinned: self.pinned.clone(),
            instance: None,
        }
    }
}

impl CallQuirks {
    /// Pins the current quirks module (or the built-in rule) for a new call.
    pub fn pin(engine: Arc<PolicyEngine>) -> CallQuirks {
        let pinned = engine.pin(PolicyKind::Quirks);
        CallQuirks {
            engine,
            pinned,
            instance: None,
        }
    }

    /// The pinned module's version (`None`: the built-in rule).
    pub fn version(&self) -> Option<u64> {
        self.pinned.version()
    }

    /// Applies the quirks to a request to or from `device`.
    pub fn request(&mut self, device: &Device, direction: Direction, req: &mut csps_sip::Request) {
        let start = StartLine::Request(req.method.as_str().to_owned());
        self.apply(device, direction, start, &mut req.headers, &mut req.body);
    }

    /// Applies the quirks to a response to or from `device`.
    pub fn response(
        &mut self,
        device: &Device,
        direction: Direction,
        resp: &mut csps_sip::Response,
    ) {
        let start = StartLine::Response(resp.status);
        self.apply(device, direction, start, &mut resp.headers, &mut resp.body);
    }

    fn apply(
        &mut self,
        device: &Device,
        direction: Direction,
        start: StartLine,
        headers: &mut Headers,
        body: &mut Bytes,
    ) {
        // The built-in rule edits only messages to devices of a known family.
        if !self.pinned.is_active() && (direction == Direction::FromDevice || !device.known_family)
        {
            self.engine.count_builtin_decision(PolicyKind::Quirks);
            return;
        }
        let sdp = headers
            .get("Content-Type")
            .is_some_and(|t| {
                let t = t.trim_start().as_bytes();
                t.get(..15)
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"application/sdp"))
            })
            .then(|| std::str::from_utf8(body).ok())
            .flatten()
            .filter(|s| !s.is_empty());
        // A module sees only the messages it declared: nothing is built for the others.
        let method = match &start {
            StartLine::Request(m) => Some(m.as_str()),
            StartLine::Response(_) => None,
        };
        let ua = device.user_agent.as_deref();
        if !self.pinned.wants(direction, method, ua, sdp.is_some()) {
            return;
        }
        let msg = QuirkMessage {
            direction,
            start,
            headers: header_block(headers),
            sdp: sdp.map(str::to_owned),
            user_agent: device.user_agent.clone(),
        };
        let Edits {
            headers: header_edits,
            sdp: sdp_edits,
        } = self
            .engine
            .quirks_in(&self.pinned, &mut self.instance, &msg)
            .value;
        apply_headers(headers, &header_edits);
        if let Some(sdp) = sdp
            && !sdp_edits.is_empty()
        {
            *body = Bytes::from(rules::apply_sdp(sdp, &sdp_edits));
        }
    }
}

/// The header section as one string (`adjuster.message.headers`): `Name: value` CRLF per field.
fn header_block(headers: &Headers) -> String {
    let len = headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    let mut block = String::with_capacity(len);
    for h in headers.iter() {
        block.push_str(&h.name);
        block.push_str(": ");
        block.push_str(&h.value);
        block.push_str("\r\n");
    }
    block
}

/// Carries out header edits, except on the [`PROTECTED`] headers.
fn apply_headers(headers: &mut Headers, edits: &[HeaderEdit]) {
    for edit in edits {
        let name = match edit {
            HeaderEdit::Set(n, _) | HeaderEdit::Add(n, _) | HeaderEdit::Remove(n) => n,
        };
        let canonical = csps_sip::message::canonical_name(name);
        if PROTECTED.contains(&canonical.to_ascii_lowercase().as_str()) {
            tracing::debug!(header = %name, "quirk edit of a protected header ignored");
            continue;
        }
        match edit {
            HeaderEdit::Set(n, v) => headers.set(n, v.as_str()),
            HeaderEdit::Add(n, v) => headers.push(n, v.as_str()),
            HeaderEdit::Remove(n) => headers.remove(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_headers_are_kept_in_any_spelling() {
        let mut h = Headers::new();
        h.push("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1");
        h.push("Session-Expires", "1800");
        h.push("Call-ID", "abc");
        apply_headers(
            &mut h,
            &[
                HeaderEdit::Remove("v".into()),
                HeaderEdit::Set("CALL-ID".into(), "evil".into()),
                HeaderEdit::Remove("session-expires".into()),
                HeaderEdit::Add("X-Quirk".into(), "1".into()),
            ],
        );
        assert_eq!(h.get("Via"), Some("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"));
        assert_eq!(h.get("Call-ID"), Some("abc"));
        assert_eq!(h.get("Session-Expires"), None);
        assert_eq!(h.get("X-Quirk"), Some("1"));
    }
}
