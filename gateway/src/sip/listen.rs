//! Listener specifications (`udp:127.0.0.1:5060`, `tcp:[::1]:5060`, `tls:0.0.0.0:5061`,
//! `ws:0.0.0.0:8080`, `wss:0.0.0.0:8443`) as given
//! by `--sip-listen` and `CSPS_SIP_LISTEN`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use csps_sip::Transport;

/// One SIP listener: a transport and a local address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    /// Transport.
    pub transport: Transport,
    /// Address to bind.
    pub addr: SocketAddr,
}

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (proto, addr) = s.split_once(':').ok_or_else(|| {
            format!("`{s}`: expected transport:address:port, e.g. udp:0.0.0.0:5060")
        })?;
        let transport = match proto.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            other => {
                return Err(format!(
                    "`{s}`: unknown transport `{other}` (udp, tcp, tls, ws, wss)"
                ));
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("`{s}`: `{addr}` is not an address:port (IPv6 in brackets)"))?;
        Ok(ListenSpec { transport, addr })
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

/// The listeners used when none are given: UDP and TCP on port 5060, all IPv4 addresses.
pub fn default_listeners() -> Vec<ListenSpec> {
    let any: SocketAddr = ([0, 0, 0, 0], 5060).into();
    vec![
        ListenSpec {
            transport: Transport::Udp,
            addr: any,
        },
        ListenSpec {
            transport: Transport::Tcp,
            addr: any,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let s: ListenSpec = "udp:127.0.0.1:5060".parse().expect("udp");
        assert_eq!(s.transport, Transport::Udp);
        let s: ListenSpec = "tcp:[::1]:5062".parse().expect("v6");
        assert_eq!(s.addr.port(), 5062);
        assert!(s.addr.is_ipv6());
        assert_eq!(s.to_string(), "tcp:[::1]:5062");
        assert!("TLS:0.0.0.0:5061".parse::<ListenSpec>().is_ok());
        let s: ListenSpec = "wss:0.0.0.0:8443".parse().expect("wss");
        assert_eq!(s.transport, Transport::Wss);
        assert_eq!(s.to_string(), "wss:0.0.0.0:8443");
        assert!("sctp:0.0.0.0:1".parse::<ListenSpec>().is_err());
        assert!("udp:localhost".parse::<ListenSpec>().is_err());
    }
}
