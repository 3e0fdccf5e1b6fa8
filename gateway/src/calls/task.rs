//! The tokio driver of one call: it owns the sans-IO [`Call`] and the media [`Relay`], feeds the
//! call the core's events and its timer, forwards media, and sends the call's SIP work to the
//! core. When the call ends the task returns and everything it owned (sockets included) is freed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use csps_sip::SipHeaders;
use csps_sip::sdp::Sdp;
use csps_sip::transaction::TxnKey;
use rand::SeedableRng;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use super::b2bua::{Call, Input, MediaChange, Output, Setup};
use super::leg::{CallInfo, DialogIds, LegInfo, LegKind, LineState, UserState};
use super::record::{CallRecord, Direction as LogDirection, MessageLog};
use super::{CallAction, CallEvent, CallNo, Directory};
use crate::media::PortPool;
use crate::media::moh::{Music, Player};
use crate::media::relay::Relay;
use crate::policy::hooks::{CallQuirks, Device};
use crate::policy::rules::Direction;
use crate::store::LegMedia;

/// The codec leg `i` (0: A) uses: its own while the relay transcodes (`per_leg`), else the one
/// both share.
fn leg_codec(per_leg: &Option<[String; 2]>, shared: &Option<String>, i: usize) -> Option<String> {
    per_leg
        .as_ref()
        .map(|c| c[i].clone())
        .or_else(|| shared.clone())
}

/// Everything a call task starts with.
pub struct CallTask {
    pub no: CallNo,
    pub setup: Setup,
    pub media: Relay,
    pub events: mpsc::Receiver<CallEvent>,
    pub actions: mpsc::Sender<(CallNo, CallAction)>,
    pub states: broadcast::Sender<UserState>,
    pub caller: Option<String>,
    pub callee: String,
    /// What each leg is (caller's, callee's): only phones' users go busy on the bus.
    pub kinds: [LegKind; 2],
    pub emergency: bool,
    /// The routing module version the call was routed with (`None`: the built-in rule).
    pub routing_policy: Option<u64>,
    /// The call's pinned quirks and its devices by signalling address (the caller's first);
    /// `None` without a policy engine.
    pub quirks: Option<(CallQuirks, Vec<(SocketAddr, Device)>)>,
    /// Where the call's record and messages go when it ends.
    pub directory: Directory,
    /// The music played to a held party (`None`: music on hold is off).
    pub music: Option<Arc<Music>>,
}

/// The music on hold of one call: a player per held leg, paced by one 20 ms interval.
struct HoldMusic {
    music: Option<Arc<Music>>,
    /// Leg A's player, leg B's.
    players: [Option<Player>; 2],
    tick: tokio::time::Interval,
    packet: Vec<u8>,
}

impl HoldMusic {
    fn new(music: Option<Arc<Music>>) -> HoldMusic {
        let mut tick = tokio::time::interval(Duration::from_millis(u64::from(
            crate::media::codec::FRAME_MS,
        )));
        // A late tick sends one packet, not a burst: the receiver's jitter buffer absorbs it.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        HoldMusic {
            music,
            players: [None, None],
            tick,
            packet: Vec::with_capacity(1500),
        }
    }

    fn playing(&self) -> bool {
        self.players.iter().any(Option::is_some)
    }

    /// True while music plays to leg A (`0`) or B (`1`).
    fn playing_to(&self, leg: usize) -> bool {
        self.players.get(leg).is_some_and(Option::is_some)
    }

    /// Starts (`format`) or stops (`None`) the music to leg A (`a`) or B.
    fn set(&mut self, media: &mut Relay, a: bool, format: Option<csps_sip::sdp::Format>) {
        let Some(music) = &self.music else { return };
        let leg = if a { "A" } else { "B" };
        let i = usize::from(!a);
        let Some(f) = format else {
            if self.players[i].take().is_some() {
                media.set_music(a, false);
                tracing::info!(leg, "music on hold stopped");
            }
            return;
        };
        if self.players[i]
            .as_ref()
            .is_some_and(|p| p.payload_type() == f.pt)
        {
            // A hold refreshed (a session timer's re-INVITE): the music plays on.
            return;
        }
        let was_playing = self.playing();
        match Player::new(music.clone(), f) {
            Ok(p) => {
                tracing::info!(
                    leg,
                    codec = f.codec.name(),
                    pt = f.pt,
                    source = music.source(),
                    "music on hold started"
                );
                self.players[i] = Some(p);
                media.set_music(a, true);
                if !was_playing {
                    self.tick.reset_immediately();
                }
            }
            Err(e) => {
                tracing::info!(leg, "no music on hold: {e}");
                self.players[i] = None;
                media.set_music(a, false);
            }
        }
    }

    /// Stops all music (the leg changed hands).
    fn stop(&mut self, media: &mut Relay) {
        for a in [true, false] {
            self.set(media, a, None);
        }
    }

    /// Sends each held leg its next packet.
    fn play(&mut self, media: &mut Relay) {
        for (i, p) in self.players.iter_mut().enumerate() {
            if let Some(p) = p {
                self.packet.clear();
                p.next_packet(&mut self.packet);
                media.send_music(i == 0, &self.packet);
            }
        }
    }
}

/// Where each message of the call comes from or goes to: requests by their source or
/// destination, responses by the request they answer, ACK and CANCEL (which come without an
/// address) by the last peer heard on their Call-ID. The quirks and the message log use it.
struct Peers {
    /// The caller's INVITE transaction (answered towards the caller).
    a_key: TxnKey,
    a_peer: SocketAddr,
    /// Where each request the call sent went (its responses come from there).
    sent_to: HashMap<u32, SocketAddr>,
    /// Where each request the call is answering came from.
    answering: HashMap<TxnKey, SocketAddr>,
    /// The last peer heard from or sent to on each Call-ID (one entry per leg).
    by_call_id: HashMap<String, SocketAddr>,
}

impl Peers {
    fn new(setup: &Setup) -> Peers {
        let mut by_call_id = HashMap::new();
        if let Some(c) = setup.invite.call_id() {
            by_call_id.insert(c.to_owned(), setup.from.addr);
        }
        Peers {
            a_key: setup.key,
            a_peer: setup.from.addr,
            sent_to: HashMap::new(),
            answering: HashMap::new(),
            by_call_id,
        }
    }

    fn on_call_id(&self, call_id: Option<&str>) -> Option<SocketAddr> {
        call_id.and_then(|c| self.by_call_id.get(c)).copied()
    }

    /// The peer an input came from.
    fn incoming(&mut self, input: &Input) -> Option<SocketAddr> {
        match input {
            Input::Request { key, from, req } => {
                self.answering.insert(*key, from.addr);
                if let Some(c) = req.call_id() {
                    self.by_call_id.insert(c.to_owned(), from.addr);
                }
                Some(from.addr)
            }
            Input::Response { tag, resp } => {
                let peer = self.sent_to.get(tag).copied();
                if resp.status >= 200 {
                    self.sent_to.remove(tag);
                }
                peer.or_else(|| self.on_call_id(resp.headers.get("Call-ID")))
            }
            Input::Timeout { tag } => {
                self.sent_to.remove(tag);
                None
            }
            Input::Ack(req) | Input::Cancel(req) => self.on_call_id(req.call_id()),
            Input::Refer { key, from, .. } | Input::ReferToRoom { key, from, .. } => {
                self.answering.insert(*key, from.addr);
                Some(from.addr)
            }
            Input::Replace(r) => {
                self.answering.insert(r.key, r.from.addr);
                if let Some(c) = r.req.call_id() {
                    self.by_call_id.insert(c.to_owned(), r.from.addr);
                }
                Some(r.from.addr)
            }
            _ => None,
        }
    }

    /// The peer an output goes to.
    fn outgoing(&mut self, out: &Output) -> Option<SocketAddr> {
        match out {
            Output::Respond { key, resp } => {
                if *key == self.a_key {
                    Some(self.a_peer)
                } else if resp.status >= 200 {
                    self.answering.remove(key)
                } else {
                    self.answering.get(key).copied()
                }
            }
            Output::Send { tag, to, req } => {
                self.sent_to.insert(*tag, to.addr);
                if let Some(c) = req.call_id() {
                    self.by_call_id.insert(c.to_owned(), to.addr);
                }
                Some(to.addr)
            }
            Output::Stateless { to, .. } => Some(to.addr),
            _ => None,
        }
    }
}

/// Applies the call's pinned device quirks to what goes to and comes from each device, found by
/// its signalling address.
struct Quirks {
    quirks: CallQuirks,
    devices: Vec<(SocketAddr, Device)>,
}

/// The device at a signalling address.
fn device_at(devices: &[(SocketAddr, Device)], addr: Option<SocketAddr>) -> Option<&Device> {
    let addr = addr?;
    devices.iter().find(|(a, _)| *a == addr).map(|(_, d)| d)
}

impl Quirks {
    /// Before the call sees an input from `peer`.
    fn incoming(&mut self, peer: Option<SocketAddr>, input: &mut Input) {
        let Some(d) = device_at(&self.devices, peer) else {
            return;
        };
        match input {
            Input::Request { req, .. } => self.quirks.request(d, Direction::FromDevice, req),
            Input::Response { resp, .. } => self.quirks.response(d, Direction::FromDevice, resp),
            _ => {}
        }
    }

    /// Before an output leaves for `peer`.
    fn outgoing(&mut self, peer: Option<SocketAddr>, out: &mut Output) {
        let Some(d) = device_at(&self.devices, peer) else {
            return;
        };
        match out {
            Output::Respond { resp, .. } => self.quirks.response(d, Direction::ToDevice, resp),
            Output::Send { req, .. } | Output::Stateless { req, .. } => {
                self.quirks.request(d, Direction::ToDevice, req)
            }
            _ => {}
        }
    }
}

/// Logs an input (before the quirks touch it: as on the wire).
fn log_input(log: &mut MessageLog, peer: Option<SocketAddr>, input: &Input) {
    let Some(peer) = peer else { return };
    match input {
        Input::Request { req, .. }
        | Input::Refer { req, .. }
        | Input::ReferToRoom { req, .. }
        | Input::Ack(req)
        | Input::Cancel(req) => log.request(LogDirection::In, peer, req),
        Input::Replace(r) => log.request(LogDirection::In, peer, &r.req),
        Input::Response { resp, .. } => log.response(LogDirection::In, peer, resp),
        _ => {}
    }
}

/// Logs an output (after the quirks: as on the wire).
fn log_output(log: &mut MessageLog, peer: Option<SocketAddr>, out: &Output) {
    let Some(peer) = peer else { return };
    match out {
        Output::Respond { resp, .. } => log.response(LogDirection::Out, peer, resp),
        Output::Send { req, .. } | Output::Stateless { req, .. } => {
            log.request(LogDirection::Out, peer, req)
        }
        _ => {}
    }
}

/// Binds the relay's two socket pairs: one on the caller's side, one on the callee's.
pub fn bind_media(
    pool: &PortPool,
    a_ip: IpAddr,
    b_ip: IpAddr,
    min: u16,
    max: u16,
) -> std::io::Result<Relay> {
    let a = pool.bind_pair(a_ip, min, max)?;
    let b = pool.bind_pair(b_ip, min, max)?;
    Relay::new(a, b)
}

/// A transcoded leg's codec as the API names it (`opus/48000`, like [`codec_of`]).
fn format_name(f: &crate::media::transcode::LegFormat) -> String {
    let clock = crate::media::codec::rtp_clock(f.codec).unwrap_or(8_000);
    format!("{}/{clock}", f.codec.name())
}

fn codec_of(body: &[u8]) -> Option<String> {
    let sdp = Sdp::parse(body).ok()?;
    let f = sdp.audio()?.codecs().next()?;
    Some(format!("{}/{}", f.codec.name(), f.clock))
}

/// The call's parties that are users of this gateway (a Teams party is not), each with whether
/// it is the caller.
fn local_users<'a>(
    caller: &'a Option<String>,
    callee: &'a String,
    kinds: [LegKind; 2],
) -> impl Iterator<Item = (&'a String, bool)> {
    let caller = caller.as_ref().filter(|_| kinds[0] == LegKind::Phone);
    let callee = Some(callee).filter(|_| kinds[1] == LegKind::Phone);
    caller
        .map(|c| (c, true))
        .into_iter()
        .chain(callee.map(|c| (c, false)))
}

/// Publishes `aor`'s line in call `no` (nobody listening is fine).
fn publish(
    states: &broadcast::Sender<UserState>,
    no: CallNo,
    aor: &str,
    state: LineState,
    caller: bool,
) {
    let _ = states.send(UserState {
        aor: aor.to_owned(),
        state,
        call: no,
        caller,
        dialog: None,
    });
}

/// Publishes `callee`'s ringing again, now with the early dialog `(Call-ID, device tag, gateway
/// tag)` a call pickup names and the caller `shown` to the ringing device.
fn publish_early(
    states: &broadcast::Sender<UserState>,
    no: CallNo,
    callee: &str,
    (call_id, local_tag, remote_tag): (String, String, String),
    shown: &csps_sip::headers::NameAddr,
) {
    let _ = states.send(UserState {
        aor: callee.to_owned(),
        state: LineState::Ringing,
        call: no,
        caller: false,
        dialog: Some(DialogIds {
            call_id,
            local_tag,
            remote_tag,
            remote: shown.uri.to_string(),
            remote_name: shown.display.clone(),
        }),
    });
}

/// Runs the call to its end, its log lines in the call's span.
pub async fn run(t: CallTask) {
    let call_id = t
        .setup
        .invite
        .headers
        .get("Call-ID")
        .unwrap_or("")
        .to_owned();
    // A root span, attached to the task's future: a span entered with a guard held across
    // `.await` stays entered on the worker thread while the call is suspended, so every other
    // task's log lines and every later call's span nest inside it, and each log line then
    // formats the whole chain (a few hundred spans under load).
    let span = tracing::info_span!(parent: None, "call", call = t.no, call_id = %call_id);
    run_call(t, call_id).instrument(span).await
}

async fn run_call(t: CallTask, call_id: String) {
    let CallTask {
        no,
        mut setup,
        mut media,
        mut events,
        actions,
        states,
        mut caller,
        mut callee,
        mut kinds,
        emergency,
        routing_policy,
        quirks,
        directory,
        music,
    } = t;
    let mut hold_music = HoldMusic::new(music);
    match (media.addr_a(), media.addr_b()) {
        (Ok(a), Ok(b)) => {
            setup.relay_a = a;
            setup.relay_b = b;
        }
        _ => return,
    }
    let started_at = Utc::now();
    let started = Instant::now();
    let mut record = CallRecord {
        id: no,
        call_id: call_id.clone(),
        caller: caller.clone().unwrap_or_else(|| "anonymous".into()),
        callee: callee.clone(),
        started_at,
        answered_at: None,
        ended_at: None,
        talk_secs: 0,
        status: None,
        end_reason: None,
        emergency,
        messages: 0,
        messages_dropped: 0,
        media: Vec::new(),
    };
    directory.started(&record);
    // From the start the callee's devices ring and a local caller's line is dialling (an
    // `early` initiator dialog, RFC 4235): busy-lamp fields show both until the answer.
    for (aor, is_caller) in local_users(&caller, &callee, kinds) {
        publish(&states, no, aor, LineState::Ringing, is_caller);
    }
    let mut log = MessageLog::default();
    let mut peers = Peers::new(&setup);
    log.request(LogDirection::In, setup.from.addr, &setup.invite);
    let mut answered_at = None;
    let mut b_signalling: Option<SocketAddr> = None;
    let mut codec: Option<String> = None;
    // Each leg's own codec while the relay transcodes (else both use `codec`).
    let mut leg_codecs: Option<[String; 2]> = None;
    let quirks_policy = quirks.as_ref().and_then(|(q, _)| q.version());
    let mut quirks = quirks.map(|(quirks, devices)| Quirks { quirks, devices });
    if let Some(q) = &mut quirks
        && let Some((_, caller_device)) = q.devices.first()
    {
        q.quirks
            .request(caller_device, Direction::FromDevice, &mut setup.invite);
    }
    let mut first_answer_seen = false;
    // The caller as the callee's devices are shown it, for the busy-lamp fields' pickup.
    let shown_caller = csps_sip::headers::NameAddr::parse(&setup.caller).ok();
    // The early dialog last published with the callee's ringing.
    let mut early_shown = None;
    let mut call = Call::new(setup, Box::new(rand::rngs::StdRng::from_os_rng()));
    call.start(Instant::now());
    let sleep = tokio::time::sleep(std::time::Duration::from_secs(3600));
    tokio::pin!(sleep);
    // When the next RFC 4733 packet of a digit from a SIP INFO is due.
    let dtmf_timer = tokio::time::sleep(std::time::Duration::from_secs(3600));
    tokio::pin!(dtmf_timer);
    // When the gateway's next RTCP report to a leg is due, sent even while no packet passes.
    let rtcp_timer = tokio::time::sleep(std::time::Duration::from_secs(3600));
    tokio::pin!(rtcp_timer);
    // What the timer is set to: it is reset only when that changes (the loop turns with every
    // batch of packets, the report is due every few seconds).
    let mut rtcp_set: Option<Instant> = None;
    loop {
        // Carry out what the call asked for.
        let mut ended = false;
        // An offer/answer exchange that moved a leg's media without choosing codecs (a
        // transfer, an offerless exchange) leaves legs that share a codec: no transcoding.
        let (mut media_moved, mut codecs_chosen) = (false, false);
        // The same for DTMF: such an exchange leaves telephone-events passed through.
        let mut events_chosen = false;
        while let Some(mut out) = call.poll_output() {
            let peer = peers.outgoing(&out);
            if let Some(q) = quirks.as_mut() {
                q.outgoing(peer, &mut out);
            }
            log_output(&mut log, peer, &out);
            tracing::trace!(?out, "call output");
            let action = match out {
                Output::Respond { key, resp } => {
                    if key == peers.a_key && resp.status > 100 && record.status.is_none() {
                        if resp.status >= 200 {
                            record.status = Some(resp.status);
                        }
                        if !std::mem::replace(&mut first_answer_seen, true) {
                            directory.post_dial_delay(started.elapsed().as_secs_f64());
                        }
                    }
                    if resp.status == 200 && codec.is_none() {
                        codec = codec_of(&resp.body);
                    }
                    CallAction::Respond(key, resp)
                }
                Output::Send { tag, to, req } => CallAction::Send { tag, to, req },
                Output::Stateless { to, req } => CallAction::Stateless(to, req),
                Output::Media(MediaChange::A(sdp, ip)) => {
                    media.expect_a(sdp, ip);
                    media_moved = true;
                    continue;
                }
                Output::Media(MediaChange::B(sdp, ip)) => {
                    media.expect_b(sdp, ip);
                    b_signalling = Some(SocketAddr::new(ip, 0));
                    media_moved = true;
                    continue;
                }
                Output::Media(MediaChange::Transcode(formats)) => {
                    media.set_transcode(formats);
                    leg_codecs = formats.map(|(a, b)| [format_name(&a), format_name(&b)]);
                    codecs_chosen = true;
                    continue;
                }
                Output::Media(MediaChange::Dtmf(a, b)) => {
                    media.set_dtmf(a, b);
                    events_chosen = true;
                    continue;
                }
                Output::Media(MediaChange::Audio(a, b)) => {
                    media.set_audio(a, b);
                    continue;
                }
                Output::Dtmf { to_a, digit } => {
                    if !media.send_dtmf(to_a, digit, Instant::now()) {
                        tracing::debug!("a DTMF digit for a leg without telephone-event");
                    }
                    continue;
                }
                Output::Srtp { a, keys } => {
                    media.set_srtp(a, keys.as_ref());
                    continue;
                }
                Output::MusicOnHold { a, format } => {
                    hold_music.set(&mut media, a, format);
                    continue;
                }
                Output::Answered => {
                    answered_at = Some(Utc::now());
                    record.answered_at = answered_at;
                    directory.answered(&record);
                    directory.set_dialogs(no, call.dialogs());
                    for (aor, is_caller) in local_users(&caller, &callee, kinds) {
                        publish(&states, no, aor, LineState::Busy, is_caller);
                    }
                    continue;
                }
                Output::Transferred { a, party, teams } => {
                    // The held party now talks to someone new (the gateway resumes it).
                    hold_music.stop(&mut media);
                    // The transferor is free; the target (a local user, or Teams) is now in
                    // the call.
                    let leg = usize::from(!a);
                    let old = if a {
                        caller.replace(party.clone())
                    } else {
                        Some(std::mem::replace(&mut callee, party.clone()))
                    };
                    // The record names who the call ended between (the transferor is in the
                    // message log).
                    if a {
                        record.caller = party.clone();
                    } else {
                        record.callee = party.clone();
                    }
                    let was_phone = kinds[leg] == LegKind::Phone;
                    kinds[leg] = if teams {
                        LegKind::Teams
                    } else {
                        LegKind::Phone
                    };
                    tracing::info!(to = %party, "call transferred");
                    directory.set_dialogs(no, call.dialogs());
                    // Before the answer (a call pickup) nobody is busy yet: the answer makes
                    // the new party busy, and the callee's ringing stops.
                    let answered = answered_at.is_some();
                    let freed = old.filter(|_| was_phone && (answered || !a));
                    if let Some(aor) = freed {
                        publish(&states, no, &aor, LineState::Idle, a);
                    }
                    if !teams && answered {
                        publish(&states, no, &party, LineState::Busy, a);
                    }
                    continue;
                }
                Output::ToRoom(leg) => CallAction::ToRoom(leg),
                Output::Ended => {
                    ended = true;
                    CallAction::Ended
                }
            };
            if actions.send((no, action)).await.is_err() {
                return;
            }
        }
        if media_moved && !codecs_chosen {
            media.set_transcode(None);
            // The codecs are not known afresh: no jitter rather than one in a wrong clock.
            media.set_audio(None, None);
            leg_codecs = None;
        }
        if media_moved && !events_chosen {
            media.set_dtmf(None, None);
        }
        if ended {
            break;
        }
        // A ringing device's first tagged provisional makes the early dialog a pickup names.
        if answered_at.is_none()
            && kinds[1] == LegKind::Phone
            && let Some(shown) = &shown_caller
            && let Some(early) = call.early_dialog()
            && early_shown.as_ref() != Some(&early)
        {
            early_shown = Some(early.clone());
            publish_early(&states, no, &callee, early, shown);
        }
        if let Some(d) = call.poll_timeout() {
            sleep.as_mut().reset(d.into());
        }
        if let Some(d) = media.dtmf_due() {
            dtmf_timer.as_mut().reset(d.into());
        }
        let rtcp_due = media.rtcp_due(Instant::now());
        if let Some(d) = rtcp_due
            && rtcp_set != Some(d)
        {
            rtcp_timer.as_mut().reset(d.into());
            rtcp_set = Some(d);
        }
        tokio::select! {
            ev = events.recv() => match ev {
                Some(CallEvent::Sip(mut input)) => {
                    let peer = peers.incoming(&input);
                    log_input(&mut log, peer, &input);
                    if let Some(q) = quirks.as_mut() {
                        q.incoming(peer, &mut input);
                    }
                    tracing::trace!(?input, "call input");
                    call.handle(Instant::now(), input);
                }
                Some(CallEvent::Messages(reply)) => {
                    let _ = reply.send(log.messages().to_vec());
                }
                // Only a conference room is sent joins.
                Some(CallEvent::Join(_)) => {}
                Some(CallEvent::Snapshot(reply)) => {
                    let (ca, cb) = media.counters();
                    let now = Utc::now();
                    let _ = reply.send(CallInfo {
                        id: no,
                        state: if call.is_answered() { "answered" } else { "ringing" },
                        started_at,
                        answered_at,
                        duration_secs: (now - started_at).num_seconds().max(0) as u64,
                        emergency,
                        routing_policy,
                        quirks_policy,
                        conference: None,
                        legs: vec![
                            LegInfo {
                                kind: kinds[0],
                                party: caller.clone().unwrap_or_else(|| "anonymous".into()),
                                // Where leg A's phone is now (a transfer or a Replaces moves it).
                                signalling: call.caller_signalling().to_string(),
                                media: media.latched_a().map(|a| a.to_string()),
                                codec: leg_codec(&leg_codecs, &codec, 0),
                                srtp: call.srtp(true),
                                counters: ca,
                                music_on_hold: hold_music.playing_to(0),
                            },
                            LegInfo {
                                kind: kinds[1],
                                party: callee.clone(),
                                signalling: b_signalling.map(|a| a.ip().to_string()).unwrap_or_default(),
                                media: media.latched_b().map(|a| a.to_string()),
                                codec: leg_codec(&leg_codecs, &codec, 1),
                                srtp: call.srtp(false),
                                counters: cb,
                                music_on_hold: hold_music.playing_to(1),
                            },
                        ],
                    });
                }
                // The core is gone (shutdown).
                None => break,
            },
            _ = &mut sleep, if call.poll_timeout().is_some() => call.handle_timeout(Instant::now()),
            () = media.forward() => {
                for (from_a, digit) in media.take_digits() {
                    call.handle(Instant::now(), Input::Dtmf { from_a, digit });
                }
            }
            _ = &mut dtmf_timer, if media.dtmf_due().is_some() => media.play_dtmf(Instant::now()),
            _ = &mut rtcp_timer, if rtcp_due.is_some() => media.send_due_reports(Instant::now()),
            _ = hold_music.tick.tick(), if hold_music.playing() => hold_music.play(&mut media),
        }
    }
    for (aor, is_caller) in local_users(&caller, &callee, kinds) {
        publish(&states, no, aor, LineState::Idle, is_caller);
    }
    let ended_at = Utc::now();
    record.ended_at = Some(ended_at);
    record.talk_secs = answered_at.map_or(0, |a| (ended_at - a).num_seconds().max(0) as u64);
    record.end_reason = call.end_reason();
    record.messages = log.messages().len();
    record.messages_dropped = log.dropped();
    let (ca, cb) = media.counters();
    record.media = [(record.caller.clone(), 0, ca), (callee.clone(), 1, cb)]
        .into_iter()
        .map(|(party, i, c)| LegMedia {
            party,
            codec: leg_codec(&leg_codecs, &codec, i),
            rtp_packets: c.rtp_packets,
            rtp_lost: c.rtp_lost,
            jitter_ms: c.jitter_ms,
            jitter_max_ms: c.jitter_max_ms,
            remote_loss_permille: c.remote_loss_permille,
            remote_jitter_ms: c.remote_jitter_ms,
        })
        .collect();
    directory.ended(record, log);
    tracing::info!(
        a_rtp = ca.rtp_packets,
        b_rtp = cb.rtp_packets,
        a_lost = ca.rtp_lost,
        b_lost = cb.rtp_lost,
        dropped = ca.dropped_unexpected + cb.dropped_unexpected,
        "call ended"
    );
}
