//! RTP for the call benchmark: a few UDP sockets per side, packets sent in batches with
//! `sendmmsg`, received in batches with `recvmmsg` by one thread that reads the kernel's receive
//! timestamp of each packet (`SO_TIMESTAMPNS`), so the generator's own scheduling does not show up
//! as jitter.
//!
//! Each packet carries, in its first 8 payload bytes, the CLOCK_REALTIME nanoseconds at which the
//! generator sent it. Transit = kernel receive time − send time (both on this machine's clock,
//! loopback only), i.e. the time the packet spent in the gateway. Jitter is RFC 3550 §6.4.1's
//! D(i-1, i): the difference of consecutive packets' transits within a stream, in absolute value;
//! the table reports its 99th percentile over every packet of a step.
//!
//! Transcoded calls (`--transcode`) carry real G.722 and Opus frames, which the gateway decodes
//! and re-encodes, so no send time survives the trip. It keeps the SSRC (a translator, RFC 3550
//! §7.1), so streams are still told apart, and D(i-1, i) is taken the way a phone takes it: the
//! difference of arrival spacing and RTP timestamp spacing. That counts the generator's own
//! send lag as the gateway's jitter (the `lg lag` column shows how much there was); transit is
//! not known.
//!
//! SRTP calls (`--srtp`) protect each packet with its phone's key before it is queued and
//! unprotect it on arrival with the key the gateway announced to that phone (SDES), so the
//! generator pays what a phone pays and the send time is read from the decrypted payload.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use csps::media::srtp::SrtpSession;

/// RTP header plus 160 bytes of G.711 (20 ms at 8 kHz).
pub const PACKET_LEN: usize = 12 + 160;
/// Room for a packet and its SRTP authentication tag.
pub const PACKET_CAP: usize = PACKET_LEN + 16;
/// Packets per `sendmmsg`/`recvmmsg` call.
const BATCH: usize = 64;
/// Histogram resolution: 10 µs per bucket.
const BUCKET_NS: i64 = 10_000;
/// Histogram range: 0 to 1 s; larger values land in the last bucket.
const BUCKETS: usize = 100_000;

/// Now on CLOCK_REALTIME in nanoseconds (the clock `SO_TIMESTAMPNS` uses).
pub fn realtime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to fill.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
    }
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// A latency histogram in 10 µs buckets.
#[derive(Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            count: 0,
        }
    }
}

impl Histogram {
    /// Records a value in nanoseconds (negative counts as 0).
    pub fn record(&mut self, ns: i64) {
        let i = usize::try_from(ns.max(0) / BUCKET_NS).unwrap_or(usize::MAX);
        self.buckets[i.min(BUCKETS - 1)] += 1;
        self.count += 1;
    }

    /// The `q`-quantile in milliseconds (upper edge of its bucket; 0 when empty).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let want = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return ((i as i64 + 1) * BUCKET_NS) as f64 / 1e6;
            }
        }
        (BUCKETS as i64 * BUCKET_NS) as f64 / 1e6
    }
}

/// What one stream (one direction of one call) has received.
#[derive(Clone, Copy, Default)]
struct StreamRx {
    received: u64,
    last_transit: Option<i64>,
    /// Transcoded: the last packet's receive time and RTP timestamp.
    last_arrival: Option<(i64, u32)>,
}

/// What the receive thread collected since the last [`Receiver::take`].
#[derive(Default)]
pub struct RxStats {
    /// The SSRC prefix of the current step (packets of another step are counted as stray).
    step: u32,
    /// The step's calls are transcoded: stream `2·call` arrives as Opus (48 kHz RTP clock), its
    /// way back as G.722 (8 kHz).
    transcoded: bool,
    streams: Vec<StreamRx>,
    /// SRTP calls: each stream's receiving phone's session (it unprotects with the gateway's
    /// key), set when the call's keys are known.
    srtp: Vec<Option<SrtpSession>>,
    /// SRTP packets that failed authentication (counted as stray too).
    pub srtp_failed: u64,
    /// |D(i-1, i)|, RFC 3550 §6.4.1, per received packet after a stream's first.
    pub jitter: Histogram,
    /// Receive minus send time of each packet.
    pub transit: Histogram,
    /// Packets of another step, not RTP, or naming no stream.
    pub stray: u64,
}

impl RxStats {
    /// Packets received on stream `id`.
    pub fn received(&self, id: usize) -> u64 {
        self.streams.get(id).map_or(0, |s| s.received)
    }
}

/// The SSRC of stream `id` in step `step`: the step in the top 8 bits.
pub fn ssrc(step: u32, id: usize) -> u32 {
    ((step & 0xff) << 24) | (id as u32 & 0x00ff_ffff)
}

/// Writes an RTP packet carrying `payload` into `buf` (at least 12 bytes longer); its length.
pub fn write_coded(
    buf: &mut [u8],
    (pt, ssrc, seq, ts): (u8, u32, u16, u32),
    payload: &[u8],
) -> usize {
    let len = (12 + payload.len()).min(buf.len());
    buf[0] = 0x80;
    buf[1] = pt & 0x7f;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..len].copy_from_slice(&payload[..len - 12]);
    len
}

/// Fills `buf` with an RTP packet (PT 0) of stream `ssrc`, sequence `seq`, timestamp `ts`,
/// carrying `sent_ns` in its first payload bytes and µ-law silence after; its length.
pub fn write_packet(buf: &mut [u8], ssrc: u32, seq: u16, ts: u32, sent_ns: i64) -> usize {
    let mut payload = [0xff; PACKET_LEN - 12];
    payload[..8].copy_from_slice(&sent_ns.to_be_bytes());
    write_coded(buf, (0, ssrc, seq, ts), &payload)
}

/// Protects the first `len` bytes of `buf` in place with `srtp`; the protected length (0 when
/// the packet could not be protected or does not fit).
pub fn protect(srtp: &mut SrtpSession, buf: &mut [u8], len: usize) -> usize {
    match srtp.protect(&buf[..len.min(buf.len())], false) {
        Ok(p) if p.len() <= buf.len() => {
            buf[..p.len()].copy_from_slice(&p);
            p.len()
        }
        _ => 0,
    }
}

/// Binds `n` non-blocking UDP sockets on 127.0.0.1 with large buffers and receive timestamps.
pub fn bind_sockets(n: usize) -> std::io::Result<Vec<UdpSocket>> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            crate::sys::grow_socket_buffers(&s, 16 << 20);
            let on: libc::c_int = 1;
            // SAFETY: a valid socket; the option value is a live c_int of the given size.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(s)
        })
        .collect()
}

fn sockaddr_of(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Packets waiting for one socket's next `sendmmsg`.
pub struct SendBatch {
    packets: Vec<[u8; PACKET_CAP]>,
    /// The length of each packet (G.711 and G.722 fill the buffer, Opus does not).
    lens: Vec<usize>,
    dests: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    /// Packets the kernel took.
    pub sent: u64,
    /// Packets it refused (a full buffer, an error).
    pub errors: u64,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            packets: Vec::with_capacity(BATCH),
            lens: Vec::with_capacity(BATCH),
            dests: Vec::with_capacity(BATCH),
            sent: 0,
            errors: 0,
        }
    }
}

impl SendBatch {
    /// Queues a packet for `to`, flushing first when the batch is full.
    pub fn push(&mut self, sock: &UdpSocket, to: SocketAddr) -> &mut [u8; PACKET_CAP] {
        if self.packets.len() == BATCH {
            self.flush(sock);
        }
        self.packets.push([0; PACKET_CAP]);
        self.lens.push(PACKET_LEN);
        self.dests.push(sockaddr_of(to));
        let last = self.packets.len() - 1;
        &mut self.packets[last]
    }

    /// Shortens the packet queued last to `len` bytes.
    pub fn set_last_len(&mut self, len: usize) {
        if let Some(l) = self.lens.last_mut() {
            *l = len.min(PACKET_CAP);
        }
    }

    /// Drops the packet queued last (it could not be written, e.g. SRTP failed), counted as an
    /// error rather than sent empty.
    pub fn discard_last(&mut self) {
        if self.packets.pop().is_some() {
            self.lens.pop();
            self.dests.pop();
            self.errors += 1;
        }
    }

    /// Sends everything queued with `sendmmsg` (as many calls as the kernel needs).
    pub fn flush(&mut self, sock: &UdpSocket) {
        let n = self.packets.len();
        let mut iovs: Vec<libc::iovec> = self
            .packets
            .iter_mut()
            .zip(&self.lens)
            .map(|(p, &len)| libc::iovec {
                iov_base: p.as_mut_ptr().cast(),
                iov_len: len,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(self.dests.iter_mut())
            .map(|(iov, (ss, len))| {
                // SAFETY: an all-zero msghdr is valid; the fields set point into live vectors.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_name = (ss as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = *len;
                h.msg_iov = iov;
                h.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        let mut done = 0;
        while done < n {
            // SAFETY: msgs[done..] are valid mmsghdrs whose pointers outlive the call.
            let rc = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    msgs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if rc <= 0 {
                // The first unsent packet is lost; go on with the rest.
                self.errors += 1;
                done += 1;
            } else {
                self.sent += rc as u64;
                done += rc as usize;
            }
        }
        self.packets.clear();
        self.lens.clear();
        self.dests.clear();
    }
}

/// The receiving thread and the statistics it shares.
pub struct Receiver {
    stats: Arc<Mutex<RxStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts reading `socks` (clones of the sending sockets) on one thread.
    pub fn start(socks: Vec<UdpSocket>) -> Receiver {
        let stats = Arc::new(Mutex::new(RxStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("rtp-rx".into())
            .spawn(move || receive_loop(&socks, &s, &st))
            .ok();
        Receiver {
            stats,
            stop,
            thread,
        }
    }

    /// Starts counting a new step whose streams are `0..streams`.
    pub fn begin(&self, step: u32, streams: usize, transcoded: bool) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        *s = RxStats {
            step: step & 0xff,
            transcoded,
            streams: vec![StreamRx::default(); streams],
            srtp: std::iter::repeat_with(|| None).take(streams).collect(),
            ..RxStats::default()
        };
    }

    /// Stream `id` arrives SRTP-protected: `session` unprotects it.
    pub fn set_srtp(&self, id: usize, session: SrtpSession) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = s.srtp.get_mut(id) {
            *slot = Some(session);
        }
    }

    /// The step's statistics so far (the counting goes on into an empty set).
    pub fn take(&self) -> RxStats {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let step = s.step;
        std::mem::replace(
            &mut *s,
            RxStats {
                step: step.wrapping_add(1),
                ..RxStats::default()
            },
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One receive slot of a `recvmmsg` batch.
struct Slot {
    buf: [u8; 256],
    ctrl: [u8; 64],
}

fn receive_loop(socks: &[UdpSocket], stats: &Mutex<RxStats>, stop: &AtomicBool) {
    let mut slots: Vec<Slot> = (0..BATCH)
        .map(|_| Slot {
            buf: [0; 256],
            ctrl: [0; 64],
        })
        .collect();
    let mut got: Vec<(i64, usize, usize)> = Vec::with_capacity(BATCH);
    let mut pfds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        // SAFETY: pfds and ts are valid for the call; a null sigmask keeps the current mask.
        let ready = unsafe {
            libc::ppoll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if ready <= 0 {
            continue;
        }
        // Let packets gather: the kernel timestamps each one on arrival, so reading late costs
        // no accuracy, and full batches save the generator the CPU the gateway needs.
        std::thread::sleep(std::time::Duration::from_millis(2));
        for sock in socks {
            // Drain this socket, a bounded number of batches so the others get their turn.
            for _ in 0..64 {
                got.clear();
                let n = recv_batch(sock, &mut slots, &mut got);
                if n == 0 {
                    break;
                }
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                for &(rx_ns, k, len) in &got {
                    account(&mut s, &slots[k].buf[..len], rx_ns);
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }
}

/// Reads up to a batch of packets; `got` receives (kernel receive time, slot, length) of each
/// packet that fits a slot (`i64::MIN` as the time of one that does not). Returns how many
/// datagrams were read.
fn recv_batch(sock: &UdpSocket, slots: &mut [Slot], got: &mut Vec<(i64, usize, usize)>) -> usize {
    let mut iovs: Vec<libc::iovec> = slots
        .iter_mut()
        .map(|s| libc::iovec {
            iov_base: s.buf.as_mut_ptr().cast(),
            iov_len: s.buf.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(slots.iter_mut())
        .map(|(iov, s)| {
            // SAFETY: an all-zero msghdr is valid; the fields set point into live buffers.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            h.msg_control = s.ctrl.as_mut_ptr().cast();
            h.msg_controllen = s.ctrl.len() as _;
            libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            }
        })
        .collect();
    // SAFETY: msgs are valid mmsghdrs whose buffers outlive the call; a null timeout with
    // MSG_DONTWAIT returns at once.
    let rc = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc <= 0 {
        return 0;
    }
    let n = rc as usize;
    let fallback = realtime_ns();
    for (k, m) in msgs.iter().take(n).enumerate() {
        let len = m.msg_len as usize;
        if !(12..256).contains(&len) {
            got.push((i64::MIN, k, 0));
            continue;
        }
        got.push((kernel_timestamp(&m.msg_hdr).unwrap_or(fallback), k, len));
    }
    n
}

/// The `SCM_TIMESTAMPNS` of a received message.
fn kernel_timestamp(h: &libc::msghdr) -> Option<i64> {
    // SAFETY: h was filled by recvmmsg; the CMSG macros walk its control buffer within
    // msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Counts one received packet.
fn account(s: &mut RxStats, p: &[u8], rx_ns: i64) {
    if rx_ns == i64::MIN || p.len() < 12 || p[0] >> 6 != 2 {
        s.stray += 1;
        return;
    }
    let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    let id = (ssrc & 0x00ff_ffff) as usize;
    if ssrc >> 24 != s.step || id >= s.streams.len() {
        s.stray += 1;
        return;
    }
    // The header stays readable under SRTP; the payload (the send time) needs the key.
    let plain;
    let p = match s.srtp.get_mut(id).and_then(Option::as_mut) {
        None => p,
        Some(srtp) => match srtp.unprotect(p, false) {
            Ok(d) => {
                plain = d;
                &plain[..]
            }
            Err(_) => {
                s.srtp_failed += 1;
                s.stray += 1;
                return;
            }
        },
    };
    if s.transcoded {
        let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        // Stream 2·call leaves the caller as G.722 and reaches the callee as Opus (48 kHz
        // RTP clock); the way back reaches the caller as G.722 (8 kHz).
        let clock: i64 = if id.is_multiple_of(2) { 48_000 } else { 8_000 };
        let st = &mut s.streams[id];
        st.received += 1;
        if let Some((last_rx, last_ts)) = st.last_arrival {
            let media_ns = i64::from(ts.wrapping_sub(last_ts) as i32) * 1_000_000_000 / clock;
            s.jitter.record(((rx_ns - last_rx) - media_ns).abs());
        }
        st.last_arrival = Some((rx_ns, ts));
        return;
    }
    if p.len() < 20 {
        s.stray += 1;
        return;
    }
    let sent = i64::from_be_bytes([p[12], p[13], p[14], p[15], p[16], p[17], p[18], p[19]]);
    let transit = rx_ns - sent;
    let st = &mut s.streams[id];
    st.received += 1;
    if let Some(last) = st.last_transit {
        s.jitter.record((transit - last).abs());
    }
    st.last_transit = Some(transit);
    s.transit.record(transit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for us in 1..=100 {
            h.record(us * 1000);
        }
        assert!((h.quantile_ms(0.5) - 0.05).abs() < 0.011);
        assert!((h.quantile_ms(0.99) - 0.099).abs() < 0.011);
        assert_eq!(Histogram::default().quantile_ms(0.99), 0.0);
    }

    #[test]
    fn packets_round_trip_through_loopback_with_kernel_timestamps() {
        let socks = bind_sockets(2).expect("bind");
        let to = socks[1].local_addr().expect("addr");
        let rx = Receiver::start(vec![socks[1].try_clone().expect("clone")]);
        rx.begin(3, 2, false);
        let mut b = SendBatch::default();
        for seq in 0..10u16 {
            let p = b.push(&socks[0], to);
            write_packet(p, ssrc(3, 1), seq, u32::from(seq) * 160, realtime_ns());
        }
        // A packet of another step is not counted.
        write_packet(b.push(&socks[0], to), ssrc(4, 1), 0, 0, realtime_ns());
        b.flush(&socks[0]);
        assert_eq!((b.sent, b.errors), (11, 0));
        let t = std::time::Instant::now();
        while rx.stats.lock().expect("lock").received(1) < 10 && t.elapsed().as_secs() < 5 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = rx.take();
        assert_eq!((s.received(1), s.received(0), s.stray), (10, 0, 1));
        assert_eq!(s.jitter.count, 9);
        assert!(s.transit.quantile_ms(1.0) < 1000.0);
    }

    #[test]
    fn srtp_packets_are_read_with_the_receiving_ends_key_and_forgeries_counted() {
        use csps::media::srtp::{SrtpKeys, Suite};
        let keys = |local: u8, remote: u8| SrtpKeys {
            suite: Suite::AesCm128Sha1_80,
            local: [local; 30],
            remote: [remote; 30],
            remote_mki: 0,
        };
        let session = |k: &SrtpKeys| SrtpSession::new(k).expect("session");
        // The gateway protects with its key (7); the receiving end knows it as its remote key.
        let mut gateway = session(&keys(7, 1));
        let mut s = RxStats {
            step: 5,
            streams: vec![StreamRx::default(); 2],
            srtp: vec![None, Some(session(&keys(1, 7)))],
            ..RxStats::default()
        };
        let mut buf = [0u8; PACKET_CAP];
        for seq in 0..3u16 {
            let len = write_packet(
                &mut buf,
                ssrc(5, 1),
                seq,
                u32::from(seq) * 160,
                realtime_ns(),
            );
            let len = protect(&mut gateway, &mut buf, len);
            assert_eq!(len, PACKET_LEN + 10, "the 80-bit tag");
            account(&mut s, &buf[..len], realtime_ns());
        }
        assert_eq!((s.received(1), s.stray, s.srtp_failed), (3, 0, 0));
        assert_eq!(
            s.transit.count, 3,
            "the send time was read from the decrypted payload"
        );
        // Protected with another key: not authenticated, not counted as received.
        let mut stranger = session(&keys(9, 1));
        let len = write_packet(&mut buf, ssrc(5, 1), 3, 480, realtime_ns());
        let len = protect(&mut stranger, &mut buf, len);
        account(&mut s, &buf[..len], realtime_ns());
        assert_eq!((s.received(1), s.stray, s.srtp_failed), (3, 1, 1));
    }
}
