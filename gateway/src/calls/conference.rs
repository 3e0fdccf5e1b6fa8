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

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use csps_sip::dialog::Dialog;
use csps_sip::sdp::{self, Codec, Format, Sdp};
use csps_sip::transaction::TxnKey;
use csps_sip::{Method, Remote, Request, Response, SipHeaders, Transport};
use rand::RngCore;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use super::b2bua::{EndReason, Input, ReferRefusal, TransferTarget, new_invite, party_aor};
use super::leg::{CallInfo, LegInfo, LegKind, UserState};
use super::record::{CallRecord, Direction as LogDirection, MessageLog};
use super::{CallAction, CallEvent, CallNo, Directory};
use crate::media::mixer::{Mixer, ParticipantId};
use crate::media::{Latch, LegCounters, PortPool, is_rtp_v2};

/// The conference user when `Data.SipConfig.ConferenceUri` is not set.
pub const DEFAULT_USER: &str = "conference";

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
    /// Where the participant's RTP/RTCP port pair comes from.
    pub ports: Arc<PortPool>,
    /// `Data.System.MinRtpPort..=MaxRtpPort` at the time of the INVITE.
    pub rtp_range: (u16, u16),
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
    pub first: Join,
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
    /// Parties the room is calling in on a participant's REFER.
    invitations: Vec<Invitation>,
    /// The ACK sent for each answered invitation, by request tag (a retransmitted 200 gets it
    /// again).
    acks: Vec<(u32, Remote, Request)>,
}

/// A party the room calls in because a participant referred it (RFC 4579 §5.5).
struct Invitation {
    tag: u32,
    invite: Request,
    to: Remote,
    local: SocketAddr,
    party: String,
    /// The participant that sent the REFER (NOTIFYs go to it).
    referrer: ParticipantId,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// Given up (and CANCELled) when not answered by then.
    deadline: Instant,
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
    if m.proto.contains("SAVP") {
        return Err("conferences take plain RTP/AVP only");
    }
    let f = m
        .codecs()
        .find(|f| MIXABLE.contains(&f.codec))
        .ok_or("no codec in common (the room mixes Opus, G722, PCMU, PCMA)")?;
    Ok((i, f))
}

/// Our SDP: the chosen format on the audio section and every other section of `offer`
/// refused (port 0, RFC 3264 §6); without an offer (an offerless re-INVITE), our offer of that
/// format alone, sendrecv.
fn room_sdp(offer: Option<(&Sdp, usize)>, f: Format, rtp: SocketAddr, version: u64) -> Bytes {
    let ip = rtp.ip().to_canonical();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!(
        "v=0\r\no=csps 1 {version} IN {family} {ip}\r\ns=conference\r\nc=IN {family} {ip}\r\nt=0 0\r\n"
    );
    let enc = match f.codec {
        Codec::Opus => format!("opus/{}/2", f.clock),
        c => format!("{}/{}", c.name(), f.clock),
    };
    let audio = |dir: sdp::Direction| {
        format!(
            "m=audio {} RTP/AVP {pt}\r\na=rtpmap:{pt} {enc}\r\na=ptime:20\r\na={}\r\n",
            rtp.port(),
            dir.as_str(),
            pt = f.pt,
        )
    };
    match offer {
        None => s.push_str(&audio(sdp::Direction::SendRecv)),
        Some((offer, i_audio)) => {
            for (i, m) in offer.media.iter().enumerate() {
                if i == i_audio {
                    s.push_str(&audio(m.direction(offer.session_direction()).answer()));
                } else {
                    let fmt = m.formats.first().map_or("0", String::as_str);
                    s.push_str(&format!("m={} 0 {} {fmt}\r\n", m.kind, m.proto));
                }
            }
        }
    }
    Bytes::from(s)
}

/// The room's offer to a party it calls in: every codec it mixes, G.722 first (wide-band, and
/// far cheaper than Opus to encode).
fn offer_sdp(rtp: SocketAddr) -> Bytes {
    let ip = rtp.ip().to_canonical();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    Bytes::from(format!(
        "v=0\r\no=csps 1 1 IN {family} {ip}\r\ns=conference\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 9 0 8 111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\na=rtpmap:111 opus/48000/2\r\na=ptime:20\r\na=sendrecv\r\n",
        rtp.port()
    ))
}

/// A top Via for a request the room sends on a participant's flow.
fn via_for(transport: Transport, local: SocketAddr, rng: &mut dyn RngCore) -> String {
    format!(
        "SIP/2.0/{} {local};branch=z9hG4bK{:016x};rport",
        transport.via_token(),
        rng.next_u64()
    )
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

    fn contact(&self, transport: Transport, local: SocketAddr) -> String {
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
        let offer = match Sdp::parse(&join.invite.body) {
            Ok(o) => o,
            Err(e) => return self.refuse(&join, 488, &format!("bad SDP: {e}")),
        };
        let (audio, format) = match pick(&offer) {
            Ok(p) => p,
            Err(why) => return self.refuse(&join, 488, why),
        };
        let (min, max) = join.rtp_range;
        let (rtp, rtcp) = match join.ports.bind_pair(join.local.ip(), min, max) {
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
        if self.mixer.add(id, format.codec, format.pt).is_err() {
            return self.refuse(&join, 488, "codec not mixable");
        }
        let tag = format!("{:016x}", self.rng.next_u64());
        let contact = self.contact(join.from.transport, join.local);
        let Some(dialog) = Dialog::uas(&join.invite, &tag, &contact) else {
            self.mixer.remove(id);
            return self.refuse(&join, 400, "the INVITE makes no dialog (From tag, Contact)");
        };
        let mut latch = Latch::default();
        latch.expect(offer.rtp_addr(audio), join.from.addr.ip());
        let sending = we_send(&offer, audio);
        let body = room_sdp(Some((&offer, audio)), format, rtp_addr, 1);
        let mut ok = join.invite.response(200, "OK");
        if let Some(to) = join.invite.headers.get("To") {
            ok.headers.set("To", format!("{to};tag={tag}"));
        }
        ok.headers.push("Contact", contact);
        ok.headers
            .push("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO");
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        self.respond(join.key, join.from.addr, ok.clone());
        self.admit(Member {
            id,
            party: join.party,
            remote: join.from,
            local: join.local,
            dialog,
            rtp,
            rtcp,
            latch,
            format,
            sdp_version: 1,
            sending,
            unacked: Some((join.key, ok, now + T1, T1, now + 64 * T1)),
            counters: LegCounters::default(),
        });
    }

    /// A participant is in: busy on the bus, in the record, in the room (already in the mix).
    fn admit(&mut self, m: Member) {
        tracing::info!(room = %self.name, party = %m.party, codec = m.format.codec.name(), participants = self.members.len() + 1, "joined the conference");
        if self.record.answered_at.is_none() {
            self.record.answered_at = Some(Utc::now());
            self.record.status = Some(200);
        }
        let _ = self.states.send(UserState {
            aor: m.party.clone(),
            busy: true,
            call: self.no,
        });
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
        let Some(target) = t.targets.into_iter().next() else {
            self.respond(key, from.addr, req.response(202, "Accepted"));
            return self.notify(i, 480);
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
        let body = offer_sdp(SocketAddr::new(target.local.ip(), port));
        let from_tag = format!("{:016x}", self.rng.next_u64());
        let mut invite = new_invite(
            &target,
            &self.focus,
            &from_tag,
            &t.to,
            &t.call_id,
            body,
            &mut self.rng,
        );
        invite
            .headers
            .set("Contact", self.contact(target.to.transport, target.local));
        invite.headers.push("Referred-By", format!("<{referrer}>"));
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
            invite,
            to: target.to,
            local: target.local,
            party: t.party,
            referrer,
            rtp,
            rtcp,
            deadline: now + RING_TIMEOUT,
        });
    }

    /// NOTIFY participant `i` of its REFER's progress (RFC 3515 §2.4.5); a final status ends
    /// the implicit subscription.
    fn notify(&mut self, i: usize, status: u16) {
        let tag = self.tag();
        let m = &mut self.members[i];
        let via = via_for(m.remote.transport, m.local, &mut self.rng);
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
        let inv = self.invitations.remove(k);
        self.log.response(LogDirection::In, inv.to.addr, &resp);
        if resp.status >= 300 {
            tracing::info!(room = %self.name, party = %inv.party, status = resp.status, "referred party not joined");
            self.notify_referrer(inv.referrer, resp.status);
            return self.end_if_empty();
        }
        let Some(mut dialog) = Dialog::uac(&inv.invite, &resp) else {
            self.notify_referrer(inv.referrer, 502);
            return self.end_if_empty();
        };
        let via = via_for(inv.to.transport, inv.local, &mut self.rng);
        let ack = dialog.ack(1, &via);
        self.log.request(LogDirection::Out, inv.to.addr, &ack);
        self.out
            .push_back(CallAction::Stateless(inv.to, ack.clone()));
        self.acks.push((tag, inv.to, ack));
        let answer = Sdp::parse(&resp.body).ok();
        let chosen = answer.as_ref().and_then(|a| pick(a).ok());
        let id = self.next_id;
        let (Some(answer), Some((audio, format))) = (answer, chosen) else {
            return self.unusable_answer(&mut dialog, &inv);
        };
        if self.mixer.add(id, format.codec, format.pt).is_err() {
            return self.unusable_answer(&mut dialog, &inv);
        }
        self.next_id += 1;
        let mut latch = Latch::default();
        latch.expect(answer.rtp_addr(audio), inv.to.addr.ip());
        dialog.local_contact = self.contact(inv.to.transport, inv.local);
        self.notify_referrer(inv.referrer, 200);
        self.admit(Member {
            id,
            party: inv.party,
            remote: inv.to,
            local: inv.local,
            dialog,
            rtp: inv.rtp,
            rtcp: inv.rtcp,
            latch,
            format,
            sdp_version: 1,
            sending: we_send(&answer, audio),
            unacked: None,
            counters: LegCounters::default(),
        });
    }

    /// The called-in party answered with SDP the room cannot use: it is hung up at once and
    /// the referrer hears 488.
    fn unusable_answer(&mut self, dialog: &mut Dialog, inv: &Invitation) {
        let via = via_for(inv.to.transport, inv.local, &mut self.rng);
        let bye = dialog.request(Method::Bye, &via);
        let tag = self.tag();
        self.log.request(LogDirection::Out, inv.to.addr, &bye);
        self.out.push_back(CallAction::Send {
            tag,
            to: inv.to,
            req: bye,
        });
        self.notify_referrer(inv.referrer, 488);
        self.end_if_empty();
    }

    /// An invitation's INVITE got no answer at all (Timer B): the referrer hears 408.
    fn on_timeout(&mut self, tag: u32) {
        if let Some(k) = self.invitations.iter().position(|v| v.tag == tag) {
            let inv = self.invitations.remove(k);
            self.notify_referrer(inv.referrer, 408);
            self.end_if_empty();
        }
    }

    /// Rang too long: CANCEL the invitation; its 487 ends it.
    fn cancel_unanswered(&mut self, now: Instant) {
        for k in 0..self.invitations.len() {
            if self.invitations[k].deadline <= now {
                self.invitations[k].deadline = now + RING_TIMEOUT;
                let v = &self.invitations[k];
                let cancel = csps_sip::dialog::cancel(&v.invite, None);
                let to = v.to;
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

    /// Which participant an in-dialog request belongs to.
    fn member_of(&self, req: &Request) -> Option<usize> {
        self.members.iter().position(|m| m.dialog.matches(req))
    }

    fn on_request(&mut self, key: TxnKey, from: Remote, req: Request) {
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
                r.headers
                    .push("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO");
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
        let m = &mut self.members[i];
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
                let (audio, f) = match kept.map_or_else(|| pick(o), Ok) {
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
                    if self.mixer.add(m.id, f.codec, f.pt).is_err() {
                        return;
                    }
                    m.format = f;
                }
                m.latch.expect(o.rtp_addr(audio), from.addr.ip());
                m.sending = we_send(o, audio);
                room_sdp(Some((o, audio)), f, rtp, m.sdp_version)
            }
            // No offer: ours is in the 200, sendrecv; its answer in the ACK is not needed.
            None => room_sdp(None, m.format, rtp, m.sdp_version),
        };
        let mut ok = req.response(200, "OK");
        if let Some(to) = req.headers.get("To") {
            ok.headers.set("To", to.to_owned());
        }
        ok.headers.push("Contact", m.dialog.local_contact.clone());
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        self.respond(key, from.addr, ok);
    }

    /// Participant `i` is gone (its BYE, or the room hangs it up).
    fn leave(&mut self, i: usize) {
        let m = self.members.remove(i);
        self.mixer.remove(m.id);
        tracing::info!(room = %self.name, party = %m.party, participants = self.members.len(), "left the conference");
        let _ = self.states.send(UserState {
            aor: m.party,
            busy: false,
            call: self.no,
        });
        self.end_if_empty();
    }

    /// Sends BYE to participant `i` and removes it.
    fn hang_up(&mut self, i: usize) {
        let tag = self.tag();
        let m = &mut self.members[i];
        let via = via_for(m.remote.transport, m.local, &mut self.rng);
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
            self.members[i].unacked = None;
            self.log
                .request(LogDirection::In, self.members[i].remote.addr, req);
        }
    }

    /// The 20 ms tick: retransmit unacknowledged 200s, then read every socket into the mixer
    /// and send each participant its mix.
    fn tick(&mut self, now: Instant) {
        self.cancel_unanswered(now);
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
                } else if !m.latch.accept(src) {
                    m.counters.dropped_unexpected += 1;
                } else {
                    m.counters.rtp_packets += 1;
                    m.counters.rtp_bytes += n as u64;
                    self.mixer.receive(m.id, p);
                }
            }
            // RTCP is read and counted, not mixed (the room reports nothing yet).
            for _ in 0..8 {
                let Ok((_, src)) = m.rtcp.recv_from(&mut self.buf) else {
                    break;
                };
                if m.latch.latched().is_some_and(|l| l.ip() == src.ip()) {
                    m.counters.rtcp_packets += 1;
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
            match m.latch.destination() {
                Some(dst) if m.rtp.send_to(packet, dst).is_ok() => {}
                _ => m.counters.dropped_unsent += 1,
            }
        });
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
                    kind: LegKind::Phone,
                    party: m.party.clone(),
                    signalling: m.remote.addr.to_string(),
                    media: m.latch.latched().map(|a| a.to_string()),
                    codec: Some(format!("{}/{}", m.format.codec.name(), m.format.clock)),
                    srtp: false,
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
    let started_at = Utc::now();
    let record = CallRecord {
        id: no,
        call_id: first.invite.call_id().unwrap_or("").to_owned(),
        caller: first.party.clone(),
        callee: format!("conference:{room}"),
        started_at,
        answered_at: None,
        ended_at: None,
        talk_secs: 0,
        status: None,
        end_reason: None,
        emergency: false,
        messages: 0,
        messages_dropped: 0,
    };
    directory.started(&record);
    let mut r = Room {
        no,
        name: room,
        user,
        agent,
        members: Vec::new(),
        mixer: Mixer::new(),
        next_id: 1,
        next_tag: 0,
        out: VecDeque::new(),
        log: MessageLog::default(),
        states,
        rng: rand::SeedableRng::from_os_rng(),
        record,
        ended: false,
        buf: Vec::new(),
        ports: first.ports.clone(),
        rtp_range: first.rtp_range,
        focus: String::new(),
        invitations: Vec::new(),
        acks: Vec::new(),
    };
    r.focus = format!("<sip:{}@{}>", r.room_user(), first.invite.uri.host);
    r.join(Instant::now(), first);
    if r.members.is_empty() && r.invitations.is_empty() {
        r.record.status = r.record.status.or(Some(488));
        r.end(EndReason::Rejected);
    } else {
        directory.answered(&r.record);
    }
    let mut tick =
        tokio::time::interval(Duration::from_millis(crate::media::codec::FRAME_MS.into()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
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
                Some(CallEvent::Join(j)) => r.join(Instant::now(), *j),
                Some(CallEvent::Sip(input)) => match input {
                    Input::Request { key, from, req } => r.on_request(key, from, req),
                    Input::Refer { key, from, req, target } => {
                        r.on_refer(Instant::now(), key, from, req, target)
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
        if let CallEvent::Join(j) = ev {
            r.refuse(&j, 480, "the conference just ended; call again");
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
        );
        let a = Sdp::parse(&a).expect("answer parses");
        assert_eq!(a.media.len(), 2);
        assert_eq!(a.media[0].port, 30000);
        assert_eq!(a.media[0].formats, vec!["9".to_owned()]);
        assert_eq!(a.media[1].port, 0);
        assert!(sdp::check_answer(&o, &a).is_ok());
        let none = offer("v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 18\n");
        assert!(pick(&none).is_err());
        let srtp = offer("v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nt=0 0\nm=audio 4000 RTP/SAVP 0\n");
        assert!(pick(&srtp).is_err());
    }
}
