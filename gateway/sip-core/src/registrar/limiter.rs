//! Brute-force limiter: failed digest responses counted per (account, source IP) and per source IP
//! over a window; past the limit the pair (or the IP) is locked out for a cooldown. Everything is
//! keyed by IP, each IP holding a short list of the accounts that failed from it (short because
//! the IP itself is locked after `IP_FACTOR × limit` failures). Entries are forgotten once their
//! windows and lockouts have passed, through a time-ordered heap: no request scans the table.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Most source IPs tracked; past it new sources are not counted (a flood of distinct addresses
/// cannot grow memory without bound, and each of them is still challenged).
const MAX_IPS: usize = 200_000;

/// How many times the per-account limit one IP may fail across accounts.
pub(crate) const IP_FACTOR: u32 = 4;

#[derive(Clone, Copy, Debug)]
struct Counter {
    window_start: SystemTime,
    count: u32,
    locked_until: Option<SystemTime>,
}

impl Counter {
    fn new(now: SystemTime) -> Self {
        Counter {
            window_start: now,
            count: 0,
            locked_until: None,
        }
    }

    fn deadline(&self, window: Duration) -> SystemTime {
        let w = self.window_start + window;
        match self.locked_until {
            Some(l) if l > w => l,
            _ => w,
        }
    }

    fn locked(&self, now: SystemTime) -> bool {
        self.locked_until.is_some_and(|l| l > now)
    }

    /// Counts a failure; true when it starts a lockout.
    fn bump(&mut self, now: SystemTime, limit: u32, window: Duration, lockout: Duration) -> bool {
        if now
            .duration_since(self.window_start)
            .is_ok_and(|d| d > window)
        {
            self.window_start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.count >= limit && !self.locked(now) {
            self.locked_until = Some(now + lockout);
            return true;
        }
        false
    }
}

struct IpEntry {
    ip: Counter,
    accounts: Vec<(Box<str>, Counter)>,
}

impl IpEntry {
    fn deadline(&self, window: Duration) -> SystemTime {
        self.accounts
            .iter()
            .map(|(_, c)| c.deadline(window))
            .fold(self.ip.deadline(window), SystemTime::max)
    }
}

/// The limiter's table.
#[derive(Default)]
pub(crate) struct Limiter {
    ips: HashMap<IpAddr, IpEntry>,
    due: BinaryHeap<Reverse<(SystemTime, IpAddr)>>,
}

impl Limiter {
    /// True when `account` (if any) from `ip`, or `ip` as a whole, is locked out at `now`.
    pub(crate) fn locked(&self, account: Option<&str>, ip: IpAddr, now: SystemTime) -> bool {
        let Some(e) = self.ips.get(&ip) else {
            return false;
        };
        e.ip.locked(now)
            || account.is_some_and(|a| e.accounts.iter().any(|(k, c)| &**k == a && c.locked(now)))
    }

    /// Counts one failed attempt for `account` (when known) from `ip`; returns how many lockouts
    /// it started (0, 1 or 2).
    pub(crate) fn fail(
        &mut self,
        account: Option<&str>,
        ip: IpAddr,
        now: SystemTime,
        limit: u32,
        window: Duration,
        lockout: Duration,
    ) -> u32 {
        let limit = limit.max(1);
        if !self.ips.contains_key(&ip) {
            if self.ips.len() >= MAX_IPS {
                return 0;
            }
            self.due.push(Reverse((now + window, ip)));
        }
        let e = self.ips.entry(ip).or_insert_with(|| IpEntry {
            ip: Counter::new(now),
            accounts: Vec::new(),
        });
        let mut started = 0;
        if let Some(a) = account {
            let i = match e.accounts.iter().position(|(k, _)| &**k == a) {
                Some(i) => i,
                None => {
                    e.accounts.push((a.into(), Counter::new(now)));
                    e.accounts.len() - 1
                }
            };
            started += u32::from(e.accounts[i].1.bump(now, limit, window, lockout));
        }
        started += u32::from(e.ip.bump(now, limit.saturating_mul(IP_FACTOR), window, lockout));
        started
    }

    /// Forgets entries whose windows and lockouts are over. Each IP sits in the heap once; an IP
    /// still active when its time comes is pushed again with its new deadline.
    pub(crate) fn purge(&mut self, now: SystemTime, window: Duration) {
        while let Some(&Reverse((t, ip))) = self.due.peek() {
            if t > now {
                break;
            }
            self.due.pop();
            let Some(e) = self.ips.get_mut(&ip) else {
                continue;
            };
            e.accounts.retain(|(_, c)| c.deadline(window) > now);
            let d = e.deadline(window);
            if d > now {
                self.due.push(Reverse((d, ip)));
            } else {
                self.ips.remove(&ip);
            }
        }
    }

    /// Source IPs tracked.
    pub(crate) fn len(&self) -> usize {
        self.ips.len()
    }
}
