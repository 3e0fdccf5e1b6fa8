//! RFC 4475 (SIP Torture Test Messages): every message in tests/data/rfc4475 is handled as its
//! INDEX.tsv row says, plus the Teams Direct Routing captures in tests/data/teams-dr.

use std::collections::BTreeMap;
use std::path::PathBuf;

use csps_sip::headers::{Contacts, NameAddr};
use csps_sip::message::SipHeaders;
use csps_sip::validate::check_request;
use csps_sip::{Frame, Message, Method, Request, Response, frame, parse};
use sha2::{Digest, Sha256};

/// Option tags this element implements, as the gateway will pass them.
const SUPPORTED: &[&str] = &["path", "outbound", "gruu", "replaces", "timer", "100rel"];

fn data_dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(sub)
}

fn read(sub: &str, file: &str) -> Vec<u8> {
    let p = data_dir(sub).join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn torture(name: &str) -> Vec<u8> {
    read("rfc4475", &format!("{name}.sip"))
}

/// How the gateway ends up treating a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Parsed and passed validation (a response: parsed).
    Accept,
    /// Answered with this status (from the parser or from validation).
    Answer(u16),
    /// Dropped silently.
    Drop,
}

fn outcome(bytes: &[u8]) -> Outcome {
    match parse(bytes) {
        Ok(p) => match p.message {
            Message::Request(r) => match check_request(&r, SUPPORTED) {
                Ok(()) => Outcome::Accept,
                Err(rej) => Outcome::Answer(rej.status),
            },
            Message::Response(_) => Outcome::Accept,
        },
        Err(e) if e.request.is_some() => Outcome::Answer(e.status),
        Err(_) => Outcome::Drop,
    }
}

fn request(name: &str) -> Request {
    match parse(&torture(name)).map(|p| p.message) {
        Ok(Message::Request(r)) => r,
        other => panic!("{name}: expected a request, got {other:?}"),
    }
}

fn response(name: &str) -> Response {
    match parse(&torture(name)).map(|p| p.message) {
        Ok(Message::Response(r)) => r,
        other => panic!("{name}: expected a response, got {other:?}"),
    }
}

fn contacts(r: &Request) -> Vec<NameAddr> {
    match r.contacts() {
        Some(Ok(Contacts::List(l))) => l,
        other => panic!("expected a contact list, got {other:?}"),
    }
}

/// The expected outcome of each message, read from INDEX.tsv's handling column.
fn expected() -> BTreeMap<&'static str, Outcome> {
    use Outcome::*;
    [
        // §3.1.1 valid: parse and accept.
        ("wsinv", Accept),
        ("intmeth", Accept),
        ("esc01", Accept),
        ("escnull", Accept),
        ("esc02", Accept),
        ("lwsdisp", Accept),
        ("longreq", Accept),
        ("dblreq", Accept),
        ("semiuri", Accept),
        ("transports", Accept),
        ("mpart01", Accept),
        ("unreason", Accept),
        ("noreason", Accept),
        // §3.1.2 invalid.
        ("badinv01", Answer(400)),
        ("clerr", Answer(400)),
        ("ncl", Answer(400)),
        ("scalar02", Answer(400)),
        ("scalarlg", Drop),
        ("quotbal", Answer(400)),
        ("ltgtruri", Answer(400)),
        ("lwsruri", Answer(400)),
        ("lwsstart", Answer(400)),
        ("trws", Answer(400)),
        ("escruri", Answer(400)),
        ("baddate", Accept),
        ("regbadct", Answer(400)),
        ("badaspec", Answer(400)),
        ("baddn", Answer(400)),
        ("badvers", Answer(505)),
        ("mismatch01", Answer(400)),
        ("mismatch02", Answer(400)),
        ("bigcode", Drop),
        ("badbranch", Accept),
        // §3.3 application layer.
        ("insuf", Answer(400)),
        ("unkscm", Answer(416)),
        ("novelsc", Answer(416)),
        ("unksm2", Answer(400)),
        ("bext01", Answer(420)),
        ("invut", Accept),
        ("regaut01", Accept),
        ("multi01", Answer(400)),
        ("mcl01", Answer(400)),
        ("bcast", Accept),
        ("zeromf", Accept),
        ("cparam01", Accept),
        ("cparam02", Accept),
        ("regescrt", Accept),
        ("sdp01", Accept),
        ("inv2543", Accept),
    ]
    .into_iter()
    .collect()
}

fn index_rows(sub: &str) -> Vec<Vec<String>> {
    let text = String::from_utf8(read(sub, "INDEX.tsv")).expect("INDEX.tsv is UTF-8");
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

#[test]
fn fixtures_match_sha256sums() {
    for sub in ["rfc4475", "teams-dr"] {
        let sums = String::from_utf8(read(sub, "SHA256SUMS")).expect("UTF-8");
        let mut n = 0;
        for line in sums.lines().filter(|l| !l.is_empty()) {
            let (hash, file) = line.split_once("  ").expect("sha256sum format");
            let digest = Sha256::digest(read(sub, file));
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                hex, hash,
                "{sub}/{file} differs from SHA256SUMS (CRLF lost?)"
            );
            n += 1;
        }
        let sip_files = std::fs::read_dir(data_dir(sub))
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sip"))
            })
            .count();
        assert_eq!(n, sip_files, "{sub}: every .sip file is listed");
    }
}

#[test]
fn every_message_is_handled_as_index_says() {
    let rows = index_rows("rfc4475");
    assert_eq!(rows.len(), 49);
    let expected = expected();
    assert_eq!(expected.len(), 49);
    let mut wrong = Vec::new();
    for row in &rows {
        let name = row[0].as_str();
        let want = *expected
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no expected outcome"));
        // The validity column and the expectation agree: a `valid` message is never dropped or
        // refused with 400 by the parser itself (a higher layer's 4xx is fine).
        if row[2] == "valid" {
            assert!(
                parse(&torture(name)).is_ok(),
                "{name} is valid and must parse"
            );
        }
        let got = outcome(&torture(name));
        if got != want {
            wrong.push(format!("{name}: expected {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn answers_carry_a_warning_and_are_well_formed() {
    for (name, want) in expected() {
        let Outcome::Answer(status) = want else {
            continue;
        };
        let bytes = torture(name);
        let resp = match parse(&bytes) {
            Ok(p) => {
                let Message::Request(r) = p.message else {
                    panic!("{name}: request expected")
                };
                check_request(&r, SUPPORTED)
                    .expect_err("rejected")
                    .to_response(&r)
            }
            Err(e) => e.to_response().expect("answerable"),
        };
        assert_eq!(resp.status, status, "{name}");
        let warning = resp.headers.get("Warning").expect("Warning header");
        assert!(warning.starts_with("399 csps \""), "{name}: {warning}");
        let wire = Message::Response(resp.clone()).to_bytes();
        assert!(wire.ends_with(b"Content-Length: 0\r\n\r\n"), "{name}");
        // Where the request's From/To/CSeq were readable, our own answer must read back.
        let readable = ["From", "To"].iter().all(|h| {
            resp.headers
                .get(h)
                .is_some_and(|v| NameAddr::parse(v).is_ok())
        });
        if readable && resp.cseq().is_some() && resp.top_via().is_some() {
            let back = parse(&wire).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut sent = resp;
            sent.headers.push("Content-Length", "0");
            assert_eq!(back.message, Message::Response(sent), "{name}");
        }
    }
}

#[test]
fn valid_messages_read_right() {
    // wsinv: folding everywhere, odd case and spacing in names, compact forms.
    let r = request("wsinv");
    assert_eq!(r.max_forwards(), Some(68));
    assert_eq!(
        r.cseq().map(|c| (c.seq, c.method)),
        Some((9, Method::Invite))
    );
    assert_eq!(r.headers.values("Via").count(), 3);
    assert_eq!(r.top_via().map(|v| v.transport), Some("UDP".into()));
    assert_eq!(
        r.to_hdr()
            .and_then(|t| t.tag().map(str::to_owned))
            .as_deref(),
        Some("1918181833n")
    );
    assert_eq!(
        r.from_hdr().and_then(|f| f.display),
        Some(r#"J Rosenberg \""#.to_owned())
    );
    assert_eq!(
        r.headers.get("NewFangledHeader"),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(r.headers.get("Subject"), Some(""));
    assert_eq!(r.body.len(), 150);
    let c = contacts(&r);
    assert_eq!(c[0].param("q"), Some(Some("0.33")));

    // intmeth: exotic method token, user part and control bytes in a quoted display name.
    let r = request("intmeth");
    assert_eq!(
        r.method.as_str(),
        "!interesting-Method0123456789_*+`.%indeed'~"
    );
    assert!(
        r.uri
            .user
            .as_deref()
            .is_some_and(|u| u.ends_with("(doesn't-it)"))
    );
    assert_eq!(r.uri.host, "example.com");
    let to = r.to_hdr().expect("To");
    assert!(to.display.as_deref().is_some_and(|d| d.contains('\0')));
    assert_eq!(
        r.headers.get("extensionHeader-!.%*+_`'~"),
        Some("\u{feff}大停電")
    );

    // esc01: escapes stay escaped, but compare equal in the AOR.
    let r = request("esc01");
    assert_eq!(r.uri.user.as_deref(), Some("sips%3Auser%40example.com"));
    assert_eq!(
        r.to_hdr().map(|t| t.uri.aor()).as_deref(),
        Some("sip:user@example.com")
    );
    let c = contacts(&r);
    assert_eq!(c[0].uri.param("%6C%72"), Some(None));
    assert_eq!(c[0].uri.param("n%61me"), Some(Some("v%61lue%25%34%31")));

    // escnull: %00 neither truncates the AOR nor merges the two contacts.
    let r = request("escnull");
    assert_eq!(
        r.to_hdr().map(|t| t.uri.aor()).as_deref(),
        Some("sip:null-%00-null@example.com")
    );
    let c = contacts(&r);
    assert_eq!(c.len(), 2);
    assert_ne!(c[0].uri, c[1].uri);
    assert_eq!(c[1].uri.user_unescaped().as_deref(), Some(&b"\0\0"[..]));

    // esc02: the method is RE%47IST%45R, not REGISTER; C%6Fntact is not Contact.
    let r = request("esc02");
    assert_eq!(r.method, Method::Other("RE%47IST%45R".into()));
    assert_eq!(contacts(&r).len(), 2);
    assert_eq!(r.to_hdr().and_then(|t| t.display).as_deref(), Some("%Z%45"));

    let r = request("lwsdisp");
    assert_eq!(
        r.from_hdr().and_then(|f| f.display).as_deref(),
        Some("caller")
    );

    let r = request("longreq");
    assert_eq!(r.headers.values("Via").count(), 34);
    assert!(
        r.to_hdr()
            .and_then(|t| t.display)
            .is_some_and(|d| d.len() > 90)
    );
    assert_eq!(
        r.body.len(),
        r.headers
            .get("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    );

    // dblreq: the REGISTER only; the INVITE-like tail is not consumed.
    let bytes = torture("dblreq");
    let p = parse(&bytes).expect("dblreq");
    assert!(p.consumed < bytes.len());
    assert!(bytes[p.consumed..].starts_with(b"\r\nINVITE "));
    assert!(matches!(p.message, Message::Request(ref r) if r.method == Method::Register));

    let r = request("semiuri");
    assert_eq!(r.uri.user.as_deref(), Some("user;par=u%40example.net"));
    assert_eq!(r.uri.host, "example.com");
    assert!(r.uri.params.is_empty());
    assert_eq!(r.headers.values("Accept").count(), 6);

    let r = request("transports");
    let transports: Vec<String> = r
        .headers
        .values("Via")
        .filter_map(|v| csps_sip::headers::Via::parse(v).ok())
        .map(|v| v.transport)
        .collect();
    assert_eq!(transports, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);

    // mpart01: a binary multipart body framed by Content-Length alone.
    let bytes = torture("mpart01");
    let p = parse(&bytes).expect("mpart01");
    let Message::Request(r) = p.message else {
        panic!("request")
    };
    assert_eq!(r.body.len(), 553);
    assert_eq!(r.headers.get("Content-Length"), Some("553"));
    assert!(r.body.ends_with(b"--7a9cbec02ceef655--\r\n"));
    assert_eq!(p.consumed, bytes.len());

    let resp = response("unreason");
    assert_eq!(resp.status, 200);
    assert!(resp.reason.starts_with("= 2**3 * 5**2 но сто"));
    let resp = response("noreason");
    assert_eq!((resp.status, resp.reason.as_str()), (100, ""));
}

#[test]
fn application_layer_messages_read_right() {
    let r = request("unkscm");
    assert_eq!(r.uri.scheme, "nobodyknowsthisscheme");
    assert_eq!(r.uri.opaque.as_deref(), Some("totallyopaquecontent"));
    let r = request("novelsc");
    assert_eq!(r.uri.to_string(), "soap.beep://192.0.2.103:3002");

    let r = request("unksm2");
    assert_eq!(r.to_hdr().map(|t| t.uri.scheme), Some("isbn".into()));
    let rej = check_request(&r, SUPPORTED).expect_err("registrar refuses");
    assert!(rej.warning.contains("address-of-record"), "{}", rej.warning);

    let r = request("bext01");
    let rej = check_request(&r, SUPPORTED).expect_err("420");
    assert_eq!(
        rej.headers,
        [(
            "Unsupported".to_owned(),
            "nothingSupportsThis, nothingSupportsThisEither, noProxiesSupportThis, \
             norDoAnyProxiesSupportThis"
                .to_owned()
        )]
    );
    let resp = rej.to_response(&r);
    assert_eq!(
        resp.headers.get("Unsupported"),
        Some(rej.headers[0].1.as_str())
    );

    let r = request("zeromf");
    assert_eq!(r.max_forwards(), Some(0));

    // cparam01: an addr-spec's ';' starts contact params; cparam02: inside <> it is a URI param.
    let c = contacts(&request("cparam01"));
    assert!(c[0].uri.params.is_empty());
    assert_eq!(c[0].param("unknownparam"), Some(None));
    let c = contacts(&request("cparam02"));
    assert_eq!(c[0].uri.param("unknownparam"), Some(None));
    assert!(c[0].params.is_empty());

    let c = contacts(&request("regescrt"));
    assert_eq!(
        c[0].uri.headers.as_deref(),
        Some("Route=%3Csip:sip.example.com%3E")
    );
    assert_eq!(
        c[0].uri.to_string(),
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    );

    // inv2543: no Content-Length over UDP, so the body runs to the end of the datagram.
    let bytes = torture("inv2543");
    let p = parse(&bytes).expect("inv2543");
    let Message::Request(r) = p.message else {
        panic!("request")
    };
    assert!(r.body.starts_with(b"v=0\r\n"));
    assert_eq!(p.consumed, bytes.len());
    assert_eq!(
        r.top_via().and_then(|v| v.branch().map(str::to_owned)),
        None
    );

    let r = request("badbranch");
    assert_eq!(
        r.top_via()
            .and_then(|v| v.rfc3261_branch().map(str::to_owned)),
        None
    );

    let resp = response("bcast");
    assert_eq!(resp.headers.values("Via").count(), 2);
    assert_eq!(resp.body.len(), 154);
}

#[test]
fn invalid_messages_fail_for_the_right_reason() {
    let reason = |name: &str| parse(&torture(name)).expect_err(name).reason;
    assert!(reason("clerr").contains("Content-Length"));
    assert!(reason("ncl").contains("Content-Length"));
    assert!(reason("mcl01").contains("Content-Length"));
    assert!(reason("ltgtruri").contains("Request-URI"));
    assert!(reason("lwsruri").contains("Request-URI"));
    assert!(reason("lwsstart").contains("Request-URI"));
    assert!(reason("trws").contains("trailing whitespace"));
    let e = parse(&torture("badvers")).expect_err("badvers");
    assert_eq!(e.status, 505);
    assert_eq!(
        e.request.as_ref().map(|r| r.method.clone()),
        Some(Method::Options)
    );
    // ltgtruri: the unreadable Request-URI is kept raw, never as a routable URI.
    let e = parse(&torture("ltgtruri")).expect_err("ltgtruri");
    let r = e.request.expect("answerable");
    assert!(!r.uri.is_sip());
    assert_eq!(r.uri.opaque.as_deref(), Some("<sip:user@example.com>"));
    // Responses nobody can match are dropped without a request to answer.
    for name in ["bigcode", "scalarlg"] {
        assert!(parse(&torture(name)).expect_err(name).request.is_none());
    }
    let warn = |name: &str| {
        check_request(&request(name), SUPPORTED)
            .expect_err(name)
            .warning
    };
    assert!(warn("multi01").contains("more than one"));
    assert!(warn("mismatch01").contains("CSeq method"));
    assert!(warn("scalar02").contains("out of range"));
    assert!(warn("insuf").contains("missing"));
    assert!(warn("escruri").contains("Request-URI carries headers"));
    assert!(warn("quotbal").starts_with("To:"));
    assert!(warn("badaspec").starts_with("To:"));
    assert!(warn("baddn").starts_with("From:"));
    assert!(warn("regbadct").contains("addr-spec"));
    assert!(warn("badinv01").contains("Via"));
}

#[test]
fn streams_frame_torture_messages_like_datagrams() {
    for name in expected().keys() {
        let bytes = torture(name);
        let f = frame(&bytes);
        match *name {
            // No Content-Length, a negative one, two different ones: the stream must be closed.
            "inv2543" | "ncl" | "mcl01" => assert!(matches!(f, Frame::Invalid(_)), "{name}: {f:?}"),
            // 9999 bytes announced: wait for more.
            "clerr" => assert_eq!(f, Frame::Incomplete, "{name}"),
            _ => match parse(&bytes) {
                Ok(p) => assert_eq!(f, Frame::Message(p.consumed), "{name}"),
                Err(_) => assert!(matches!(f, Frame::Message(_)), "{name}: {f:?}"),
            },
        }
    }
}

#[test]
fn teams_direct_routing_messages() {
    let rows = index_rows("teams-dr");
    assert_eq!(rows.len(), 2);

    let bytes = read("teams-dr", "fsissue2406-01-REFER.sip");
    assert_eq!(bytes.len(), 1094);
    let p = parse(&bytes).expect("REFER");
    assert_eq!(p.consumed, bytes.len());
    let Message::Request(r) = p.message else {
        panic!("request")
    };
    assert_eq!(r.method, Method::Refer);
    assert_eq!(r.call_id(), Some("537ab605-5daf-123d-588e-fa6b00c9a868"));
    assert_eq!(
        r.cseq().map(|c| (c.seq, c.method)),
        Some((1, Method::Refer))
    );
    assert_eq!(r.max_forwards(), Some(70));
    assert_eq!(r.uri.param("gw"), Some(Some("teams")));
    let via = r.top_via().expect("Via");
    assert_eq!((via.transport.as_str(), via.port), ("TLS", Some(5061)));
    let refer_to = r
        .headers
        .get("Refer-To")
        .map(NameAddr::parse)
        .expect("Refer-To")
        .expect("readable");
    assert_eq!(refer_to.uri.host, "sip.pstnhub.microsoft.com");
    assert_eq!(refer_to.uri.param("transport"), Some(Some("tls")));
    assert_eq!(
        refer_to.uri.param("x-m"),
        Some(Some("8:orgid:dfcba638-4ecd-4382-8095-6160fb18aa16"))
    );
    let by = r.headers.get("r").is_some();
    assert!(by, "compact r: finds Refer-To");
    let referred_by =
        NameAddr::parse(r.headers.get("Referred-By").expect("Referred-By")).expect("readable");
    assert!(
        referred_by
            .uri
            .param("x-tt")
            .flatten()
            .is_some_and(|v| v.ends_with("%3D"))
    );
    let c = contacts(&r);
    assert_eq!(c[0].uri.port, Some(443));
    assert_eq!(
        c[0].uri.param("x-i"),
        Some(Some("b712d12c-77e8-4017-b50d-6d321507aa28"))
    );
    assert!(
        c[0].uri
            .param("x-c")
            .flatten()
            .is_some_and(|v| v.contains("/s/1/"))
    );
    assert_eq!(r.headers.values("Allow").count(), 6);
    check_request(&r, SUPPORTED).expect("a Teams REFER passes validation");

    let bytes = read("teams-dr", "jambonzdocs-01-200.sip");
    assert_eq!(bytes.len(), 376);
    let p = parse(&bytes).expect("200");
    let Message::Response(resp) = p.message else {
        panic!("response")
    };
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"));
    assert_eq!(resp.call_id(), Some("dfe4b29f-51cb-1239-3b99-06ce423ffcdb"));
    assert_eq!(
        resp.cseq().map(|c| (c.seq, c.method)),
        Some((23765299, Method::Options))
    );
    assert_eq!(
        resp.from_hdr()
            .and_then(|f| f.tag().map(str::to_owned))
            .as_deref(),
        Some("SX7B39veap93c")
    );
    assert!(
        resp.headers
            .get("Server")
            .is_some_and(|s| s.starts_with("Microsoft.PSTNHub"))
    );
    assert_eq!(frame(&bytes), Frame::Message(376));
}
