//! baresip 1.0 as a test phone: the config lines every test shares, and a process guard.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Kills baresip on drop, also on panic.
pub struct Baresip(pub Child);

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
