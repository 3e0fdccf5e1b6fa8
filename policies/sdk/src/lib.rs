//! Guest-side bindings of the csps policy worlds (`wit/policy.wit`), one Cargo feature per world
//! (`routing`, `admission`, `quirks`; enable exactly one), plus conversions between the WIT types
//! and `csps-policy-rules`, so a policy can start from the built-in rule and change what it needs.
//!
//! ```ignore
//! use csps_policy_sdk::routing::{Guest, Route, RouteRequest};
//! struct Policy;
//! impl Guest for Policy {
//!     fn route(request: RouteRequest) -> Route { csps_policy_sdk::routing::builtin(request) }
//! }
//! csps_policy_sdk::routing::export_routing!(Policy);
//! ```

extern crate self as csps_policy_sdk;

pub use csps_policy_rules as rules;
#[doc(hidden)]
pub use wit_bindgen;

/// The `routing` world: implement [`routing::Guest`], export with `export_routing!`.
#[cfg(feature = "routing")]
pub mod routing {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "routing",
        pub_export_macro: true,
        export_macro_name: "export_routing",
        default_bindings_module: "csps_policy_sdk::routing",
        runtime_path: "csps_policy_sdk::wit_bindgen::rt",
    });

    use csps_policy_rules as rules;
    pub use exports::csps::policy::router::{
        Attribute, Caller, Destination as Route, Guest, Rejection, RouteRequest,
    };

    /// The request as the built-in rules take it.
    pub fn to_rules(r: RouteRequest) -> rules::RouteRequest {
        rules::RouteRequest {
            caller: rules::Caller {
                user: r.caller.user,
                domain: r.caller.domain,
                phone_number: r.caller.phone_number,
                device: r.caller.device,
                attributes: r
                    .caller
                    .attributes
                    .into_iter()
                    .map(|a| (a.name, a.value))
                    .collect(),
            },
            dialled: r.dialled,
            local_match: r.local_match,
        }
    }

    /// A built-in route as the WIT answer.
    pub fn from_rules(r: rules::Route) -> Route {
        match r {
            rules::Route::LocalUser(u) => Route::LocalUser(u),
            rules::Route::Teams(n) => Route::Teams(n),
            rules::Route::WebUser(u) => Route::WebUser(u),
            rules::Route::Reject { code, reason } => Route::Reject(Rejection { code, reason }),
            // Emergency calls never reach a policy; anything else unknown is refused.
            other => Route::Reject(Rejection {
                code: 500,
                reason: format!("unroutable: {other:?}"),
            }),
        }
    }

    /// The built-in routing rule, through the WIT types.
    pub fn builtin(r: RouteRequest) -> Route {
        from_rules(rules::route(&to_rules(r)))
    }
}

/// The `admission` world: implement [`admission::Guest`], export with `export_admission!`.
#[cfg(feature = "admission")]
pub mod admission {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "admission",
        pub_export_macro: true,
        export_macro_name: "export_admission",
        default_bindings_module: "csps_policy_sdk::admission",
        runtime_path: "csps_policy_sdk::wit_bindgen::rt",
    });

    use csps_policy_rules as rules;
    pub use exports::csps::policy::gatekeeper::{
        Guest, IpAddress, IpRange, RegisterRequest, Rejection, Transport, Verdict,
    };
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    /// A WIT address as a std one.
    pub fn ip(a: IpAddress) -> IpAddr {
        match a {
            IpAddress::V4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            IpAddress::V6((a, b, c, d, e, f, g, h)) => {
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
            }
        }
    }

    /// The request as the built-in rules take it.
    pub fn to_rules(r: RegisterRequest) -> rules::RegisterRequest {
        rules::RegisterRequest {
            source: SocketAddr::new(ip(r.source), r.source_port),
            transport: match r.transport {
                Transport::Udp => rules::Transport::Udp,
                Transport::Tcp => rules::Transport::Tcp,
                Transport::Tls => rules::Transport::Tls,
                Transport::Ws => rules::Transport::Ws,
                Transport::Wss => rules::Transport::Wss,
            },
            user_agent: r.user_agent,
            aor: r.aor,
            trusted: r
                .trusted_ranges
                .into_iter()
                .map(|t| rules::IpRange {
                    addr: ip(t.address),
                    prefix: t.prefix,
                })
                .collect(),
        }
    }

    /// A built-in verdict as the WIT answer.
    pub fn from_rules(v: rules::Verdict) -> Verdict {
        match v {
            rules::Verdict::Admit => Verdict::Admit,
            rules::Verdict::Reject { code, reason } => Verdict::Reject(Rejection { code, reason }),
            _ => Verdict::Challenge,
        }
    }

    /// The built-in admission rule (cSPS's trusted IPs), through the WIT types.
    pub fn builtin(r: RegisterRequest) -> Verdict {
        from_rules(rules::admit(&to_rules(r)))
    }
}

/// The `quirks` world: implement [`quirks::Guest`], export with `export_quirks!`.
#[cfg(feature = "quirks")]
pub mod quirks {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "quirks",
        pub_export_macro: true,
        export_macro_name: "export_quirks",
        default_bindings_module: "csps_policy_sdk::quirks",
        runtime_path: "csps_policy_sdk::wit_bindgen::rt",
    });

    use csps_policy_rules as rules;
    pub use exports::csps::policy::adjuster::{
        Direction, Edits, Guest, Header, HeaderEdit, Message, SdpEdit, StartLine,
    };

    /// The message as the built-in rules take it.
    pub fn to_rules(m: Message) -> rules::Message {
        rules::Message {
            direction: match m.direction {
                Direction::ToDevice => rules::Direction::ToDevice,
                Direction::FromDevice => rules::Direction::FromDevice,
            },
            start: match m.start {
                StartLine::Request(method) => rules::StartLine::Request(method),
                StartLine::Response(code) => rules::StartLine::Response(code),
            },
            headers: m.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            sdp: m.sdp,
            user_agent: m.user_agent,
        }
    }

    /// Built-in edits as the WIT answer.
    pub fn from_rules(e: rules::Edits) -> Edits {
        let header = |name, value| Header { name, value };
        Edits {
            headers: e
                .headers
                .into_iter()
                .map(|h| match h {
                    rules::HeaderEdit::Set(n, v) => HeaderEdit::Set(header(n, v)),
                    rules::HeaderEdit::Add(n, v) => HeaderEdit::Add(header(n, v)),
                    rules::HeaderEdit::Remove(n) => HeaderEdit::Remove(n),
                })
                .collect(),
            sdp: e
                .sdp
                .into_iter()
                .map(|s| match s {
                    rules::SdpEdit::DropCodec(c) => SdpEdit::DropCodec(c),
                    rules::SdpEdit::ForcePtime(p) => SdpEdit::ForcePtime(p),
                    rules::SdpEdit::StripAttribute(a) => SdpEdit::StripAttribute(a),
                })
                .collect(),
        }
    }

    /// The built-in quirks, through the WIT types.
    pub fn builtin(m: Message) -> Edits {
        from_rules(rules::adjust(&to_rules(m)))
    }
}
