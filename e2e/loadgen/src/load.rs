//! The open-loop REGISTER generator: paced sends, digest answers, Timer E retransmissions, stats.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::sip;

/// RFC 3261 T1: the first retransmission interval.
const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: the retransmission interval cap for non-INVITE requests.
const T2: Duration = Duration::from_secs(4);
/// RFC 3261 Timer F (64·T1): a transaction without a final answer fails.
const TIMER_F: Duration = Duration::from_secs(32);

/// Static settings of a load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The registrar's UDP address.
    pub target: SocketAddr,
    /// The domain (digest realm) of every account.
    pub domain: String,
    /// Number of accounts (`{prefix}{index:06}`, password `pw-{username}`).
    pub accounts: u32,
    /// Username prefix.
    pub prefix: String,
    /// Expires in each REGISTER.
    pub expires: u32,
    /// How long to wait for outstanding answers after the send phase of a step.
    pub drain: Duration,
}

/// The username of account `i`.
pub fn username(prefix: &str, i: u32) -> String {
    format!("{prefix}{i:06}")
}

/// The password of `user`: deterministic, so both servers can be provisioned without a list.
pub fn password(user: &str) -> String {
    format!("pw-{user}")
}

/// What one step measured.
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    /// Target registrations per second.
    pub offered: f64,
    /// Registrations started.
    pub started: u64,
    /// Registrations answered 200.
    pub completed: u64,
    /// Registrations answered with a final non-2xx (after the digest answer, or unexpected).
    pub failures: u64,
    /// Registrations without a final answer within Timer F or the drain window.
    pub timeouts: u64,
    /// Requests sent again by Timer E.
    pub retransmissions: u64,
    /// Datagrams that could not be sent (buffer full or an error).
    pub send_errors: u64,
    /// Responses that matched no open transaction (duplicates, late answers).
    pub stray: u64,
    /// Final failure statuses and how often they came.
    pub failure_codes: HashMap<u16, u64>,
    /// From the first send to the last answer (or the end of the drain).
    pub elapsed: Duration,
    /// How long sending took (vs the planned step length).
    pub send_time: Duration,
    /// Latency of completed registrations, first REGISTER to the 200, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl StepStats {
    /// Completed registrations per second over the step.
    pub fn achieved(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q`-quantile latency in milliseconds (0 when nothing completed).
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    /// No failure, no timeout, no retransmission, and at least 95 % of the offered rate.
    pub fn clean(&self) -> bool {
        self.failures == 0
            && self.timeouts == 0
            && self.retransmissions == 0
            && self.send_errors == 0
            && self.achieved() >= 0.95 * self.offered
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Initial,
    Auth,
    Done,
}

struct Attempt {
    account: u32,
    started: Instant,
    phase: Phase,
    phase_started: Instant,
    interval: Duration,
    last: Vec<u8>,
}

/// The generator: one UDP socket, reused across steps so the Contacts stay the same.
pub struct LoadGen {
    cfg: LoadConfig,
    sock: UdpSocket,
    local: SocketAddr,
    run_id: u32,
    step: u32,
    /// Accounts that registered at least once.
    pub registered: Vec<bool>,
}

impl LoadGen {
    /// Binds a socket on the target's loopback address with large buffers.
    pub fn new(cfg: LoadConfig) -> std::io::Result<Self> {
        let bind_ip = match cfg.target {
            SocketAddr::V4(_) => "127.0.0.1:0",
            SocketAddr::V6(_) => "[::1]:0",
        };
        let sock = UdpSocket::bind(bind_ip)?;
        sock.set_nonblocking(true)?;
        crate::sys::grow_socket_buffers(&sock, 16 << 20);
        let local = sock.local_addr()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Distinguishes this run's Call-IDs from a previous run's late answers.
        let run_id = std::process::id().wrapping_mul(7919) ^ nanos;
        let registered = vec![false; cfg.accounts as usize];
        Ok(Self {
            cfg,
            sock,
            local,
            run_id,
            step: 0,
            registered,
        })
    }

    /// Number of accounts registered at least once so far.
    pub fn registered_count(&self) -> usize {
        self.registered.iter().filter(|r| **r).count()
    }

    /// Runs one step: `rate` registrations per second for `secs` seconds, accounts round-robin.
    pub fn run_step(&mut self, rate: f64, secs: f64) -> StepStats {
        self.step += 1;
        let total = (rate * secs).round().max(1.0) as usize;
        let mut st = StepStats {
            offered: rate,
            ..StepStats::default()
        };
        let mut attempts: Vec<Attempt> = Vec::with_capacity(total);
        let mut timers: BinaryHeap<Reverse<(Instant, u32, u8)>> = BinaryHeap::new();
        let mut open = 0usize;
        let mut buf = vec![0u8; 65536];
        let period = Duration::from_secs_f64(1.0 / rate);
        let t0 = Instant::now();
        let mut hard_end = None;
        let mut last_answer = t0;
        loop {
            let now = Instant::now();
            // Send everything that is due (open loop: a late loop catches up in a burst).
            while attempts.len() < total {
                let due = t0 + period.mul_f64(attempts.len() as f64);
                if due > now {
                    break;
                }
                let idx = attempts.len() as u32;
                let account = idx % self.cfg.accounts;
                let msg = self.request(idx, account, Phase::Initial, None);
                if self.sock.send_to(&msg, self.cfg.target).is_err() {
                    st.send_errors += 1;
                }
                attempts.push(Attempt {
                    account,
                    started: now,
                    phase: Phase::Initial,
                    phase_started: now,
                    interval: T1,
                    last: msg,
                });
                timers.push(Reverse((now + T1, idx, 0)));
                open += 1;
            }
            if attempts.len() == total && hard_end.is_none() {
                st.send_time = now - t0;
                hard_end = Some(now + self.cfg.drain);
            }
            // Read what has arrived (bounded, so sending stays on schedule).
            for _ in 0..512 {
                match self.sock.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        let now = Instant::now();
                        if self.on_datagram(&buf[..n], now, &mut attempts, &mut timers, &mut st) {
                            open -= 1;
                            last_answer = now;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            // Timer E / F.
            let now = Instant::now();
            while let Some(Reverse((at, idx, phase))) = timers.peek().copied() {
                if at > now {
                    break;
                }
                timers.pop();
                let Some(a) = attempts.get_mut(idx as usize) else {
                    continue;
                };
                if a.phase == Phase::Done || a.phase as u8 != phase {
                    continue;
                }
                if now - a.phase_started >= TIMER_F {
                    a.phase = Phase::Done;
                    a.last = Vec::new();
                    st.timeouts += 1;
                    open -= 1;
                    continue;
                }
                if self.sock.send_to(&a.last, self.cfg.target).is_err() {
                    st.send_errors += 1;
                }
                st.retransmissions += 1;
                a.interval = (a.interval * 2).min(T2);
                timers.push(Reverse((now + a.interval, idx, phase)));
            }
            if attempts.len() == total && open == 0 {
                break;
            }
            if hard_end.is_some_and(|end| now >= end) {
                st.timeouts += open as u64;
                last_answer = now;
                break;
            }
            // Sleep until the next send, timer or datagram.
            let mut wake = hard_end.unwrap_or(t0 + period.mul_f64(attempts.len() as f64));
            if let Some(Reverse((at, _, _))) = timers.peek() {
                wake = wake.min(*at);
            }
            crate::sys::wait_readable(&self.sock, wake.saturating_duration_since(Instant::now()));
        }
        st.started = attempts.len() as u64;
        st.elapsed = (last_answer - t0).max(Duration::from_secs_f64(secs));
        st.latencies_us.sort_unstable();
        st
    }

    /// Handles one datagram; true when it finished an open registration.
    fn on_datagram(
        &mut self,
        data: &[u8],
        now: Instant,
        attempts: &mut [Attempt],
        timers: &mut BinaryHeap<Reverse<(Instant, u32, u8)>>,
        st: &mut StepStats,
    ) -> bool {
        let Some(resp) = sip::parse_response(data) else {
            st.stray += 1;
            return false;
        };
        let Some(idx) = self.attempt_of(resp.call_id) else {
            st.stray += 1;
            return false;
        };
        let Some(a) = attempts.get_mut(idx as usize) else {
            st.stray += 1;
            return false;
        };
        let expected_cseq = match a.phase {
            Phase::Initial => 1,
            Phase::Auth => 2,
            Phase::Done => 0,
        };
        if resp.cseq != expected_cseq {
            st.stray += 1;
            return false;
        }
        if resp.code < 200 {
            return false;
        }
        let finish = |a: &mut Attempt| {
            a.phase = Phase::Done;
            a.last = Vec::new();
        };
        if resp.code < 300 {
            let us = (now - a.started).as_micros().min(u128::from(u32::MAX)) as u32;
            st.latencies_us.push(us);
            st.completed += 1;
            if let Some(r) = self.registered.get_mut(a.account as usize) {
                *r = true;
            }
            finish(a);
            return true;
        }
        let challenge = (a.phase == Phase::Initial && matches!(resp.code, 401 | 407))
            .then_some(resp.challenge)
            .flatten()
            .and_then(sip::parse_challenge)
            .filter(|c| c.md5);
        match challenge {
            Some(c) => {
                let msg = self.request(idx, a.account, Phase::Auth, Some(&c));
                if self.sock.send_to(&msg, self.cfg.target).is_err() {
                    st.send_errors += 1;
                }
                a.phase = Phase::Auth;
                a.phase_started = now;
                a.interval = T1;
                a.last = msg;
                timers.push(Reverse((now + T1, idx, Phase::Auth as u8)));
                false
            }
            None => {
                st.failures += 1;
                *st.failure_codes.entry(resp.code).or_default() += 1;
                finish(a);
                true
            }
        }
    }

    /// The attempt index encoded in a Call-ID of this run and step.
    fn attempt_of(&self, call_id: &str) -> Option<u32> {
        let rest = call_id.strip_suffix("@lg")?;
        let mut it = rest.split('-');
        let run: u32 = it.next()?.parse().ok()?;
        let step: u32 = it.next()?.parse().ok()?;
        let idx: u32 = it.next()?.parse().ok()?;
        (run == self.run_id && step == self.step).then_some(idx)
    }

    fn request(&self, idx: u32, account: u32, phase: Phase, c: Option<&sip::Challenge>) -> Vec<u8> {
        let user = username(&self.cfg.prefix, account);
        let call_id = format!("{}-{}-{idx}@lg", self.run_id, self.step);
        let branch = format!("z9hG4bK{}x{}x{idx}x{}", self.run_id, self.step, phase as u8);
        let tag = format!("{}t{idx}", self.step);
        let uri = format!("sip:{}", self.cfg.domain);
        let auth = c.map(|c| {
            let cnonce = format!("{:08x}{idx:08x}", self.run_id);
            sip::authorization(c, &user, &password(&user), &uri, &cnonce)
        });
        sip::Register {
            user: &user,
            domain: &self.cfg.domain,
            local: self.local,
            branch: &branch,
            call_id: &call_id,
            tag: &tag,
            cseq: if phase == Phase::Auth { 2 } else { 1 },
            expires: self.cfg.expires,
            authorization: auth.as_deref(),
        }
        .to_bytes()
    }
}

/// Sends an OPTIONS and waits up to `timeout` for any SIP answer: is a server listening?
pub fn probe(target: SocketAddr, timeout: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let Ok(local) = sock.local_addr() else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut n = 0u32;
    while Instant::now() < deadline {
        n += 1;
        let msg = format!(
            "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p{n}\r\nTo: <sip:{target}>\r\nCall-ID: probe-{n}@lg\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = sock.send_to(msg.as_bytes(), target);
        if let Ok((len, _)) = sock.recv_from(&mut buf)
            && sip::parse_response(&buf[..len]).is_some()
        {
            return true;
        }
    }
    false
}
