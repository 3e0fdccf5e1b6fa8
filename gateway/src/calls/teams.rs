//! The decisions for calls that cross the Direct Routing trunk, kept free of sockets: who may
//! call out and under which identity (the activated user's E.164 number, asserted by the
//! gateway), which proxy takes the call, and which local user a call from Teams is for. The
//! switch carries them out with the same call task as local calls.

use csps_sip::headers::NameAddr;
use csps_sip::registrar::Accounts;
use csps_sip::{Remote, Request, Uri};

use super::b2bua::Sbc;
use crate::sip::accounts::AccountCache;
use crate::trunk::{Paths, SBC_PORT};

/// The Warning text of a call to or from Teams refused for an account that is not activated.
pub const NOT_ACTIVATED: &str = "account not activated for Teams";

/// Why a call to or from Teams is refused: the status and the Warning text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// SIP status.
    pub status: u16,
    /// Warning text (RFC 3261 §20.43, code 399).
    pub warning: String,
}

impl Refusal {
    fn new(status: u16, warning: impl Into<String>) -> Refusal {
        Refusal {
            status,
            warning: warning.into(),
        }
    }
}

/// A call out through the trunk, ready for the call task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The proxy's connection.
    pub to: Remote,
    /// `sip:<number>@<proxy host>;user=phone`.
    pub uri: Uri,
    /// From and P-Asserted-Identity: the caller's E.164 number at the gateway's FQDN.
    pub caller: String,
    /// To: the dialled number at the proxy.
    pub callee: String,
    /// How the gateway names itself on the leg.
    pub sbc: Sbc,
}

/// The call to `number` from `caller` (None: an unauthenticated emergency call) through the
/// trunk: only an activated account with an E.164 number calls Teams, except that an emergency
/// number goes out for anyone; the first proxy that is up takes it.
pub fn outgoing(
    number: &str,
    caller: Option<(&str, &str)>,
    emergency: bool,
    accounts: &AccountCache,
    paths: &Paths,
) -> Result<Outgoing, Refusal> {
    let ready = caller.is_some_and(|(u, d)| accounts.teams_ready(u, d));
    if !ready && !emergency {
        return Err(Refusal::new(403, NOT_ACTIVATED));
    }
    if !paths.configured() {
        return Err(Refusal::new(
            503,
            format!("routed to Teams as {number}: no Teams trunk is configured"),
        ));
    }
    let Some(proxy) = paths.current() else {
        return Err(Refusal::new(503, "no Teams trunk proxy is reachable"));
    };
    let Some(to) = proxy.flow else {
        return Err(Refusal::new(503, "no Teams trunk proxy is reachable"));
    };
    let number = sanitize(number).ok_or_else(|| Refusal::new(484, "not a dialable number"))?;
    let host = uri_host(&proxy.host);
    let uri = Uri::parse(&format!("sip:{number}@{host};user=phone"))
        .map_err(|_| Refusal::new(484, "not a dialable number"))?;
    let e164 = caller.and_then(|(u, d)| accounts.phone_number(u, d).and_then(sanitize));
    let fqdn = &paths.fqdn;
    let identity = match &e164 {
        Some(n) => format!("sip:{n}@{fqdn};user=phone"),
        None => format!("sip:anonymous@{fqdn}"),
    };
    let display = caller.and_then(|(u, d)| accounts.display_name(u, d));
    let caller_value = match display {
        Some(name) => format!("{} <{identity}>", super::quote(name)),
        None => format!("<{identity}>"),
    };
    Ok(Outgoing {
        to,
        uri,
        caller: caller_value,
        callee: format!("<sip:{number}@{host};user=phone>"),
        sbc: Sbc {
            fqdn: fqdn.clone(),
            port: SBC_PORT,
            user: e164.unwrap_or_else(|| "csps".to_owned()),
        },
    })
}

/// A call from Teams, ready for the forks: the local user it rings and the caller the phones see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The callee's username.
    pub user: String,
    /// Its domain.
    pub domain: String,
    /// The caller as the phones see it: the Teams caller's number at the callee's domain.
    pub caller: String,
    /// The Teams party, for the call's record: `sip:<number>@<proxy>`.
    pub party: String,
    /// How the gateway names itself towards the trunk.
    pub sbc: Sbc,
}

/// The local user an INVITE from the trunk is for: the account whose E.164 number is the
/// Request-URI's user; 404 for an unknown number, 403 when that account is not activated.
/// `dialled` is the Request-URI's user part, percent-decoded.
pub fn incoming(
    req: &Request,
    dialled: &str,
    accounts: &AccountCache,
    fqdn: &str,
) -> Result<Incoming, Refusal> {
    let dialled = dialled.to_owned();
    let found = accounts.by_number(&dialled).or_else(|| {
        (!dialled.starts_with('+'))
            .then(|| accounts.by_number(&format!("+{dialled}")))
            .flatten()
    });
    let Some((user, domain)) = found.filter(|(u, d)| accounts.lookup(u, d).is_some()) else {
        return Err(Refusal::new(
            404,
            format!("no user has the number {dialled}"),
        ));
    };
    if !accounts.teams_ready(user, domain) {
        return Err(Refusal::new(403, NOT_ACTIVATED));
    }
    let from = req
        .headers
        .get("From")
        .and_then(|f| NameAddr::parse(f).ok());
    let number = from
        .as_ref()
        .and_then(|f| f.uri.user.as_deref())
        .and_then(sanitize)
        .unwrap_or_else(|| "anonymous".to_owned());
    let display = from
        .as_ref()
        .and_then(|f| f.display.as_deref())
        .map(str::trim)
        .filter(|d| !d.is_empty());
    let uri = format!("sip:{number}@{domain}");
    let caller = match display {
        Some(d) => format!("{} <{uri}>", super::quote(d)),
        None => format!("<{uri}>"),
    };
    let party = from
        .map(|f| format!("sip:{number}@{}", f.uri.host))
        .unwrap_or_else(|| format!("sip:{number}@teams"));
    Ok(Incoming {
        user: user.to_owned(),
        domain: domain.to_owned(),
        caller,
        party,
        sbc: Sbc {
            fqdn: fqdn.to_owned(),
            port: SBC_PORT,
            user: dialled_user(&dialled),
        },
    })
}

/// A new leg through the trunk for a REFER from Teams, ready for the call's transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referred {
    /// The proxy's connection.
    pub to: Remote,
    /// The Refer-To URI, parameters kept, header part dropped.
    pub uri: Uri,
    /// How the gateway names itself on the new leg; the call sets [`Sbc::user`] to the
    /// transferee's number, as its Teams leg named it.
    pub sbc: Sbc,
}

/// Where a REFER from Teams moves the call: a new INVITE through the trunk to the Refer-To URI
/// itself. It names a number at the proxy (a transfer to another party) or, in the "null
/// REFER", the proxy itself with its `x-m` parameter and no user part: that INVITE is how
/// Teams moves the call onto its own media. The first proxy that is up takes it (else the one
/// the REFER came on).
pub fn referred(refer_to: &Uri, from: Remote, paths: &Paths) -> Result<Referred, Refusal> {
    if !refer_to.is_sip() {
        return Err(Refusal::new(400, "Refer-To is not a SIP URI"));
    }
    if let Some(u) = refer_to.user.as_deref()
        && sanitize(u).is_none()
    {
        return Err(Refusal::new(484, "not a dialable number"));
    }
    Ok(Referred {
        to: paths.current().and_then(|p| p.flow).unwrap_or(from),
        // `?Replaces=…` and other headers are not for Teams.
        uri: Uri {
            headers: None,
            ..refer_to.clone()
        },
        sbc: Sbc {
            fqdn: paths.fqdn.clone(),
            port: SBC_PORT,
            user: "csps".to_owned(),
        },
    })
}

/// A number as it may appear in a SIP URI's user part: `+` and digits (and `*#` for service
/// codes) only, so nothing from a phone or the network can smuggle parameters in.
fn sanitize(n: &str) -> Option<String> {
    let n = n.trim();
    let digits = n.strip_prefix('+').unwrap_or(n);
    (!digits.is_empty()
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || c == '*' || c == '#'))
    .then(|| n.to_owned())
}

fn dialled_user(n: &str) -> String {
    sanitize(n).unwrap_or_else(|| "csps".to_owned())
}

/// A host for a URI: an IPv6 literal gets its brackets.
fn uri_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::User;
    use crate::trunk::Path;
    use csps_sip::{FlowId, Message, Transport, parse};

    fn user(name: &str, number: Option<&str>, activated: bool) -> User {
        User {
            id: uuid::Uuid::new_v4(),
            username: name.into(),
            domain: "csps.local".into(),
            display_name: Some(format!("{name} display")),
            upn: None,
            phone_number: number.map(str::to_owned),
            enabled: true,
            activated,
            ha1: Vec::new(),
            created_at: chrono::Utc::now(),
            teams: Default::default(),
        }
    }

    fn accounts() -> AccountCache {
        AccountCache::from_users(&[
            user("alice", Some("+14255550100"), true),
            user("bob", Some("+14255550101"), false),
            user("carol", None, true),
        ])
    }

    fn flow(n: u64) -> Remote {
        Remote {
            transport: Transport::Tls,
            addr: ([127, 0, 0, 1], 5060 + n as u16).into(),
            flow: Some(FlowId(n)),
        }
    }

    fn paths(up: [bool; 2]) -> Paths {
        Paths {
            fqdn: "sbc1.csps.test".into(),
            proxies: vec![
                Path {
                    host: "sip.pstnhub.microsoft.com".into(),
                    flow: Some(flow(1)),
                    up: up[0],
                },
                Path {
                    host: "sip2.pstnhub.microsoft.com".into(),
                    flow: Some(flow(2)),
                    up: up[1],
                },
            ],
        }
    }

    #[test]
    fn an_activated_user_calls_out_as_their_number_through_the_first_proxy_up() {
        let a = accounts();
        let out = outgoing(
            "+12065550123",
            Some(("alice", "csps.local")),
            false,
            &a,
            &paths([true, true]),
        )
        .expect("goes out");
        assert_eq!(out.to, flow(1));
        assert_eq!(
            out.uri.to_string(),
            "sip:+12065550123@sip.pstnhub.microsoft.com;user=phone"
        );
        assert_eq!(
            out.caller,
            "\"alice display\" <sip:+14255550100@sbc1.csps.test;user=phone>"
        );
        assert_eq!(out.sbc.user, "+14255550100");
        let second = outgoing(
            "+12065550123",
            Some(("alice", "csps.local")),
            false,
            &a,
            &paths([false, true]),
        )
        .expect("goes out");
        assert_eq!(second.to, flow(2), "failover to the next proxy up");
        assert!(second.callee.contains("sip2.pstnhub.microsoft.com"));
    }

    #[test]
    fn not_activated_or_numberless_accounts_get_403_but_emergency_goes_out() {
        let a = accounts();
        let p = paths([true, true]);
        for who in ["bob", "carol"] {
            let r = outgoing("+12065550123", Some((who, "csps.local")), false, &a, &p);
            assert_eq!(r, Err(Refusal::new(403, NOT_ACTIVATED)), "{who}");
        }
        let e = outgoing("112", Some(("bob", "csps.local")), true, &a, &p).expect("emergency");
        assert_eq!(
            e.uri.to_string(),
            "sip:112@sip.pstnhub.microsoft.com;user=phone"
        );
        assert!(
            e.caller.contains("sip:+14255550101@sbc1.csps.test"),
            "{}",
            e.caller
        );
        let anon = outgoing("112", None, true, &a, &p).expect("unauthenticated emergency");
        assert!(anon.caller.contains("anonymous@sbc1.csps.test"));
        assert_eq!(
            outgoing("112", None, true, &a, &paths([false, false])).map_err(|r| r.status),
            Err(503)
        );
        assert_eq!(
            outgoing("112", None, true, &a, &Paths::default()).map_err(|r| r.status),
            Err(503)
        );
        assert_eq!(
            outgoing("+1;x=y", Some(("alice", "csps.local")), false, &a, &p).map_err(|r| r.status),
            Err(484),
            "nothing but digits reaches the Request-URI"
        );
    }

    #[test]
    fn a_refer_from_teams_goes_to_its_refer_to_through_the_first_proxy_up() {
        let p = paths([false, true]);
        // The "null REFER" Teams sent (tests/data/teams-dr): Refer-To the proxy itself.
        let captured = include_str!("../../../tests/data/teams-dr/fsissue2406-01-REFER.sip");
        let refer_to = captured
            .lines()
            .find_map(|l| l.strip_prefix("REFER-TO:"))
            .expect("the capture has a Refer-To");
        let null = NameAddr::parse(refer_to.trim())
            .expect("the null REFER's Refer-To parses")
            .uri;
        assert_eq!(null.user, None);
        assert_eq!(
            null.param("x-m"),
            Some(Some("8:orgid:dfcba638-4ecd-4382-8095-6160fb18aa16"))
        );
        let r = referred(&null, flow(1), &p).expect("the null REFER");
        assert_eq!(r.to, flow(2), "the proxy that is up");
        assert_eq!(r.uri.to_string(), null.to_string(), "parameters kept");
        assert_eq!(r.sbc.fqdn, "sbc1.csps.test");
        let number = Uri::parse("sip:+12065550177@sip.pstnhub.microsoft.com;user=phone?X=y")
            .expect("parses");
        let r = referred(&number, flow(1), &Paths::default()).expect("a number");
        assert_eq!(r.to, flow(1), "no proxy up: the one the REFER came on");
        assert_eq!(
            r.uri.to_string(),
            "sip:+12065550177@sip.pstnhub.microsoft.com;user=phone"
        );
        let bad = Uri::parse("sip:x;y@sip.pstnhub.microsoft.com").expect("parses");
        assert_eq!(referred(&bad, flow(1), &p).map_err(|r| r.status), Err(484));
        let tel = Uri::parse("tel:+12065550177").expect("parses");
        assert_eq!(referred(&tel, flow(1), &p).map_err(|r| r.status), Err(400));
    }

    /// A Direct-Routing-shaped INVITE (upper-case names, several Record-Route, `x-i`/`x-c`
    /// Contact parameters, History-Info), as the emulator sends it.
    fn dr_in(to: &str, a: &AccountCache, fqdn: &str) -> Result<Incoming, Refusal> {
        incoming(&dr_invite(to), to, a, fqdn)
    }

    fn dr_invite(to: &str) -> Request {
        let text = format!(
            "INVITE sip:{to}@sbc1.csps.test:5061;user=phone;transport=tls SIP/2.0\r\n\
             FROM: \"Teams Caller\" <sip:+12065550123@sip.pstnhub.microsoft.com:5061;user=phone>;tag=abc\r\n\
             TO: <sip:{to}@sbc1.csps.test:5061;user=phone>\r\n\
             CSEQ: 1 INVITE\r\n\
             CALL-ID: 4f1e2d3c-emu\r\n\
             MAX-FORWARDS: 69\r\n\
             VIA: SIP/2.0/TLS 52.114.132.46:5061;branch=z9hG4bKdeadbeef\r\n\
             RECORD-ROUTE: <sip:sip-du-a-euwe.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n\
             RECORD-ROUTE: <sip:sip.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n\
             CONTACT: <sip:api-du-a-euwe.pstnhub.microsoft.com:443;x-i=b712d12c;x-c=a35ae5ea/s/1/4b30e7>\r\n\
             HISTORY-INFO: <sip:alice@contoso.com>;index=1\r\n\
             SESSION-EXPIRES: 3600\r\n\
             MIN-SE: 90\r\n\
             SUPPORTED: timer\r\n\
             CONTENT-LENGTH: 0\r\n\r\n"
        );
        match parse(text.as_bytes()).expect("parses").message {
            Message::Request(r) => r,
            Message::Response(_) => panic!("a request"),
        }
    }

    #[test]
    fn a_call_from_teams_rings_the_owner_of_the_number_or_is_refused() {
        let a = accounts();
        let inc = dr_in("+14255550100", &a, "sbc1.csps.test").expect("alice");
        assert_eq!(
            (inc.user.as_str(), inc.domain.as_str()),
            ("alice", "csps.local")
        );
        assert_eq!(inc.caller, "\"Teams Caller\" <sip:+12065550123@csps.local>");
        assert_eq!(inc.party, "sip:+12065550123@sip.pstnhub.microsoft.com");
        assert_eq!(inc.sbc.user, "+14255550100");
        assert_eq!(
            dr_in("+14255550101", &a, "f"),
            Err(Refusal::new(403, NOT_ACTIVATED))
        );
        assert_eq!(
            dr_in("+19999999999", &a, "f").map_err(|r| r.status),
            Err(404)
        );
    }
}
