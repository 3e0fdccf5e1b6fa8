//! RFC 3261 §7 (message syntax) and §18.3 (stream framing), as properties: the parser never
//! panics, encoding then parsing a well-formed request gives it back, and `frame` recovers every
//! message of a stream however the bytes are split.

use bytes::Bytes;
use csps_sip::validate::check_request;
use csps_sip::{Frame, Headers, Message, Method, Request, Uri, frame, parse};
use proptest::prelude::*;

/// Bounded case counts keep the file under ~20 s in a debug build; `PROPTEST_CASES` overrides
/// them as it does for any proptest (ProptestConfig::default reads the environment).
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        base
    } else {
        ProptestConfig { cases, ..base }
    }
}

const FIXTURES: &[&str] = &[
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
    "badinv01",
    "clerr",
    "ncl",
    "scalar02",
    "scalarlg",
    "quotbal",
    "ltgtruri",
    "lwsruri",
    "lwsstart",
    "trws",
    "escruri",
    "baddate",
    "regbadct",
    "badaspec",
    "baddn",
    "badvers",
    "mismatch01",
    "mismatch02",
    "bigcode",
    "badbranch",
    "insuf",
    "unkscm",
    "novelsc",
    "unksm2",
    "bext01",
    "invut",
    "regaut01",
    "multi01",
    "mcl01",
    "bcast",
    "zeromf",
    "cparam01",
    "cparam02",
    "regescrt",
    "sdp01",
    "inv2543",
];

fn fixture(i: usize) -> Vec<u8> {
    let name = FIXTURES[i % FIXTURES.len()];
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/rfc4475")
        .join(format!("{name}.sip"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Everything a caller does with untrusted bytes; only a panic can fail it.
fn exercise(bytes: &[u8]) {
    let _ = frame(bytes);
    match parse(bytes) {
        Ok(p) => {
            assert!(p.consumed <= bytes.len());
            if let Message::Request(r) = &p.message
                && let Err(rej) = check_request(r, &["path"])
            {
                let _ = Message::Response(rej.to_response(r)).to_bytes();
            }
            let _ = p.message.to_bytes();
        }
        Err(e) => {
            if let Some(resp) = e.to_response() {
                let _ = Message::Response(resp).to_bytes();
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let special = prop_oneof![
        Just(b"\r\n".to_vec()),
        Just(b"\r\n ".to_vec()),
        Just(b":".to_vec()),
        Just(b";".to_vec()),
        Just(b",".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"<".to_vec()),
        Just(b"%".to_vec()),
        Just(b"\xff".to_vec()),
        Just(b"\0".to_vec()),
        proptest::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), special).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut buf: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = buf.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if let Some(x) = buf.get_mut(i % len) {
                    *x = *b;
                }
            }
            Mutation::Insert(i, v) => {
                let at = (i % (buf.len() + 1)).min(buf.len());
                buf.splice(at..at, v.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = i % len;
                let end = (at + n).min(buf.len());
                if at < end {
                    buf.drain(at..end);
                }
            }
            Mutation::Truncate(i) => buf.truncate(i % len),
        }
    }
    buf
}

// ---- generators for well-formed requests ----

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,11}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9]{0,6}){0,3}",
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        Just("[2001:db8::1]".to_owned()),
    ]
}

fn sip_uri() -> impl Strategy<Value = Uri> {
    (
        prop_oneof![Just("sip"), Just("sips")],
        proptest::option::of("[a-zA-Z0-9+][a-zA-Z0-9_.!~*'()&=+$,;?/-]{0,15}(%[0-9A-F]{2})?"),
        host(),
        proptest::option::of(1u16..),
        proptest::collection::vec(
            (
                "[a-z][a-z0-9-]{0,8}",
                proptest::option::of("[a-zA-Z0-9.:+$-]{1,10}"),
            ),
            0..4,
        ),
        proptest::option::of("[A-Za-z-]{1,8}=[a-zA-Z0-9]{1,8}(%[0-9A-F]{2})?"),
    )
        .prop_map(|(scheme, user, host, port, params, headers)| Uri {
            scheme: scheme.to_owned(),
            user,
            host,
            port,
            params,
            headers,
            opaque: None,
        })
}

fn any_uri() -> impl Strategy<Value = Uri> {
    prop_oneof![
        4 => sip_uri(),
        1 => "\\+?[0-9]{3,12}(;phone-context=[a-z.]{1,10})?".prop_map(|n| Uri {
            scheme: "tel".into(),
            user: None,
            host: String::new(),
            port: None,
            params: Vec::new(),
            headers: None,
            opaque: Some(n),
        }),
    ]
}

fn name_addr() -> impl Strategy<Value = String> {
    (
        proptest::option::of("[a-zA-Z0-9 ,;<>@\"\\\\äö€]{0,12}"),
        sip_uri(),
        proptest::option::of(token()),
    )
        .prop_map(|(display, uri, tag)| {
            let na = csps_sip::headers::NameAddr {
                display,
                uri,
                params: tag
                    .map(|t| vec![("tag".to_owned(), Some(t))])
                    .unwrap_or_default(),
            };
            na.to_string()
        })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just("INVITE".to_owned()),
        Just("REGISTER".to_owned()),
        Just("OPTIONS".to_owned()),
        Just("BYE".to_owned()),
        Just("REFER".to_owned()),
        "[A-Z]{3,10}",
        token(),
    ]
    .prop_map(|m| Method::from_token(&m))
}

/// A header value with no CR/LF and no surrounding whitespace (what parsing leaves of one).
fn header_value() -> impl Strategy<Value = String> {
    "[ -~äöü€\t]{0,40}".prop_map(|v| v.trim_matches([' ', '\t']).to_owned())
}

fn request() -> impl Strategy<Value = Request> {
    (
        method(),
        any_uri(),
        (host(), token(), 0u32..(1 << 31)),
        (name_addr(), name_addr(), "[a-zA-Z0-9.@-]{1,30}", 0u8..=255),
        proptest::collection::vec(("X-[A-Za-z0-9-]{1,12}", header_value()), 0..6),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(method, uri, (via_host, branch, seq), (from, to, call_id, mf), extra, body)| {
                let mut headers = Headers::new();
                headers.push(
                    "Via",
                    format!("SIP/2.0/UDP {via_host};branch=z9hG4bK{branch}"),
                );
                headers.push("From", from);
                headers.push("To", to);
                headers.push("Call-ID", call_id);
                headers.push("CSeq", format!("{seq} {method}"));
                headers.push("Max-Forwards", mf.to_string());
                for (n, v) in extra {
                    headers.push(&n, v);
                }
                Request {
                    method,
                    uri,
                    headers,
                    body: Bytes::from(body),
                }
            },
        )
}

fn encode(r: &Request) -> Vec<u8> {
    Message::Request(r.clone()).to_bytes()
}

/// What parsing gives back: the same request with the Content-Length `encode` appended.
fn as_received(r: &Request) -> Request {
    let mut r = r.clone();
    r.headers.push("Content-Length", r.body.len().to_string());
    r
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        exercise(&bytes);
    }

    #[test]
    fn parse_never_panics_on_sip_shaped_noise(
        lines in proptest::collection::vec("[ -~\t]{0,30}", 0..12),
        start in prop_oneof![Just("INVITE sip:a@b SIP/2.0"), Just("SIP/2.0 200 OK"), Just("")],
        eol in prop_oneof![Just("\r\n"), Just("\n")],
    ) {
        let mut s = start.to_owned();
        for l in lines {
            s.push_str(eol);
            s.push_str(&l);
        }
        s.push_str(eol);
        s.push_str(eol);
        exercise(s.as_bytes());
    }

    #[test]
    fn parse_never_panics_on_mutated_torture_messages(
        which in any::<usize>(),
        muts in proptest::collection::vec(mutation(), 1..6),
    ) {
        exercise(&apply(fixture(which), &muts));
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn encode_then_parse_gives_the_request_back(req in request()) {
        let wire = encode(&req);
        let p = parse(&wire).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&wire))))?;
        prop_assert_eq!(p.consumed, wire.len());
        prop_assert_eq!(p.message, Message::Request(as_received(&req)));
        // Well-formed requests with a sip/sips/tel URI and no URI headers pass validation.
        if req.uri.headers.is_none() {
            prop_assert_eq!(check_request(&as_received(&req), &[]), Ok(()));
        }
        // And so does the same request split into stream reads.
        prop_assert_eq!(frame(&wire), Frame::Message(wire.len()));
    }

    #[test]
    fn frame_recovers_every_message_of_a_stream(
        reqs in proptest::collection::vec(request(), 1..5),
        pings in proptest::collection::vec(any::<bool>(), 5),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            if pings[i] {
                stream.extend_from_slice(b"\r\n\r\n");
            }
            let m = encode(r);
            stream.extend_from_slice(&m);
            expected.push(m);
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut buf: Vec<u8> = Vec::new();
        let (mut got, mut pings_seen, mut last) = (Vec::new(), 0, 0);
        for cut in cuts {
            buf.extend_from_slice(&stream[last..cut]);
            last = cut;
            loop {
                match frame(&buf) {
                    Frame::Message(n) => {
                        got.push(buf[..n].to_vec());
                        buf.drain(..n);
                    }
                    Frame::KeepAlive(n) => {
                        prop_assert_eq!(n, 4, "only pings were sent");
                        pings_seen += 1;
                        buf.drain(..n);
                    }
                    Frame::Incomplete => break,
                    Frame::Invalid(why) => return Err(TestCaseError::fail(why)),
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(pings_seen, pings.iter().take(reqs.len()).filter(|p| **p).count());
        prop_assert_eq!(got, expected);
    }
}
