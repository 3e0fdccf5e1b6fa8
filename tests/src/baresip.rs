//! baresip 1.0 as a test phone: the config lines every test shares, and a process guard.

use std::path::Path;
use std::process::{Command, Stdio};

/// Kills baresip on drop, also on panic.
pub use crate::Killed as Baresip;

/// The start of a headless config: SIP over UDP on a free loopback port, the G.711 codec and the
/// account module; callers append their audio lines (`audio_player none`, `ausine`…).
pub fn config_head() -> String {
    format!(
        "poll_method\tepoll\n\
         sip_listen\t127.0.0.1:{}\n\
         sip_transports\tudp\n\
         module_path\t/usr/lib/baresip/modules\n\
         module\t\tg711.so\n\
         module_app\taccount.so\n\
         audio_alert\tnone\n\
         video_display\tnone\n\
         video_source\tnone\n\
         net_interface\t127.0.0.1\n",
        crate::free_port()
    )
}

/// Starts `baresip -f dir` running `commands` (`-e`) at start, output discarded.
pub fn start(dir: &Path, commands: &[&str]) -> Baresip {
    let mut cmd = Command::new("baresip");
    cmd.arg("-f").arg(dir);
    for c in commands {
        cmd.arg("-e").arg(c);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start baresip");
    Baresip(child)
}

/// A headless phone for `user@domain` registering through the gateway at `gateway_port`
/// (loopback UDP): it plays a `tone_hz` sine (`ausine`, 48 kHz stereo), offers only `codec`
/// (`PCMU`, `G722/16000/1`, `opus/48000/2`: without a rate baresip looks for 8 kHz), records
/// what it decodes into `dir` (`sndfile`: the `*dec*.wav` that [`crate::audio::heard_in`]
/// reads), answers by itself, and runs `commands` at start.
pub fn tone_phone(
    dir: &Path,
    gateway_port: u16,
    account: (&str, &str, &str),
    tone_hz: u32,
    codec: &str,
    commands: &[&str],
) -> Baresip {
    tone_phone_with(dir, gateway_port, account, (tone_hz, codec), "", commands)
}

/// [`tone_phone`] for `user@domain` with the password `<user>-secret-1` (playing `tone_hz`,
/// offering PCMU), once `gw` lists its registration (within 15 s; panics otherwise).
pub fn registered_tone_phone(
    gw: &crate::Gateway,
    dir: &Path,
    (user, domain): (&str, &str),
    tone_hz: u32,
    commands: &[&str],
) -> Baresip {
    let password = format!("{user}-secret-1");
    let phone = tone_phone(
        dir,
        gw.sip_port,
        (user, &password, domain),
        tone_hz,
        "PCMU",
        commands,
    );
    assert!(
        crate::wait_until(std::time::Duration::from_secs(15), || !gw
            .registrations_of(user)
            .is_empty()),
        "{user} (baresip) did not register"
    );
    phone
}

/// A new user `user@domain` (password `<user>-secret-1`) whose baresip phone, playing `tone_hz`
/// in PCMU, dials `room_user` (`conference-team` for the room `team`) and is the room's one
/// participant within 15 s (panics otherwise).
pub fn alone_in_room(
    gw: &crate::Gateway,
    dir: &Path,
    (user, domain): (&str, &str),
    tone_hz: u32,
    room_user: &str,
) -> Baresip {
    gw.create_user(user, &format!("{user}-secret-1"));
    let dial = format!("/dial sip:{room_user}@{domain}");
    let phone = registered_tone_phone(gw, dir, (user, domain), tone_hz, &[&dial]);
    assert!(
        crate::wait_until(std::time::Duration::from_secs(15), || gw
            .room_with(1)
            .is_some()),
        "{user} did not join: {}",
        gw.log_tail(40)
    );
    phone
}

/// As [`tone_phone`], with `account_params` appended to its account: `;mediaenc=srtp-mand`
/// offers RTP/SAVP with SDES, `;mediaenc=srtp` best-effort SRTP (RTP/AVP with `a=crypto`);
/// the `srtp` module is loaded for them.
pub fn tone_phone_with(
    dir: &Path,
    gateway_port: u16,
    account: (&str, &str, &str),
    (tone_hz, codec): (u32, &str),
    account_params: &str,
    commands: &[&str],
) -> Baresip {
    let source = format!(
        "module\t\tausine.so\naudio_source\tausine,{tone_hz}\nausrc_srate\t48000\nausrc_channels\t2\n"
    );
    phone(
        dir,
        gateway_port,
        account,
        (&source, codec, account_params),
        commands,
    )
}

/// As [`tone_phone`], with the 16 kHz mono WAV file `wav` as its microphone (`aufile`): what it
/// says from the moment its call's audio starts.
pub fn speaking_phone(
    dir: &Path,
    gateway_port: u16,
    account: (&str, &str, &str),
    wav: &Path,
    codec: &str,
    commands: &[&str],
) -> Baresip {
    let source = format!(
        "module\t\taufile.so\naudio_source\taufile,{}\nausrc_srate\t16000\nausrc_channels\t1\n",
        wav.display()
    );
    phone(dir, gateway_port, account, (&source, codec, ""), commands)
}

/// The phone of [`tone_phone`] with the audio source of `source_lines` (config lines) and
/// `account_params` appended to its account.
fn phone(
    dir: &Path,
    gateway_port: u16,
    (user, password, domain): (&str, &str, &str),
    (source_lines, codec, account_params): (&str, &str, &str),
    commands: &[&str],
) -> Baresip {
    let srtp = if account_params.contains("mediaenc") {
        "module\t\tsrtp.so\n"
    } else {
        ""
    };
    let config = format!(
        "{}{source_lines}{srtp}module\t\tg722.so\nmodule\t\topus.so\nmodule\t\tsndfile.so\n\
         module\t\taubridge.so\nmodule_app\tmenu.so\naudio_player\taubridge,speaker-{user}\n\
         auplay_srate\t48000\nauplay_channels\t2\nsnd_path\t{}\n",
        config_head(),
        dir.display(),
    );
    let account = format!(
        "<sip:{user}@{domain}>;auth_pass={password};outbound=\"sip:127.0.0.1:{gateway_port};transport=udp\";regint=600;audio_codecs={codec};answermode=auto{account_params}\n"
    );
    for (name, text) in [
        ("config", config),
        ("accounts", account),
        ("contacts", String::new()),
    ] {
        std::fs::write(dir.join(name), text).expect("write baresip files");
    }
    start(dir, commands)
}
