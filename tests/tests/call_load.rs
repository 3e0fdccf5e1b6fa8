//! The call benchmark stays working: a short `csps-loadgen calls` run (a few calls with RTP both
//! ways through the gateway for 2 s, then a second of call setups; a few transcoded calls; a few
//! SRTP calls) must set up and end every call and deliver every RTP packet. Its numbers are not
//! checked: they come from the full run in the README.

use std::process::Command;

use csps_tests::{find_workspace_bin, skip, usable_csps_bin};

/// The whitespace-separated cells of the table row that follows `header` in `out`.
fn row_after<'a>(out: &'a str, header: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| !l.trim_start().starts_with(header))
        .nth(1)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default()
}

/// Runs `csps-loadgen calls` against the built gateway: 10 calls up for 2 s, then `args`; its
/// table output, or `None` after [`skip`] when a binary is missing.
fn loadgen_calls(args: &[&str]) -> Option<String> {
    let csps = match usable_csps_bin() {
        Ok(b) => b,
        Err(why) => {
            skip(&why);
            return None;
        }
    };
    let Some(loadgen) = find_workspace_bin("csps-loadgen", "CSPS_LOADGEN_BIN") else {
        skip("csps-loadgen not built: run `cargo build --release --workspace --bins`");
        return None;
    };
    let out = Command::new(&loadgen)
        .args(["calls", "--csps-bin"])
        .arg(&csps)
        .args([
            "--accounts",
            "10",
            "--concurrency",
            "10",
            "--hold-secs",
            "2",
            "--ramp-rate",
            "100",
        ])
        .args(args)
        .output()
        .expect("run csps-loadgen");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "csps-loadgen failed:\n{text}\n{err}");
    Some(text)
}

/// The concurrency row of 10 calls for 2 s: every call answered, every packet delivered.
fn assert_ten_calls_lost_nothing(text: &str) {
    // calls answered failed rtp-sent loss% …
    let calls = row_after(text, "calls answered");
    assert!(calls.len() > 4, "no concurrency row:\n{text}");
    assert_eq!(
        &calls[..3],
        ["10", "10", "0"],
        "calls, answered, failed:\n{text}"
    );
    let sent: u64 = calls[3].parse().expect("rtp sent");
    // 10 calls × 2 directions × 50 packets/s × ≥ 2 s.
    assert!(sent >= 2000, "too few RTP packets sent:\n{text}");
    assert_eq!(calls[4], "0.000", "RTP loss:\n{text}");
}

#[test]
fn loadgen_calls_relay_every_packet_of_a_few_calls() {
    let Some(text) = loadgen_calls(&[
        "--setup-rates",
        "20",
        "--setup-secs",
        "1",
        "--pause-secs",
        "0.2",
    ]) else {
        return;
    };
    assert_ten_calls_lost_nothing(&text);
    // offered/s calls achieved/s failed …
    let setups = row_after(&text, "offered/s");
    assert!(setups.len() > 3, "no setup row:\n{text}");
    assert_eq!(
        (setups[1], setups[3]),
        ("20", "0"),
        "calls, failed:\n{text}"
    );
}

/// The transcoded variant (G.722 callers, Opus callees): the gateway decodes and re-encodes
/// every packet both ways and loses none (the transcoder sends one packet per packet received).
#[test]
fn loadgen_transcoded_calls_deliver_every_packet() {
    let Some(text) = loadgen_calls(&["--setup-rates", "", "--transcode"]) else {
        return;
    };
    assert!(text.contains("transcoded by the gateway"), "{text}");
    assert_ten_calls_lost_nothing(&text);
}

/// The SRTP variant: both legs of every call SDES-SRTP (`Srtp` = `Required`); every packet
/// the generator protected reaches the other end and authenticates with the key the gateway
/// announced to it (a packet that does not counts as lost).
#[test]
fn loadgen_srtp_calls_deliver_every_packet() {
    let Some(text) = loadgen_calls(&["--setup-rates", "", "--srtp"]) else {
        return;
    };
    assert!(
        text.contains("SRTP AES_CM_128_HMAC_SHA1_80 on both legs"),
        "{text}"
    );
    assert_ten_calls_lost_nothing(&text);
}
