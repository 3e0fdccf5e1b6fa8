//! Calls through the emulated Direct Routing proxies, both ways, shaped after real DR traffic
//! (upper-case header names, two Record-Route entries, a Contact with `x-i`/`x-c` parameters,
//! session timers, History-Info on calls in).
//!
//! - **Out** (the SBC calls a number): an INVITE whose Contact holds the FQDN is answered 100,
//!   180, then 200 with an SDP answer (the offer's first G.711, µ-law or A-law, which its tone
//!   is made in; G.722 only without one; plus telephone-event); a number ending in [`BUSY_SUFFIX`] gets 486; ACK, BYE and
//!   re-INVITE in the dialog are answered. An SBC re-offer that names another media address
//!   or key (both ways: a gateway moving the call into a conference room) moves the media
//!   there (`media_moves` counts them).
//! - **In** (`POST /test/sip/{n}/call` `{"to","from"?,"hangup_after_ms"?}`): proxy n sends an
//!   INVITE for `to` on its connection to the SBC as Teams does for a user's forwarded or
//!   simultaneous-ring call; the SBC's final answer is ACKed; after a 2xx the emulator hangs
//!   up with BYE after `hangup_after_ms` (default 2000).
//! - **Teams acts on an answered call** (`POST /test/sip/calls/{call_id}/…`): `bye` hangs up;
//!   `hold` and `resume` send a re-INVITE with the emulator's SDP `a=sendonly`, then
//!   `a=sendrecv` with a fresh SRTP key (its tone stops while held); `refer` sends a REFER shaped as the one Teams
//!   sent in tests/data/teams-dr/fsissue2406-01-REFER.sip, to a number (`{"to"}`) or the "null
//!   REFER" (`{"null":true}`, Refer-To the proxy itself with `x-m`). The SBC's INVITE that
//!   follows is a call out like any other (with Referred-By it plays another tone, see
//!   [`tone_for`]); its NOTIFYs are answered and their sipfrag status lines recorded.
//!
//! Media is SDES-SRTP, as Direct Routing requires (see [`crate::srtp`]): calls in offer
//! `RTP/SAVP` with one Microsoft-shaped `a=crypto` line, and an INVITE whose offer has no
//! AES_CM_128_HMAC_SHA1_80 line is refused with 488. Media of an answered call: the emulator
//! plays a tone (G.711, RTP with the call's own SSRC, one packet every 20 ms, at most
//! [`TONE_PACKETS`]) to the SBC's SDP address; once the tone is over it echoes every other RTP
//! packet back to where it came from (decrypted, then protected with its own key), so a phone
//! never gets two sources at once; its own packets coming back (a phone that echoes) are
//! counted as `returned`, not echoed, so nothing loops. A packet that does not authenticate is
//! counted as `srtp_failed` and nothing else. `GET /test/sip/calls` lists every call with its
//! state, whether its media is SRTP, these counters, its `tone_hz`, `held`, `referred_by`, its
//! `refers` (`refer_to`, the SBC's `status`, the `notifies`), `reinvites` (`what`, `status`) and
//! `sbc_offers` (the direction of each re-offer the SBC sent, answered with its mirror).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use csps_sip::headers::NameAddr;
use csps_sip::{Request, Response, SipHeaders};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Shared;
use crate::sip::{NAMES, SERVER};
use crate::srtp::{LocalKey, RemoteKey, Srtp};

/// Tone packets sent per call (10 s at 20 ms).
pub const TONE_PACKETS: u64 = 500;
/// The tone of a call, unless a transfer made it.
const TONE_HZ: u32 = 1000;
/// The tone of the call a "null REFER" makes (Teams taking the call onto its own media).
const NULL_REFER_HZ: u32 = 1500;
/// The digits a called number ends in for the emulator to answer it busy (486).
const BUSY_SUFFIX: &str = "486";
/// The SSRC of the emulator's tone, plus the call's number: each call is its own source, so a
/// phone moved from one call to another by a transfer sees a new stream.
const TONE_SSRC: u32 = 0x7EA5_0000;
/// How long a call's media task lives at most.
const MEDIA_LIFETIME: Duration = Duration::from_secs(300);
/// The Record-Route entries Teams puts in front of the proxy's own.
const EDGE: &str = "sip-du-a-euwe.pstnhub.microsoft.com";

/// RTP counters of one call.
#[derive(Default)]
pub struct Counters {
    /// Packets received from the SBC.
    received: AtomicU64,
    /// Packets echoed back.
    echoed: AtomicU64,
    /// Tone packets sent.
    sent: AtomicU64,
    /// The emulator's own tone packets that came back.
    returned: AtomicU64,
    /// SRTP packets that did not authenticate (or were replays), dropped.
    srtp_failed: AtomicU64,
    /// Teams holds the call: the tone pauses.
    held: AtomicBool,
}

/// A REFER Teams sent in a call, and what the SBC answered and notified.
struct Refer {
    /// Its CSeq number.
    seq: u32,
    /// Its Refer-To value.
    refer_to: String,
    /// The SBC's answer (202).
    status: Option<u16>,
    /// The status lines of the NOTIFYs' `message/sipfrag` bodies, in order.
    notifies: Vec<String>,
}

/// A hold or resume re-INVITE Teams sent, and the SBC's answer.
struct ReInvite {
    seq: u32,
    /// `hold` or `resume`.
    what: &'static str,
    status: Option<u16>,
}

/// One call the emulator takes part in.
pub struct Call {
    /// `out`: the SBC called Teams; `in`: Teams called the SBC.
    direction: &'static str,
    /// The proxy (1-based).
    proxy: usize,
    /// The number called.
    number: String,
    /// Last final (or provisional) status seen or sent on the INVITE.
    status: Option<u16>,
    /// `ringing`, `answered`, `ended`, `refused`.
    state: &'static str,
    /// Who ended it: `sbc` or `teams`.
    ended_by: Option<&'static str>,
    /// The connection the call runs on.
    conn: mpsc::Sender<Vec<u8>>,
    /// Our From/To (with tags) as we send them in the dialog, and the remote target.
    local: String,
    remote: String,
    target: String,
    seq: u32,
    /// The SDP this side sent (offer or answer), repeated in answers to re-INVITEs.
    sdp: String,
    /// The proto of the SBC's SDP (`RTP/AVP`, `RTP/SAVP`).
    proto: String,
    /// Media is SRTP (keys agreed both ways).
    srtp: bool,
    counters: Arc<Counters>,
    media: Option<JoinHandle<()>>,
    /// A call in: the media socket bound and the key announced in the offer, until the SBC
    /// answers.
    pending: Option<(UdpSocket, LocalKey)>,
    /// A call in: hang up this long after the answer.
    hangup_after: Duration,
    /// The frequency of the tone it plays.
    tone_hz: u32,
    /// A call out that a transfer made: the INVITE's Referred-By.
    referred_by: Option<String>,
    /// The REFERs Teams sent in it.
    refers: Vec<Refer>,
    /// The hold and resume re-INVITEs Teams sent in it.
    reinvites: Vec<ReInvite>,
    /// The version of the SDP origin line, raised with each re-offer.
    sdp_version: u32,
    /// The directions the SBC's own re-offers asked for (`sendonly` for a phone's hold…), each
    /// answered with its mirror (RFC 3264 §6.1: `recvonly` to `sendonly`).
    sbc_offers: Vec<String>,
    /// Hands the media task a new SRTP context, and a new destination with it.
    rekey: Option<mpsc::Sender<MediaUpdate>>,
    /// The keys in use (ours, the SBC's) and where the media goes: an SBC re-offer that
    /// changes either (a gateway moving the call's media into a conference room) moves the
    /// media there (RFC 3264 §8).
    keys: Option<(LocalKey, RemoteKey)>,
    media_to: Option<SocketAddr>,
    /// How many SBC re-offers moved the media.
    media_moves: u32,
    /// The key a resume offered, until the SBC's answer brings its own.
    next_key: Option<LocalKey>,
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(m) = self.media.take() {
            m.abort();
        }
    }
}

/// Every call, by Call-ID.
#[derive(Default)]
pub struct Calls(std::sync::Mutex<HashMap<String, Call>>);

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Call>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What an answered call's media task is handed when a re-INVITE changed its session.
struct MediaUpdate {
    srtp: Srtp,
    /// The SBC's new media address (`None`: where it went so far).
    to: Option<SocketAddr>,
}

/// Numbers the emulator's tags, branches and Call-IDs.
static SEQ: AtomicU64 = AtomicU64::new(1);

fn token() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The audio of an SDP: address, port, proto and payload types of its first `m=audio`.
struct Audio {
    addr: Option<SocketAddr>,
    proto: String,
    formats: Vec<String>,
}

fn audio(sdp: &str) -> Option<Audio> {
    let mut ip = None;
    let mut out: Option<(u16, String, Vec<String>)> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(c) = line
            .strip_prefix("c=IN IP4 ")
            .or(line.strip_prefix("c=IN IP6 "))
            && out.is_none()
        {
            ip = c.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some(c) = line
            .strip_prefix("c=IN IP4 ")
            .or(line.strip_prefix("c=IN IP6 "))
        {
            // A media-level c= overrides the session's.
            ip = c.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some(m) = line.strip_prefix("m=audio ")
            && out.is_none()
        {
            let mut parts = m.split_whitespace();
            let port = parts.next()?.parse().ok()?;
            let proto = parts.next()?.to_owned();
            out = Some((port, proto, parts.map(str::to_owned).collect()));
        } else if line.starts_with("m=") && out.is_some() {
            break;
        }
    }
    let (port, proto, formats) = out?;
    Some(Audio {
        addr: ip.map(|ip| SocketAddr::new(ip, port)),
        proto,
        formats,
    })
}

/// The payload type and name to answer `offer` with, and telephone-event's type if offered.
fn choose(sdp: &str, offer: &Audio) -> Option<(String, &'static str, Option<String>)> {
    let rtpmap = |pt: &str| {
        sdp.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&format!("a=rtpmap:{pt} ")))
            .map(|v| v.to_ascii_lowercase())
    };
    let name_of = |pt: &String| {
        let name = match (pt.as_str(), rtpmap(pt).as_deref()) {
            ("0", _) => "PCMU/8000",
            ("8", _) => "PCMA/8000",
            ("9", _) => "G722/8000",
            (_, Some(m)) if m.starts_with("pcmu/8000") => "PCMU/8000",
            (_, Some(m)) if m.starts_with("pcma/8000") => "PCMA/8000",
            _ => return None,
        };
        Some((pt.clone(), name))
    };
    // Its tone is G.711: G.722 only when the offer has no G.711.
    let codec = offer
        .formats
        .iter()
        .filter_map(name_of)
        .min_by_key(|(_, name)| *name == "G722/8000")?;
    let te = offer
        .formats
        .iter()
        .find(|pt| rtpmap(pt).is_some_and(|m| m.starts_with("telephone-event/8000")));
    Some((codec.0, codec.1, te.cloned()))
}

/// An SDP answer on `proto` with `crypto` (an `a=crypto` line with CRLF).
fn sdp_body(
    port: u16,
    proto: &str,
    pt: &str,
    name: &str,
    te: Option<&str>,
    crypto: &str,
) -> String {
    let n = token();
    let mut fmts = pt.to_owned();
    let mut maps = format!("a=rtpmap:{pt} {name}\r\n");
    if let Some(te) = te {
        fmts.push_str(&format!(" {te}"));
        maps.push_str(&format!(
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        ));
    }
    format!(
        "v=0\r\no=- {n} 1 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nb=CT:10000000\r\n\
         t=0 0\r\nm=audio {port} {proto} {fmts}\r\nc=IN IP4 127.0.0.1\r\n{crypto}{maps}a=ptime:20\r\n\
         a=sendrecv\r\n"
    )
}

/// Plays the tone to `to` and echoes what comes in, counting, until aborted or the lifetime
/// ends; what goes out is protected by `srtp`, what comes in must authenticate. A context
/// from `rekeyed` replaces it (new keys agreed in a re-INVITE), with the new destination the
/// re-INVITE named.
async fn media(
    sock: UdpSocket,
    mut to: Option<SocketAddr>,
    (pt, tone_hz): (u8, u32),
    counters: Arc<Counters>,
    (mut srtp, mut rekeyed): (Srtp, mpsc::Receiver<MediaUpdate>),
) {
    let ssrc_out = TONE_SSRC.wrapping_add(token() as u32);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut seq: u16 = 0;
    let mut ts: u32 = 0;
    let mut buf = vec![0u8; 2048];
    let end = tokio::time::sleep(MEDIA_LIFETIME);
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(to) = to else { continue };
                if counters.sent.load(Ordering::Relaxed) >= TONE_PACKETS
                    || counters.held.load(Ordering::Relaxed)
                {
                    continue;
                }
                let mut pkt = Vec::with_capacity(172);
                pkt.extend_from_slice(&[0x80, pt & 0x7f]);
                pkt.extend_from_slice(&seq.to_be_bytes());
                pkt.extend_from_slice(&ts.to_be_bytes());
                pkt.extend_from_slice(&ssrc_out.to_be_bytes());
                tone_frame(&mut pkt, tone_hz, pt, ts);
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(160);
                let Some(pkt) = srtp.protect(&pkt) else { continue };
                if sock.send_to(&pkt, to).await.is_ok() {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                if n < 12 || buf[0] >> 6 != 2 {
                    continue;
                }
                let Some(pkt) = srtp.unprotect(&buf[..n]) else {
                    counters.srtp_failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                counters.received.fetch_add(1, Ordering::Relaxed);
                let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
                // The echo starts when the tone is over: one stream carries one source at a
                // time (a phone hearing two SSRCs at once plays neither well).
                let playing = counters.sent.load(Ordering::Relaxed) < TONE_PACKETS;
                if ssrc == ssrc_out {
                    counters.returned.fetch_add(1, Ordering::Relaxed);
                } else if playing || counters.held.load(Ordering::Relaxed) {
                    continue;
                } else if let Some(echo) = srtp.protect(&pkt)
                    && sock.send_to(&echo, from).await.is_ok()
                {
                    counters.echoed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(update) = rekeyed.recv() => {
                srtp = update.srtp;
                to = update.to.or(to);
            }
            () = &mut end => return,
        }
    }
}

/// Appends 20 ms of a `hz` sine at half scale, from sample `start` of an 8 kHz clock, in
/// G.711 A-law for payload type 8, else µ-law (what a G.722 answer gets is noise).
fn tone_frame(pkt: &mut Vec<u8>, hz: u32, pt: u8, start: u32) {
    let step = 2.0 * std::f64::consts::PI * f64::from(hz) / 8000.0;
    for n in 0..160u32 {
        let x = (f64::from(start.wrapping_add(n)) * step).sin() * 16_000.0;
        let sample = x as i16;
        pkt.push(if pt == 8 { alaw(sample) } else { ulaw(sample) });
    }
}

/// G.711 µ-law of one 16-bit sample.
fn ulaw(sample: i16) -> u8 {
    let (sign, mut s) = if sample < 0 {
        (0x80, -i32::from(sample))
    } else {
        (0, i32::from(sample))
    };
    s = s.min(32_635) + 0x84;
    let mut exp = 7;
    while exp > 0 && s & (0x80 << exp) == 0 {
        exp -= 1;
    }
    let mantissa = (s >> (exp + 3)) & 0x0f;
    !(sign | (exp << 4) | mantissa) as u8
}

/// G.711 A-law of one 16-bit sample.
fn alaw(sample: i16) -> u8 {
    let s = i32::from(sample) >> 3;
    let (mask, s) = if s >= 0 { (0xd5, s) } else { (0x55, -s - 1) };
    let Some(seg) = (0..8).find(|seg| s < (0x20 << seg)) else {
        return (0x7f ^ mask) as u8;
    };
    let mantissa = if seg < 2 {
        (s >> 1) & 0x0f
    } else {
        (s >> seg) & 0x0f
    };
    (((seg << 4) | mantissa) ^ mask) as u8
}

/// The tone of a call out for `number`: [`TONE_HZ`], or, for a call a transfer made (its
/// INVITE has Referred-By), 300 + 50·d Hz with d the number's last digit, so each target is
/// told apart; [`NULL_REFER_HZ`] for the proxy itself (no number: the "null REFER").
fn tone_for(number: Option<&str>, referred: bool) -> u32 {
    match (number, referred) {
        (_, false) => TONE_HZ,
        (None, true) => NULL_REFER_HZ,
        (Some(n), true) => {
            let d = n.chars().last().and_then(|c| c.to_digit(10)).unwrap_or(0);
            300 + 50 * d
        }
    }
}

/// Starts a call's media towards the SBC's SDP address; the local port to announce.
async fn start_media(
    to: Option<SocketAddr>,
    (pt, tone_hz): (&str, u32),
    counters: Arc<Counters>,
    srtp: (Srtp, mpsc::Receiver<MediaUpdate>),
) -> Option<(u16, JoinHandle<()>)> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let port = sock.local_addr().ok()?.port();
    let pt = pt.parse().unwrap_or(0);
    Some((
        port,
        tokio::spawn(media(sock, to, (pt, tone_hz), counters, srtp)),
    ))
}

fn header_lines(out: &mut String, req_or_resp: &csps_sip::Headers, names: &[(&str, &str)]) {
    for (name, upper) in names {
        for v in req_or_resp.get_all(name) {
            out.push_str(&format!("{upper}: {v}\r\n"));
        }
    }
}

/// A response to `req` in DR's shape, with `to_tag` added to To (when it has none), the
/// Record-Route entries and Contact of a dialog-creating answer, and an optional SDP body.
fn response(
    req: &Request,
    status: u16,
    reason: &str,
    to_tag: &str,
    proxy: usize,
    body: Option<&str>,
) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    header_lines(&mut out, &req.headers, &[("From", "FROM")]);
    if let Some(to) = req.headers.get("To") {
        if to.contains(";tag=") || status == 100 {
            out.push_str(&format!("TO: {to}\r\n"));
        } else {
            out.push_str(&format!("TO: {to};tag={to_tag}\r\n"));
        }
    }
    header_lines(
        &mut out,
        &req.headers,
        &[("CSeq", "CSEQ"), ("Call-ID", "CALL-ID"), ("Via", "VIA")],
    );
    if req.method == csps_sip::Method::Invite && (101..300).contains(&status) {
        out.push_str(&format!(
            "RECORD-ROUTE: <sip:{}:5061;transport=tls;lr>\r\nRECORD-ROUTE: <sip:{EDGE}:5061;transport=tls;lr>\r\n",
            NAMES[proxy]
        ));
        out.push_str(&contact());
    }
    if status == 200
        && req.method == csps_sip::Method::Invite
        && let Some(se) = req.headers.get("Session-Expires")
    {
        out.push_str(&format!("SESSION-EXPIRES: {se}\r\nREQUIRE: timer\r\n"));
    }
    out.push_str(&format!(
        "ALLOW: INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY\r\nSERVER: {SERVER}\r\n"
    ));
    match body {
        Some(b) => out.push_str(&format!(
            "CONTENT-TYPE: application/sdp\r\nCONTENT-LENGTH: {}\r\n\r\n{b}",
            b.len()
        )),
        None => out.push_str("CONTENT-LENGTH: 0\r\n\r\n"),
    }
    out.into_bytes()
}

/// Teams' Contact: the media controller, with its `x-i`/`x-c` parameters.
fn contact() -> String {
    let n = token();
    format!(
        "CONTACT: <sip:api-du-a-euwe.pstnhub.microsoft.com:443;x-i=b712d12c-77e8-4017-b50d-{n:012x};x-c=a35ae5eac0105fb38b0c8892d3467cb5/s/1/{n:08x}>\r\n"
    )
}

/// An INVITE from the SBC on proxy `i` (its Contact already checked): answered 100, 180 and
/// 200 with SDP (SRTP: the emulator's key on the offer's AES_CM_128_HMAC_SHA1_80 line; an
/// offer without one gets 488), or 486 for a number ending in [`BUSY_SUFFIX`]; the call is
/// kept for its ACK and BYE. Its tone is [`tone_for`] the number: a transfer's target (the
/// INVITE has Referred-By) is told apart from the party it replaces.
pub async fn invite(
    state: &Shared,
    i: usize,
    req: &Request,
    conn: &mpsc::Sender<Vec<u8>>,
) -> Vec<u8> {
    let Some(face) = &state.sip else {
        return Vec::new();
    };
    let call_id = req.call_id().unwrap_or("").to_owned();
    let to_tag = format!("emuc{}", token());
    let user = req.uri.user.clone();
    let referred_by = req.headers.get("Referred-By").map(str::to_owned);
    let tone_hz = tone_for(user.as_deref(), referred_by.is_some());
    // The proxy itself (a "null REFER"'s INVITE) is named by its URI, parameters and all.
    let number = user.clone().unwrap_or_else(|| req.uri.to_string());
    let body = String::from_utf8_lossy(&req.body).into_owned();
    let mut out = response(req, 100, "Trying", &to_tag, i, None);
    if user.is_some_and(|u| u.ends_with(BUSY_SUFFIX)) {
        out.extend(response(req, 486, "Busy Here", &to_tag, i, None));
        return out;
    }
    let Some(offer) = audio(&body) else {
        out.extend(response(req, 488, "Not Acceptable Here", &to_tag, i, None));
        return out;
    };
    let Some((pt, name, te)) = choose(&body, &offer) else {
        out.extend(response(req, 488, "Not Acceptable Here", &to_tag, i, None));
        return out;
    };
    // Direct Routing's media is SRTP only.
    let Some(remote) = crate::srtp::remote_key(&body) else {
        out.extend(response(req, 488, "Not Acceptable Here", &to_tag, i, None));
        return out;
    };
    let local = LocalKey::fresh();
    let counters = Arc::new(Counters::default());
    let (rekey, rekeyed) = mpsc::channel(1);
    let started = match local.as_ref().and_then(|l| Srtp::new(l, &remote)) {
        Some(srtp) => {
            let c = counters.clone();
            start_media(offer.addr, (&pt, tone_hz), c, (srtp, rekeyed)).await
        }
        None => None,
    };
    let (Some(local), Some((port, task))) = (local, started) else {
        out.extend(response(
            req,
            500,
            "Server Internal Error",
            &to_tag,
            i,
            None,
        ));
        return out;
    };
    let crypto = local.line(remote.tag);
    let answer = sdp_body(port, &offer.proto, &pt, name, te.as_deref(), &crypto);
    let media_to = offer.addr;
    out.extend(response(req, 180, "Ringing", &to_tag, i, None));
    out.extend(response(req, 200, "OK", &to_tag, i, Some(&answer)));
    let to = req.headers.get("To").unwrap_or("").to_owned();
    let call = Call {
        direction: "out",
        proxy: i + 1,
        number,
        status: Some(200),
        state: "answered",
        ended_by: None,
        conn: conn.clone(),
        local: format!("{to};tag={to_tag}"),
        remote: req.headers.get("From").unwrap_or("").to_owned(),
        target: req
            .headers
            .get("Contact")
            .and_then(|c| NameAddr::parse(c).ok())
            .map(|c| c.uri.to_string())
            .unwrap_or_default(),
        seq: 0,
        sdp: answer,
        proto: offer.proto,
        srtp: true,
        counters,
        media: Some(task),
        pending: None,
        hangup_after: Duration::ZERO,
        tone_hz,
        referred_by,
        refers: Vec::new(),
        reinvites: Vec::new(),
        sdp_version: 1,
        sbc_offers: Vec::new(),
        rekey: Some(rekey),
        keys: Some((local, remote)),
        media_to,
        media_moves: 0,
        next_key: None,
    };
    face.calls.lock().insert(call_id, call);
    out
}

/// A request inside a call's dialog (ACK, BYE, re-INVITE, UPDATE, the NOTIFYs of a REFER):
/// the answer, if any; `None` when the Call-ID is unknown. A NOTIFY's sipfrag status line is
/// kept with the REFER it reports on.
pub fn in_dialog(state: &Shared, i: usize, req: &Request) -> Option<Option<Vec<u8>>> {
    let face = state.sip.as_ref()?;
    let call_id = req.call_id()?;
    let mut calls = face.calls.lock();
    let call = calls.get_mut(call_id)?;
    Some(match req.method {
        csps_sip::Method::Ack => None,
        csps_sip::Method::Bye => {
            call.state = "ended";
            call.ended_by.get_or_insert("sbc");
            if let Some(m) = call.media.take() {
                m.abort();
            }
            Some(response(req, 200, "OK", "", i, None))
        }
        csps_sip::Method::Invite | csps_sip::Method::Update if !req.body.is_empty() => {
            let offered = offered_direction(&String::from_utf8_lossy(&req.body));
            let answer = match offered {
                "sendonly" => "recvonly",
                "recvonly" => "sendonly",
                d => d,
            };
            let last = call.sbc_offers.last().map_or("sendrecv", String::as_str);
            if answer != last {
                call.sdp_version += 1;
            }
            call.sbc_offers.push(offered.to_owned());
            follow_reoffer(call, &String::from_utf8_lossy(&req.body));
            let sdp = redirected(&call.sdp, answer, call.sdp_version, None);
            Some(response(req, 200, "OK", "", i, Some(&sdp)))
        }
        csps_sip::Method::Invite | csps_sip::Method::Update => {
            Some(response(req, 200, "OK", "", i, Some(&call.sdp.clone())))
        }
        csps_sip::Method::Cancel => Some(response(req, 200, "OK", "", i, None)),
        csps_sip::Method::Notify => {
            let Some(refer) = call.refers.last_mut() else {
                return Some(Some(response(
                    req,
                    481,
                    "Subscription Does Not Exist",
                    "",
                    i,
                    None,
                )));
            };
            let frag = String::from_utf8_lossy(&req.body);
            refer
                .notifies
                .push(frag.lines().next().unwrap_or_default().trim().to_owned());
            Some(response(req, 200, "OK", "", i, None))
        }
        _ => Some(response(req, 501, "Not Implemented", "", i, None)),
    })
}

/// An SBC re-offer that names another media address or another key (a gateway moving the
/// call's media into a conference room): the media task sends there, under the new key.
fn follow_reoffer(call: &mut Call, offer: &str) {
    let to = audio(offer).and_then(|a| a.addr);
    let Some(remote) = crate::srtp::remote_key(offer) else {
        return;
    };
    let Some((local, current)) = &call.keys else {
        return;
    };
    if (*current == remote && to == call.media_to) || to.is_none() {
        return;
    }
    let Some(srtp) = Srtp::new(local, &remote) else {
        return;
    };
    if let Some(rekey) = &call.rekey
        && rekey.try_send(MediaUpdate { srtp, to }).is_ok()
    {
        call.keys = Some((local.clone(), remote));
        call.media_to = to;
        call.media_moves += 1;
    }
}

/// A response from the SBC to a request the emulator sent: a final answer to its INVITE is
/// ACKed; a 2xx starts the media and the hang-up timer.
pub async fn on_response(state: &Shared, resp: &Response) {
    let Some(face) = &state.sip else { return };
    let Some(call_id) = resp.call_id().map(str::to_owned) else {
        return;
    };
    let Some(cseq) = resp.cseq() else { return };
    if let Some(ack) = own_request_answered(face, &call_id, resp, cseq.seq, &cseq.method) {
        if let Some((ack, conn)) = ack {
            let _ = conn.send(ack.into_bytes()).await;
        }
        return;
    }
    if cseq.method != csps_sip::Method::Invite || resp.status < 180 {
        return;
    }
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    let (ack, conn, hangup_after) = {
        let mut calls = face.calls.lock();
        let Some(call) = calls.get_mut(&call_id) else {
            return;
        };
        if call.direction != "in" || call.state != "ringing" {
            return;
        }
        call.status = Some(resp.status);
        if resp.status < 200 {
            return;
        }
        call.remote = resp.headers.get("To").unwrap_or("").to_owned();
        let answered = resp.status < 300;
        let ack_uri = if answered {
            resp.headers
                .get("Contact")
                .and_then(|c| NameAddr::parse(c).ok())
                .map(|c| c.uri.to_string())
                .unwrap_or_else(|| call.target.clone())
        } else {
            call.target.clone()
        };
        let branch = if answered {
            format!("z9hG4bKemuack{}", token())
        } else {
            // The ACK of a non-2xx is hop-by-hop: the INVITE's branch.
            resp.top_via()
                .and_then(|v| v.branch().map(str::to_owned))
                .unwrap_or_default()
        };
        let ack = ack_message(call, &call_id, &ack_uri, &branch, cseq.seq);
        if answered {
            call.target = ack_uri;
            call.state = "answered";
            let answer = audio(&body);
            call.proto = answer.as_ref().map(|a| a.proto.clone()).unwrap_or_default();
            let pt = answer
                .as_ref()
                .and_then(|a| a.formats.first())
                .and_then(|f| f.parse().ok())
                .unwrap_or(0);
            // The answer's key for the one line offered (tag 1); without it no media flows.
            let remote = crate::srtp::remote_key(&body).filter(|r: &RemoteKey| r.tag == 1);
            if let Some((sock, local)) = call.pending.take()
                && let Some(remote) = remote
                && let Some(srtp) = Srtp::new(&local, &remote)
            {
                let to = answer.and_then(|a| a.addr);
                call.keys = Some((local, remote));
                call.media_to = to;
                call.srtp = true;
                let (rekey, rekeyed) = mpsc::channel(1);
                call.rekey = Some(rekey);
                call.media = Some(tokio::spawn(media(
                    sock,
                    to,
                    (pt, call.tone_hz),
                    call.counters.clone(),
                    (srtp, rekeyed),
                )));
            }
        } else {
            call.state = "refused";
            call.pending = None;
        }
        (
            ack,
            call.conn.clone(),
            answered.then_some(call.hangup_after),
        )
    };
    let _ = conn.send(ack.into_bytes()).await;
    if let Some(after) = hangup_after {
        let s = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = bye(&s, &call_id).await;
        });
    }
}

/// An ACK in `call`'s dialog to `uri` for the INVITE with CSeq `seq`.
fn ack_message(call: &Call, call_id: &str, uri: &str, branch: &str, seq: u32) -> String {
    format!(
        "ACK {uri} SIP/2.0\r\nVIA: SIP/2.0/TLS {}:5061;branch={branch}\r\nMAX-FORWARDS: 70\r\n\
         FROM: {}\r\nTO: {}\r\nCALL-ID: {call_id}\r\nCSEQ: {seq} ACK\r\nCONTENT-LENGTH: 0\r\n\r\n",
        NAMES[call.proxy - 1],
        call.local,
        call.remote,
    )
}

/// The SBC's answer to a REFER or a hold/resume re-INVITE of the emulator's, recorded with
/// it; `None` when the response is for neither. A 2xx to the re-INVITE gets its ACK (the
/// message and the connection it goes on).
#[allow(clippy::type_complexity)]
fn own_request_answered(
    face: &crate::sip::SipFace,
    call_id: &str,
    resp: &Response,
    seq: u32,
    method: &csps_sip::Method,
) -> Option<Option<(String, mpsc::Sender<Vec<u8>>)>> {
    let mut calls = face.calls.lock();
    let call = calls.get_mut(call_id)?;
    if *method == csps_sip::Method::Refer {
        let refer = call.refers.iter_mut().find(|r| r.seq == seq)?;
        if resp.status >= 200 {
            refer.status = Some(resp.status);
        }
        return Some(None);
    }
    if *method != csps_sip::Method::Invite {
        return None;
    }
    let re = call.reinvites.iter_mut().find(|r| r.seq == seq)?;
    if resp.status < 200 {
        return Some(None);
    }
    re.status = Some(resp.status);
    let resumed = re.what == "resume";
    if resp.status >= 300 {
        // The ACK of a non-2xx belongs to the INVITE's transaction; the SBC's transaction
        // layer needs none over TLS to stop retransmitting, and keeps the session as it was.
        call.next_key = None;
        return Some(None);
    }
    if let Some(key) = call.next_key.take() {
        // The new key goes into use with the answer's (the SBC's own, as it answered it).
        let body = String::from_utf8_lossy(&resp.body);
        if let Some(remote) = crate::srtp::remote_key(&body)
            && let Some(srtp) = Srtp::new(&key, &remote)
            && let Some(rekey) = &call.rekey
        {
            let _ = rekey.try_send(MediaUpdate { srtp, to: None });
            call.keys = Some((key, remote));
        }
    }
    if resumed {
        call.counters.held.store(false, Ordering::Relaxed);
    }
    let branch = format!("z9hG4bKemuack{}", token());
    let ack = ack_message(call, call_id, &call.target, &branch, seq);
    Some(Some((ack, call.conn.clone())))
}

/// An in-dialog request of Teams in `call` (the next CSeq): `method` with `extra` header lines
/// (CRLF-terminated) and an optional `(content type, body)`.
fn dialog_request(
    call: &mut Call,
    call_id: &str,
    method: &str,
    extra: &str,
    body: Option<(&str, &str)>,
) -> String {
    call.seq += 1;
    let mut msg = format!(
        "{method} {} SIP/2.0\r\nFROM: {}\r\nTO: {}\r\nCSEQ: {} {method}\r\nCALL-ID: {call_id}\r\n\
         MAX-FORWARDS: 70\r\nVIA: SIP/2.0/TLS {}:5061;branch=z9hG4bKemu{}{}\r\n{extra}USER-AGENT: {SERVER}\r\n",
        call.target,
        call.local,
        call.remote,
        call.seq,
        NAMES[call.proxy - 1],
        method.to_ascii_lowercase(),
        token(),
    );
    match body {
        Some((ct, b)) => msg.push_str(&format!(
            "CONTENT-TYPE: {ct}\r\nCONTENT-LENGTH: {}\r\n\r\n{b}",
            b.len()
        )),
        None => msg.push_str("CONTENT-LENGTH: 0\r\n\r\n"),
    }
    msg
}

/// Sends what `build` makes of answered call `call_id` (its request, or `None` to send
/// nothing) in its dialog, and records it; false when there is no such answered call or
/// nothing was sent.
async fn send_in_dialog(
    state: &Shared,
    call_id: &str,
    build: impl FnOnce(&mut Call) -> Option<String>,
) -> bool {
    let Some(face) = &state.sip else { return false };
    let (msg, conn, proxy) = {
        let mut calls = face.calls.lock();
        let Some(call) = calls.get_mut(call_id) else {
            return false;
        };
        if call.state != "answered" {
            return false;
        }
        let Some(msg) = build(call) else {
            return false;
        };
        (msg, call.conn.clone(), call.proxy)
    };
    let method = msg.split(' ').next().unwrap_or_default().to_owned();
    state.log.push(
        json!({"face": "sip", "proxy": proxy, "sent": method, "call_id": call_id, "message": msg}),
    );
    conn.send(msg.into_bytes()).await.is_ok()
}

/// Sends BYE in call `call_id`'s dialog; false when there is no such answered call.
async fn bye(state: &Shared, call_id: &str) -> bool {
    send_in_dialog(state, call_id, |call| {
        call.state = "ended";
        call.ended_by = Some("teams");
        if let Some(m) = call.media.take() {
            m.abort();
        }
        Some(dialog_request(call, call_id, "BYE", "", None))
    })
    .await
}

/// The direction an SDP asks for (`sendrecv` when it names none).
fn offered_direction(sdp: &str) -> &'static str {
    sdp.lines()
        .find_map(|l| match l.trim_end() {
            "a=sendonly" => Some("sendonly"),
            "a=recvonly" => Some("recvonly"),
            "a=inactive" => Some("inactive"),
            "a=sendrecv" => Some("sendrecv"),
            _ => None,
        })
        .unwrap_or("sendrecv")
}

/// `sdp` with its direction attribute set to `direction`, its origin version to `version`
/// and, with `key`, its `a=crypto` line announcing that key under the same tag.
fn redirected(sdp: &str, direction: &str, version: u32, key: Option<&LocalKey>) -> String {
    sdp.lines()
        .map(|l| {
            let crypto_tag = l
                .strip_prefix("a=crypto:")
                .and_then(|c| c.split(' ').next()?.parse().ok());
            if let (Some(tag), Some(key)) = (crypto_tag, key) {
                key.line(tag)
            } else if let Some(o) = l.strip_prefix("o=") {
                let mut f: Vec<&str> = o.split(' ').collect();
                let v = version.to_string();
                if let Some(slot) = f.get_mut(2) {
                    *slot = &v;
                }
                format!("o={}\r\n", f.join(" "))
            } else if matches!(l, "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive") {
                format!("a={direction}\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect()
}

/// Teams holds (`hold`) or resumes an answered call with a re-INVITE in its dialog: the
/// emulator's SDP with `a=sendonly` (same key), then `a=sendrecv` again with a fresh key
/// (a re-INVITE may re-key SDES, and the SBC must follow); its tone stops at the hold and
/// plays again, under the new key, once the resume is answered.
async fn hold_or_resume(state: &Shared, call_id: &str, hold: bool) -> bool {
    send_in_dialog(state, call_id, |call| {
        if hold {
            call.counters.held.store(true, Ordering::Relaxed);
        }
        call.sdp_version += 1;
        let direction = if hold { "sendonly" } else { "sendrecv" };
        let key = (!hold).then(LocalKey::fresh).flatten();
        let sdp = redirected(&call.sdp, direction, call.sdp_version, key.as_ref());
        if key.is_some() {
            // Later answers to the SBC's own re-INVITEs announce the key in use.
            call.sdp.clone_from(&sdp);
            call.next_key = key;
        }
        let extra = format!(
            "{}SESSION-EXPIRES: 3600;refresher=uac\r\nMIN-SE: 90\r\nSUPPORTED: timer\r\n\
             ALLOW: INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY\r\n",
            contact()
        );
        let msg = dialog_request(
            call,
            call_id,
            "INVITE",
            &extra,
            Some(("application/sdp", &sdp)),
        );
        call.reinvites.push(ReInvite {
            seq: call.seq,
            what: if hold { "hold" } else { "resume" },
            status: None,
        });
        Some(msg)
    })
    .await
}

/// `POST /test/sip/calls/{call_id}/hold`: Teams holds an answered call (see [`hold_or_resume`]).
pub async fn hold(State(s): State<Shared>, Path(call_id): Path<String>) -> StatusCode {
    found(hold_or_resume(&s, &call_id, true).await)
}

/// `POST /test/sip/calls/{call_id}/resume`: Teams resumes a held call.
pub async fn resume(State(s): State<Shared>, Path(call_id): Path<String>) -> StatusCode {
    found(hold_or_resume(&s, &call_id, false).await)
}

fn found(sent: bool) -> StatusCode {
    if sent {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// What `POST /test/sip/calls/{call_id}/refer` takes: a number to transfer to, or `null` for
/// the "null REFER".
#[derive(Deserialize)]
pub struct ReferRequest {
    /// The E.164 number the call is transferred to.
    #[serde(default)]
    to: Option<String>,
    /// Send the "null REFER" instead (Refer-To the proxy itself).
    #[serde(default)]
    null: bool,
}

/// The `x-m` of the Teams user who transfers, as Teams writes it in Referred-By.
const REFERRER_MRI: &str = "8:orgid:fa273707-89ea-4085-9903-ddf4ab23636b";

/// `POST /test/sip/calls/{call_id}/refer` `{"to":"+E164"}` or `{"null":true}`: Teams transfers
/// an answered call with a REFER in its dialog, shaped as the one Teams sent in
/// tests/data/teams-dr/fsissue2406-01-REFER.sip. Refer-To is `sip:+E164@<proxy>;user=phone`,
/// or for the "null REFER" the proxy itself with the `x-m` of the party taking the call;
/// Referred-By names the transferring Teams user (`x-m`, `x-t`, `x-ti`, `x-tt`). The SBC's
/// answer and the status lines of its NOTIFYs are listed with the call.
pub async fn refer(
    State(s): State<Shared>,
    Path(call_id): Path<String>,
    Json(body): Json<ReferRequest>,
) -> (StatusCode, Json<Value>) {
    let target = match (&body.to, body.null) {
        (None, true) => None,
        (Some(n), false)
            if n.strip_prefix('+')
                .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit())) =>
        {
            Some(n.clone())
        }
        _ => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": "either to (a +E.164 number) or null: true"})),
            );
        }
    };
    let sent = send_in_dialog(&s, &call_id, |call| {
        let proxy = NAMES[call.proxy - 1];
        let n = token();
        let refer_to = match &target {
            Some(number) => format!("<sip:{number}@{proxy};user=phone>"),
            None => format!(
                "<sip:{proxy}:5061;transport=tls;x-m=8:orgid:dfcba638-4ecd-4382-8095-{n:012x}>"
            ),
        };
        let extra = format!(
            "{}REFER-TO: {refer_to}\r\nREFERRED-BY: <sip:{proxy}:5061;x-m={REFERRER_MRI};\
             x-t=4dcafc31-d434-426b-a0bb-c376fb36061a;x-ti=b712d12c-77e8-4017-b50d-6d321507aa28;\
             x-tt=aHR0cHM6Ly9hcGktZHUtYS11c2VhLnBzdG5odWIubWljcm9zb2Z0LmNvbS92MS9uZ2MvY2FsbG5vdGlmaWNhdGlvbg%3D%3D>\r\n\
             ALLOW: INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY\r\n",
            contact()
        );
        let msg = dialog_request(call, &call_id, "REFER", &extra, None);
        call.refers.push(Refer {
            seq: call.seq,
            refer_to,
            status: None,
            notifies: Vec::new(),
        });
        Some(msg)
    })
    .await;
    if sent {
        (StatusCode::OK, Json(json!({"call_id": call_id})))
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no answered call with that Call-ID"})),
        )
    }
}

/// `POST /test/sip/calls/{call_id}/bye`: Teams hangs up an answered call.
pub async fn hang_up(State(s): State<Shared>, Path(call_id): Path<String>) -> StatusCode {
    found(bye(&s, &call_id).await)
}

/// What `POST /test/sip/{n}/call` takes.
#[derive(Deserialize)]
pub struct CallRequest {
    /// The number called (the SBC user's E.164).
    to: String,
    /// The caller's number.
    #[serde(default = "default_from")]
    from: String,
    /// Hang up this long after the answer.
    #[serde(default = "default_hangup")]
    hangup_after_ms: u64,
}

fn default_from() -> String {
    "+12065550123".into()
}

fn default_hangup() -> u64 {
    2000
}

/// `POST /test/sip/{n}/call`: proxy n calls `to` at the SBC on its first open connection.
pub async fn call(
    State(s): State<Shared>,
    Path(n): Path<usize>,
    Json(body): Json<CallRequest>,
) -> (StatusCode, Json<Value>) {
    let Some(face) = &s.sip else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "no SIP face"})));
    };
    let i = n.wrapping_sub(1);
    let Some(conn) = face.connection(i) else {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": format!("proxy {n} has no connection from the SBC")})),
        );
    };
    let valid = |x: &str| {
        let d = x.strip_prefix('+').unwrap_or(x);
        !d.is_empty() && d.chars().all(|c| c.is_ascii_digit())
    };
    if !valid(&body.to) || !valid(&body.from) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "to and from are E.164 numbers"})),
        );
    }
    let counters = Arc::new(Counters::default());
    let Some(local) = LocalKey::fresh() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "no random key"})),
        );
    };
    // The socket is bound now (its port goes in the offer); the media starts on the answer.
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "no UDP port"})),
        );
    };
    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    let offer = format!(
        "v=0\r\no=- {t} 1 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nb=CT:10000000\r\nt=0 0\r\n\
         m=audio {port} RTP/SAVP 0 8 9 101\r\nc=IN IP4 127.0.0.1\r\n{crypto}a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
        t = token(),
        crypto = local.line(1),
    );
    let t = token();
    let call_id = format!("emu-call-{t:08x}-{n}");
    let proxy = NAMES[i];
    let fqdn = &face.fqdn;
    let from = format!(
        "\"Teams Caller\" <sip:{}@{proxy}:5061;user=phone>;tag=emuin{t}",
        body.from
    );
    let to = format!("<sip:{}@{fqdn}:5061;user=phone>", body.to);
    let target = format!("sip:{}@{fqdn}:5061;user=phone;transport=tls", body.to);
    let invite = format!(
        "INVITE {target} SIP/2.0\r\nFROM: {from}\r\nTO: {to}\r\nCSEQ: 1 INVITE\r\nCALL-ID: {call_id}\r\n\
         MAX-FORWARDS: 69\r\nVIA: SIP/2.0/TLS {proxy}:5061;branch=z9hG4bKemuinv{t}\r\n\
         RECORD-ROUTE: <sip:{proxy}:5061;transport=tls;lr>\r\nRECORD-ROUTE: <sip:{EDGE}:5061;transport=tls;lr>\r\n\
         {contact}\
         HISTORY-INFO: <sip:{}@{proxy}:5061;user=phone>;index=1,<sip:alice@contoso.com?Reason=SIP%3Bcause%3D480%3Btext%3D%22Simultaneous%20ring%22>;index=1.1\r\n\
         SESSION-EXPIRES: 3600\r\nMIN-SE: 90\r\nSUPPORTED: timer\r\n\
         ALLOW: INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY\r\nUSER-AGENT: {SERVER}\r\n\
         CONTENT-TYPE: application/sdp\r\nCONTENT-LENGTH: {}\r\n\r\n{offer}",
        body.to,
        offer.len(),
        contact = contact(),
    );
    face.calls.lock().insert(
        call_id.clone(),
        Call {
            direction: "in",
            proxy: n,
            number: body.to.clone(),
            status: None,
            state: "ringing",
            ended_by: None,
            conn: conn.clone(),
            local: from,
            remote: to,
            target,
            seq: 1,
            sdp: offer,
            proto: String::new(),
            srtp: false,
            counters,
            media: None,
            pending: Some((sock, local)),
            hangup_after: Duration::from_millis(body.hangup_after_ms.min(600_000)),
            tone_hz: TONE_HZ,
            referred_by: None,
            refers: Vec::new(),
            reinvites: Vec::new(),
            sdp_version: 1,
            sbc_offers: Vec::new(),
            rekey: None,
            keys: None,
            media_to: None,
            media_moves: 0,
            next_key: None,
        },
    );
    s.log.push(
        json!({"face": "sip", "proxy": n, "sent": "INVITE", "call_id": call_id, "message": invite}),
    );
    if conn.send(invite.into_bytes()).await.is_err() {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": "the connection closed"})),
        );
    }
    (StatusCode::OK, Json(json!({"call_id": call_id})))
}

/// `GET /test/sip/calls`: every call with its state and RTP counters.
pub async fn list(State(s): State<Shared>) -> (StatusCode, Json<Value>) {
    let Some(face) = &s.sip else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "no SIP face"})));
    };
    let calls: Vec<Value> = face
        .calls
        .lock()
        .iter()
        .map(|(id, c)| {
            json!({
                "call_id": id, "direction": c.direction, "proxy": c.proxy, "number": c.number,
                "status": c.status, "state": c.state, "ended_by": c.ended_by, "proto": c.proto,
                "srtp": c.srtp, "tone_hz": c.tone_hz, "referred_by": c.referred_by,
                "held": c.counters.held.load(Ordering::Relaxed),
                "refers": c.refers.iter().map(|r| json!({
                    "refer_to": r.refer_to, "status": r.status, "notifies": r.notifies,
                })).collect::<Vec<_>>(),
                "reinvites": c.reinvites.iter().map(|r| json!({
                    "what": r.what, "status": r.status,
                })).collect::<Vec<_>>(),
                "sbc_offers": c.sbc_offers, "media_moves": c.media_moves,
                "rtp": {
                    "received": c.counters.received.load(Ordering::Relaxed),
                    "echoed": c.counters.echoed.load(Ordering::Relaxed),
                    "sent": c.counters.sent.load(Ordering::Relaxed),
                    "returned": c.counters.returned.load(Ordering::Relaxed),
                    "srtp_failed": c.counters.srtp_failed.load(Ordering::Relaxed),
                },
            })
        })
        .collect();
    (StatusCode::OK, Json(Value::Array(calls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_encodes_silence_and_the_extremes_as_the_standard_does() {
        assert_eq!((ulaw(0), alaw(0)), (0xff, 0xd5));
        assert_eq!((ulaw(i16::MAX), ulaw(i16::MIN)), (0x80, 0x00));
        assert_eq!((alaw(i16::MAX), alaw(i16::MIN)), (0xaa, 0x2a));
    }

    #[test]
    fn a_transfer_target_plays_its_own_tone() {
        assert_eq!(tone_for(Some("+12065550123"), false), TONE_HZ);
        assert_eq!(tone_for(Some("+12065550177"), true), 650);
        assert_eq!(tone_for(None, true), NULL_REFER_HZ);
    }

    #[test]
    fn a_hold_offer_changes_only_the_direction_and_the_version() {
        let sdp = sdp_body(4000, "RTP/SAVP", "0", "PCMU/8000", None, "a=crypto:1 X\r\n");
        let held = redirected(&sdp, "sendonly", 7, None);
        assert!(held.contains("a=sendonly\r\n") && !held.contains("a=sendrecv"));
        assert!(held.contains(" 7 IN IP4 127.0.0.1\r\n"), "{held}");
        assert!(held.contains("a=crypto:1 X\r\n"), "the same key");
        assert_eq!(held.lines().count(), sdp.lines().count());
        // The SBC's own hold is read from its offer (sendrecv when it names none).
        assert_eq!(offered_direction(&held), "sendonly");
        assert_eq!(
            offered_direction("v=0\r\nm=audio 4000 RTP/AVP 0\r\n"),
            "sendrecv"
        );
    }
}
