//! The call benchmark: both ends of every call through the gateway. Callers `a000000…` send
//! INVITE with a PCMU offer from one SIP socket; callees `b000000…`, registered from another,
//! answer 200 with SDP at once; the caller ACKs, both ends send RTP (20 ms, 160-byte payloads)
//! for the hold time, then the caller hangs up with BYE. The gateway admits the callers by the
//! trusted-range rule (127.0.0.0/8), as a PBX's phones on a trusted LAN. One thread drives the
//! signalling and the paced RTP sends (a heap of due streams, `sendmmsg` per socket), another
//! receives RTP (see [`crate::media`]); no task or thread per call. With `--srtp` every call is
//! SRTP on both legs (SDES, `Data.SipConfig.Srtp` = `Required`): each end offers or answers its
//! own key and protects what it sends; the gateway decrypts and re-encrypts each packet.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use csps::media::srtp::{SrtpKeys, SrtpSession, Suite};

use crate::media::{self, Histogram, Receiver, SendBatch};
use crate::sip;
use crate::sys;

/// RFC 3261 T1.
const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2.
const T2: Duration = Duration::from_secs(4);
/// Timer B / F: a transaction without a final answer fails.
const TIMER_B: Duration = Duration::from_secs(32);
/// RTP packet interval.
const PTIME: Duration = Duration::from_millis(20);
/// Between the end of a call's media and its BYE, so packets still in the gateway arrive.
const BYE_AFTER_MEDIA: Duration = Duration::from_millis(200);

/// Settings of the calls benchmark.
#[derive(Clone, Debug)]
pub struct CallPlan {
    /// Concurrent call counts, one step each.
    pub concurrency: Vec<u32>,
    /// How long every call of a concurrency step is up at the same time.
    pub hold: Duration,
    /// INVITEs per second while a concurrency step sets its calls up.
    pub ramp_rate: f64,
    /// Offered setups per second, one step each (calls without media, BYE right after the ACK).
    pub setup_rates: Vec<f64>,
    /// Length of a setup step's sending phase.
    pub setup_secs: f64,
    /// Bound on waiting for the last answers of a step.
    pub drain: Duration,
    /// Pause between steps.
    pub pause: Duration,
    /// Media sockets per side.
    pub media_sockets: usize,
    /// A step at or above this loss (percent) ends the concurrency ladder.
    pub max_loss_pct: f64,
    /// A step at or above this jitter p99 (ms) ends the concurrency ladder.
    pub max_jitter_ms: f64,
    /// Run every concurrency step even after one exceeded a limit.
    pub keep_going: bool,
    /// The accounts' domain.
    pub domain: String,
    /// Caller and callee accounts each (at least the largest concurrency step).
    pub accounts: u32,
    /// Callers offer G.722 only and callees answer Opus, so the gateway transcodes every call
    /// both ways; the streams carry real frames of a speech-like signal.
    pub transcode: bool,
    /// Every call is SRTP (SDES) on both legs.
    pub srtp: bool,
}

/// The frames transcoded calls send: G.722 from callers, Opus from callees as an Opus phone
/// (libopus's VoIP mode) sends it, SILK at 32 kbit/s (one second each, looped).
struct Frames {
    g722: Vec<Vec<u8>>,
    opus: Vec<Vec<u8>>,
}

impl Frames {
    fn new() -> Result<Frames, String> {
        use csps::media::codec::{phone_encoder, speechlike};
        use csps_sip::sdp::Codec;
        let encode = |codec| -> Result<Vec<Vec<u8>>, String> {
            let mut enc = phone_encoder(codec).map_err(|e| e.to_string())?;
            speechlike(enc.rate(), 50)
                .iter()
                .map(|pcm| {
                    let mut p = Vec::new();
                    enc.encode(pcm, &mut p).map_err(|e| e.to_string())?;
                    Ok(p)
                })
                .collect()
        };
        Ok(Frames {
            g722: encode(Codec::G722)?,
            opus: encode(Codec::Opus)?,
        })
    }
}

/// The caller account of slot `i`.
pub fn caller(i: u32) -> String {
    format!("a{i:06}")
}

/// The callee account of slot `i`.
pub fn callee(i: u32) -> String {
    format!("b{i:06}")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Pending,
    Inviting,
    Answered,
    Byeing,
    Done,
    Failed,
}

struct Call {
    caller: u32,
    callee: Option<u32>,
    planned: Instant,
    state: State,
    sent_at: Instant,
    provisional: bool,
    interval: Duration,
    last: Vec<u8>,
    /// The dialog's To (with the gateway's tag) and remote target, from the 200.
    to: String,
    contact: String,
    /// The relay's address facing the caller, and the one facing the callee.
    relay_a: Option<SocketAddr>,
    relay_b: Option<SocketAddr>,
    media_until: Option<Instant>,
    bye_at: Instant,
    callee_got_bye: bool,
}

/// One direction of one call: stream `2·call` is caller → callee, `2·call + 1` the way back.
#[derive(Clone, Copy, Default)]
struct Stream {
    seq: u16,
    ts: u32,
    sent: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Retransmit the INVITE or give up (Timer A / B).
    Invite,
    /// The hold time is over: send BYE.
    Hangup,
    /// Retransmit the BYE or give up (Timer E / F).
    Bye,
}

/// What a step measured.
#[derive(Default)]
pub struct StepResult {
    /// Calls of the step.
    pub calls: u32,
    /// Offered setups per second (setup steps).
    pub offered: f64,
    /// Calls answered 200.
    pub answered: u64,
    /// Calls whose BYE got its 200.
    pub completed: u64,
    /// Calls refused or without an answer in time.
    pub failed: u64,
    /// Final statuses of failed calls.
    pub failure_codes: HashMap<u16, u64>,
    /// First INVITE to the 200, microseconds, sorted.
    pub setup_us: Vec<u32>,
    /// First INVITE to the BYE's 200, microseconds, sorted.
    pub total_us: Vec<u32>,
    /// RTP packets sent, and received at the other end.
    pub rtp_sent: u64,
    /// RTP packets received.
    pub rtp_received: u64,
    /// Packets the kernel refused to send.
    pub send_errors: u64,
    /// Received packets of no current stream.
    pub stray: u64,
    /// Jitter (|D|, RFC 3550 §6.4.1) and transit of received packets.
    pub jitter: Histogram,
    /// Receive − send time.
    pub transit: Histogram,
    /// How late the generator sent packets against their 20 ms schedule.
    pub send_lag: Histogram,
    /// From the first INVITE to the last answer.
    pub elapsed: Duration,
    /// Gateway and generator CPU seconds over the measuring window, and its length.
    pub gw_cpu: f64,
    /// Generator CPU seconds over the window.
    pub lg_cpu: f64,
    /// The window's length in seconds.
    pub window: f64,
    /// Calls with media during the whole window.
    pub window_calls: u64,
}

impl StepResult {
    /// Lost RTP in percent.
    pub fn loss_pct(&self) -> f64 {
        if self.rtp_sent == 0 {
            return 0.0;
        }
        self.rtp_sent.saturating_sub(self.rtp_received) as f64 * 100.0 / self.rtp_sent as f64
    }

    fn quantile_ms(v: &[u32], q: f64) -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        f64::from(v[i]) / 1000.0
    }

    /// INVITE → 200 quantile in ms.
    pub fn setup_ms(&self, q: f64) -> f64 {
        Self::quantile_ms(&self.setup_us, q)
    }

    /// INVITE → BYE's 200 quantile in ms.
    pub fn total_ms(&self, q: f64) -> f64 {
        Self::quantile_ms(&self.total_us, q)
    }
}

/// The generator: two SIP sockets (callers, callees) and a few media sockets per side.
pub struct CallGen {
    target: SocketAddr,
    domain: String,
    sig_a: UdpSocket,
    sig_b: UdpSocket,
    local_a: SocketAddr,
    local_b: SocketAddr,
    media_a: Vec<UdpSocket>,
    media_b: Vec<UdpSocket>,
    rx: Receiver,
    run_id: u32,
    step: u32,
    buf: Vec<u8>,
    /// Caller and callee accounts provisioned.
    callers: u32,
    callees: u32,
    drain: Duration,
    /// Set when the calls are transcoded (see [`CallPlan::transcode`]).
    frames: Option<Frames>,
    /// Set when the calls are SRTP (see [`CallPlan::srtp`]).
    srtp: bool,
    /// SRTP calls: the sending end's session of each stream of the step (protects with its
    /// own key), set when the call's keys are known.
    tx_srtp: Vec<Option<SrtpSession>>,
}

/// The master key and salt the sending end of stream `sid` announces (distinct per stream
/// and run; a benchmark's keys need not be secret).
fn stream_key(run: u32, step: u32, sid: usize) -> [u8; 30] {
    let mut x =
        (u64::from(run) << 32 | u64::from(step)) ^ (sid as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut key = [0u8; 30];
    for b in &mut key {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    key
}

/// Two sessions of one end with its own key and the gateway's: one protects what it sends,
/// the other (for the receiving thread) unprotects what it gets.
fn srtp_pair(own: [u8; 30], gateway: [u8; 30]) -> Option<(SrtpSession, SrtpSession)> {
    let keys = SrtpKeys {
        suite: Suite::AesCm128Sha1_80,
        local: own,
        remote: gateway,
        remote_mki: 0,
    };
    Some((SrtpSession::new(&keys).ok()?, SrtpSession::new(&keys).ok()?))
}

fn sip_socket() -> std::io::Result<(UdpSocket, SocketAddr)> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_nonblocking(true)?;
    sys::grow_socket_buffers(&s, 16 << 20);
    let a = s.local_addr()?;
    Ok((s, a))
}

impl CallGen {
    /// Binds the sockets and starts the RTP receiver.
    pub fn new(
        target: SocketAddr,
        domain: &str,
        media_sockets: usize,
        accounts: u32,
        drain: Duration,
    ) -> std::io::Result<Self> {
        let (sig_a, local_a) = sip_socket()?;
        let (sig_b, local_b) = sip_socket()?;
        let media_a = media::bind_sockets(media_sockets)?;
        let media_b = media::bind_sockets(media_sockets)?;
        let clones = media_a
            .iter()
            .chain(&media_b)
            .map(UdpSocket::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(CallGen {
            target,
            domain: domain.to_string(),
            sig_a,
            sig_b,
            local_a,
            local_b,
            media_a,
            media_b,
            rx: Receiver::start(clones),
            run_id: std::process::id().wrapping_mul(7919) ^ nanos,
            step: 0,
            buf: vec![0; 65536],
            callers: accounts,
            callees: accounts,
            drain,
            frames: None,
            srtp: false,
            tx_srtp: Vec::new(),
        })
    }

    /// Makes every call SRTP (see [`CallPlan::srtp`]).
    pub fn with_srtp(mut self) -> Self {
        self.srtp = true;
        self
    }

    /// Makes every call transcoded (see [`CallPlan::transcode`]).
    pub fn transcoded(mut self) -> Result<Self, String> {
        self.frames = Some(Frames::new()?);
        Ok(self)
    }

    /// Registers callees `0..n` from the callee socket (no credentials: a trusted source).
    pub fn register_callees(&mut self, n: u32) -> Result<(), String> {
        let mut pending: Vec<u32> = (0..n).collect();
        for round in 0..5 {
            let mut open: HashMap<String, u32> = HashMap::new();
            let mut left = pending.iter().copied();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut done = Vec::new();
            loop {
                // At most 200 outstanding: the store's group commit answers them in batches.
                while open.len() < 200 {
                    let Some(i) = left.next() else { break };
                    let user = callee(i);
                    let call_id = format!("reg-{}-{round}-{i}@lg", self.run_id);
                    let branch = format!("z9hG4bKr{}x{round}x{i}", self.run_id);
                    let msg = sip::Register {
                        user: &user,
                        domain: &self.domain,
                        local: self.local_b,
                        branch: &branch,
                        call_id: &call_id,
                        tag: "r",
                        cseq: 1,
                        expires: 3600,
                        authorization: None,
                    }
                    .to_bytes();
                    let _ = self.sig_b.send_to(&msg, self.target);
                    open.insert(call_id, i);
                }
                if open.is_empty() || Instant::now() > deadline {
                    break;
                }
                sys::wait_readable(&self.sig_b, Duration::from_millis(50));
                while let Ok((len, _)) = self.sig_b.recv_from(&mut self.buf) {
                    if let Some(r) = sip::parse_response(&self.buf[..len])
                        && r.code >= 200
                        && let Some(i) = open.remove(r.call_id)
                        && r.code < 300
                    {
                        done.push(i);
                    }
                }
            }
            done.sort_unstable();
            pending.retain(|i| done.binary_search(i).is_err());
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(format!(
            "{} callees did not register (first: {})",
            pending.len(),
            callee(pending[0])
        ))
    }

    fn call_id(&self, idx: usize) -> String {
        format!("{}-{}-{idx}@lg", self.run_id, self.step)
    }

    fn idx_of(&self, call_id: &str) -> Option<usize> {
        let rest = call_id.strip_suffix("@lg")?;
        let mut it = rest.split('-');
        let run: u32 = it.next()?.parse().ok()?;
        let step: u32 = it.next()?.parse().ok()?;
        let idx: usize = it.next()?.parse().ok()?;
        (run == self.run_id && step == self.step).then_some(idx)
    }

    fn caller_from(&self, idx: usize, c: &Call) -> String {
        format!(
            "<sip:{}@{}>;tag=a{}x{idx}",
            caller(c.caller),
            self.domain,
            self.step
        )
    }

    fn invite(&self, idx: usize, c: &Call, callee_slot: u32) -> Vec<u8> {
        let media = self.media_a[idx % self.media_a.len()]
            .local_addr()
            .unwrap_or(self.local_a);
        let mut sdp = match self.frames {
            Some(_) => sip::sdp(idx as u64, media, (9, "G722/8000")),
            None => sip::pcmu_sdp(idx as u64, media),
        };
        if self.srtp {
            sdp = sip::with_crypto(&sdp, &stream_key(self.run_id, self.step, 2 * idx));
        }
        let user = callee(callee_slot);
        sip::Request {
            method: "INVITE",
            uri: &format!("sip:{user}@{}", self.domain),
            local: self.local_a,
            branch: &format!("z9hG4bK{}x{}x{idx}i", self.run_id, self.step),
            from: &self.caller_from(idx, c),
            to: &format!("<sip:{user}@{}>", self.domain),
            call_id: &self.call_id(idx),
            cseq: 1,
            user: &caller(c.caller),
            sdp: Some(&sdp),
        }
        .to_bytes()
    }

    fn in_dialog(&self, idx: usize, c: &Call, method: &str, cseq: u32, branch: &str) -> Vec<u8> {
        sip::Request {
            method,
            uri: &c.contact,
            local: self.local_a,
            branch: &format!("z9hG4bK{}x{}x{idx}{branch}", self.run_id, self.step),
            from: &self.caller_from(idx, c),
            to: &c.to,
            call_id: &self.call_id(idx),
            cseq,
            user: &caller(c.caller),
            sdp: None,
        }
        .to_bytes()
    }

    /// Runs one step: `n` calls, INVITEs every `1/rate` s; each call's media runs until
    /// `hold_until(planned start)` (`None`: no media, BYE right after the ACK). `window` is the
    /// part of the step over which CPU is measured, relative to its start.
    fn run(
        &mut self,
        n: u32,
        rate: f64,
        media_until: Option<Duration>,
        window: Option<(Duration, Duration)>,
        server_pid: u32,
    ) -> StepResult {
        self.step += 1;
        let n = n as usize;
        let mut r = StepResult {
            calls: n as u32,
            offered: rate,
            ..StepResult::default()
        };
        self.rx.begin(self.step, 2 * n, self.frames.is_some());
        self.tx_srtp = std::iter::repeat_with(|| None).take(2 * n).collect();
        let mut free: VecDeque<u32> = (0..(n as u32).min(self.callees)).collect();
        let mut by_callee: HashMap<u32, usize> = HashMap::new();
        let mut b_dialogs: HashMap<String, usize> = HashMap::new();
        let period = Duration::from_secs_f64(1.0 / rate);
        let t0 = Instant::now();
        let mut calls: Vec<Call> = (0..n)
            .map(|i| Call {
                caller: i as u32 % self.callers,
                callee: None,
                planned: t0 + period.mul_f64(i as f64),
                state: State::Pending,
                sent_at: t0,
                provisional: false,
                interval: T1,
                last: Vec::new(),
                to: String::new(),
                contact: String::new(),
                relay_a: None,
                relay_b: None,
                media_until: media_until.map(|d| t0 + period.mul_f64(i as f64) + d),
                bye_at: t0,
                callee_got_bye: false,
            })
            .collect();
        let mut streams = vec![Stream::default(); 2 * n];
        let mut due: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
        let mut timers: BinaryHeap<Reverse<(Instant, u32, Timer)>> = BinaryHeap::new();
        let mut batches_a: Vec<SendBatch> =
            self.media_a.iter().map(|_| SendBatch::default()).collect();
        let mut batches_b: Vec<SendBatch> =
            self.media_b.iter().map(|_| SendBatch::default()).collect();
        let mut next = 0usize;
        let mut open = n;
        let mut cpu0: Option<(f64, f64, Instant, u64)> = None;
        let mut window_done = window.is_none();
        let last_planned = t0 + period.mul_f64(n as f64) + media_until.unwrap_or_default();
        let hard_end = last_planned + BYE_AFTER_MEDIA + self.drain;
        let mut last_answer = t0;
        loop {
            let now = Instant::now();
            // CPU window.
            if let Some((w0, w1)) = window {
                if cpu0.is_none() && now >= t0 + w0 {
                    let active = calls.iter().filter(|c| c.state == State::Answered).count();
                    cpu0 = Some((
                        sys::cpu_seconds_tree(server_pid),
                        sys::cpu_seconds_self(),
                        now,
                        active as u64,
                    ));
                } else if !window_done
                    && now >= t0 + w1
                    && let Some((g0, l0, at, active)) = cpu0
                {
                    r.gw_cpu = sys::cpu_seconds_tree(server_pid) - g0;
                    r.lg_cpu = sys::cpu_seconds_self() - l0;
                    r.window = (now - at).as_secs_f64();
                    r.window_calls = active;
                    window_done = true;
                }
            }
            // New calls.
            while next < n && calls[next].planned <= now {
                let idx = next;
                next += 1;
                let Some(slot) = free.pop_front() else {
                    calls[idx].state = State::Failed;
                    r.failed += 1;
                    *r.failure_codes.entry(0).or_default() += 1;
                    open -= 1;
                    continue;
                };
                by_callee.insert(slot, idx);
                let msg = self.invite(idx, &calls[idx], slot);
                let _ = self.sig_a.send_to(&msg, self.target);
                let c = &mut calls[idx];
                c.callee = Some(slot);
                c.state = State::Inviting;
                c.sent_at = now;
                c.last = msg;
                timers.push(Reverse((now + T1, idx as u32, Timer::Invite)));
            }
            // Signalling from the gateway.
            for _ in 0..256 {
                let Ok((len, _)) = self.sig_b.recv_from(&mut self.buf) else {
                    break;
                };
                let data = self.buf[..len].to_vec();
                self.on_callee(&data, &mut calls, &by_callee, &mut b_dialogs, &mut free);
            }
            for _ in 0..256 {
                let (len, _) = match self.sig_a.recv_from(&mut self.buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let data = self.buf[..len].to_vec();
                let now = Instant::now();
                if let Some(done) = self.on_caller(&data, now, &mut calls, &mut r, &mut timers) {
                    open -= 1;
                    last_answer = now;
                    if calls[done].state == State::Failed
                        && let Some(s) = calls[done].callee.take()
                    {
                        by_callee.remove(&s);
                        free.push_back(s);
                    }
                }
                // A call just answered: both ends start sending.
                if let Some(idx) = self.idx_of_answer(&data)
                    && calls[idx].state == State::Answered
                    && streams[2 * idx].sent == 0
                    && calls[idx].media_until.is_some_and(|u| u > now)
                {
                    due.push(Reverse((now, 2 * idx as u32)));
                    due.push(Reverse((now, 2 * idx as u32 + 1)));
                }
            }
            // Timers.
            let now = Instant::now();
            while let Some(&Reverse((at, idx, kind))) = timers.peek() {
                if at > now {
                    break;
                }
                timers.pop();
                let idx = idx as usize;
                if let Some(done) = self.on_timer(idx, kind, now, &mut calls, &mut r, &mut timers) {
                    open -= 1;
                    let _ = done;
                }
            }
            // RTP due now.
            let now = Instant::now();
            let mut flushed = false;
            while let Some(&Reverse((at, sid))) = due.peek() {
                if at > now {
                    break;
                }
                due.pop();
                let sid = sid as usize;
                let idx = sid / 2;
                let c = &calls[idx];
                let (Some(until), State::Answered) = (c.media_until, c.state) else {
                    continue;
                };
                if at >= until {
                    continue;
                }
                let (sock, batch, dest) = if sid.is_multiple_of(2) {
                    let k = idx % self.media_a.len();
                    (&self.media_a[k], &mut batches_a[k], c.relay_a)
                } else {
                    let k = idx % self.media_b.len();
                    (&self.media_b[k], &mut batches_b[k], c.relay_b)
                };
                let Some(dest) = dest else { continue };
                r.send_lag.record((now - at).as_nanos() as i64);
                let s = &mut streams[sid];
                let p = batch.push(sock, dest);
                let ssrc = media::ssrc(self.step, sid);
                let len = match &self.frames {
                    None => {
                        let ts = s.ts;
                        s.ts = s.ts.wrapping_add(160);
                        media::write_packet(p, ssrc, s.seq, ts, media::realtime_ns())
                    }
                    Some(f) => {
                        // Callers send G.722 (8 kHz RTP clock), callees Opus (48 kHz).
                        let (pt, frames, ticks) = if sid.is_multiple_of(2) {
                            (9, &f.g722, 160)
                        } else {
                            (111, &f.opus, 960)
                        };
                        let frame = &frames[s.sent as usize % frames.len()];
                        let len = media::write_coded(p, (pt, ssrc, s.seq, s.ts), frame);
                        s.ts = s.ts.wrapping_add(ticks);
                        len
                    }
                };
                let len = match self.tx_srtp.get_mut(sid).and_then(Option::as_mut) {
                    Some(srtp) => media::protect(srtp, p, len),
                    None => len,
                };
                match len {
                    0 => batch.discard_last(),
                    _ => batch.set_last_len(len),
                }
                s.seq = s.seq.wrapping_add(1);
                s.sent += 1;
                due.push(Reverse((at + PTIME, sid as u32)));
                flushed = true;
            }
            if flushed {
                for (b, s) in batches_a.iter_mut().zip(&self.media_a) {
                    b.flush(s);
                }
                for (b, s) in batches_b.iter_mut().zip(&self.media_b) {
                    b.flush(s);
                }
            }
            if open == 0 && next == n {
                break;
            }
            if now >= hard_end {
                for c in calls.iter_mut() {
                    if !matches!(c.state, State::Done | State::Failed) {
                        c.state = State::Failed;
                        r.failed += 1;
                        *r.failure_codes.entry(408).or_default() += 1;
                    }
                }
                break;
            }
            // Sleep until something is due (at most 1 ms: the sockets are not all polled).
            let mut wake = now + Duration::from_millis(1);
            if next < n {
                wake = wake.min(calls[next].planned);
            }
            if let Some(Reverse((at, _))) = due.peek() {
                wake = wake.min(*at);
            }
            if let Some(Reverse((at, _, _))) = timers.peek() {
                wake = wake.min(*at);
            }
            sys::wait_readable(&self.sig_a, wake.saturating_duration_since(Instant::now()));
        }
        r.elapsed = last_answer - t0;
        // Packets still in flight arrive within a few milliseconds on loopback.
        std::thread::sleep(Duration::from_millis(300));
        let rx = self.rx.take();
        r.rtp_sent = streams.iter().map(|s| s.sent).sum();
        r.rtp_received = (0..2 * n).map(|i| rx.received(i)).sum();
        r.send_errors = batches_a.iter().chain(&batches_b).map(|b| b.errors).sum();
        r.stray = rx.stray;
        r.jitter = rx.jitter;
        r.transit = rx.transit;
        r.setup_us.sort_unstable();
        r.total_us.sort_unstable();
        r
    }

    /// The call a 200 to an INVITE belongs to.
    fn idx_of_answer(&self, data: &[u8]) -> Option<usize> {
        let m = sip::parse_message(data)?;
        (m.code == 200 && m.cseq_method == "INVITE")
            .then(|| self.idx_of(m.call_id))
            .flatten()
    }

    /// A request from the gateway to a callee.
    fn on_callee(
        &mut self,
        data: &[u8],
        calls: &mut [Call],
        by_callee: &HashMap<u32, usize>,
        b_dialogs: &mut HashMap<String, usize>,
        free: &mut VecDeque<u32>,
    ) {
        let Some(m) = sip::parse_message(data) else {
            return;
        };
        let Some(method) = m.method else { return };
        let reply = match method {
            "INVITE" => {
                let idx = match b_dialogs.get(m.call_id) {
                    Some(&i) => Some(i),
                    None => m
                        .uri_user()
                        .and_then(|u| u.strip_prefix('b'))
                        .and_then(|n| n.parse::<u32>().ok())
                        .and_then(|slot| by_callee.get(&slot).copied()),
                };
                let Some(idx) = idx else {
                    let r = m.respond("480 Temporarily Unavailable", Some("x"), "", "");
                    let _ = self.sig_b.send_to(&r, self.target);
                    return;
                };
                b_dialogs.insert(m.call_id.to_string(), idx);
                calls[idx].relay_b = m.sdp_audio();
                let own = stream_key(self.run_id, self.step, 2 * idx + 1);
                if self.srtp {
                    // The callee sends stream 2·idx + 1 with its key and gets 2·idx with the
                    // gateway's, from this offer.
                    let Some((tx, rx)) = m.sdp_crypto().and_then(|gw| srtp_pair(own, gw)) else {
                        let r = m.respond("488 Not Acceptable Here", Some("x"), "", "");
                        let _ = self.sig_b.send_to(&r, self.target);
                        return;
                    };
                    if let Some(slot) = self.tx_srtp.get_mut(2 * idx + 1) {
                        *slot = Some(tx);
                    }
                    self.rx.set_srtp(2 * idx, rx);
                }
                let media = self.media_b[idx % self.media_b.len()]
                    .local_addr()
                    .unwrap_or(self.local_b);
                let slot = calls[idx].callee.unwrap_or(0);
                let contact = format!(
                    "Contact: <sip:{}@{}>\r\nContent-Type: application/sdp\r\n",
                    callee(slot),
                    self.local_b
                );
                // Transcoded: Opus, which the gateway added to the caller's G.722 offer at 111.
                let mut sdp = match self.frames {
                    Some(_) => sip::sdp(idx as u64, media, (111, "opus/48000/2")),
                    None => sip::pcmu_sdp(idx as u64, media),
                };
                if self.srtp {
                    sdp = sip::with_crypto(&sdp, &own);
                }
                m.respond("200 OK", Some(&format!("b{idx}")), &contact, &sdp)
            }
            "ACK" => return,
            "BYE" => {
                if let Some(idx) = b_dialogs.remove(m.call_id)
                    && let Some(c) = calls.get_mut(idx)
                {
                    c.callee_got_bye = true;
                    if let Some(s) = c.callee.take() {
                        free.push_back(s);
                    }
                }
                m.respond("200 OK", None, "", "")
            }
            _ => m.respond("200 OK", None, "", ""),
        };
        let _ = self.sig_b.send_to(&reply, self.target);
    }

    /// A response to a caller; `Some(idx)` when it ended call `idx` (done or failed).
    fn on_caller(
        &mut self,
        data: &[u8],
        now: Instant,
        calls: &mut [Call],
        r: &mut StepResult,
        timers: &mut BinaryHeap<Reverse<(Instant, u32, Timer)>>,
    ) -> Option<usize> {
        let m = sip::parse_message(data)?;
        if let Some(method) = m.method {
            // A request to a caller (OPTIONS, an unexpected BYE): answer it.
            if method != "ACK" && method != "INVITE" {
                let _ = self
                    .sig_a
                    .send_to(&m.respond("200 OK", None, "", ""), self.target);
            }
            return None;
        }
        let idx = self.idx_of(m.call_id)?;
        let c = calls.get_mut(idx)?;
        let elapsed_us = |c: &Call| (now - c.sent_at).as_micros().min(u128::from(u32::MAX)) as u32;
        match (m.cseq_method, c.state) {
            ("INVITE", State::Inviting) if m.code < 200 => {
                c.provisional = true;
                None
            }
            ("INVITE", State::Inviting) if m.code < 300 => {
                r.setup_us.push(elapsed_us(c));
                r.answered += 1;
                c.to = m.to.to_string();
                c.contact = m.contact.unwrap_or("").to_string();
                c.relay_a = m.sdp_audio();
                c.state = State::Answered;
                if self.srtp {
                    // The caller sends stream 2·idx with its key and gets 2·idx + 1 with the
                    // gateway's, from this answer; an answer without one leaves the caller
                    // sending plain RTP, which the gateway drops (counted as loss).
                    let own = stream_key(self.run_id, self.step, 2 * idx);
                    if let Some((tx, rx)) = m.sdp_crypto().and_then(|gw| srtp_pair(own, gw)) {
                        if let Some(slot) = self.tx_srtp.get_mut(2 * idx) {
                            *slot = Some(tx);
                        }
                        self.rx.set_srtp(2 * idx + 1, rx);
                    }
                }
                let c = &calls[idx];
                let ack = self.in_dialog(idx, c, "ACK", 1, "k");
                let _ = self.sig_a.send_to(&ack, self.target);
                let hang = c.media_until.map_or(now, |u| u.max(now) + BYE_AFTER_MEDIA);
                let hang = if c.media_until.is_some() { hang } else { now };
                timers.push(Reverse((hang, idx as u32, Timer::Hangup)));
                None
            }
            ("INVITE", State::Inviting) => {
                // A final refusal: ACK it in the INVITE's transaction, the call failed.
                let branch = format!("z9hG4bK{}x{}x{idx}i", self.run_id, self.step);
                let ack = sip::Request {
                    method: "ACK",
                    uri: &format!("sip:{}@{}", callee(c.callee.unwrap_or(0)), self.domain),
                    local: self.local_a,
                    branch: &branch,
                    from: &self.caller_from(idx, c),
                    to: m.to,
                    call_id: m.call_id,
                    cseq: 1,
                    user: &caller(c.caller),
                    sdp: None,
                }
                .to_bytes();
                let _ = self.sig_a.send_to(&ack, self.target);
                c.state = State::Failed;
                r.failed += 1;
                *r.failure_codes.entry(m.code).or_default() += 1;
                Some(idx)
            }
            ("INVITE", _) if (200..300).contains(&m.code) => {
                // The 200 again (our ACK was lost): ACK again.
                let ack = self.in_dialog(idx, &calls[idx], "ACK", 1, "k");
                let _ = self.sig_a.send_to(&ack, self.target);
                None
            }
            ("BYE", State::Byeing) if m.code >= 200 => {
                c.state = State::Done;
                if m.code < 300 {
                    r.total_us.push(elapsed_us(c));
                    r.completed += 1;
                } else {
                    r.failed += 1;
                    *r.failure_codes.entry(m.code).or_default() += 1;
                }
                Some(idx)
            }
            _ => None,
        }
    }

    /// A timer fired; `Some(idx)` when it ended call `idx`.
    fn on_timer(
        &mut self,
        idx: usize,
        kind: Timer,
        now: Instant,
        calls: &mut [Call],
        r: &mut StepResult,
        timers: &mut BinaryHeap<Reverse<(Instant, u32, Timer)>>,
    ) -> Option<usize> {
        let c = calls.get_mut(idx)?;
        match (kind, c.state) {
            (Timer::Invite, State::Inviting) | (Timer::Bye, State::Byeing) => {
                let phase_start = if kind == Timer::Invite {
                    c.sent_at
                } else {
                    c.bye_at
                };
                if now - phase_start >= TIMER_B {
                    c.state = State::Failed;
                    r.failed += 1;
                    *r.failure_codes.entry(408).or_default() += 1;
                    return Some(idx);
                }
                // After a provisional answer an INVITE is no longer retransmitted (§17.1.1.2).
                if !(kind == Timer::Invite && c.provisional) {
                    let _ = self.sig_a.send_to(&c.last, self.target);
                }
                c.interval = if kind == Timer::Invite {
                    c.interval * 2
                } else {
                    (c.interval * 2).min(T2)
                };
                timers.push(Reverse((now + c.interval.min(T2), idx as u32, kind)));
                None
            }
            (Timer::Hangup, State::Answered) => {
                let bye = self.in_dialog(idx, &calls[idx], "BYE", 2, "b");
                let _ = self.sig_a.send_to(&bye, self.target);
                let c = &mut calls[idx];
                c.state = State::Byeing;
                c.bye_at = now;
                c.last = bye;
                c.interval = T1;
                timers.push(Reverse((now + T1, idx as u32, Timer::Bye)));
                None
            }
            _ => None,
        }
    }
}

/// The concurrency table's header.
fn concurrency_header() -> String {
    format!(
        "{:>6} {:>8} {:>6} {:>10} {:>8} {:>11} {:>11} {:>11} {:>8} {:>12} {:>8} {:>11} {:>5}",
        "calls",
        "answered",
        "failed",
        "rtp sent",
        "loss %",
        "jitter p99",
        "transit p99",
        "setup p99",
        "gw cpu%",
        "gw us/call-s",
        "lg cpu%",
        "lg lag p99",
        "load"
    )
}

fn concurrency_row(r: &StepResult, load: f64) -> String {
    let pct = |cpu: f64| {
        if r.window > 0.0 {
            cpu * 100.0 / r.window
        } else {
            f64::NAN
        }
    };
    let call_secs = r.window * r.window_calls as f64;
    let per = if call_secs > 0.0 {
        r.gw_cpu * 1e6 / call_secs
    } else {
        f64::NAN
    };
    format!(
        "{:>6} {:>8} {:>6} {:>10} {:>8.3} {:>8.2} ms {:>8.2} ms {:>8.2} ms {:>8.1} {:>12.1} {:>8.1} {:>8.2} ms {:>5.1}",
        r.calls,
        r.answered,
        r.failed,
        r.rtp_sent,
        r.loss_pct(),
        r.jitter.quantile_ms(0.99),
        r.transit.quantile_ms(0.99),
        r.setup_ms(0.99),
        pct(r.gw_cpu),
        per,
        pct(r.lg_cpu),
        r.send_lag.quantile_ms(0.99),
        load
    )
}

fn setup_header() -> String {
    format!(
        "{:>9} {:>7} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>5}",
        "offered/s",
        "calls",
        "achieved/s",
        "failed",
        "200 p50",
        "200 p99",
        "BYE p50",
        "BYE p99",
        "gw cpu s",
        "gw us/call",
        "lg cpu s",
        "load"
    )
}

fn setup_row(r: &StepResult, gw_cpu: f64, lg_cpu: f64, load: f64) -> String {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    format!(
        "{:>9.0} {:>7} {:>10.0} {:>6} {:>6.2} ms {:>6.2} ms {:>6.2} ms {:>6.2} ms {:>9.2} {:>11.0} {:>9.2} {:>5.1}",
        r.offered,
        r.calls,
        r.completed as f64 / secs,
        r.failed,
        r.setup_ms(0.5),
        r.setup_ms(0.99),
        r.total_ms(0.5),
        r.total_ms(0.99),
        gw_cpu,
        gw_cpu * 1e6 / r.completed.max(1) as f64,
        lg_cpu,
        load
    )
}

/// Starts csps, provisions the accounts, and runs both ladders; prints the tables.
pub fn bench(plan: &CallPlan, bin: &std::path::Path) -> Result<(), String> {
    let accounts = plan
        .accounts
        .max(plan.concurrency.iter().copied().max().unwrap_or(1));
    let gw = crate::bench::start_csps(bin)?;
    let pid = gw.pid();
    let t = Instant::now();
    let post = |http: &mut csps_tests::http::Client,
                path: &str,
                body: serde_json::Value|
     -> Result<(), String> {
        let r = http
            .request("POST", path, Some(&body.to_string()))
            .map_err(|e| format!("POST {path}: {e}"))?;
        if r.status != 201 && r.status != 409 {
            return Err(format!("POST {path}: {} {}", r.status, r.body));
        }
        Ok(())
    };
    // Four connections: each user's creation waits for the store's commit.
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u32)
            .map(|w| {
                let (gw, post) = (&gw, &post);
                s.spawn(move || {
                    let mut http = csps_tests::http::Client::new(gw.http, Some(&gw.token));
                    for i in (w..accounts).step_by(4) {
                        for u in [caller(i), callee(i)] {
                            let body = serde_json::json!({"username": u, "password": crate::load::password(&u), "domain": plan.domain});
                            post(&mut http, "/api/users", body)?;
                        }
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| "user creation panicked".to_string())?)
    })?;
    let mut http = csps_tests::http::Client::new(gw.http, Some(&gw.token));
    post(
        &mut http,
        "/api/config/bench/trusted-ips",
        serde_json::json!({"cidr": "127.0.0.0/8"}),
    )?;
    if plan.srtp {
        // Both legs SRTP; the keys cross loopback UDP (`SrtpOverPlainTransport`).
        for (leaf, value) in [
            ("Srtp", serde_json::json!("Required")),
            ("SrtpOverPlainTransport", serde_json::json!(true)),
        ] {
            let path = format!("/api/config/*/Data.SipConfig.{leaf}");
            let r = http
                .request("PUT", &path, Some(&value.to_string()))
                .map_err(|e| format!("PUT {path}: {e}"))?;
            if r.status != 200 {
                return Err(format!("PUT {path}: {} {}", r.status, r.body));
            }
        }
    }
    // The trusted range reaches the SIP core through the configuration watch.
    std::thread::sleep(Duration::from_millis(500));
    let mut g = CallGen::new(
        gw.sip_addr(),
        &plan.domain,
        plan.media_sockets,
        accounts,
        plan.drain,
    )
    .map_err(|e| e.to_string())?;
    if plan.transcode {
        g = g.transcoded()?;
    }
    if plan.srtp {
        g = g.with_srtp();
    }
    g.register_callees(accounts)?;
    println!(
        "csps pid {pid} on udp:{}, {} callers and {} registered callees in {:.1}s; media sockets {} per side",
        gw.sip_addr(),
        accounts,
        accounts,
        t.elapsed().as_secs_f64(),
        plan.media_sockets
    );
    let hold = plan.hold.as_secs_f64();
    if !plan.concurrency.is_empty() {
        let what = if plan.transcode {
            "G.722 (callers) ↔ Opus (callees send SILK 32 kbit/s, the gateway sends them CELT 64 kbit/s) transcoded by the gateway, real frames of a speech-like signal"
        } else {
            "G.711 PCMU relayed, 172 B RTP"
        };
        let what = match plan.srtp {
            true => format!("{what}; SRTP AES_CM_128_HMAC_SHA1_80 on both legs (SDES)"),
            false => what.to_string(),
        };
        let jitter = if plan.transcode {
            "jitter = |D(i-1,i)| of RFC 3550 §6.4.1 from kernel receive timestamps and RTP timestamps (the generator's send lag included; transit unknown)"
        } else {
            "jitter = |D(i-1,i)| of RFC 3550 §6.4.1 from kernel receive timestamps"
        };
        println!(
            "\nconcurrent calls: {what}, 20 ms packets, both directions; INVITEs at {}/s, then every call is up for {hold} s; \
             {jitter}; CPU over the window where all calls are up",
            plan.ramp_rate
        );
        println!("{}", concurrency_header());
    }
    let mut best = None;
    for (i, &n) in plan.concurrency.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(plan.pause);
        }
        let load = sys::load_average();
        let ramp = Duration::from_secs_f64(f64::from(n) / plan.ramp_rate);
        let window = (
            ramp + Duration::from_millis(500),
            ramp + plan.hold.saturating_sub(Duration::from_millis(100)),
        );
        let r = g.run(n, plan.ramp_rate, Some(ramp + plan.hold), Some(window), pid);
        let ok = r.failed == 0
            && r.loss_pct() < plan.max_loss_pct
            && r.jitter.quantile_ms(0.99) < plan.max_jitter_ms;
        println!(
            "{}{}",
            concurrency_row(&r, load),
            if ok { "" } else { " *" }
        );
        if !r.failure_codes.is_empty() {
            println!(
                "    failures by status (0 = no free callee, 408 = timeout): {:?}",
                r.failure_codes
            );
        }
        if ok {
            best = Some(n);
        } else if !plan.keep_going {
            break;
        }
    }
    if !plan.concurrency.is_empty() {
        match best {
            Some(b) => println!(
                "largest count under both limits (loss < {} %, jitter p99 < {} ms, no failed call): {b} calls",
                plan.max_loss_pct, plan.max_jitter_ms
            ),
            None => println!("largest count under both limits: none"),
        }
    }
    if !plan.setup_rates.is_empty() {
        println!(
            "\ncall setup rate: INVITE → 200 → ACK → BYE → 200 at once (no media), open loop, {} s per step",
            plan.setup_secs
        );
        println!("{}", setup_header());
    }
    for (i, &rate) in plan.setup_rates.iter().enumerate() {
        if i > 0 || !plan.concurrency.is_empty() {
            std::thread::sleep(plan.pause);
        }
        let load = sys::load_average();
        let n = (rate * plan.setup_secs).round().max(1.0) as u32;
        let (g0, l0) = (sys::cpu_seconds_tree(pid), sys::cpu_seconds_self());
        let r = g.run(n, rate, None, None, pid);
        let (gc, lc) = (
            sys::cpu_seconds_tree(pid) - g0,
            sys::cpu_seconds_self() - l0,
        );
        println!("{}", setup_row(&r, gc, lc, load));
        if !r.failure_codes.is_empty() {
            println!(
                "    failures by status (0 = no free callee, 408 = timeout): {:?}",
                r.failure_codes
            );
        }
    }
    Ok(())
}
