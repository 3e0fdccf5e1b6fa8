//! Conference rooms: the gateway as a conference focus (RFC 4579). A phone joins a room by
//! calling the conference user (`Data.SipConfig.ConferenceUri`, `conference` by default: that
//! user joins the room `conference`, `conference-<name>` the room `<name>`). The switch
//! authenticates the caller, binds the participant's media ports and hands the INVITE to the
//! room's task (starting it for the first participant). The room answers as a UAS itself — no
//! B-leg, no second relay hop — and owns every participant's dialog, RTP sockets and the
//! [`Mixer`]: each participant hears the sum of the others in its own codec. A BYE removes only
//! its sender; the room ends with its last participant. The room is one entry in
//! `GET /api/calls` with one leg per participant and `conference` set to the room's name.
//!
//! The media loop is clocked by the mix: every 20 ms the room drains each participant's
//! (non-blocking) socket into the mixer, then sends each one its mix. A phone's media is
//! latched as a call's is (symmetric RTP, see [`Latch`]).
//!
//! SRTP (SDES, RFC 4568) is negotiated with each participant alone, as with a call's leg
//! ([`Sdes`], under `Data.SipConfig.Srtp` for the phone's transport): the answer carries the
//! gateway's own key, and the participant's [`SrtpSession`] unprotects what it sends before the
//! mixer and protects its mix after it. A participant without SRTP hears the same mix in clear.
//!
//! The room is the source of what each participant hears, so it sends each one its own RTCP
//! (RFC 3550: an SR on the mix, a report block on the participant's stream, a CNAME; one per
//! ~5 s, [`Reporter`]) to where the participant's RTCP comes from, else its RTP port + 1, as
//! SRTCP for an SRTP participant; the participant's reports are read for what they say about
//! the mix (`remote_loss_permille`, `remote_jitter_ms`).

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use csps_sip::dialog::Dialog;
use csps_sip::sdp::{self, Attribute, Codec, Format, Media, Sdp};
use csps_sip::transaction::TxnKey;
use csps_sip::{Method, Remote, Request, Response, SipHeaders, Transport};
use rand::RngCore;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use super::b2bua::{
    EndReason, Handover, Input, MIN_SE, ReferRefusal, RoomOutcome, Sbc, TransferTarget,
    contact_for, new_invite, party_aor, session_expires, supports_timer, teams_timer, via_for,
};
use super::leg::{CallInfo, LegInfo, LegKind, LineState, UserState};
use super::record::{CallRecord, Direction as LogDirection, MessageLog};
use super::sdes::{LegSrtp, Sdes, SrtpPolicy};
use super::{CallAction, CallEvent, CallNo, Directory};
use crate::media::codec::opus_fmtp;
use crate::media::mixer::{Mixer, ParticipantId};
use crate::media::rtcp::Reporter;
use crate::media::srtp::{SrtpKeys, SrtpSession};
use crate::media::{Latch, LegCounters, PortPool, is_rtp_v2};

/// The conference user when `Data.SipConfig.ConferenceUri` is not set.
pub const DEFAULT_USER: &str = "conference";

/// The name prefix of the private rooms that bridge an attended transfer's two parties
/// (`transfer+<call>`): no dial-in reaches them (room names dialled have no `+`), and a bridge
/// left with one party ends.
pub const BRIDGE_PREFIX: &str = "transfer+";

/// How long a bridge may hold fewer than two parties with nobody on the way before the one
/// left is hung up (its two moves start together; a failed or missing one leaves it alone).
const BRIDGE_GRACE: Duration = Duration::from_secs(5);

/// The methods a room accepts in its dialogs (Allow).
const ROOM_ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";

/// The Allow a room sends a party: the trunk's list (Teams transfers only where it lists REFER)
/// to Teams, the room's own to a phone.
fn allow(sbc: Option<&Sbc>) -> &'static str {
    match sbc {
        Some(_) => crate::trunk::ALLOW,
        None => ROOM_ALLOW,
    }
}

/// RFC 3261 T1 and T2, for retransmitting a 200 until its ACK (§13.3.1.4).
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// Codecs the mixer encodes and decodes, in the room's order of preference when the offer
/// does not decide (it does: the first mixable codec of the offer is taken).
const MIXABLE: &[Codec] = &[Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma];

/// The room a dialled user part names, when it is a conference user: `conference` → the room
/// `conference`, `conference-team` → `team`. `user` is the configured conference user (the
/// user part of `Data.SipConfig.ConferenceUri`); empty: no conferences.
pub fn room_of(dialled: &str, user: &str) -> Option<String> {
    if user.is_empty() {
        return None;
    }
    if dialled.eq_ignore_ascii_case(user) {
        return Some(user.to_ascii_lowercase());
    }
    let rest = dialled
        .get(..user.len())
        .filter(|p| p.eq_ignore_ascii_case(user))
        .and_then(|_| dialled.get(user.len()..))?
        .strip_prefix('-')?;
    let ok = !rest.is_empty()
        && rest.len() <= 64
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then(|| rest.to_ascii_lowercase())
}

/// The conference user of a `Data.SipConfig.ConferenceUri` value: the user part of a SIP URI,
/// or the value itself when it is a bare user.
pub fn conference_user(configured: &str) -> String {
    let v = configured.trim();
    match csps_sip::Uri::parse(v) {
        Ok(u) => u.user.unwrap_or_default(),
        Err(_) => v.to_owned(),
    }
}

/// One phone joining a room: its INVITE, as the switch accepted it, and its media sockets.
#[derive(Debug)]
pub struct Join {
    /// The INVITE's server transaction.
    pub key: TxnKey,
    /// Where the INVITE came from.
    pub from: Remote,
    /// The gateway's address on that flow (Contact and SDP).
    pub local: SocketAddr,
    /// The INVITE.
    pub invite: Request,
    /// The authenticated caller, `sip:user@domain`.
    pub party: String,
    /// The media settings at the time of the INVITE.
    pub media: RoomMedia,
}

/// Where a participant's media comes from, as the settings were when it arrived.
#[derive(Clone, Debug)]
pub struct RoomMedia {
    /// Where the participant's RTP/RTCP port pair comes from.
    pub ports: Arc<PortPool>,
    /// `Data.System.MinRtpPort..=MaxRtpPort`.
    pub rtp_range: (u16, u16),
    /// `Data.SipConfig.Srtp` and `SrtpOverPlainTransport`.
    pub srtp: SrtpPolicy,
}

/// A call's leg moved into a room (its other party referred it there): the room re-INVITEs
/// it in its dialog with the room's media.
#[derive(Debug)]
pub struct Move {
    /// The call it comes from (which hears the outcome).
    pub call: CallNo,
    /// The leg: its dialog, device and party.
    pub leg: Handover,
    /// The media settings now.
    pub media: RoomMedia,
}

/// Someone entering a room.
#[derive(Debug)]
pub enum Arrival {
    /// A phone dialled in.
    Join(Join),
    /// A call's leg is moved in.
    Move(Move),
}

impl Arrival {
    /// The Call-ID of the arrival's dialog (routed to the room).
    pub fn call_id(&self) -> Option<&str> {
        match self {
            Arrival::Join(j) => j.invite.call_id(),
            Arrival::Move(m) => Some(&m.leg.dialog.call_id),
        }
    }

    fn opening(&self) -> Opening<'_> {
        match self {
            Arrival::Join(j) => j.opening(),
            Arrival::Move(m) => Opening {
                call_id: &m.leg.dialog.call_id,
                party: &m.leg.party,
                host: &m.leg.room.host,
                media: &m.media,
            },
        }
    }
}

impl Join {
    fn opening(&self) -> Opening<'_> {
        Opening {
            call_id: self.invite.call_id().unwrap_or(""),
            party: &self.party,
            host: &self.invite.uri.host,
            media: &self.media,
        }
    }
}

/// What a room takes from its first arrival: its record's Call-ID and caller, the host of
/// its URI, and the media settings.
struct Opening<'a> {
    call_id: &'a str,
    party: &'a str,
    host: &'a str,
    media: &'a RoomMedia,
}

/// Everything a room task starts with.
pub struct RoomTask {
    /// The room's number among the calls.
    pub no: CallNo,
    /// The room's name.
    pub room: String,
    /// The conference user (the Contact's user part).
    pub user: String,
    /// The first participant.
    pub first: Arrival,
    /// Events from the switch (joins, in-dialog requests, snapshots).
    pub events: mpsc::Receiver<CallEvent>,
    /// Where SIP work goes.
    pub actions: mpsc::Sender<(CallNo, CallAction)>,
    /// The user-state bus (a participant is busy).
    pub states: broadcast::Sender<UserState>,
    /// Where the room's record goes.
    pub directory: Directory,
    /// The gateway's name for Warning headers.
    pub agent: String,
}

/// One participant.
struct Member {
    id: ParticipantId,
    party: String,
    remote: Remote,
    local: SocketAddr,
    /// The trunk's names when the participant is Teams.
    sbc: Option<Sbc>,
    dialog: Dialog,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    latch: Latch,
    format: Format,
    /// Our SDP's origin version (raised with each answer, RFC 3264 §8).
    sdp_version: u64,
    /// False while the phone holds (we must not send).
    sending: bool,
    /// The 200 to a joining INVITE, retransmitted until the ACK: (its transaction, response,
    /// next, interval, give up).
    unacked: Option<(TxnKey, Response, Instant, Duration, Instant)>,
    counters: LegCounters,
    /// SDES with this phone: the gateway's keys, for the participant's whole stay.
    sdes: Sdes,
    /// The SRTP rule of the phone's transport when it joined.
    rule: LegSrtp,
    /// The keys `srtp` was made from: a re-INVITE that keeps them keeps its replay state.
    keys: Option<SrtpKeys>,
    /// Unprotects what the phone sends, protects its mix; `None`: plain RTP.
    srtp: Option<SrtpSession>,
    /// The room's last 200 carried an offer (to an offerless re-INVITE): the ACK answers it.
    offered: bool,
    /// The room's RTCP to the participant.
    reporter: Reporter,
    /// Where the participant's RTCP last came from (its reports go back there).
    rtcp_from: Option<SocketAddr>,
    /// RFC 4028 with the participant refreshing: the session interval and when the session
    /// expires without a refresh.
    session: Option<(Duration, Instant)>,
}

impl Member {
    /// Follows the SDES keys after an offer/answer exchange: a new session only when they
    /// changed.
    fn rekey(&mut self) {
        let now = self.sdes.keys();
        if self.keys.as_ref() == now {
            return;
        }
        if self.keys.is_none() && !self.remote.transport.is_secure() {
            tracing::warn!(party = %self.party, "SRTP keys crossed unencrypted signalling (Data.SipConfig.SrtpOverPlainTransport)");
        }
        self.keys = now.cloned();
        self.srtp = now.and_then(session);
    }

    /// The RTP clock of the participant's codec, which the room's reports and the
    /// participant's reports on the mix are in.
    fn follow_format(&mut self) {
        self.reporter.set_clock(self.format.clock);
        self.counters
            .set_audio(Some((self.format.pt, self.format.clock)));
    }

    /// Sends the participant the room's report when one is due at `now`: to where its RTCP
    /// comes from, else its RTP port + 1; SRTCP when it speaks SRTP.
    fn send_report(&mut self, now: Instant) {
        if !self.reporter.due(now) {
            return;
        }
        let mut report = Vec::with_capacity(96);
        let receiving = self.counters.receiving();
        self.reporter
            .write_report(now, SystemTime::now(), receiving, &mut report);
        let to = self.rtcp_from.or_else(|| {
            let rtp = self.latch.destination()?;
            Some(SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1)))
        });
        let protected;
        let report = match self.srtp.as_mut().map(|s| s.protect(&report, true)) {
            None => &report[..],
            Some(Ok(p)) => {
                protected = p;
                &protected[..]
            }
            Some(Err(_)) => return,
        };
        if let Some(to) = to {
            let _ = self.rtcp.send_to(report, to);
        }
    }

    /// The rule for an offer the room makes (an offerless re-INVITE): `RTP/SAVP` once the
    /// phone speaks SRTP, so a phone that insists on it is not offered plain RTP.
    fn offer_rule(&self) -> LegSrtp {
        if self.keys.is_some() {
            LegSrtp::Mandatory
        } else {
            self.rule
        }
    }
}

/// RFC 4028 §9 for a participant's INVITE, re-INVITE or UPDATE: the session interval when the
/// participant asks for a session timer and refreshes it itself (it supports `timer`, and its
/// `refresher` is `uac` or left to the room, which names the participant); the room's 2xx then
/// carries `Session-Expires: N;refresher=uac` and `Require: timer`. `None` when it asks none,
/// asks the room to refresh (a room sends no refreshes: no timer then, as from a UAS without
/// the extension) or an interval under Min-SE (refused before, see [`interval_too_small`]).
fn participant_refreshes(req: &Request) -> Option<u32> {
    let (secs, refresher) = session_expires(&req.headers)?;
    (supports_timer(&req.headers) && refresher.as_deref() != Some("uas") && secs >= MIN_SE)
        .then_some(secs)
}

/// RFC 4028 §8: a request whose session interval is under the room's Min-SE (90 s) gets 422
/// with `Min-SE`.
fn interval_too_small(req: &Request) -> bool {
    session_expires(&req.headers).is_some_and(|(secs, _)| secs < MIN_SE)
}

/// Confirms a participant's session timer of `secs` in the room's 2xx (see
/// [`participant_refreshes`]), and when it expires from `now`.
fn confirm_timer(resp: &mut Response, secs: u32, now: Instant) -> (Duration, Instant) {
    resp.headers
        .push("Session-Expires", format!("{secs};refresher=uac"));
    resp.headers.push("Require", "timer");
    let interval = Duration::from_secs(u64::from(secs));
    (interval, now + interval)
}

/// A session for `keys` (checked when their SDP was read, so a refusal is not expected).
fn session(keys: &SrtpKeys) -> Option<SrtpSession> {
    SrtpSession::new(keys)
        .map_err(|e| tracing::warn!("SRTP keys refused: {e}"))
        .ok()
}

/// The room's state: its participants and mixer, and the SIP work it produced.
struct Room {
    no: CallNo,
    name: String,
    user: String,
    agent: String,
    members: Vec<Member>,
    mixer: Mixer,
    next_id: ParticipantId,
    next_tag: u32,
    out: VecDeque<CallAction>,
    log: MessageLog,
    states: broadcast::Sender<UserState>,
    rng: rand::rngs::StdRng,
    record: CallRecord,
    ended: bool,
    buf: Vec<u8>,
    /// Where participants' port pairs come from, and the range (as of the first join).
    ports: Arc<PortPool>,
    rtp_range: (u16, u16),
    /// The room's URI as the first participant dialled it (From of the room's INVITEs).
    focus: String,
    /// The SRTP policy as of the latest join (for the parties the room calls in).
    srtp: SrtpPolicy,
    /// Parties the room is calling in on a participant's REFER, and calls' legs it is moving
    /// in.
    invitations: Vec<Invitation>,
    /// The ACK sent for each answered invitation, by request tag (a retransmitted 200 gets it
    /// again).
    acks: Vec<(u32, Remote, Request)>,
    /// A room bridging an attended transfer ([`BRIDGE_PREFIX`]): since when it has been short
    /// of two parties.
    lonely_since: Option<Instant>,
}

/// A party the room has offered its media to and waits for: called in because a participant
/// referred it (RFC 4579 §5.5), or a call's leg being moved in.
struct Invitation {
    /// The INVITE's (or re-INVITE's) tag.
    tag: u32,
    to: Remote,
    local: SocketAddr,
    /// The trunk's names when the party is Teams.
    sbc: Option<Sbc>,
    party: String,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// SDES of the room's offer to the party, and its rule.
    sdes: Sdes,
    rule: LegSrtp,
    how: How,
}

/// How a party is brought into the room.
enum How {
    /// By a new INVITE, on participant `referrer`'s REFER (NOTIFYs go to it); given up (and
    /// CANCELled) when not answered by `deadline`.
    Referred {
        invite: Request,
        referrer: ParticipantId,
        deadline: Instant,
    },
    /// By a re-INVITE with CSeq `seq` in the dialog of call `call`'s leg (the call hears the
    /// outcome).
    Moved {
        call: CallNo,
        dialog: Dialog,
        seq: u32,
    },
}

/// How long the room rings a referred party.
const RING_TIMEOUT: Duration = Duration::from_secs(60);

/// The answer's audio format: the first mixable codec of the offer's audio section.
fn pick(offer: &Sdp) -> Result<(usize, Format), &'static str> {
    let i = offer.audio_index().ok_or("no audio stream offered")?;
    let m = &offer.media[i];
    if m.port == 0 {
        return Err("the audio stream is disabled");
    }
    let f = m
        .codecs()
        .find(|f| MIXABLE.contains(&f.codec))
        .ok_or("no codec in common (the room mixes Opus, G722, PCMU, PCMA)")?;
    Ok((i, f))
}

/// The audio section of the room's SDP: `formats` on `port`, 20 ms, `dir`, written after
/// `sdes` made it secure or left it plain (an answer's or offer's crypto line and transport).
fn audio_section(
    port: u16,
    formats: &[Format],
    dir: sdp::Direction,
    sdes: impl FnOnce(&mut Media),
) -> String {
    let attr = |name: &str, value: Option<String>| Attribute {
        name: name.to_owned(),
        value,
    };
    let mut attributes: Vec<Attribute> = Vec::with_capacity(formats.len() + 3);
    for f in formats {
        let enc = match f.codec {
            Codec::Opus => format!("opus/{}/2", f.clock),
            c => format!("{}/{}", c.name(), f.clock),
        };
        attributes.push(attr("rtpmap", Some(format!("{} {enc}", f.pt))));
        if f.codec == Codec::Opus {
            // The room mixes at 16 kHz (RFC 7587 §6.1).
            attributes.push(attr("fmtp", Some(format!("{} {}", f.pt, opus_fmtp()))));
        }
    }
    attributes.push(attr("ptime", Some("20".to_owned())));
    attributes.push(attr(dir.as_str(), None));
    let mut m = Media {
        kind: "audio".to_owned(),
        port,
        proto: "RTP/AVP".to_owned(),
        formats: formats.iter().map(|f| f.pt.to_string()).collect(),
        connection: None,
        attributes,
        other: Vec::new(),
    };
    sdes(&mut m);
    let mut s = format!("m=audio {port} {} {}\r\n", m.proto, m.formats.join(" "));
    for a in &m.attributes {
        match &a.value {
            Some(v) => s.push_str(&format!("a={}:{v}\r\n", a.name)),
            None => s.push_str(&format!("a={}\r\n", a.name)),
        }
    }
    s
}

/// The session lines of the room's SDP for media on `rtp`.
fn session_head(rtp: SocketAddr, version: u64) -> String {
    let ip = rtp.ip().to_canonical();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    format!(
        "v=0\r\no=csps 1 {version} IN {family} {ip}\r\ns=conference\r\nc=IN {family} {ip}\r\nt=0 0\r\n"
    )
}

/// Our SDP: the chosen format on the audio section and every other section of `offer`
/// refused (port 0, RFC 3264 §6); without an offer (an offerless re-INVITE), our offer of that
/// format alone, sendrecv. `sdes` gives the audio section its SRTP (answer or offer).
fn room_sdp(
    offer: Option<(&Sdp, usize)>,
    f: Format,
    rtp: SocketAddr,
    version: u64,
    sdes: impl FnOnce(&mut Media),
) -> Bytes {
    let mut s = session_head(rtp, version);
    match offer {
        None => s.push_str(&audio_section(
            rtp.port(),
            &[f],
            sdp::Direction::SendRecv,
            sdes,
        )),
        Some((offer, i_audio)) => {
            let dir = offer.media[i_audio]
                .direction(offer.session_direction())
                .answer();
            let mut audio = Some(audio_section(rtp.port(), &[f], dir, sdes));
            for (i, m) in offer.media.iter().enumerate() {
                match audio.take_if(|_| i == i_audio) {
                    Some(a) => s.push_str(&a),
                    None => {
                        let fmt = m.formats.first().map_or("0", String::as_str);
                        s.push_str(&format!("m={} 0 {} {fmt}\r\n", m.kind, m.proto));
                    }
                }
            }
        }
    }
    Bytes::from(s)
}

/// The room's offer to a party it calls in: every codec it mixes, G.722 first (wide-band, and
/// far cheaper than Opus to encode), with the SRTP `sdes` gives it.
fn offer_sdp(rtp: SocketAddr, sdes: impl FnOnce(&mut Media)) -> Bytes {
    let f = |pt, codec, clock| Format {
        pt,
        codec,
        clock,
        max_average_bitrate: None,
    };
    let formats = [
        f(9, Codec::G722, 8000),
        f(0, Codec::Pcmu, 8000),
        f(8, Codec::Pcma, 8000),
        f(111, Codec::Opus, 48000),
    ];
    let mut s = session_head(rtp, 1);
    s.push_str(&audio_section(
        rtp.port(),
        &formats,
        sdp::Direction::SendRecv,
        sdes,
    ));
    Bytes::from(s)
}

/// Whether our answer to `offer` lets the room send on the audio section (not when the phone
/// holds with `sendonly` or `inactive`).
fn we_send(offer: &Sdp, audio: usize) -> bool {
    matches!(
        offer.media[audio]
            .direction(offer.session_direction())
            .answer(),
        sdp::Direction::SendRecv | sdp::Direction::SendOnly
    )
}

fn is_sdp(req: &Request) -> bool {
    req.headers
        .get("Content-Type")
        .is_none_or(|t| t.trim().to_ascii_lowercase().starts_with("application/sdp"))
}

impl Room {
    /// An empty room `(number, name, conference user, agent)` opened by `first` (not joined
    /// yet), its record started now.
    fn new(
        (no, name, user, agent): (CallNo, String, String, String),
        states: broadcast::Sender<UserState>,
        first: &Opening<'_>,
        rng: rand::rngs::StdRng,
    ) -> Room {
        let record = CallRecord {
            id: no,
            call_id: first.call_id.to_owned(),
            caller: first.party.to_owned(),
            callee: format!("conference:{name}"),
            started_at: Utc::now(),
            answered_at: None,
            ended_at: None,
            talk_secs: 0,
            status: None,
            end_reason: None,
            emergency: false,
            messages: 0,
            messages_dropped: 0,
            media: Vec::new(),
        };
        let mut r = Room {
            no,
            name,
            user,
            agent,
            members: Vec::new(),
            mixer: Mixer::new(),
            next_id: 1,
            next_tag: 0,
            out: VecDeque::new(),
            log: MessageLog::default(),
            states,
            rng,
            record,
            ended: false,
            buf: Vec::new(),
            ports: first.media.ports.clone(),
            rtp_range: first.media.rtp_range,
            focus: String::new(),
            srtp: first.media.srtp,
            invitations: Vec::new(),
            acks: Vec::new(),
            lonely_since: None,
        };
        r.focus = format!("<sip:{}@{}>", r.room_user(), first.host);
        r
    }

    fn tag(&mut self) -> u32 {
        self.next_tag = self.next_tag.wrapping_add(1);
        self.next_tag
    }

    /// The room's user part: the conference user, or `<user>-<room>`.
    fn room_user(&self) -> String {
        if self.name == self.user {
            self.user.clone()
        } else {
            format!("{}-{}", self.user, self.name)
        }
    }

    /// The room's Contact on a party's flow: the focus (`isfocus`, RFC 4579) to a phone, the
    /// trunk's FQDN to Teams (Direct Routing refuses a Contact without it).
    fn contact(&self, transport: Transport, local: SocketAddr, sbc: Option<&Sbc>) -> String {
        if sbc.is_some() {
            return contact_for(transport, local, sbc);
        }
        let user = self.room_user();
        match transport {
            Transport::Udp => format!("<sip:{user}@{local}>;isfocus"),
            t => format!(
                "<sip:{user}@{local};transport={}>;isfocus",
                t.as_str().to_lowercase()
            ),
        }
    }

    fn respond(&mut self, key: TxnKey, peer: SocketAddr, resp: Response) {
        self.log.response(LogDirection::Out, peer, &resp);
        self.out.push_back(CallAction::Respond(key, resp));
    }

    /// A refusal of a joining INVITE (with a To tag and a Warning saying why).
    fn refuse(&mut self, join: &Join, status: u16, why: &str) {
        let mut r = join
            .invite
            .response(status, csps_sip::message::reason_phrase(status));
        if let Some(to) = join.invite.headers.get("To") {
            r.headers
                .set("To", format!("{to};tag={:016x}", self.rng.next_u64()));
        }
        r.headers.push(
            "Warning",
            csps_sip::validate::warning_value(&self.agent, why),
        );
        if status == 415 {
            r.headers.push("Accept", "application/sdp");
        }
        if status == 422 {
            r.headers.push("Min-SE", MIN_SE.to_string());
        }
        tracing::info!(room = %self.name, status, "conference join refused: {why}");
        self.respond(join.key, join.from.addr, r);
    }

    /// A phone joins: answer its offer with the room's media address, add it to the mix.
    fn join(&mut self, now: Instant, join: Join) {
        self.log
            .request(LogDirection::In, join.from.addr, &join.invite);
        if join.invite.body.is_empty() {
            return self.refuse(&join, 488, "the room needs an SDP offer in the INVITE");
        }
        if !is_sdp(&join.invite) {
            return self.refuse(&join, 415, "only application/sdp bodies");
        }
        if interval_too_small(&join.invite) {
            return self.refuse(&join, 422, "Session-Expires below Min-SE");
        }
        let offer = match Sdp::parse(&join.invite.body) {
            Ok(o) => o,
            Err(e) => return self.refuse(&join, 488, &format!("bad SDP: {e}")),
        };
        let (audio, format) = match pick(&offer) {
            Ok(p) => p,
            Err(why) => return self.refuse(&join, 488, why),
        };
        // SDES as for a call's leg: the phone's crypto line taken (or the offer refused).
        self.srtp = join.media.srtp;
        let rule = join.media.srtp.leg(join.from.transport, false);
        let mut sdes = Sdes::new(&mut self.rng);
        if let Err(e) = sdes.take_offer(rule, &mut offer.media[audio].clone()) {
            return self.refuse(&join, e.status(), &e.to_string());
        }
        let (min, max) = join.media.rtp_range;
        let (rtp, rtcp) = match join.media.ports.bind_pair(join.local.ip(), min, max) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!("no media ports for a conference participant: {e}");
                return self.refuse(&join, 503, "no free media port");
            }
        };
        let rtp_addr = match rtp.local_addr() {
            Ok(a) => SocketAddr::new(join.local.ip(), a.port()),
            Err(_) => return self.refuse(&join, 503, "no free media port"),
        };
        let id = self.next_id;
        self.next_id += 1;
        if self
            .mixer
            .add(id, format.codec, format.pt, format.max_average_bitrate)
            .is_err()
        {
            return self.refuse(&join, 488, "codec not mixable");
        }
        let tag = format!("{:016x}", self.rng.next_u64());
        let contact = self.contact(join.from.transport, join.local, None);
        let Some(dialog) = Dialog::uas(&join.invite, &tag, &contact) else {
            self.mixer.remove(id);
            return self.refuse(&join, 400, "the INVITE makes no dialog (From tag, Contact)");
        };
        let mut latch = Latch::default();
        latch.expect(offer.rtp_addr(audio), join.from.addr.ip());
        let sending = we_send(&offer, audio);
        let body = room_sdp(Some((&offer, audio)), format, rtp_addr, 1, |m| {
            sdes.give_answer(m)
        });
        let mut ok = join.invite.response(200, "OK");
        if let Some(to) = join.invite.headers.get("To") {
            ok.headers.set("To", format!("{to};tag={tag}"));
        }
        ok.headers.push("Contact", contact);
        ok.headers.push("Allow", ROOM_ALLOW);
        let session = participant_refreshes(&join.invite).map(|s| confirm_timer(&mut ok, s, now));
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        self.respond(join.key, join.from.addr, ok.clone());
        let seed = self.rng.next_u64();
        self.admit(Member {
            id,
            party: join.party,
            remote: join.from,
            local: join.local,
            sbc: None,
            dialog,
            rtp,
            rtcp,
            latch,
            format,
            sdp_version: 1,
            sending,
            unacked: Some((join.key, ok, now + T1, T1, now + 64 * T1)),
            session,
            counters: LegCounters::default(),
            sdes,
            rule,
            keys: None,
            srtp: None,
            offered: false,
            reporter: Reporter::new(seed),
            rtcp_from: None,
        });
    }

    /// A participant is in: busy on the bus, in the record, in the room (already in the mix).
    fn admit(&mut self, mut m: Member) {
        m.rekey();
        m.follow_format();
        tracing::info!(room = %self.name, party = %m.party, codec = m.format.codec.name(), srtp = m.srtp.is_some(), participants = self.members.len() + 1, "joined the conference");
        if self.record.answered_at.is_none() {
            self.record.answered_at = Some(Utc::now());
            self.record.status = Some(200);
        }
        // A participant dialled in (or was moved in by its own call's transfer): the room is
        // a call it placed. (A Teams party is no user of this gateway.)
        if m.sbc.is_none() {
            let _ = self.states.send(UserState {
                aor: m.party.clone(),
                state: LineState::Busy,
                call: self.no,
                caller: true,
                dialog: None,
            });
        }
        self.members.push(m);
    }

    /// A participant's REFER (RFC 4579 §5.5): the room calls the Refer-To party in, the
    /// switch having resolved it to a local user's devices (the first one is rung) or, with
    /// Replaces, to the other device of the referrer's call that the Replaces names; that
    /// device replaces its call with the room. The referrer hears of it by NOTIFY.
    fn on_refer(
        &mut self,
        now: Instant,
        key: TxnKey,
        from: Remote,
        req: Request,
        target: Result<TransferTarget, ReferRefusal>,
    ) {
        let Some(i) = self.in_dialog(key, from, &req) else {
            return;
        };
        let referrer = party_aor(&self.members[i].party);
        let refuse = |this: &mut Room, status: u16, why: &str| {
            let mut r = req.response(status, csps_sip::message::reason_phrase(status));
            r.headers.push(
                "Warning",
                csps_sip::validate::warning_value(&this.agent, why),
            );
            this.respond(key, from.addr, r);
        };
        let t = match target {
            Ok(t) if t.referrer.as_ref().is_some_and(|r| *r != referrer) => {
                return refuse(self, 403, "the Replaces names another party's dialog");
            }
            Ok(t) => t,
            Err(ReferRefusal::Bad(why)) => return refuse(self, 400, &why),
            Err(ReferRefusal::Unsupported(why)) => return refuse(self, 501, &why),
            Err(ReferRefusal::Failed(status)) => {
                self.respond(key, from.addr, req.response(202, "Accepted"));
                return self.notify(i, status);
            }
        };
        let Some(mut target) = t.targets.into_iter().next() else {
            self.respond(key, from.addr, req.response(202, "Accepted"));
            return self.notify(i, 480);
        };
        // A REFER from a Teams participant goes back through the trunk as a call's does: the
        // room presents itself as the user Teams knew on that leg, with Teams' own Referred-By.
        let teams_referrer = self.members[i].sbc.clone();
        if let (Some(own), Some(s)) = (target.sbc.as_mut(), &teams_referrer) {
            own.user.clone_from(&s.user);
        }
        let referred_by = match (&teams_referrer, req.headers.get("Referred-By")) {
            (Some(_), Some(by)) => by.to_owned(),
            _ => format!("<{referrer}>"),
        };
        let (min, max) = self.rtp_range;
        let Ok((rtp, rtcp)) = self.ports.bind_pair(target.local.ip(), min, max) else {
            return refuse(self, 503, "no free media port");
        };
        let Ok(port) = rtp.local_addr().map(|a| a.port()) else {
            return refuse(self, 503, "no free media port");
        };
        self.respond(key, from.addr, req.response(202, "Accepted"));
        self.notify(i, 100);
        // The party is offered SRTP as a call would offer it that device (a phone that swaps
        // its SRTP call for the room by Replaces keeps SRTP; Teams always gets it).
        let rule = self.srtp.leg(target.to.transport, target.sbc.is_some());
        let sdes = Sdes::new(&mut self.rng);
        let body = offer_sdp(SocketAddr::new(target.local.ip(), port), |m| {
            sdes.give_offer(rule, m)
        });
        let from_tag = format!("{:016x}", self.rng.next_u64());
        // Through the trunk the caller is the referrer's number, as the switch asserted it (or
        // as Teams knew the leg it REFERred from).
        let caller = match (&t.asserted, &teams_referrer) {
            (Some(a), _) => a.clone(),
            (None, Some(s)) => format!("<sip:{}@{};user=phone>", s.user, s.fqdn),
            (None, None) => self.focus.clone(),
        };
        let mut invite = new_invite(
            &target,
            &caller,
            &from_tag,
            &t.to,
            &t.call_id,
            body,
            &mut self.rng,
        );
        let contact = self.contact(target.to.transport, target.local, target.sbc.as_ref());
        invite.headers.set("Contact", contact);
        if target.sbc.is_some() {
            teams_timer(&mut invite.headers);
        }
        invite.headers.push("Referred-By", referred_by);
        if let Some(r) = &t.replaces {
            // A device that cannot replace must refuse (420), not ring a second call.
            invite.headers.push("Replaces", r.to_string());
            invite.headers.push("Require", "replaces");
        }
        let tag = self.tag();
        self.log.request(LogDirection::Out, target.to.addr, &invite);
        self.out.push_back(CallAction::Send {
            tag,
            to: target.to,
            req: invite.clone(),
        });
        let referrer = self.members[i].id;
        self.invitations.push(Invitation {
            tag,
            to: target.to,
            local: target.local,
            sbc: target.sbc,
            party: t.party,
            rtp,
            rtcp,
            sdes,
            rule,
            how: How::Referred {
                invite,
                referrer,
                deadline: now + RING_TIMEOUT,
            },
        });
    }

    /// Someone enters: a phone's INVITE is answered, a call's leg re-INVITEd.
    fn arrive(&mut self, now: Instant, a: Arrival) {
        match a {
            Arrival::Join(j) => self.join(now, j),
            Arrival::Move(m) => self.move_in(m),
        }
    }

    /// A call's leg is moved in: a re-INVITE in its dialog offers the room's media (as the
    /// room offers a party it calls in, SRTP as a call would offer that device), with the
    /// room's Contact; its answer makes the leg a participant ([`Room::on_response`]).
    fn move_in(&mut self, m: Move) {
        let Move {
            call,
            leg,
            media:
                RoomMedia {
                    ports,
                    rtp_range: (min, max),
                    srtp,
                },
        } = m;
        let Handover {
            mut dialog,
            to,
            local,
            party,
            sbc,
            ..
        } = leg;
        let pair = ports
            .bind_pair(local.ip(), min, max)
            .and_then(|(rtp, rtcp)| Ok((rtp.local_addr()?.port(), rtp, rtcp)));
        let Ok((port, rtp, rtcp)) = pair else {
            tracing::error!("no media ports for a call's leg moved into the conference");
            let outcome = RoomOutcome::Failed {
                status: 503,
                local_seq: dialog.local_seq,
                gone: false,
            };
            return self.tell_call(call, &dialog, outcome);
        };
        self.srtp = srtp;
        let rule = srtp.leg(to.transport, sbc.is_some());
        let sdes = Sdes::new(&mut self.rng);
        let body = offer_sdp(SocketAddr::new(local.ip(), port), |m| {
            sdes.give_offer(rule, m)
        });
        dialog.local_contact = self.contact(to.transport, local, sbc.as_ref());
        let via = via_for(to.transport, local, sbc.as_ref(), &mut self.rng);
        let mut invite = dialog.request(Method::Invite, &via);
        invite.headers.push("Allow", allow(sbc.as_ref()));
        if sbc.is_some() {
            // Teams refreshes the session with the room as it did with the call.
            teams_timer(&mut invite.headers);
        }
        invite.headers.push("Content-Type", "application/sdp");
        invite.body = body;
        let tag = self.tag();
        tracing::info!(room = %self.name, %party, "moving a call's party into the conference");
        self.log.request(LogDirection::Out, to.addr, &invite);
        self.out.push_back(CallAction::Send {
            tag,
            to,
            req: invite,
        });
        let seq = dialog.local_seq;
        self.invitations.push(Invitation {
            tag,
            to,
            local,
            sbc,
            party,
            rtp,
            rtcp,
            sdes,
            rule,
            how: How::Moved { call, dialog, seq },
        });
    }

    /// Tells call `call` how the move of its leg (`dialog`) ended; the room ends when that
    /// leaves it empty.
    fn tell_call(&mut self, call: CallNo, dialog: &Dialog, outcome: RoomOutcome) {
        self.out.push_back(CallAction::RoomOutcome {
            call,
            call_id: dialog.call_id.clone(),
            outcome,
        });
        self.end_if_empty();
    }

    /// Invitation `inv` did not bring its party in (`status`; `gone`: its dialog is over):
    /// its referrer or call hears it.
    fn not_joined(&mut self, inv: Invitation, status: u16, gone: bool) {
        match inv.how {
            How::Referred { referrer, .. } => {
                self.notify_referrer(referrer, status);
                self.end_if_empty();
            }
            How::Moved { call, dialog, .. } => {
                let outcome = RoomOutcome::Failed {
                    status,
                    local_seq: dialog.local_seq,
                    gone,
                };
                self.tell_call(call, &dialog, outcome);
            }
        }
    }

    /// NOTIFY participant `i` of its REFER's progress (RFC 3515 §2.4.5); a final status ends
    /// the implicit subscription.
    fn notify(&mut self, i: usize, status: u16) {
        let tag = self.tag();
        let m = &mut self.members[i];
        let via = via_for(m.remote.transport, m.local, m.sbc.as_ref(), &mut self.rng);
        let mut req = m.dialog.request(Method::Notify, &via);
        req.headers.push("Event", "refer");
        req.headers.push(
            "Subscription-State",
            if status >= 200 {
                "terminated;reason=noresource"
            } else {
                "active;expires=60"
            },
        );
        req.headers
            .push("Content-Type", "message/sipfrag;version=2.0");
        req.body = Bytes::from(format!(
            "SIP/2.0 {status} {}\r\n",
            csps_sip::message::reason_phrase(status)
        ));
        let to = m.remote;
        self.log.request(LogDirection::Out, to.addr, &req);
        self.out.push_back(CallAction::Send { tag, to, req });
    }

    /// Tells the referrer of invitation `inv` how it ended (when it is still in the room).
    fn notify_referrer(&mut self, referrer: ParticipantId, status: u16) {
        if let Some(i) = self.members.iter().position(|m| m.id == referrer) {
            self.notify(i, status);
        }
    }

    /// A response to one of the room's requests: an invitation's answer (the party joins),
    /// a retransmitted 200 (ACKed again); answers to BYE and NOTIFY need nothing.
    fn on_response(&mut self, tag: u32, resp: Response) {
        if let Some((_, to, ack)) = self.acks.iter().find(|(t, ..)| *t == tag) {
            if (200..300).contains(&resp.status) {
                self.out.push_back(CallAction::Stateless(*to, ack.clone()));
            }
            return;
        }
        let Some(k) = self.invitations.iter().position(|v| v.tag == tag) else {
            return;
        };
        if resp.status < 200 {
            return;
        }
        let mut inv = self.invitations.remove(k);
        self.log.response(LogDirection::In, inv.to.addr, &resp);
        if resp.status >= 300 {
            tracing::info!(room = %self.name, party = %inv.party, status = resp.status, "party not joined");
            // A 481 or 408 to a moved leg's re-INVITE: its dialog no longer exists, or its
            // phone no longer answers in it (RFC 3261 §12.2.1.2, §14.1: the UAC terminates the
            // dialog), so the call does not get it back.
            let gone = matches!(inv.how, How::Moved { .. }) && matches!(resp.status, 481 | 408);
            return self.not_joined(inv, resp.status, gone);
        }
        let (mut dialog, seq) = match &inv.how {
            How::Referred { invite, .. } => match Dialog::uac(invite, &resp) {
                Some(d) => (d, 1),
                None => return self.not_joined(inv, 502, false),
            },
            How::Moved { dialog, seq, .. } => (dialog.clone(), *seq),
        };
        let via = via_for(inv.to.transport, inv.local, inv.sbc.as_ref(), &mut self.rng);
        let ack = dialog.ack(seq, &via);
        self.log.request(LogDirection::Out, inv.to.addr, &ack);
        self.out
            .push_back(CallAction::Stateless(inv.to, ack.clone()));
        self.acks.push((tag, inv.to, ack));
        let answer = Sdp::parse(&resp.body).ok();
        let chosen = answer.as_ref().and_then(|a| pick(a).ok());
        let id = self.next_id;
        let (Some(answer), Some((audio, format))) = (answer, chosen) else {
            return self.unusable_answer(&mut dialog, inv);
        };
        if let Err(e) = inv
            .sdes
            .take_answer(inv.rule, &mut answer.media[audio].clone())
        {
            tracing::info!(room = %self.name, party = %inv.party, "the party's answer refused: {e}");
            return self.unusable_answer(&mut dialog, inv);
        }
        if self
            .mixer
            .add(id, format.codec, format.pt, format.max_average_bitrate)
            .is_err()
        {
            return self.unusable_answer(&mut dialog, inv);
        }
        self.next_id += 1;
        let mut latch = Latch::default();
        latch.expect(answer.rtp_addr(audio), inv.to.addr.ip());
        dialog.local_contact = self.contact(inv.to.transport, inv.local, inv.sbc.as_ref());
        match &inv.how {
            How::Referred { referrer, .. } => self.notify_referrer(*referrer, 200),
            How::Moved { call, .. } => self.out.push_back(CallAction::RoomOutcome {
                call: *call,
                call_id: dialog.call_id.clone(),
                outcome: RoomOutcome::Joined,
            }),
        }
        // The party refreshes the session when its 2xx names itself (the UAS of the room's
        // request) refresher, as Teams does to the room's `refresher=uas`.
        let session = session_expires(&resp.headers)
            .filter(|(secs, r)| r.as_deref() == Some("uas") && *secs >= MIN_SE)
            .map(|(secs, _)| {
                let interval = Duration::from_secs(u64::from(secs));
                (interval, Instant::now() + interval)
            });
        let seed = self.rng.next_u64();
        self.admit(Member {
            id,
            party: inv.party,
            remote: inv.to,
            local: inv.local,
            sbc: inv.sbc,
            dialog,
            rtp: inv.rtp,
            rtcp: inv.rtcp,
            latch,
            format,
            sdp_version: 1,
            sending: we_send(&answer, audio),
            unacked: None,
            counters: LegCounters::default(),
            sdes: inv.sdes,
            rule: inv.rule,
            keys: None,
            srtp: None,
            offered: false,
            reporter: Reporter::new(seed),
            rtcp_from: None,
            session,
        });
    }

    /// The party answered with SDP the room cannot use: it is hung up at once and the
    /// referrer (or the call it came from) hears 488.
    fn unusable_answer(&mut self, dialog: &mut Dialog, inv: Invitation) {
        let via = via_for(inv.to.transport, inv.local, inv.sbc.as_ref(), &mut self.rng);
        let bye = dialog.request(Method::Bye, &via);
        let tag = self.tag();
        self.log.request(LogDirection::Out, inv.to.addr, &bye);
        self.out.push_back(CallAction::Send {
            tag,
            to: inv.to,
            req: bye,
        });
        self.not_joined(inv, 488, true);
    }

    /// An invitation's INVITE got no answer at all (Timer B): the referrer (or the call)
    /// hears 408; a moved leg's dialog counts as gone, as with a 408 from the phone.
    fn on_timeout(&mut self, tag: u32) {
        if let Some(k) = self.invitations.iter().position(|v| v.tag == tag) {
            let inv = self.invitations.remove(k);
            let gone = matches!(inv.how, How::Moved { .. });
            self.not_joined(inv, 408, gone);
        }
    }

    /// Rang too long: CANCEL the invitation; its 487 ends it. (A moved leg's re-INVITE is
    /// answered at once, or Timer B ends it.)
    fn cancel_unanswered(&mut self, now: Instant) {
        for k in 0..self.invitations.len() {
            let to = self.invitations[k].to;
            if let How::Referred {
                invite, deadline, ..
            } = &mut self.invitations[k].how
                && *deadline <= now
            {
                *deadline = now + RING_TIMEOUT;
                let cancel = csps_sip::dialog::cancel(invite, None);
                let tag = self.tag();
                self.out.push_back(CallAction::Send {
                    tag,
                    to,
                    req: cancel,
                });
            }
        }
    }

    /// The room ends when nobody is in it and nobody is being called in.
    /// A transfer's bridge is for two: short of two parties, with nobody on the way, for
    /// [`BRIDGE_GRACE`] (one hung up, a move failed or never came), it hangs up the one left
    /// and ends.
    fn end_lonely_bridge(&mut self, now: Instant) {
        if self.members.len() >= 2 || !self.invitations.is_empty() {
            self.lonely_since = None;
            return;
        }
        let since = *self.lonely_since.get_or_insert(now);
        if now.duration_since(since) >= BRIDGE_GRACE && !self.members.is_empty() {
            tracing::info!(room = %self.name, "the transfer's bridge has one party left: hung up");
            self.hang_up(0);
        }
    }

    fn end_if_empty(&mut self) {
        if self.members.is_empty() && self.invitations.is_empty() {
            self.end(EndReason::CallerHungUp);
        }
    }

    /// The participant a request inside a room dialog comes from, once logged and its CSeq
    /// checked; `None` after answering 481 (no such dialog) or 500 (CSeq not increasing).
    fn in_dialog(&mut self, key: TxnKey, from: Remote, req: &Request) -> Option<usize> {
        self.log.request(LogDirection::In, from.addr, req);
        let status = match self.member_of(req) {
            Some(i) if self.members[i].dialog.accept_remote_seq(req) => return Some(i),
            Some(_) => 500,
            None => 481,
        };
        let r = req.response(status, csps_sip::message::reason_phrase(status));
        self.respond(key, from.addr, r);
        None
    }

    /// The leg being moved in whose dialog `req` is in.
    fn moving_of(&self, req: &Request) -> Option<usize> {
        self.invitations
            .iter()
            .position(|v| matches!(&v.how, How::Moved { dialog, .. } if dialog.matches(req)))
    }

    /// A request from a leg the room is moving in (invitation `k`), before it answered the
    /// room's re-INVITE: a BYE ends the move (the call hears 487, the dialog is over), a
    /// re-INVITE or UPDATE crosses the room's (491), anything else gets 200.
    fn on_moving_request(&mut self, k: usize, key: TxnKey, from: Remote, req: Request) {
        self.log.request(LogDirection::In, from.addr, &req);
        let in_order = match &mut self.invitations[k].how {
            How::Moved { dialog, .. } => dialog.accept_remote_seq(&req),
            How::Referred { .. } => false,
        };
        let status = match req.method {
            _ if !in_order => 500,
            Method::Invite | Method::Update => 491,
            _ => 200,
        };
        let r = req.response(status, csps_sip::message::reason_phrase(status));
        self.respond(key, from.addr, r);
        if in_order && req.method == Method::Bye {
            let inv = self.invitations.remove(k);
            self.not_joined(inv, 487, true);
        }
    }

    /// Which participant an in-dialog request belongs to.
    fn member_of(&self, req: &Request) -> Option<usize> {
        self.members.iter().position(|m| m.dialog.matches(req))
    }

    fn on_request(&mut self, key: TxnKey, from: Remote, req: Request) {
        if let Some(k) = self.moving_of(&req) {
            return self.on_moving_request(k, key, from, req);
        }
        let Some(i) = self.in_dialog(key, from, &req) else {
            return;
        };
        match req.method {
            Method::Bye => {
                let r = req.response(200, "OK");
                self.respond(key, from.addr, r);
                self.leave(i);
            }
            Method::Invite | Method::Update => self.reoffer(i, key, from, &req),
            Method::Options | Method::Info => {
                let r = req.response(200, "OK");
                self.respond(key, from.addr, r);
            }
            Method::Refer => {
                let mut r = req.response(501, "Not Implemented");
                r.headers.push(
                    "Warning",
                    csps_sip::validate::warning_value(
                        &self.agent,
                        "adding parties by REFER to the room is not supported: they dial in",
                    ),
                );
                self.respond(key, from.addr, r);
            }
            _ => {
                let mut r = req.response(405, "Method Not Allowed");
                r.headers.push("Allow", ROOM_ALLOW);
                self.respond(key, from.addr, r);
            }
        }
    }

    /// A re-INVITE or UPDATE: hold and resume, a new media address, or a session refresh. The
    /// codec stays while the offer still has it; otherwise the first mixable one is taken.
    fn reoffer(&mut self, i: usize, key: TxnKey, from: Remote, req: &Request) {
        let offer = if req.body.is_empty() {
            None
        } else {
            match Sdp::parse(&req.body) {
                Ok(o) if is_sdp(req) => Some(o),
                Ok(_) | Err(_) => {
                    let mut r = req.response(488, "Not Acceptable Here");
                    r.headers.push(
                        "Warning",
                        csps_sip::validate::warning_value(&self.agent, "bad SDP"),
                    );
                    return self.respond(key, from.addr, r);
                }
            }
        };
        if interval_too_small(req) {
            let mut r = req.response(422, "Session Interval Too Small");
            r.headers.push("Min-SE", MIN_SE.to_string());
            return self.respond(key, from.addr, r);
        }
        let m = &mut self.members[i];
        if offer.is_none() && req.method == Method::Update {
            // An UPDATE without SDP (a session refresh, RFC 4028 §7.4): its 200 carries no
            // offer (RFC 3311 §5.2), the session stays as it is.
            let mut ok = req.response(200, "OK");
            ok.headers.push("Contact", m.dialog.local_contact.clone());
            m.session =
                participant_refreshes(req).map(|s| confirm_timer(&mut ok, s, Instant::now()));
            return self.respond(key, from.addr, ok);
        }
        let rtp = match m.rtp.local_addr() {
            Ok(a) => SocketAddr::new(m.local.ip(), a.port()),
            Err(_) => return,
        };
        m.sdp_version += 1;
        let body = match &offer {
            Some(o) => {
                let kept = o.audio_index().and_then(|a| {
                    o.media[a]
                        .codecs()
                        .find(|f| f.codec == m.format.codec && o.media[a].port != 0)
                        .map(|f| (a, f))
                });
                let picked = kept.map_or_else(|| pick(o), Ok).and_then(|(audio, f)| {
                    m.sdes
                        .take_offer(m.rule, &mut o.media[audio].clone())
                        .map(|()| (audio, f))
                        .map_err(|e| match e {
                            sdp::OfferError::Srtp(why) => why,
                            _ => "the offer's SRTP is not acceptable",
                        })
                });
                let (audio, f) = match picked {
                    Ok(p) => p,
                    Err(why) => {
                        let mut r = req.response(488, "Not Acceptable Here");
                        r.headers.push(
                            "Warning",
                            csps_sip::validate::warning_value(&self.agent, why),
                        );
                        return self.respond(key, from.addr, r);
                    }
                };
                if f != m.format {
                    if self
                        .mixer
                        .add(m.id, f.codec, f.pt, f.max_average_bitrate)
                        .is_err()
                    {
                        return;
                    }
                    m.format = f;
                    m.follow_format();
                }
                m.latch.expect(o.rtp_addr(audio), from.addr.ip());
                m.sending = we_send(o, audio);
                m.offered = false;
                let body = room_sdp(Some((o, audio)), f, rtp, m.sdp_version, |a| {
                    m.sdes.give_answer(a)
                });
                m.rekey();
                body
            }
            // No offer: ours is in the 200, sendrecv, with the participant's keys; its answer
            // comes in the ACK (see `on_ack`).
            None => {
                let rule = m.offer_rule();
                m.offered = true;
                room_sdp(None, m.format, rtp, m.sdp_version, |a| {
                    m.sdes.give_offer(rule, a)
                })
            }
        };
        let mut ok = req.response(200, "OK");
        if let Some(to) = req.headers.get("To") {
            ok.headers.set("To", to.to_owned());
        }
        ok.headers.push("Contact", m.dialog.local_contact.clone());
        // A refresh (RFC 4028 §9): the session goes on from now.
        m.session = participant_refreshes(req).map(|s| confirm_timer(&mut ok, s, Instant::now()));
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        self.respond(key, from.addr, ok);
    }

    /// Participant `i` is gone (its BYE, or the room hangs it up).
    fn leave(&mut self, i: usize) {
        let m = self.members.remove(i);
        self.mixer.remove(m.id);
        tracing::info!(room = %self.name, party = %m.party, participants = self.members.len(), "left the conference");
        if m.sbc.is_none() {
            let _ = self.states.send(UserState {
                aor: m.party,
                state: LineState::Idle,
                call: self.no,
                caller: true,
                dialog: None,
            });
        }
        self.end_if_empty();
    }

    /// Sends BYE to participant `i` and removes it.
    fn hang_up(&mut self, i: usize) {
        let tag = self.tag();
        let m = &mut self.members[i];
        let via = via_for(m.remote.transport, m.local, m.sbc.as_ref(), &mut self.rng);
        let req = m.dialog.request(Method::Bye, &via);
        let to = m.remote;
        self.log.request(LogDirection::Out, to.addr, &req);
        self.out.push_back(CallAction::Send { tag, to, req });
        self.leave(i);
    }

    fn end(&mut self, why: EndReason) {
        if !self.ended {
            self.ended = true;
            self.record.end_reason.get_or_insert(why);
            self.out.push_back(CallAction::Ended);
        }
    }

    fn on_ack(&mut self, req: &Request) {
        if let Some(i) = self.member_of(req) {
            let m = &mut self.members[i];
            m.unacked = None;
            self.log.request(LogDirection::In, m.remote.addr, req);
            // An ACK with SDP answers the room's offer in a 200 to an offerless re-INVITE
            // (RFC 3264 §5): its crypto line keys the participant.
            let answer = (std::mem::take(&mut m.offered) && !req.body.is_empty() && is_sdp(req))
                .then(|| Sdp::parse(&req.body).ok())
                .flatten();
            if let Some(mut a) = answer
                && let Some(audio) = a.audio_index()
            {
                let rule = m.offer_rule();
                match m.sdes.take_answer(rule, &mut a.media[audio]) {
                    Ok(()) => m.rekey(),
                    Err(e) => {
                        tracing::info!(party = %m.party, "SRTP of the ACK's answer refused, keys kept: {e}")
                    }
                }
            }
        }
    }

    /// The 20 ms tick: retransmit unacknowledged 200s, then read every socket into the mixer
    /// and send each participant its mix.
    fn tick(&mut self, now: Instant) {
        self.cancel_unanswered(now);
        if self.name.starts_with(BRIDGE_PREFIX) {
            self.end_lonely_bridge(now);
        }
        let mut no_ack = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            if let Some((key, ok, next, interval, give_up)) = m.unacked.as_mut()
                && *next <= now
            {
                if now >= *give_up {
                    no_ack.push(i);
                    continue;
                }
                self.out.push_back(CallAction::Respond(*key, ok.clone()));
                *interval = (*interval * 2).min(T2);
                *next = now + *interval;
            }
        }
        for i in no_ack.into_iter().rev() {
            self.record.end_reason.get_or_insert(EndReason::NoAck);
            self.members[i].unacked = None;
            self.hang_up(i);
        }
        // RFC 4028 §10: a session not refreshed is over; the room sends the BYE a little before
        // it expires (the lesser of 32 s and a third of the interval).
        while let Some(i) = self.members.iter().position(|m| {
            m.session.is_some_and(|(interval, at)| {
                now + (interval / 3).min(Duration::from_secs(32)) >= at
            })
        }) {
            tracing::info!(room = %self.name, party = %self.members[i].party, "session timer expired: hung up");
            self.record
                .end_reason
                .get_or_insert(EndReason::SessionExpired);
            self.hang_up(i);
        }
        self.buf.resize(2048, 0);
        for m in &mut self.members {
            // Bounded: a flood costs at most this many packets a tick.
            for _ in 0..32 {
                let Ok((n, src)) = m.rtp.recv_from(&mut self.buf) else {
                    break;
                };
                let p = &self.buf[..n];
                if !is_rtp_v2(p) {
                    m.counters.dropped_malformed += 1;
                    continue;
                }
                // An SRTP packet must authenticate before it may latch: a forged one cannot
                // steal the participant's media.
                let unprotected;
                let p = match m.srtp.as_mut() {
                    None => p,
                    Some(s) => match s.unprotect(p, false) {
                        Ok(plain) => {
                            unprotected = plain;
                            &unprotected[..]
                        }
                        Err(e) => {
                            if m.counters.dropped_srtp == 0 {
                                // The first one only: forgeries must not flood the log.
                                tracing::info!(party = %m.party, %src, "SRTP packet dropped: {e}");
                            }
                            m.counters.dropped_srtp += 1;
                            continue;
                        }
                    },
                };
                if !m.latch.accept(src) {
                    m.counters.dropped_unexpected += 1;
                } else {
                    // No arrival time, so no jitter: the room reads its sockets once per 20 ms
                    // mix tick, and the tick's time is not when a packet arrived.
                    m.counters.count_rtp(n, p, None);
                    self.mixer.receive(m.id, p);
                }
            }
            // RTCP is read for its reports (the mix's quality, the participant's SR for the
            // room's next report), not mixed; SRTCP once it authenticates.
            for _ in 0..8 {
                let Ok((n, src)) = m.rtcp.recv_from(&mut self.buf) else {
                    break;
                };
                let unprotected;
                let p = match m.srtp.as_mut() {
                    None => &self.buf[..n],
                    Some(s) => match s.unprotect(&self.buf[..n], true) {
                        Ok(plain) => {
                            unprotected = plain;
                            &unprotected[..]
                        }
                        Err(_) => {
                            m.counters.dropped_srtp += 1;
                            continue;
                        }
                    },
                };
                if m.latch.latched().is_some_and(|l| l.ip() == src.ip()) {
                    m.rtcp_from = Some(src);
                    if let Some(report) = m.counters.count_rtcp(p, Some(m.reporter.ssrc())) {
                        m.reporter.received(now, &report);
                    }
                }
            }
        }
        let members = &mut self.members;
        self.mixer.tick(|id, packet| {
            let Some(m) = members.iter_mut().find(|m| m.id == id) else {
                return;
            };
            if !m.sending {
                return;
            }
            m.reporter.sent(now, packet);
            let protected;
            let packet = match m.srtp.as_mut().map(|s| s.protect(packet, false)) {
                None => packet,
                Some(Ok(p)) => {
                    protected = p;
                    &protected[..]
                }
                Some(Err(_)) => {
                    m.counters.dropped_unsent += 1;
                    return;
                }
            };
            match m.latch.destination() {
                Some(dst) if m.rtp.send_to(packet, dst).is_ok() => {}
                _ => m.counters.dropped_unsent += 1,
            }
        });
        for m in &mut self.members {
            m.send_report(now);
        }
    }

    fn snapshot(&self, started_at: DateTime<Utc>) -> CallInfo {
        let now = Utc::now();
        CallInfo {
            id: self.no,
            state: "answered",
            started_at,
            answered_at: self.record.answered_at,
            duration_secs: (now - started_at).num_seconds().max(0) as u64,
            emergency: false,
            routing_policy: None,
            quirks_policy: None,
            conference: Some(self.name.clone()),
            legs: self
                .members
                .iter()
                .map(|m| LegInfo {
                    kind: match m.sbc {
                        Some(_) => LegKind::Teams,
                        None => LegKind::Phone,
                    },
                    party: m.party.clone(),
                    signalling: m.remote.addr.to_string(),
                    media: m.latch.latched().map(|a| a.to_string()),
                    codec: Some(format!("{}/{}", m.format.codec.name(), m.format.clock)),
                    srtp: m.srtp.is_some(),
                    counters: m.counters,
                    music_on_hold: false,
                })
                .collect(),
        }
    }
}

/// Runs a room until its last participant leaves, its log lines in the room's span.
pub async fn run(t: RoomTask) {
    let span = tracing::info_span!(parent: None, "conference", call = t.no, room = %t.room);
    run_room(t).instrument(span).await
}

async fn run_room(t: RoomTask) {
    let RoomTask {
        no,
        room,
        user,
        first,
        mut events,
        actions,
        states,
        directory,
        agent,
    } = t;
    let mut r = Room::new(
        (no, room, user, agent),
        states,
        &first.opening(),
        rand::SeedableRng::from_os_rng(),
    );
    let started_at = r.record.started_at;
    directory.started(&r.record);
    let joining = matches!(first, Arrival::Join(_));
    r.arrive(Instant::now(), first);
    if joining && r.members.is_empty() && r.invitations.is_empty() {
        r.record.status = r.record.status.or(Some(488));
        r.end(EndReason::Rejected);
    }
    // Answered with its first participant (a leg moved in is one once it answered).
    let mut announced = false;
    let mut tick =
        tokio::time::interval(Duration::from_millis(crate::media::codec::FRAME_MS.into()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if !announced && r.record.answered_at.is_some() {
            announced = true;
            directory.answered(&r.record);
        }
        while let Some(a) = r.out.pop_front() {
            if actions.send((no, a)).await.is_err() {
                return;
            }
        }
        if r.ended {
            break;
        }
        tokio::select! {
            ev = events.recv() => match ev {
                Some(CallEvent::Join(a)) => r.arrive(Instant::now(), *a),
                Some(CallEvent::Sip(input)) => match input {
                    Input::Request { key, from, req } => r.on_request(key, from, req),
                    Input::Refer { key, from, req, target } => {
                        r.on_refer(Instant::now(), key, from, req, *target)
                    }
                    Input::Response { tag, resp } => r.on_response(tag, resp),
                    Input::Timeout { tag } => r.on_timeout(tag),
                    Input::Ack(req) => r.on_ack(&req),
                    Input::Hangup => {
                        r.record.end_reason = Some(EndReason::AdminHangUp);
                        while !r.members.is_empty() {
                            r.hang_up(0);
                        }
                    }
                    // CANCEL of an INVITE already answered.
                    _ => {}
                },
                Some(CallEvent::Snapshot(reply)) => {
                    let _ = reply.send(r.snapshot(started_at));
                }
                Some(CallEvent::Messages(reply)) => {
                    let _ = reply.send(r.log.messages().to_vec());
                }
                None => break,
            },
            _ = tick.tick() => r.tick(Instant::now()),
        }
    }
    // Joins that raced with the end: the switch routed them here before it saw `Ended`.
    events.close();
    while let Some(ev) = events.recv().await {
        if let CallEvent::Join(a) = ev {
            match *a {
                Arrival::Join(j) => r.refuse(&j, 480, "the conference just ended; call again"),
                Arrival::Move(m) => {
                    let outcome = RoomOutcome::Failed {
                        status: 480,
                        local_seq: m.leg.dialog.local_seq,
                        gone: false,
                    };
                    r.tell_call(m.call, &m.leg.dialog, outcome);
                }
            }
        }
    }
    while let Some(a) = r.out.pop_front() {
        if !matches!(a, CallAction::Ended) && actions.send((no, a)).await.is_err() {
            break;
        }
    }
    let ended_at = Utc::now();
    let mut record = r.record;
    record.ended_at = Some(ended_at);
    record.talk_secs = record
        .answered_at
        .map_or(0, |a| (ended_at - a).num_seconds().max(0) as u64);
    record.messages = r.log.messages().len();
    record.messages_dropped = r.log.dropped();
    directory.ended(record, r.log);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conference_user_and_its_named_rooms() {
        assert_eq!(
            room_of("conference", "conference").as_deref(),
            Some("conference")
        );
        assert_eq!(
            room_of("Conference-Team1", "conference").as_deref(),
            Some("team1")
        );
        assert_eq!(room_of("conference-", "conference"), None);
        assert_eq!(room_of("conferences", "conference"), None);
        assert_eq!(room_of("conference-a b", "conference"), None);
        assert_eq!(room_of("alice", "conference"), None);
        assert_eq!(room_of("conference", ""), None);
        assert_eq!(room_of("7000", "7000").as_deref(), Some("7000"));
        assert_eq!(conference_user("sip:meet@example.com"), "meet");
        assert_eq!(conference_user(" conference "), "conference");
    }

    fn offer(s: &str) -> Sdp {
        Sdp::parse(s.replace('\n', "\r\n").as_bytes()).expect("sdp")
    }

    #[test]
    fn the_answer_takes_the_first_mixable_codec_and_refuses_other_streams() {
        let o = offer(
            "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n\
             m=audio 4000 RTP/AVP 18 9 0 101\na=rtpmap:101 telephone-event/8000\n\
             m=video 4002 RTP/AVP 96\na=rtpmap:96 H264/90000\n",
        );
        let (i, f) = pick(&o).expect("pick");
        assert_eq!((i, f.codec, f.pt), (0, Codec::G722, 9));
        let a = room_sdp(
            Some((&o, i)),
            f,
            "127.0.0.1:30000".parse().expect("addr"),
            1,
            |_| {},
        );
        let a = Sdp::parse(&a).expect("answer parses");
        assert_eq!(a.media.len(), 2);
        assert_eq!(a.media[0].port, 30000);
        assert_eq!(a.media[0].formats, vec!["9".to_owned()]);
        assert_eq!(a.media[1].port, 0);
        assert!(sdp::check_answer(&o, &a).is_ok());
        let none = offer("v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 18\n");
        assert!(pick(&none).is_err());
        // RTP/SAVP is for SDES to decide (see the SRTP tests below), not the codec pick.
        let srtp = offer("v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nt=0 0\nm=audio 4000 RTP/SAVP 0\n");
        assert!(pick(&srtp).is_ok());
    }

    use super::super::b2bua::Target;
    use crate::config::SrtpMode;
    use crate::media::codec::{Decoder, Encoder};
    use crate::media::rtp::{self, RtpSender};
    use crate::media::srtp::{MASTER_LEN, Suite};
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use csps_sip::Message;
    use rand::SeedableRng;

    /// The phone's master key and salt in its offers.
    const PHONE_KEY: [u8; MASTER_LEN] = [7; MASTER_LEN];

    /// A room opened by `first` (which still has to join).
    fn room_for(first: &Join) -> Room {
        room_opened_by(&first.opening())
    }

    /// A room opened by `first` (which still has to arrive).
    fn room_for_arrival(first: &Arrival) -> Room {
        room_opened_by(&first.opening())
    }

    fn room_opened_by(first: &Opening<'_>) -> Room {
        let (states, _) = broadcast::channel(16);
        Room::new(
            (
                1,
                "conference".into(),
                "conference".into(),
                "csps-test".into(),
            ),
            states,
            first,
            rand::rngs::StdRng::seed_from_u64(3),
        )
    }

    /// `user`'s INVITE to the room from 127.0.0.1:`sip_port`, offering PCMU on `rtp_port`
    /// over `proto` with `crypto` lines.
    fn join_of(
        (user, sip_port, srtp): (&str, u16, SrtpPolicy),
        rtp_port: u16,
        proto: &str,
        crypto: &[String],
    ) -> Join {
        let mut sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {rtp_port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        );
        for c in crypto {
            sdp.push_str(&format!("a=crypto:{c}\r\n"));
        }
        let text = format!(
            "INVITE sip:conference@csps.local SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK{user}\r\n\
             From: <sip:{user}@csps.local>;tag={user}-tag\r\nTo: <sip:conference@csps.local>\r\n\
             Call-ID: {user}-call\r\nCSeq: 1 INVITE\r\nContact: <sip:{user}@127.0.0.1:{sip_port}>\r\n\
             Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        let Message::Request(invite) = csps_sip::parse(text.as_bytes()).expect("parses").message
        else {
            panic!("a request");
        };
        let from = Remote {
            transport: Transport::Udp,
            addr: SocketAddr::from(([127, 0, 0, 1], sip_port)),
            flow: None,
        };
        let key = super::super::b2bua::tests::key_for(&invite, &from.addr.to_string());
        Join {
            key,
            from,
            local: "127.0.0.1:5060".parse().expect("addr"),
            invite,
            party: format!("sip:{user}@csps.local"),
            media: RoomMedia {
                ports: Arc::new(PortPool::new()),
                rtp_range: (47_000, 47_998),
                srtp,
            },
        }
    }

    /// The room's last answer (a 200's SDP).
    fn last_answer(r: &Room) -> Sdp {
        let body = r
            .out
            .iter()
            .rev()
            .find_map(|a| match a {
                CallAction::Respond(_, resp) if resp.status == 200 => Some(resp.body.clone()),
                _ => None,
            })
            .expect("a 200");
        Sdp::parse(&body).expect("the answer parses")
    }

    fn phone_socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // Bounded: the room sends one packet a tick on loopback.
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s
    }

    /// A 20 ms PCMU frame of a `freq` sine, frame `k`.
    fn pcmu_frame(enc: &mut Encoder, freq: f32, k: usize) -> Vec<u8> {
        let pcm: Vec<i16> = (0..160)
            .map(|i| {
                let t = (k * 160 + i) as f32 / 8000.0;
                (0.2 * 32767.0 * (std::f32::consts::TAU * freq * t).sin()) as i16
            })
            .collect();
        let mut payload = Vec::new();
        enc.encode(&pcm, &mut payload).expect("encode");
        payload
    }

    fn share(heard: &[i16], freq: f32) -> f32 {
        let pcm = csps_tests::audio::Pcm {
            rate: 8000,
            samples: heard[800..]
                .iter()
                .map(|&s| f32::from(s) / 32768.0)
                .collect(),
        };
        csps_tests::audio::tone_share(&pcm, freq)
    }

    /// Alice joins with RTP/SAVP and SDES, bob with plain RTP/AVP (`Data.SipConfig.Srtp`
    /// Supported, keys allowed over UDP). Alice's answer is RTP/SAVP with a crypto line of her
    /// suite and tag and the gateway's own key; her SRTP tone is unprotected and mixed (bob hears
    /// it in clear), and the mix she gets decrypts with the answer's key (she hears bob). A
    /// packet under another key is dropped and counted; the API shows her leg as SRTP.
    #[test]
    fn an_srtp_member_is_answered_with_the_gateways_key_and_mixed_both_ways() {
        let policy = SrtpPolicy {
            mode: SrtpMode::Supported,
            plain_keys: true,
        };
        let (alice, bob) = (phone_socket(), phone_socket());
        let port = |s: &UdpSocket| s.local_addr().expect("addr").port();
        let line = format!(
            "3 AES_CM_128_HMAC_SHA1_32 inline:{}",
            STANDARD.encode(PHONE_KEY)
        );
        let now = Instant::now();
        let j = join_of(("alice", 5071, policy), port(&alice), "RTP/SAVP", &[line]);
        let mut r = room_for(&j);
        r.join(now, j);
        let answer = last_answer(&r);
        let m = &answer.media[0];
        assert_eq!(m.proto, "RTP/SAVP");
        let crypto = m.crypto();
        assert_eq!(crypto.len(), 1, "{answer}");
        assert_eq!(
            (crypto[0].tag, crypto[0].suite.as_str()),
            (3, "AES_CM_128_HMAC_SHA1_32")
        );
        let gw_key: [u8; MASTER_LEN] = STANDARD
            .decode(&crypto[0].key)
            .expect("base64")
            .try_into()
            .expect("30 bytes");
        assert_ne!(gw_key, PHONE_KEY, "the gateway's own key");
        let alice_rtp = SocketAddr::new([127, 0, 0, 1].into(), m.port);
        r.join(
            now,
            join_of(("bob", 5072, policy), port(&bob), "RTP/AVP", &[]),
        );
        let plain = last_answer(&r);
        assert_eq!(
            (plain.media[0].proto.as_str(), plain.media[0].crypto().len()),
            ("RTP/AVP", 0)
        );
        let bob_rtp = SocketAddr::new([127, 0, 0, 1].into(), plain.media[0].port);

        // Alice's phone: her key out, the gateway's key in.
        let mut phone = SrtpSession::new(&SrtpKeys {
            suite: Suite::AesCm128Sha1_32,
            local: PHONE_KEY,
            remote: gw_key,
            remote_mki: 0,
        })
        .expect("phone session");
        let mut forger = SrtpSession::new(&SrtpKeys {
            suite: Suite::AesCm128Sha1_32,
            local: [9; MASTER_LEN],
            remote: gw_key,
            remote_mki: 0,
        })
        .expect("forger");
        let (mut enc_a, mut enc_b) = (
            Encoder::new(Codec::Pcmu).expect("enc"),
            Encoder::new(Codec::Pcmu).expect("enc"),
        );
        let (mut dec_a, mut dec_b) = (
            Decoder::new(Codec::Pcmu).expect("dec"),
            Decoder::new(Codec::Pcmu).expect("dec"),
        );
        let (mut tx_a, mut tx_b) = (RtpSender::new(), RtpSender::new());
        let (mut heard_a, mut heard_b) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 2048];
        for k in 0..50 {
            let mut packet = Vec::new();
            tx_a.write(0, &pcmu_frame(&mut enc_a, 600.0, k), 160, &mut packet);
            let wire = phone.protect(&packet, false).expect("protect");
            alice.send_to(&wire, alice_rtp).expect("send");
            if k == 10 {
                let forged = forger.protect(&packet, false).expect("forge");
                alice.send_to(&forged, alice_rtp).expect("send");
            }
            let mut packet = Vec::new();
            tx_b.write(0, &pcmu_frame(&mut enc_b, 1000.0, k), 160, &mut packet);
            bob.send_to(&packet, bob_rtp).expect("send");
            r.tick(Instant::now());
            let (n, _) = alice.recv_from(&mut buf).expect("alice's mix");
            let plain = phone
                .unprotect(&buf[..n], false)
                .expect("decrypts with the answer's key");
            let p = rtp::parse(&plain).expect("rtp");
            dec_a.decode(p.payload, &mut heard_a).expect("decode");
            let (n, _) = bob.recv_from(&mut buf).expect("bob's mix");
            let p = rtp::parse(&buf[..n]).expect("bob's mix is plain RTP");
            dec_b.decode(p.payload, &mut heard_b).expect("decode");
        }
        let (a_hears_b, b_hears_a) = (share(&heard_a, 1000.0), share(&heard_b, 600.0));
        assert!(a_hears_b > 0.8, "alice hears bob at {a_hears_b}");
        assert!(b_hears_a > 0.8, "bob hears alice at {b_hears_a}");
        let info = r.snapshot(Utc::now());
        let srtp: Vec<_> = info.legs.iter().map(|l| l.srtp).collect();
        assert_eq!(srtp, vec![true, false]);
        assert_eq!(info.legs[0].counters.dropped_srtp, 1, "the forgery");
        assert_eq!(info.legs[0].counters.rtp_packets, 50);
    }

    /// A request from `user` (5074) inside its room dialog (`to_tag` the room's), with an
    /// optional SDP body offering PCMU with `crypto`.
    fn in_dialog(method: &str, seq: u32, to_tag: &str, crypto: Option<&str>) -> Request {
        let sdp = crypto.map_or(String::new(), |c| {
            format!(
                "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio 4000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{c}\r\n"
            )
        });
        let ct = if sdp.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let text = format!(
            "{method} sip:conference@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5074;branch=z9hG4bKre{method}{seq}\r\n\
             From: <sip:alice@csps.local>;tag=alice-tag\r\n\
             To: <sip:conference@csps.local>;tag={to_tag}\r\nCall-ID: alice-call\r\n\
             CSeq: {seq} {method}\r\nContact: <sip:alice@127.0.0.1:5074>\r\nMax-Forwards: 70\r\n\
             {ct}Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        match csps_sip::parse(text.as_bytes()).expect("parses").message {
            Message::Request(r) => r,
            Message::Response(_) => panic!("a request"),
        }
    }

    /// A re-INVITE with the same crypto line keeps the participant's keys (and the gateway's
    /// key in the answer); an offerless re-INVITE is answered with the room's RTP/SAVP offer of
    /// a line per suite, and the ACK's answer (another suite, a new phone key) rekeys it.
    #[test]
    fn reinvites_keep_or_change_a_participants_srtp_keys() {
        let policy = SrtpPolicy {
            mode: SrtpMode::Supported,
            plain_keys: true,
        };
        let line = format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{}",
            STANDARD.encode(PHONE_KEY)
        );
        let j = join_of(
            ("alice", 5074, policy),
            4000,
            "RTP/SAVP",
            std::slice::from_ref(&line),
        );
        let mut r = room_for(&j);
        r.join(Instant::now(), j);
        let first = last_answer(&r).media[0].crypto()[0].key.clone();
        let keys = r.members[0].keys.clone().expect("SRTP");
        let to_tag = r.members[0].dialog.local_tag.clone();
        let from = r.members[0].remote;
        let req = in_dialog("INVITE", 2, &to_tag, Some(&line));
        r.on_request(
            super::super::b2bua::tests::key_for(&req, "127.0.0.1:5074"),
            from,
            req,
        );
        let again = last_answer(&r);
        assert_eq!(
            again.media[0].crypto()[0].key,
            first,
            "the gateway's key stays"
        );
        assert_eq!(r.members[0].keys.as_ref(), Some(&keys), "the keys stay");
        // An ACK that answers no offer of the room's (SDP repeated by a phone) changes nothing.
        let stray = format!(
            "2 AES_CM_128_HMAC_SHA1_32 inline:{}",
            STANDARD.encode([6u8; 30])
        );
        r.on_ack(&in_dialog("ACK", 2, &to_tag, Some(&stray)));
        assert_eq!(
            r.members[0].keys.as_ref(),
            Some(&keys),
            "a stray ACK's SDP is no answer"
        );
        let req = in_dialog("INVITE", 3, &to_tag, None);
        r.on_request(
            super::super::b2bua::tests::key_for(&req, "127.0.0.1:5074"),
            from,
            req,
        );
        let offer = last_answer(&r);
        let m = &offer.media[0];
        assert_eq!(
            (m.proto.as_str(), m.crypto().len()),
            ("RTP/SAVP", 2),
            "{offer}"
        );
        let new_key = [8u8; MASTER_LEN];
        let ack = in_dialog(
            "ACK",
            3,
            &to_tag,
            Some(&format!(
                "2 AES_CM_128_HMAC_SHA1_32 inline:{}",
                STANDARD.encode(new_key)
            )),
        );
        r.on_ack(&ack);
        let k = r.members[0].keys.as_ref().expect("still SRTP");
        assert_eq!((k.suite, k.remote), (Suite::AesCm128Sha1_32, new_key));
        assert!(r.members[0].srtp.is_some());
    }

    /// SDES follows what calls do: SRTP off refuses RTP/SAVP (488, nobody joins) and answers a
    /// best-effort offer (RTP/AVP with crypto) plain; with SRTP supported the best-effort offer
    /// is answered RTP/AVP with the gateway's line; SRTP required refuses plain RTP.
    #[test]
    fn sdes_in_rooms_follows_the_srtp_policy() {
        let line = format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{}",
            STANDARD.encode(PHONE_KEY)
        );
        let status = |r: &Room| match r.out.back() {
            Some(CallAction::Respond(_, resp)) => resp.status,
            _ => 0,
        };
        let joined = |policy: SrtpPolicy, proto: &str, crypto: &[String]| {
            let j = join_of(("alice", 5073, policy), 4000, proto, crypto);
            let mut r = room_for(&j);
            r.join(Instant::now(), j);
            r
        };
        let off = SrtpPolicy::default();
        let r = joined(off, "RTP/SAVP", std::slice::from_ref(&line));
        assert_eq!((status(&r), r.members.len()), (488, 0));
        let r = joined(off, "RTP/AVP", std::slice::from_ref(&line));
        let a = last_answer(&r);
        assert_eq!(
            (a.media[0].proto.as_str(), a.media[0].crypto().len()),
            ("RTP/AVP", 0)
        );
        assert!(r.members[0].srtp.is_none());
        let policy = |mode, plain_keys| SrtpPolicy { mode, plain_keys };
        let r = joined(
            policy(SrtpMode::Supported, true),
            "RTP/AVP",
            std::slice::from_ref(&line),
        );
        let a = last_answer(&r);
        assert_eq!(
            (a.media[0].proto.as_str(), a.media[0].crypto()[0].tag),
            ("RTP/AVP", 1)
        );
        assert!(r.members[0].srtp.is_some());
        // Keys over UDP are not allowed without SrtpOverPlainTransport.
        let r = joined(
            policy(SrtpMode::Supported, false),
            "RTP/SAVP",
            std::slice::from_ref(&line),
        );
        assert_eq!(status(&r), 488);
        let r = joined(policy(SrtpMode::Required, true), "RTP/AVP", &[]);
        assert_eq!((status(&r), r.members.len()), (488, 0));
    }

    /// `user`'s leg of call 7 (its dialog made from [`join_of`]'s INVITE, the gateway's tag
    /// `gw-tag`), moved into room `team`.
    fn moved(user: &str, sip_port: u16) -> Arrival {
        let j = join_of(
            (user, sip_port, SrtpPolicy::default()),
            4000,
            "RTP/AVP",
            &[],
        );
        let dialog = Dialog::uas(&j.invite, "gw-tag", "<sip:csps@127.0.0.1:5060>").expect("dialog");
        Arrival::Move(Move {
            call: 7,
            leg: Handover {
                room: super::super::b2bua::RoomRef {
                    name: "team".into(),
                    host: "csps.local".into(),
                },
                dialog,
                to: j.from,
                local: j.local,
                party: j.party,
                sbc: None,
            },
            media: j.media,
        })
    }

    /// The room's last request of `method` and its tag.
    fn last_sent(r: &Room, method: Method) -> (u32, Request) {
        r.out
            .iter()
            .rev()
            .find_map(|a| match a {
                CallAction::Send { tag, req, .. } if req.method == method => {
                    Some((*tag, req.clone()))
                }
                _ => None,
            })
            .expect("a request")
    }

    /// The outcome the room last reported to a call.
    fn outcome(r: &Room) -> Option<(CallNo, String, RoomOutcome)> {
        r.out.iter().rev().find_map(|a| match a {
            CallAction::RoomOutcome {
                call,
                call_id,
                outcome,
            } => Some((*call, call_id.clone(), *outcome)),
            _ => None,
        })
    }

    /// Issue 4: a call's leg moved into a room that does not run yet opens it (the record names
    /// the moved party) and is re-INVITEd in its dialog (the next CSeq, the room's Contact with
    /// `isfocus`, the room's offer); its 200 is ACKed with that CSeq and makes it a participant,
    /// and the call hears `Joined`. A leg that hangs up before it answered gets 200, its call
    /// hears 487 with the dialog gone, and the room it opened ends; a refusal of the re-INVITE
    /// gives the call the status and the dialog's CSeq back.
    #[test]
    fn a_call_leg_moved_in_is_reinvited_and_joins_or_goes_back() {
        let now = Instant::now();
        let bob = moved("bob", 5075);
        let mut r = room_for_arrival(&bob);
        assert_eq!(r.record.caller, "sip:bob@csps.local");
        r.arrive(now, bob);
        let (tag, reinvite) = last_sent(&r, Method::Invite);
        assert_eq!(reinvite.call_id(), Some("bob-call"));
        assert_eq!(reinvite.cseq().map(|c| c.seq), Some(1));
        assert!(
            reinvite
                .headers
                .get("Contact")
                .is_some_and(|c| c.contains("isfocus"))
        );
        let offer = Sdp::parse(&reinvite.body).expect("the room's offer");
        assert_eq!(offer.media[0].formats, ["9", "0", "8", "111"]);
        let phone = phone_socket();
        let sdp = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
            phone.local_addr().expect("addr").port()
        );
        let mut ok = reinvite.response(200, "OK");
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = Bytes::from(sdp);
        r.on_response(tag, ok);
        let ack = r.out.iter().find_map(|a| match a {
            CallAction::Stateless(_, req) if req.method == Method::Ack => Some(req.clone()),
            _ => None,
        });
        assert_eq!(ack.and_then(|a| a.cseq().map(|c| c.seq)), Some(1));
        assert_eq!(
            outcome(&r),
            Some((7, "bob-call".into(), RoomOutcome::Joined))
        );
        let info = r.snapshot(Utc::now());
        assert_eq!(info.legs.len(), 1);
        assert_eq!(info.legs[0].party, "sip:bob@csps.local");
        assert_eq!(info.legs[0].codec.as_deref(), Some("PCMU/8000"));

        // Carol's re-INVITE is refused: her call gets 486 and her dialog's CSeq.
        r.arrive(now, moved("carol", 5076));
        let (tag, reinvite) = last_sent(&r, Method::Invite);
        r.on_response(tag, reinvite.response(486, "Busy Here"));
        let failed = RoomOutcome::Failed {
            status: 486,
            local_seq: 1,
            gone: false,
        };
        assert_eq!(outcome(&r), Some((7, "carol-call".into(), failed)));
        assert_eq!(
            (r.members.len(), r.invitations.len(), r.ended),
            (1, 0, false)
        );

        // Dave's dialog is gone by the time the room re-INVITEs him (481): his call ends.
        r.arrive(now, moved("dave", 5078));
        let (tag, reinvite) = last_sent(&r, Method::Invite);
        r.on_response(
            tag,
            reinvite.response(481, "Call/Transaction Does Not Exist"),
        );
        let gone = RoomOutcome::Failed {
            status: 481,
            local_seq: 1,
            gone: true,
        };
        assert_eq!(outcome(&r), Some((7, "dave-call".into(), gone)));
        assert_eq!((r.members.len(), r.ended), (1, false));

        // A 408 from his phone, or no answer at all (Timer B), ends his call the same way.
        for timer_b in [false, true] {
            r.arrive(now, moved("dave", 5078));
            let (tag, reinvite) = last_sent(&r, Method::Invite);
            match timer_b {
                false => r.on_response(tag, reinvite.response(408, "Request Timeout")),
                true => r.on_timeout(tag),
            }
            let gone = RoomOutcome::Failed {
                status: 408,
                local_seq: 1,
                gone: true,
            };
            assert_eq!(
                outcome(&r),
                Some((7, "dave-call".into(), gone)),
                "{timer_b}"
            );
            assert_eq!((r.members.len(), r.ended), (1, false));
        }

        // Alice hangs up while the room moves her in: the room she opened ends.
        let alice = moved("alice", 5074);
        let mut r = room_for_arrival(&alice);
        r.arrive(now, alice);
        let bye = in_dialog("BYE", 2, "gw-tag", None);
        let from = Remote {
            transport: Transport::Udp,
            addr: SocketAddr::from(([127, 0, 0, 1], 5074)),
            flow: None,
        };
        r.on_request(
            super::super::b2bua::tests::key_for(&bye, "127.0.0.1:5074"),
            from,
            bye,
        );
        assert!(
            r.out
                .iter()
                .any(|a| matches!(a, CallAction::Respond(_, resp) if resp.status == 200))
        );
        let gone = RoomOutcome::Failed {
            status: 487,
            local_seq: 1,
            gone: true,
        };
        assert_eq!(outcome(&r), Some((7, "alice-call".into(), gone)));
        assert!(r.ended);
    }

    /// The trunk's names on a leg to Teams of the user with number +14255550100.
    fn teams_sbc() -> Sbc {
        Sbc {
            fqdn: "sbc1.csps.test".into(),
            port: 5061,
            user: "+14255550100".into(),
        }
    }

    /// Issue 5: a Teams party moved in (a phone REFERred its call to Teams into the room) is
    /// re-INVITEd as the trunk speaks: Via and Contact with the gateway's FQDN (no `isfocus`),
    /// the trunk's Allow (with REFER), the Direct Routing session timer, an RTP/SAVP offer
    /// whatever the phones' SRTP setting. Its SRTP answer makes it an SRTP participant shown
    /// as a Teams leg, for which no user of this gateway goes Busy. Teams' REFER in the room
    /// calls its Refer-To in through the trunk, presented as the user Teams knew, with Teams'
    /// Referred-By; the room's BYE to the Teams party names the FQDN too.
    #[test]
    fn a_teams_party_moved_in_is_reinvited_as_the_trunk_speaks() {
        let now = Instant::now();
        let Arrival::Move(mut teams) = moved("teams", 5061) else {
            unreachable!("moved() makes a move");
        };
        teams.leg.to.transport = Transport::Tls;
        teams.leg.party = "sip:+12065550123@sip.pstnhub.microsoft.com".into();
        teams.leg.sbc = Some(teams_sbc());
        let teams = Arrival::Move(teams);
        let mut r = room_for_arrival(&teams);
        let mut states = r.states.subscribe();
        r.arrive(now, teams);
        let (tag, reinvite) = last_sent(&r, Method::Invite);
        let h = |name| reinvite.headers.get(name).unwrap_or_default().to_owned();
        assert!(
            h("Via").starts_with("SIP/2.0/TLS sbc1.csps.test:5061;"),
            "{reinvite:?}"
        );
        assert_eq!(
            h("Contact"),
            "<sip:+14255550100@sbc1.csps.test:5061;transport=tls>"
        );
        assert_eq!(h("Allow"), crate::trunk::ALLOW);
        assert!(
            h("Session-Expires").ends_with(";refresher=uas"),
            "{reinvite:?}"
        );
        let offer = Sdp::parse(&reinvite.body).expect("the room's offer");
        assert_eq!(offer.media[0].proto, "RTP/SAVP");
        let tag_offered = offer.media[0].crypto()[0].tag;
        let answer = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 30000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{tag_offered} \
             AES_CM_128_HMAC_SHA1_80 inline:YUJDZGVmZ2hpSktMbW5vcFFyc3RVdnd4eXoxMjM0|2^31|1:1\r\n"
        );
        let mut ok = reinvite.response(200, "OK");
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = Bytes::from(answer);
        r.on_response(tag, ok);
        assert_eq!(
            outcome(&r),
            Some((7, "teams-call".into(), RoomOutcome::Joined))
        );
        let info = r.snapshot(Utc::now());
        assert_eq!(info.legs.len(), 1);
        assert_eq!(info.legs[0].kind, LegKind::Teams);
        assert!(info.legs[0].srtp, "the Teams leg speaks SRTP");
        assert!(states.try_recv().is_err(), "no Busy for a Teams party");
        // Teams REFERs its leg (a transfer by the Teams user): the room calls the Refer-To
        // party in through the trunk, presented as the user Teams knew on this leg, with
        // Teams' own Referred-By.
        let text = "REFER sip:conference@127.0.0.1:5060 SIP/2.0\r\n\
            Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKteamsrefer\r\n\
            From: <sip:teams@csps.local>;tag=teams-tag\r\n\
            To: <sip:conference@csps.local>;tag=gw-tag\r\nCall-ID: teams-call\r\n\
            CSeq: 2 REFER\r\nRefer-To: <sip:+12065550177@sip.pstnhub.microsoft.com>\r\n\
            Referred-By: <sip:bob@contoso.com>;x-m=bob\r\nMax-Forwards: 70\r\n\
            Content-Length: 0\r\n\r\n";
        let Message::Request(refer) = csps_sip::parse(text.as_bytes()).expect("parses").message
        else {
            panic!("a request");
        };
        let key = super::super::b2bua::tests::key_for(&refer, "127.0.0.1:5061");
        let from = r.members[0].remote;
        let target = TransferTarget {
            targets: vec![Target {
                to: from,
                uri: csps_sip::Uri::parse("sip:+12065550177@sip.pstnhub.microsoft.com")
                    .expect("uri"),
                local: "127.0.0.1:5061".parse().expect("addr"),
                sbc: Some(Sbc {
                    user: "csps".into(),
                    ..teams_sbc()
                }),
            }],
            to: "<sip:+12065550177@sip.pstnhub.microsoft.com>".into(),
            party: "sip:+12065550177@sip.pstnhub.microsoft.com".into(),
            call_id: "room-out".into(),
            replaces: None,
            referrer: None,
            asserted: None,
        };
        r.on_refer(now, key, from, refer, Ok(target));
        let (_, invite) = last_sent(&r, Method::Invite);
        let h = |name| invite.headers.get(name).unwrap_or_default().to_owned();
        assert!(
            h("From").starts_with("<sip:+14255550100@sbc1.csps.test;user=phone>"),
            "{invite:?}"
        );
        assert_eq!(
            h("Contact"),
            "<sip:+14255550100@sbc1.csps.test:5061;transport=tls>"
        );
        assert_eq!(h("Referred-By"), "<sip:bob@contoso.com>;x-m=bob");
        r.hang_up(0);
        let (_, bye) = last_sent(&r, Method::Bye);
        assert!(
            bye.headers
                .get("Via")
                .is_some_and(|v| v.starts_with("SIP/2.0/TLS sbc1.csps.test:5061;")),
            "{bye:?}"
        );
        assert!(
            r.members.is_empty() && !r.ended,
            "the referred party is on its way"
        );
    }

    /// Issue 5: a participant's REFER to a number the switch routed to Teams (a trunk target,
    /// the referrer's number asserted): the room's INVITE goes out as the trunk's do (Via and
    /// Contact with the FQDN, the asserted caller as From, the session timer, an RTP/SAVP offer
    /// although the room's phones speak plain RTP), and Teams' SRTP answer makes it an SRTP
    /// Teams participant.
    #[test]
    fn a_participant_refers_a_teams_number_in_through_the_trunk() {
        let now = Instant::now();
        let j = join_of(("alice", 5074, SrtpPolicy::default()), 4000, "RTP/AVP", &[]);
        let mut r = room_for(&j);
        r.join(now, j);
        let to_tag = r.members[0].dialog.local_tag.clone();
        let from = r.members[0].remote;
        let mut refer = in_dialog("REFER", 2, &to_tag, None);
        refer
            .headers
            .push("Refer-To", "<sip:+12065550123@csps.local>");
        let teams = Target {
            to: Remote {
                transport: Transport::Tls,
                addr: "127.0.0.1:5071".parse().expect("addr"),
                flow: None,
            },
            uri: csps_sip::Uri::parse("sip:+12065550123@sip.pstnhub.microsoft.com;user=phone")
                .expect("uri"),
            local: "127.0.0.1:5061".parse().expect("addr"),
            sbc: Some(teams_sbc()),
        };
        let asserted = "<sip:+14255550100@sbc1.csps.test;user=phone>";
        let target = TransferTarget {
            targets: vec![teams],
            to: "<sip:+12065550123@sip.pstnhub.microsoft.com;user=phone>".into(),
            party: "sip:+12065550123@sip.pstnhub.microsoft.com".into(),
            call_id: "room-out".into(),
            replaces: None,
            referrer: None,
            asserted: Some(asserted.into()),
        };
        let key = super::super::b2bua::tests::key_for(&refer, "127.0.0.1:5074");
        r.on_refer(now, key, from, refer, Ok(target));
        let (tag, invite) = last_sent(&r, Method::Invite);
        let h = |name| invite.headers.get(name).unwrap_or_default().to_owned();
        assert!(
            h("Via").starts_with("SIP/2.0/TLS sbc1.csps.test:5061;"),
            "{invite:?}"
        );
        assert_eq!(
            h("Contact"),
            "<sip:+14255550100@sbc1.csps.test:5061;transport=tls>"
        );
        assert!(h("From").starts_with(asserted), "{invite:?}");
        assert!(
            h("Session-Expires").ends_with(";refresher=uas"),
            "{invite:?}"
        );
        let offer = Sdp::parse(&invite.body).expect("the room's offer");
        assert_eq!(offer.media[0].proto, "RTP/SAVP");
        let answer = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 30000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{} \
             AES_CM_128_HMAC_SHA1_80 inline:YUJDZGVmZ2hpSktMbW5vcFFyc3RVdnd4eXoxMjM0|2^31|1:1\r\n",
            offer.media[0].crypto()[0].tag
        );
        let mut ok = invite.response(200, "OK");
        ok.headers.set("To", format!("{};tag=teams", h("To")));
        ok.headers.push(
            "Contact",
            "<sip:sip.pstnhub.microsoft.com:5061;transport=tls>",
        );
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = Bytes::from(answer);
        r.on_response(tag, ok);
        let info = r.snapshot(Utc::now());
        let kinds: Vec<_> = info.legs.iter().map(|l| (l.kind, l.srtp)).collect();
        assert_eq!(kinds, [(LegKind::Phone, false), (LegKind::Teams, true)]);
    }

    /// RFC 4028 in rooms: a phone joining with a session timer it refreshes itself gets it
    /// confirmed (`Session-Expires: 120;refresher=uac`, `Require: timer`); a refresh re-INVITE,
    /// then an UPDATE without SDP (answered without an offer), moves the expiry on; a phone
    /// that stops refreshing is hung up a little before its
    /// session expires (32 s before). A phone that asks the room to refresh gets no timer; one
    /// asking an interval under 90 s gets 422 with Min-SE.
    #[test]
    fn a_participant_that_stops_refreshing_its_session_is_hung_up() {
        let now = Instant::now();
        let timer = |h: &mut csps_sip::Headers, refresher: &str| {
            h.push("Session-Expires", format!("120;refresher={refresher}"));
            h.push("Supported", "timer");
        };
        let mut j = join_of(("alice", 5074, SrtpPolicy::default()), 4000, "RTP/AVP", &[]);
        timer(&mut j.invite.headers, "uac");
        let mut r = room_for(&j);
        r.join(now, j);
        let ok = |r: &Room| {
            r.out
                .iter()
                .rev()
                .find_map(|a| match a {
                    CallAction::Respond(_, resp) if resp.status == 200 => Some(resp.clone()),
                    _ => None,
                })
                .expect("a 200")
        };
        let first = ok(&r);
        assert_eq!(
            first.headers.get("Session-Expires"),
            Some("120;refresher=uac")
        );
        assert_eq!(first.headers.get("Require"), Some("timer"));
        let to_tag = r.members[0].dialog.local_tag.clone();
        let from = r.members[0].remote;
        r.on_ack(&in_dialog("ACK", 1, &to_tag, None));
        assert!(r.members[0].unacked.is_none());
        let mut refresh = in_dialog("INVITE", 2, &to_tag, None);
        timer(&mut refresh.headers, "uac");
        let key = super::super::b2bua::tests::key_for(&refresh, "127.0.0.1:5074");
        r.on_request(key, from, refresh);
        assert_eq!(
            ok(&r).headers.get("Session-Expires"),
            Some("120;refresher=uac")
        );
        // The next refresh is an UPDATE without SDP: a 200 without an offer.
        let mut refresh = in_dialog("UPDATE", 3, &to_tag, None);
        timer(&mut refresh.headers, "uac");
        let key = super::super::b2bua::tests::key_for(&refresh, "127.0.0.1:5074");
        r.on_request(key, from, refresh);
        let refreshed = Instant::now();
        let updated = ok(&r);
        assert_eq!(updated.headers.get("CSeq"), Some("3 UPDATE"));
        assert!(updated.body.is_empty(), "no offer in a 200 to UPDATE");
        assert_eq!(
            updated.headers.get("Session-Expires"),
            Some("120;refresher=uac")
        );
        r.tick(refreshed + Duration::from_secs(80));
        assert_eq!(r.members.len(), 1, "refreshed: the session goes on");
        r.tick(refreshed + Duration::from_secs(89));
        assert!(r.members.is_empty(), "not refreshed again: hung up");
        let (_, bye) = last_sent(&r, Method::Bye);
        assert_eq!(bye.call_id(), Some("alice-call"));
        assert_eq!(r.record.end_reason, Some(EndReason::SessionExpired));

        let mut j = join_of(("bob", 5075, SrtpPolicy::default()), 4002, "RTP/AVP", &[]);
        timer(&mut j.invite.headers, "uas");
        let mut r = room_for(&j);
        r.join(now, j);
        assert_eq!(ok(&r).headers.get("Session-Expires"), None);
        r.members[0].unacked = None; // (its ACK)
        r.tick(now + Duration::from_secs(3600));
        assert_eq!(r.members.len(), 1, "no timer, no expiry");

        // Under Min-SE: 422 with Min-SE 90, and carol is not in the room.
        let mut j = join_of(("carol", 5076, SrtpPolicy::default()), 4004, "RTP/AVP", &[]);
        j.invite.headers.push("Session-Expires", "30");
        j.invite.headers.push("Supported", "timer");
        r.join(now, j);
        let refused = r.out.iter().rev().find_map(|a| match a {
            CallAction::Respond(_, resp) if resp.status >= 300 => Some(resp.clone()),
            _ => None,
        });
        let refused = refused.expect("a refusal");
        assert_eq!(
            (refused.status, refused.headers.get("Min-SE")),
            (422, Some("90"))
        );
        assert_eq!(r.members.len(), 1);
    }

    /// A transfer's bridge goes on with two parties; left with one (the other hung up, or its
    /// move failed or never came) it hangs that one up after the grace, and ends.
    #[test]
    fn a_bridge_left_with_one_party_hangs_it_up() {
        let now = Instant::now();
        let alice = join_of(("alice", 5074, SrtpPolicy::default()), 4000, "RTP/AVP", &[]);
        let mut r = room_for(&alice);
        r.name = format!("{BRIDGE_PREFIX}7");
        r.join(now, alice);
        r.tick(now);
        r.tick(now + BRIDGE_GRACE / 2);
        let bob = join_of(("bob", 5075, SrtpPolicy::default()), 4002, "RTP/AVP", &[]);
        r.join(now + BRIDGE_GRACE / 2, bob);
        let later = now + BRIDGE_GRACE * 2;
        r.tick(later);
        assert_eq!((r.members.len(), r.ended), (2, false), "two talk on");
        r.leave(1);
        r.tick(later);
        r.tick(later + BRIDGE_GRACE / 2);
        assert_eq!(r.members.len(), 1, "the grace");
        r.tick(later + BRIDGE_GRACE);
        assert!(
            r.members.is_empty() && r.ended,
            "alice is hung up, the bridge ends"
        );
        let (_, bye) = last_sent(&r, Method::Bye);
        assert_eq!(bye.call_id(), Some("alice-call"));
    }

    /// The room's offer to a party it calls in carries SRTP as a call's offer to that device
    /// would: RTP/SAVP and a line per suite when required, RTP/AVP with lines when supported.
    #[test]
    fn the_rooms_offer_to_a_referred_party_carries_sdes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let sdes = Sdes::new(&mut rng);
        let addr: SocketAddr = "127.0.0.1:30000".parse().expect("addr");
        for (rule, proto) in [
            (LegSrtp::Mandatory, "RTP/SAVP"),
            (LegSrtp::Optional, "RTP/AVP"),
        ] {
            let o = Sdp::parse(&offer_sdp(addr, |m| sdes.give_offer(rule, m))).expect("sdp");
            let m = &o.media[0];
            assert_eq!((m.proto.as_str(), m.crypto().len()), (proto, 2), "{o}");
            assert_eq!(m.formats, ["9", "0", "8", "111"]);
        }
        let plain =
            Sdp::parse(&offer_sdp(addr, |m| sdes.give_offer(LegSrtp::Off, m))).expect("sdp");
        assert_eq!(
            (plain.media[0].proto.as_str(), plain.media[0].crypto().len()),
            ("RTP/AVP", 0)
        );
    }
}
