//! Locating the trunk's proxies (RFC 3263 §4 for `sips:` over TLS), the pure part: what a
//! `Data.SipConfig.TeamsProxies` entry asks for, which NAPTR records name a SIP-over-TLS service,
//! the RFC 2782 order of SRV records (random source injected), and which names a proxy's
//! certificate may carry. The driver does the lookups (see [`super::driver`]).
//!
//! - `host:port`, or an IP literal without a port: that host (its A/AAAA at each connect, §4.2);
//!   an IP literal alone is on port 5061.
//! - a domain without a port: NAPTR of the domain, its `SIPS+D2T` records (flag `s`) by order and
//!   preference, each naming an SRV record; with no usable NAPTR, SRV `_sips._tcp.<domain>`; each
//!   SRV target is one proxy, in RFC 2782 order; with no SRV either, the domain itself on 5061.
//!
//! **TLS identity.** RFC 5922 §4 says the certificate must name the configured domain, not the
//! SRV target (DNS without DNSSEC is unauthenticated, so a forged SRV answer must not choose whose
//! certificate is acceptable). Microsoft's proxies present certificates for their host names
//! (`sip.pstnhub.microsoft.com`, `*.pstnhub.microsoft.com`), never for a bare service domain, so
//! the strict rule would refuse the real service. The gateway therefore accepts the configured
//! domain *or* the SRV target when that target lies inside the configured domain: a forged answer
//! can then only lead to a host whose certificate the domain's owner had issued, which keeps
//! RFC 5922's point, and both Microsoft's certificates and the emulator's test CA (SANs `sip`,
//! `sip2`, `sip3.pstnhub.microsoft.com`) verify. A target outside the domain must present the
//! domain itself. The Request-URI of a call names the target host, as Teams expects its own name.

use std::net::IpAddr;

/// The port of SIP over TLS when DNS or the entry names none (RFC 3261 §19.1.2).
pub const SIPS_PORT: u16 = 5061;

/// What one configured entry asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A host (name or IP literal) and port: connect there (A/AAAA of the name at each connect).
    Host {
        /// The name or IP literal (without brackets).
        host: String,
        /// The port.
        port: u16,
    },
    /// A domain without a port: located by NAPTR, SRV, then A/AAAA.
    Domain(String),
}

impl Entry {
    /// Reads an entry: `host:port`, `[v6]:port`, `[v6]`, an IPv4 literal, or a domain.
    pub fn parse(s: &str) -> Option<Entry> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix('[') {
            let (v6, tail) = rest.split_once(']')?;
            let port = match tail {
                "" => SIPS_PORT,
                t => t.strip_prefix(':')?.parse().ok()?,
            };
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            return Some(Entry::Host {
                host: v6.to_owned(),
                port,
            });
        }
        if s.parse::<IpAddr>().is_ok() {
            return Some(Entry::Host {
                host: s.to_owned(),
                port: SIPS_PORT,
            });
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !host.contains(':') => Some(Entry::Host {
                host: host.to_owned(),
                port: port.parse().ok().filter(|&p| p > 0)?,
            }),
            Some(_) => None,
            None if !s.is_empty() => Some(Entry::Domain(s.trim_end_matches('.').to_owned())),
            None => None,
        }
    }
}

/// One NAPTR record, as much of it as RFC 3263 reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naptr {
    /// Processed lowest first.
    pub order: u16,
    /// Among equal orders, lowest first.
    pub preference: u16,
    /// `s`: the replacement names an SRV record.
    pub flags: String,
    /// `SIPS+D2T` is SIP over TLS over TCP (RFC 3263 §4.1).
    pub service: String,
    /// The SRV name to look up.
    pub replacement: String,
}

/// The SRV names the NAPTR records offer for SIP over TLS, in the order to try them: records
/// with service `SIPS+D2T` and flag `s`, by order then preference (RFC 3263 §4.1, RFC 3403).
pub fn sips_srv_names(records: &[Naptr]) -> Vec<String> {
    let mut usable: Vec<&Naptr> = records
        .iter()
        .filter(|r| {
            r.service.eq_ignore_ascii_case("SIPS+D2T")
                && r.flags.eq_ignore_ascii_case("s")
                && !r.replacement.is_empty()
                && r.replacement != "."
        })
        .collect();
    usable.sort_by_key(|r| (r.order, r.preference));
    let mut names: Vec<String> = Vec::new();
    for r in usable {
        let name = r.replacement.trim_end_matches('.').to_owned();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    /// Lowest tried first.
    pub priority: u16,
    /// Share of the choice among equal priorities.
    pub weight: u16,
    /// The target's port.
    pub port: u16,
    /// The target host (no trailing dot); `.` means the service is not offered.
    pub target: String,
}

/// The SRV records in the order to try them (RFC 2782): by priority; within a priority, a
/// weighted random choice, repeated. `pick(total)` draws uniformly from `0..=total`. A lone
/// record with target `.` (service decidedly not offered) gives nothing.
pub fn order_srv(mut records: Vec<Srv>, mut pick: impl FnMut(u32) -> u32) -> Vec<Srv> {
    records.retain(|r| r.target != "." && !r.target.is_empty());
    // Weight 0 first within a priority, as RFC 2782 asks before the running sums.
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let end = records
            .iter()
            .take_while(|r| r.priority == priority)
            .count();
        let mut group: Vec<Srv> = records.drain(..end).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let x = pick(total).min(total);
            let mut sum = 0;
            let i = group
                .iter()
                .position(|r| {
                    sum += u32::from(r.weight);
                    sum >= x
                })
                .unwrap_or(0);
            out.push(group.remove(i));
        }
    }
    out
}

/// The names a proxy's certificate may carry: the configured `domain` and, when `target` lies
/// inside it, the target (see the module doc); the target first (it is also the TLS SNI).
pub fn tls_names(domain: &str, target: &str) -> Vec<String> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let t = target.trim_end_matches('.').to_ascii_lowercase();
    if t == d {
        vec![d]
    } else if t.ends_with(&format!(".{d}")) {
        vec![t, d]
    } else {
        vec![d]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str, port: u16) -> Option<Entry> {
        Some(Entry::Host {
            host: h.into(),
            port,
        })
    }

    #[test]
    fn entries_with_a_port_or_an_address_are_hosts_and_bare_names_are_domains() {
        assert_eq!(
            Entry::parse("sip.pstnhub.microsoft.com:5061"),
            host("sip.pstnhub.microsoft.com", 5061)
        );
        assert_eq!(Entry::parse("127.0.0.1:40000"), host("127.0.0.1", 40000));
        assert_eq!(Entry::parse("127.0.0.1"), host("127.0.0.1", 5061));
        assert_eq!(Entry::parse("[::1]:5071"), host("::1", 5071));
        assert_eq!(Entry::parse("[::1]"), host("::1", 5061));
        assert_eq!(
            Entry::parse("pstnhub.microsoft.com."),
            Some(Entry::Domain("pstnhub.microsoft.com".into()))
        );
        for bad in ["", "x:0", "x:y", "[x]:1", "[::1]5061", ":5061", "a:b:1"] {
            assert_eq!(Entry::parse(bad), None, "{bad}");
        }
    }

    fn naptr(order: u16, preference: u16, flags: &str, service: &str, to: &str) -> Naptr {
        Naptr {
            order,
            preference,
            flags: flags.into(),
            service: service.into(),
            replacement: to.into(),
        }
    }

    #[test]
    fn only_sips_over_tcp_naptr_records_count_in_order_then_preference() {
        let records = [
            naptr(10, 50, "s", "SIP+D2U", "_sip._udp.example.com."),
            naptr(20, 10, "s", "SIPS+D2T", "_sips._tcp.late.example.com."),
            naptr(10, 60, "S", "sips+d2t", "_sips._tcp.b.example.com."),
            naptr(10, 55, "s", "SIPS+D2T", "_sips._tcp.a.example.com."),
            naptr(5, 1, "u", "SIPS+D2T", "!^.*$!sips:x@example.com!"),
            naptr(5, 1, "s", "SIPS+D2T", "."),
            naptr(30, 1, "s", "SIPS+D2T", "_sips._tcp.a.example.com."),
        ];
        assert_eq!(
            sips_srv_names(&records),
            [
                "_sips._tcp.a.example.com",
                "_sips._tcp.b.example.com",
                "_sips._tcp.late.example.com"
            ]
        );
        assert!(sips_srv_names(&records[..1]).is_empty(), "UDP only");
    }

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5061,
            target: target.into(),
        }
    }

    fn targets(v: &[Srv]) -> Vec<&str> {
        v.iter().map(|s| s.target.as_str()).collect()
    }

    #[test]
    fn srv_records_go_by_priority_then_weighted_choice() {
        let records = vec![
            srv(20, 0, "sip3"),
            srv(10, 10, "sip2"),
            srv(10, 30, "sip"),
            srv(30, 5, "backup"),
        ];
        // pick always draws 0: the first record with a running sum >= 0 (the first listed, here
        // sip2 as listed in its priority group).
        assert_eq!(
            targets(&order_srv(records.clone(), |_| 0)),
            ["sip2", "sip", "sip3", "backup"]
        );
        // pick draws the total: the last record of the group.
        assert_eq!(
            targets(&order_srv(records.clone(), |t| t)),
            ["sip", "sip2", "sip3", "backup"]
        );
        // 11..=40 of 0..=40 chooses sip (weight 30) first.
        let mut draws = vec![11, 0].into_iter();
        assert_eq!(
            targets(&order_srv(records, |_| draws.next().unwrap_or(0))),
            ["sip", "sip2", "sip3", "backup"]
        );
    }

    #[test]
    fn zero_weights_come_first_and_are_chosen_only_by_a_zero_draw() {
        let records = vec![srv(1, 10, "heavy"), srv(1, 0, "zero")];
        assert_eq!(
            targets(&order_srv(records.clone(), |_| 0)),
            ["zero", "heavy"]
        );
        assert_eq!(targets(&order_srv(records, |_| 1)), ["heavy", "zero"]);
        let no_service = vec![srv(0, 0, ".")];
        assert!(order_srv(no_service, |_| 0).is_empty());
    }

    #[test]
    fn the_weighted_choice_follows_the_weights() {
        // A deterministic generator over the whole range: each draw 0..=total once.
        let records = vec![srv(1, 1, "light"), srv(1, 3, "heavy")];
        let mut firsts = [0; 2];
        for x in 0..=4u32 {
            let first = order_srv(records.clone(), |_| x);
            firsts[usize::from(first[0].target == "heavy")] += 1;
        }
        // 0 and 1 pick light, 2..=4 heavy (the zero draw is RFC 2782's bias towards the first).
        assert_eq!(firsts, [2, 3]);
    }

    #[test]
    fn a_certificate_may_name_the_domain_or_a_target_inside_it() {
        assert_eq!(
            tls_names("pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com."),
            ["sip2.pstnhub.microsoft.com", "pstnhub.microsoft.com"]
        );
        assert_eq!(
            tls_names("teams.example.com", "sip.pstnhub.microsoft.com"),
            ["teams.example.com"],
            "a target outside the domain must present the domain (RFC 5922 §4)"
        );
        assert_eq!(
            tls_names("example.com", "evilexample.com"),
            ["example.com"],
            "inside means a label boundary"
        );
        assert_eq!(tls_names("Example.com", "example.com"), ["example.com"]);
    }
}
