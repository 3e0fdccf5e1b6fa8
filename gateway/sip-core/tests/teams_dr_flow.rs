//! The real Direct Routing captures in tests/data/teams-dr fed through the transaction layer and
//! the dialog, as the gateway's trunk will meet them: Teams' 200 to our OPTIONS keep-alive must
//! complete our client transaction, and Teams' "null REFER" must be taken as an in-dialog request
//! of the call the SBC placed to Teams, answered by a server transaction over TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use csps_sip::dialog::Dialog;
use csps_sip::headers::NameAddr;
use csps_sip::transaction::{Event, Input, Output, Transactions, TxnConfig};
use csps_sip::{Message, Method, Remote, Request, Response, SipHeaders, Transport, parse};

/// The simulated clock's origin: the only real clock reading in these tests.
#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

fn read(file: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/teams-dr")
        .join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tls(addr: &str) -> Remote {
    Remote {
        transport: Transport::Tls,
        addr: addr.parse::<SocketAddr>().expect("test address"),
        flow: None,
    }
}

fn message(bytes: &[u8]) -> Message {
    parse(bytes).expect("test message parses").message
}

fn request(text: &str) -> Request {
    match message(text.as_bytes()) {
        Message::Request(r) => r,
        Message::Response(_) => unreachable!("a request"),
    }
}

fn response(text: &str) -> Response {
    match message(text.as_bytes()) {
        Message::Response(r) => r,
        Message::Request(_) => unreachable!("a response"),
    }
}

/// The SBC's OPTIONS keep-alive to sip.pstnhub.microsoft.com, rebuilt from what Teams' 200
/// echoes (Via, Call-ID, CSeq, From tag), with the Via branch `branch`.
fn keepalive(branch: &str) -> Request {
    request(&format!(
        "OPTIONS sip:sip.pstnhub.microsoft.com:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 54.174.72.99;branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:teams.jambonz.us:5061;transport=tls>;tag=SX7B39veap93c\r\n\
         To: <sip:sip.pstnhub.microsoft.com>\r\n\
         Call-ID: dfe4b29f-51cb-1239-3b99-06ce423ffcdb\r\n\
         CSeq: 23765299 OPTIONS\r\n\
         Contact: <sip:teams.jambonz.us:5061;transport=tls>\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

/// Every event the layer reported, transmissions left aside.
fn events(t: &mut Transactions) -> (Vec<Event>, Vec<Message>) {
    let (mut ev, mut sent) = (Vec::new(), Vec::new());
    while let Some(o) = t.poll_output() {
        match o {
            Output::Event(e) => ev.push(e),
            Output::Transmit { msg, .. } => sent.push(msg),
            Output::Resend { .. } => {}
            other => panic!("unexpected output {other:?}"),
        }
    }
    (ev, sent)
}

/// Our OPTIONS keep-alive, completed by the wire-exact 200 Teams sent back.
#[test]
fn teams_200_completes_our_options_keepalive() {
    let now = t0();
    let proxy = tls("52.114.148.0:5061");
    let mut t = Transactions::new(TxnConfig::default());
    let options = keepalive("z9hG4bK1HQpp1BtBQ30N");
    let key = t
        .send_request(now, proxy, options)
        .expect("client transaction");
    let (_, sent) = events(&mut t);
    assert_eq!(sent.len(), 1, "OPTIONS sent once");

    t.handle_input(Input::Receive {
        now,
        from: proxy,
        msg: message(&read("jambonzdocs-01-200.sip")),
    });
    let (ev, _) = events(&mut t);
    let resp = ev
        .iter()
        .find_map(|e| match e {
            Event::Response { key: k, resp } if *k == key => Some(resp),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the 200 matched our OPTIONS: {ev:?}"));
    assert_eq!(resp.status, 200);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::StrayResponse { .. })),
        "{ev:?}"
    );
    // Over TLS a non-INVITE client transaction ends at once (Timer K = 0).
    t.handle_input(Input::Timeout(now));
    let (later, _) = events(&mut t);
    assert!(
        ev.iter()
            .chain(&later)
            .any(|e| matches!(e, Event::Terminated { key: k } if *k == key)),
        "{ev:?}"
    );
    assert!(t.is_empty());
}

/// A 200 whose branch is not ours (another SBC's keep-alive) completes nothing.
#[test]
fn teams_200_for_another_branch_is_stray() {
    let now = t0();
    let proxy = tls("52.114.148.0:5061");
    let mut t = Transactions::new(TxnConfig::default());
    let options = keepalive("z9hG4bKsomethingelse");
    t.send_request(now, proxy, options)
        .expect("client transaction");
    events(&mut t);
    t.handle_input(Input::Receive {
        now,
        from: proxy,
        msg: message(&read("jambonzdocs-01-200.sip")),
    });
    let (ev, _) = events(&mut t);
    assert!(
        matches!(ev.as_slice(), [Event::StrayResponse { .. }]),
        "{ev:?}"
    );
}

/// The SBC placed the call to Teams (its From tag is the REFER's To tag); Teams answered; the
/// Teams user then transfers and Teams sends the captured REFER inside that dialog.
#[test]
fn teams_null_refer_arrives_in_the_dialog_and_gets_answered() {
    let now = t0();
    let proxy = tls("52.114.132.46:5061");
    let invite = request(
        "INVITE sip:+1518xxxxxxxx@sip.pstnhub.microsoft.com:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS xxxxxxxxxxx:5061;branch=z9hG4bKsbc1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+1518xxxxxxxxxx@xxxxxxxxx>;tag=aK2619vDZeaHp\r\n\
         To: <sip:+1518xxxxxxxx@sip.pstnhub.microsoft.com>\r\n\
         Call-ID: 537ab605-5daf-123d-588e-fa6b00c9a868\r\n\
         CSeq: 7 INVITE\r\n\
         Contact: <sip:gw+teams@xxxxxxxxxxx:5061;transport=tls;gw=teams>\r\n\
         Content-Length: 0\r\n\r\n",
    );
    let ok = response(
        "SIP/2.0 200 OK\r\n\
         FROM: <sip:+1518xxxxxxxxxx@xxxxxxxxx>;tag=aK2619vDZeaHp\r\n\
         TO: <sip:+1518xxxxxxxx@sip.pstnhub.microsoft.com>;tag=415f34ad091e43d3b18e35d58d22dd76\r\n\
         CSEQ: 7 INVITE\r\n\
         CALL-ID: 537ab605-5daf-123d-588e-fa6b00c9a868\r\n\
         VIA: SIP/2.0/TLS xxxxxxxxxxx:5061;branch=z9hG4bKsbc1\r\n\
         RECORD-ROUTE: <sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n\
         RECORD-ROUTE: <sip:sip-du-a-us2.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n\
         CONTACT: <sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=b712d12c-77e8-4017-b50d-6d321507aa28;x-c=a35ae5eac0105fb38b0c8892d3467cb5/s/1/4b30e7706660465fbbd332a888abd49a>\r\n\
         CONTENT-LENGTH: 0\r\n\r\n",
    );
    let mut dialog = Dialog::uac(&invite, &ok).expect("dialog from the 200");
    assert_eq!(
        dialog.remote_target.param("x-c"),
        Some(Some(
            "a35ae5eac0105fb38b0c8892d3467cb5/s/1/4b30e7706660465fbbd332a888abd49a"
        )),
        "Microsoft's opaque Contact parameters kept for in-dialog requests"
    );
    assert_eq!(dialog.route_set.len(), 2, "both Record-Route entries kept");
    assert!(dialog.route_set[0].contains("us2"), "reversed for the UAC");

    let bytes = read("fsissue2406-01-REFER.sip");
    let mut t = Transactions::new(TxnConfig::default());
    t.handle_input(Input::Receive {
        now,
        from: proxy,
        msg: message(&bytes),
    });
    let (ev, _) = events(&mut t);
    let (key, refer) = match ev.as_slice() {
        [Event::Request { key, req, .. }] => (*key, req.clone()),
        other => panic!("one new server transaction: {other:?}"),
    };
    assert_eq!(refer.method, Method::Refer);
    assert!(dialog.matches(&refer), "Call-ID and both tags match");
    assert!(dialog.accept_remote_seq(&refer), "CSeq 1 is Teams' first");

    // The "null REFER": Refer-To names the Teams proxy itself, not a user to call.
    let refer_to =
        NameAddr::parse(refer.headers.get("Refer-To").expect("Refer-To")).expect("Refer-To parses");
    assert!(refer_to.uri.user.is_none());
    assert_eq!(refer_to.uri.host, "sip.pstnhub.microsoft.com");
    assert!(refer_to.uri.param("x-m").is_some());

    let accepted = refer.response(202, "Accepted");
    let to = accepted.to_hdr().expect("To");
    assert_eq!(
        to.tag(),
        Some("aK2619vDZeaHp"),
        "in-dialog: our tag already there"
    );
    t.respond(now, &key, accepted).expect("202 sent");
    let (_, sent) = events(&mut t);
    let [Message::Response(r)] = sent.as_slice() else {
        panic!("one response sent: {sent:?}")
    };
    assert_eq!(r.status, 202);
    assert_eq!(
        r.headers.get("Via"),
        Some("SIP/2.0/TLS 52.114.132.46:5061;branch=z9hG4bK9404dadc"),
        "Teams' Via echoed"
    );
    assert_eq!(r.call_id(), Some("537ab605-5daf-123d-588e-fa6b00c9a868"));

    // Over TLS the server transaction ends with its final response (Timer J = 0), so a REFER
    // Teams repeats (after a reconnect) reaches the app again: the dialog's CSeq check is what
    // refuses it (§12.2.2, 500), not the transaction layer.
    t.handle_input(Input::Timeout(now));
    events(&mut t);
    t.handle_input(Input::Receive {
        now,
        from: proxy,
        msg: message(&bytes),
    });
    let (ev, _) = events(&mut t);
    let [Event::Request { req: again, .. }] = ev.as_slice() else {
        panic!("the repeat is a new server transaction: {ev:?}")
    };
    assert!(dialog.matches(again));
    assert!(
        !dialog.accept_remote_seq(again),
        "a replayed CSeq is refused"
    );
}
