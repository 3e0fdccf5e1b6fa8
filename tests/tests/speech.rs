//! HD audio measured (issue 4): speech (espeak-ng) played by one baresip phone as its microphone,
//! recorded by the other through the gateway, scored with wide-band PESQ (`e2e/pesq/score.py`,
//! PyPI `pesq`) against the source, beside the same codecs run without the gateway (`csps-loadgen
//! codec-chain`): (a) G.722 on both phones (relayed), (b) G.722 to an Opus phone (transcoded),
//! (c) `Use8KHz` with two G.722 phones (both legs kept on G.711). The scores go to stderr
//! (`--nocapture`) for the README table.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use csps_tests::{find_workspace_bin, have_tool, skip, wait_until};

const DOMAIN: &str = "csps.local";
/// Five Harvard sentences (list 1), as in the README's codec-alone measurement.
const SENTENCES: &str = "The birch canoe slid on the smooth planks. Glue the sheet to the dark \
     blue background. It's easy to tell the depth of a well. These days a chicken leg is a rare \
     dish. Rice is often served in round bowls.";
/// Silence the caller plays before the speech (the callee's first half second of recording is
/// dropped as set-up) and after it (so the call is hung up before baresip's file ends).
const LEAD_S: f32 = 1.0;
const TAIL_S: f32 = 2.0;

/// What the tests need: baresip, espeak-ng, the loadgen binary and a Python with `pesq`.
struct Tools {
    loadgen: PathBuf,
    python: PathBuf,
}

/// The tools, or `None` after a skip naming the missing one.
fn tools() -> Option<Tools> {
    for tool in ["baresip", "espeak-ng"] {
        if !have_tool(tool) {
            skip(&format!("{tool} not installed (run e2e/setup)"));
            return None;
        }
    }
    let Some(loadgen) = find_workspace_bin("csps-loadgen", "CSPS_LOADGEN_BIN") else {
        skip("csps-loadgen not built: run `cargo build --release --workspace --bins`");
        return None;
    };
    let Some(python) = python_with_pesq() else {
        skip("no Python with pesq and numpy (e2e/setup installs them into its venv)");
        return None;
    };
    Some(Tools { loadgen, python })
}

/// The venv of `e2e/setup` (`$CSPS_VENV`, /opt/csps-venv, ~/.cache/csps/venv), else the PATH's
/// python3, whichever imports pesq and numpy.
fn python_with_pesq() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("CSPS_VENV") {
        candidates.push(PathBuf::from(v).join("bin/python3"));
    }
    candidates.push("/opt/csps-venv/bin/python3".into());
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/csps/venv/bin/python3"));
    }
    candidates.push("python3".into());
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import pesq, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs `cmd`, panicking with its output when it fails; its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `input` through the gateway's codecs `codecs` (comma-separated; empty: only resampled) into
/// `output`, 16 kHz mono.
fn codec_chain(tools: &Tools, codecs: &str, input: &Path, output: &Path) {
    run(Command::new(&tools.loadgen)
        .args(["codec-chain", "--codecs", codecs, "--rate", "16000", "--in"])
        .arg(input)
        .arg("--out")
        .arg(output));
}

/// The PESQ-WB score of `deg` against `ref_wav` and their energy above 4 kHz (score.py's JSON).
fn score(tools: &Tools, ref_wav: &Path, deg: &Path) -> serde_json::Value {
    let script = csps_tests::e2e_dir().join("pesq/score.py");
    let out = run(Command::new(&tools.python)
        .arg(script)
        .arg(ref_wav)
        .arg(deg));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("score.py said {out:?}: {e}"))
}

/// A number of score.py's answer.
fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// The source speech in `dir`: `ref.wav` (16 kHz mono, what PESQ compares with) and `play.wav`
/// (the same with [`LEAD_S`] and [`TAIL_S`] of silence, what the caller plays); its length in s.
fn speech(tools: &Tools, dir: &Path) -> (PathBuf, PathBuf, f32) {
    let raw = dir.join("espeak.wav");
    run(Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&raw)
        .arg(SENTENCES));
    let ref_wav = dir.join("ref.wav");
    codec_chain(tools, "", &raw, &ref_wav);
    let pcm = csps_tests::audio::read_wav(&std::fs::read(&ref_wav).expect("read ref.wav"))
        .expect("ref.wav");
    let silence = |s: f32| vec![0i16; (s * 16000.0) as usize];
    let mut samples = silence(LEAD_S);
    samples.extend(
        pcm.samples
            .iter()
            .map(|&s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16),
    );
    samples.extend(silence(TAIL_S));
    let play = dir.join("play.wav");
    std::fs::write(&play, csps_tests::audio::wav_bytes(16000, 1, &samples)).expect("play.wav");
    (ref_wav, play, pcm.samples.len() as f32 / 16000.0)
}

/// One measured call.
struct Measured {
    /// score.py's answer for bob's recording.
    scored: serde_json::Value,
    /// `GET /api/calls` while the call ran.
    calls: serde_json::Value,
    /// The SDP answer bob's phone sent (its 200 OK to the gateway).
    bob_answer: String,
    /// The source speech, 16 kHz mono.
    ref_wav: PathBuf,
    /// Holds the files until the test ends.
    _work: tempfile::TempDir,
}

/// One call from alice (speaking, offering `alice_codecs`) to bob (recording, offering
/// `bob_codecs`), with `Use8KHz` = `use_8khz`; bob's recording scored against the source, and
/// what the gateway and bob saw; `None` when the gateway is skipped.
fn call_scored(
    tools: &Tools,
    (alice_codecs, bob_codecs): (&str, &str),
    use_8khz: bool,
) -> Option<Measured> {
    let work = tempfile::tempdir().expect("temp dir");
    let (ref_wav, play, secs) = speech(tools, work.path());
    let gw = csps_tests::gateway_for("baresip")?;
    gw.create_user("alice", "alice-secret-1");
    gw.create_user("bob", "bob-secret-1");
    if use_8khz {
        let r = gw.api(
            "PUT",
            "/api/config/*/Data.SipConfig.Use8KHz",
            Some(&serde_json::json!(true)),
        );
        assert_eq!(r.status, 200, "Use8KHz: {}", r.body);
    }
    let alice_dir = tempfile::tempdir().expect("temp dir");
    let bob_dir = tempfile::tempdir().expect("temp dir");
    let bob = csps_tests::baresip::tone_phone(
        bob_dir.path(),
        gw.sip_port,
        ("bob", "bob-secret-1", DOMAIN),
        1000,
        bob_codecs,
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(15), || !gw
            .registrations_of("bob")
            .is_empty()),
        "bob did not register"
    );
    let alice = csps_tests::baresip::speaking_phone(
        alice_dir.path(),
        gw.sip_port,
        ("alice", "alice-secret-1", DOMAIN),
        &play,
        alice_codecs,
        &[&format!("/dial sip:bob@{DOMAIN}")],
    );
    // Bob's recording ends with the BYE of the hang-up, after the speech and before the file ends.
    let calls = gw.talk_then_hang_up(Duration::from_secs_f32(LEAD_S + secs + TAIL_S / 2.0));
    let id = calls[0]["id"].as_u64().expect("call id");
    let bob_answer = gw.call_message(id, "b", ("INVITE", "in", Some(200)));
    drop(alice);
    drop(bob);
    let heard = csps_tests::audio::heard_in(bob_dir.path()).expect("bob's recording");
    let samples: Vec<i16> = heard
        .samples
        .iter()
        .map(|&s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16)
        .collect();
    let recorded = work.path().join("heard.wav");
    std::fs::write(
        &recorded,
        csps_tests::audio::wav_bytes(heard.rate, 1, &samples),
    )
    .expect("heard.wav");
    let heard_16k = work.path().join("heard-16k.wav");
    codec_chain(tools, "", &recorded, &heard_16k);
    let scored = score(tools, &ref_wav, &heard_16k);
    Some(Measured {
        scored,
        calls,
        bob_answer,
        ref_wav,
        _work: work,
    })
}

/// The codec-alone score of `codecs` on the source `ref_wav` (written next to it).
fn chain_scored(tools: &Tools, codecs: &str, ref_wav: &Path) -> f64 {
    let out = ref_wav.with_file_name(format!("chain-{}.wav", codecs.replace(',', "-")));
    codec_chain(tools, codecs, ref_wav, &out);
    num(&score(tools, ref_wav, &out), "pesq")
}

/// The codec of each leg of the call `GET /api/calls` showed.
fn leg_codecs(calls: &serde_json::Value) -> Vec<String> {
    calls[0]["legs"]
        .as_array()
        .map(|legs| {
            legs.iter()
                .map(|l| l["codec"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// (a) G.722 relayed: the gateway does not decode, so the call scores what G.722 alone scores
/// (target: within 0.05).
#[test]
fn g722_relayed_scores_as_g722_alone() {
    let Some(tools) = tools() else { return };
    let Some(m) = call_scored(&tools, ("G722/16000/1", "G722/16000/1"), false) else {
        return;
    };
    let alone = chain_scored(&tools, "g722", &m.ref_wav);
    let through = num(&m.scored, "pesq");
    eprintln!(
        "speech (a) G.722 relayed: gateway {through:.3}, G.722 alone {alone:.3}; {}",
        m.scored
    );
    assert_eq!(
        leg_codecs(&m.calls),
        ["G722/8000", "G722/8000"],
        "{}",
        m.calls
    );
    assert!(
        (through - alone).abs() <= 0.05,
        "G.722 through the gateway {through:.3} vs alone {alone:.3}; {}",
        m.scored
    );
}

/// (b) G.722 phone to Opus phone, transcoded: within 0.2 of G.722 alone.
#[test]
fn g722_to_opus_transcoded_stays_within_0_2_of_g722_alone() {
    let Some(tools) = tools() else { return };
    let Some(m) = call_scored(&tools, ("G722/16000/1", "opus/48000/2"), false) else {
        return;
    };
    let alone = chain_scored(&tools, "g722", &m.ref_wav);
    let chain = chain_scored(&tools, "g722,opus", &m.ref_wav);
    let through = num(&m.scored, "pesq");
    eprintln!(
        "speech (b) G.722 -> Opus transcoded: gateway {through:.3}, G.722 alone {alone:.3}, \
         G.722 -> Opus alone {chain:.3}; {}",
        m.scored
    );
    // Bob answered in Opus and alice was answered in her G.722: the gateway transcodes.
    assert_eq!(
        leg_codecs(&m.calls),
        ["G722/8000", "opus/48000"],
        "{}",
        m.calls
    );
    assert!(
        m.bob_answer.contains("opus/48000/2") && !m.bob_answer.contains("G722"),
        "{}",
        m.bob_answer
    );
    assert!(
        through >= alone - 0.2,
        "G.722 -> Opus through the gateway {through:.3} vs G.722 alone {alone:.3}; {}",
        m.scored
    );
}

/// (c) `Use8KHz`: two G.722-capable phones are both kept on G.711, so nothing above 4 kHz reaches
/// the callee and the score falls below wide-band G.722's.
#[test]
fn use_8khz_keeps_wideband_phones_narrowband() {
    let Some(tools) = tools() else { return };
    let Some(m) = call_scored(&tools, ("G722/16000/1,PCMU", "G722/16000/1,PCMU"), true) else {
        return;
    };
    let g722 = chain_scored(&tools, "g722", &m.ref_wav);
    let pcmu = chain_scored(&tools, "pcmu", &m.ref_wav);
    let through = num(&m.scored, "pesq");
    let above = num(&m.scored, "above_4k_share");
    let source_above = num(&m.scored, "ref_above_4k_share");
    eprintln!(
        "speech (c) Use8KHz: gateway {through:.3}, PCMU alone {pcmu:.3}, G.722 alone {g722:.3}; \
         energy above 4 kHz {above:.2e} (source {source_above:.2e}); {}",
        m.scored
    );
    assert_eq!(
        leg_codecs(&m.calls),
        ["PCMU/8000", "PCMU/8000"],
        "{}",
        m.calls
    );
    assert!(
        !m.bob_answer.contains("G722"),
        "bob was offered G.722: {}",
        m.bob_answer
    );
    // The source has about 1 % of its energy above 4 kHz; what bob heard, none to speak of.
    assert!(
        above < 1e-5 && source_above > 1e-3,
        "energy above 4 kHz: heard {above:.2e}, source {source_above:.2e}"
    );
    // (a) is within 0.05 of G.722 alone: below that by more than 0.05 is below (a).
    assert!(
        through < g722 - 0.05,
        "Use8KHz {through:.3} is not below wide-band G.722 {g722:.3}; {}",
        m.scored
    );
}
