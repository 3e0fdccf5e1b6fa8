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
//!
//! # `no_std`
//! The SDK, the rules and the policies in this folder are `#![no_std]` with `alloc`: Rust's std
//! on `wasm32-wasip2` imports `wasi:cli` and `wasi:io` (for printing a panic message) and adds
//! core modules to the component, which the host must instantiate for every decision. Without
//! them a component is one core module with no imports, and a decision costs a fraction. The SDK
//! supplies what std would: the allocator (`dlmalloc`, std's own on WASM) and a panic handler that
//! traps (the host counts the trap and answers with its built-in rule). A policy that wants std
//! enables the SDK's `std` feature, which leaves both to std; it works, only slower.

#![no_std]

extern crate self as csps_policy_sdk;

#[doc(hidden)]
pub extern crate alloc;

#[cfg(all(target_arch = "wasm32", not(feature = "std")))]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The canonical ABI's allocator export, through which the host passes a request in. std on
/// `wasm32-wasip2` provides it (and wit-bindgen leaves it to std there); without std, the SDK does.
///
/// # Safety
/// Called by the host only, as the component model's `cabi_realloc` contract says: `old_ptr` and
/// `old_len` describe an earlier allocation of this function (or `old_len` is 0), `align` is a
/// power of two.
#[cfg(all(target_arch = "wasm32", not(feature = "std")))]
#[unsafe(export_name = "cabi_realloc")]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};
    if new_len == 0 {
        return align as *mut u8;
    }
    let ptr = unsafe {
        if old_len == 0 {
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        // Out of memory (the host's cap): end the decision as a trap.
        core::arch::wasm32::unreachable()
    }
    ptr
}

/// A panic ends the decision as a trap; the host falls back to its built-in rule.
#[cfg(all(target_arch = "wasm32", not(feature = "std")))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

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

    use alloc::format;
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

    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use csps_policy_rules as rules;
    pub use exports::csps::policy::gatekeeper::{
        Guest, IpAddress, IpRange, RegisterRequest, Rejection, Transport, Verdict,
    };

    /// A WIT address as a `core::net` one.
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

    use alloc::vec::Vec;
    use csps_policy_rules as rules;
    pub use exports::csps::policy::adjuster::{
        Direction, Edits, Guest, Header, HeaderEdit, Interest, Message, SdpEdit, StartLine,
    };
    pub use rules::header_fields;

    fn direction(d: Direction) -> rules::Direction {
        match d {
            Direction::ToDevice => rules::Direction::ToDevice,
            Direction::FromDevice => rules::Direction::FromDevice,
        }
    }

    /// The message as the built-in rules take it.
    pub fn to_rules(m: Message) -> rules::Message {
        rules::Message {
            direction: direction(m.direction),
            start: match m.start {
                StartLine::Request(method) => rules::StartLine::Request(method),
                StartLine::Response(code) => rules::StartLine::Response(code),
            },
            headers: m.headers,
            sdp: m.sdp,
            user_agent: m.user_agent,
        }
    }

    /// Built-in interests as the WIT answer.
    pub fn interests_from_rules(i: Vec<rules::Interest>) -> Vec<Interest> {
        i.into_iter()
            .map(|i| Interest {
                user_agents: i.user_agents,
                direction: i.direction.map(|d| match d {
                    rules::Direction::ToDevice => Direction::ToDevice,
                    rules::Direction::FromDevice => Direction::FromDevice,
                }),
                methods: i.methods,
                responses: i.responses,
                sdp_only: i.sdp_only,
            })
            .collect()
    }

    /// The messages the built-in quirks edit (every device family they know, to the device), as
    /// the WIT answer: a policy that keeps the built-in quirks for other devices adds its own.
    pub fn builtin_interests() -> Vec<Interest> {
        interests_from_rules(rules::interest())
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
