//! linphone-cli (`linphonec`, liblinphone 5.1) as a test phone: it restarts its media after a
//! hold, which baresip 1.0 does not, so the hold tests use it.
//!
//! Each phone runs headless in its own directory (its `HOME`: liblinphone keeps a database and a
//! ZRTP cache there and stays in its start-up state when it cannot open them), with an rc file
//! that binds SIP and RTP to free loopback ports and registers through the gateway (`reg_route`:
//! every request goes to the gateway, as a phone's outbound proxy). Commands go to its stdin;
//! what it prints is kept and searched for the call states it announces (`Call 1 … connected.`,
//! `… is now paused.`). Audio comes from files: `soundcard use files`, `play FILE` (its
//! microphone, and also the music it sends to the other party while it holds the call) and
//! `record FILE` (what it decodes; the file named when a stream starts, completed when that
//! stream stops: a `record` before a hold or a resume starts a new file there).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a phone may take to register or to reach a call state.
const WAIT: Duration = Duration::from_secs(15);

/// A running `linphonec`; killed on drop, also on panic (its output tail is printed then).
pub struct Linphone {
    child: Child,
    stdin: ChildStdin,
    output: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
    user: String,
}

impl Linphone {
    /// Starts a phone for `user@domain` in `dir` that registers through the gateway at `gateway`
    /// (UDP) with `password`, takes its audio from files, and waits until it is registered.
    pub fn register(
        dir: &Path,
        gateway: SocketAddr,
        (user, password, domain): (&str, &str, &str),
    ) -> Linphone {
        std::fs::create_dir_all(dir.join(".local/share/linphone"))
            .expect("create linphone's data directory");
        // RTP on the free port, RTCP on the next; the text stream (unused) on the one after.
        let rtp = crate::free_port();
        let rc = format!(
            "[sip]\nsip_port={}\nsip_tcp_port=-1\nsip_tls_port=-1\nbind_address=127.0.0.1\n\
             default_proxy=0\n\
             [rtp]\naudio_rtp_port={rtp}\nvideo_rtp_port=-1\ntext_rtp_port={}\n\
             [proxy_0]\nreg_proxy=<sip:{gateway};transport=udp>\n\
             reg_route=<sip:{gateway};transport=udp;lr>\nreg_identity=sip:{user}@{domain}\n\
             reg_expires=600\nreg_sendregister=1\npublish=0\n\
             [auth_info_0]\nusername={user}\npasswd={password}\ndomain={domain}\n",
            crate::free_port(),
            rtp + 2,
        );
        let rc_path = dir.join("linphonerc");
        std::fs::write(&rc_path, rc).expect("write linphone's rc file");
        let mut child = Command::new("linphonec")
            .arg("-c")
            .arg(&rc_path)
            .args(["-d", "5", "-l"])
            .arg(dir.join("linphone.log"))
            .env("HOME", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start linphonec");
        let output = Arc::new(Mutex::new(Vec::new()));
        crate::keep_output(&mut child, &output, None);
        let stdin = child.stdin.take().expect("linphonec's stdin is piped");
        let mut phone = Linphone {
            child,
            stdin,
            output,
            dir: dir.to_path_buf(),
            user: user.to_owned(),
        };
        phone.command("soundcard use files");
        // linphonec prints no event for a registration: ask until it says so.
        let registered = crate::wait_until(WAIT, || {
            let mark = phone.mark();
            phone.command("status register");
            std::thread::sleep(Duration::from_millis(200));
            phone
                .lines_since(mark)
                .iter()
                .any(|l| l.contains("registered, identity="))
        });
        if !registered {
            phone.fail("did not register");
        }
        phone
    }

    /// Sends one command line (`call sip:bob@csps.local`, `pause`, `resume`, `terminate`).
    pub fn command(&mut self, line: &str) {
        if let Err(e) = writeln!(self.stdin, "{line}").and_then(|()| self.stdin.flush()) {
            self.fail(&format!("does not take the command {line:?}: {e}"));
        }
    }

    /// Plays the WAV file `wav` as the microphone from the next stream start on (and as the
    /// music sent to the other party while this phone holds the call).
    pub fn play(&mut self, wav: &Path) {
        self.command(&format!("play {}", wav.display()));
    }

    /// Records what the phone decodes into `name` in its directory from the next stream start
    /// on; the path.
    pub fn record(&mut self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        self.command(&format!("record {}", path.display()));
        path
    }

    /// A mark in the output, for [`Linphone::expect`].
    pub fn mark(&self) -> usize {
        self.output.lock().map(|o| o.len()).unwrap_or_default()
    }

    /// Waits (bounded) until a line printed after `mark` contains every one of `words`
    /// (`["Call", "connected."]`); panics with the output tail when none does.
    pub fn expect(&self, mark: usize, words: &[&str]) {
        let seen = crate::wait_until(WAIT, || {
            self.lines_since(mark)
                .iter()
                .any(|l| words.iter().all(|w| l.contains(w)))
        });
        if !seen {
            self.fail(&format!("never printed a line with {words:?}"));
        }
    }

    /// Calls `uri`; a mark for [`Linphone::expect_media`] (the call is answered elsewhere).
    pub fn call(&mut self, uri: &str) -> usize {
        let mark = self.mark();
        self.command(&format!("call {uri}"));
        mark
    }

    /// Waits until a call's media runs (`Media streams established`, printed when a call is
    /// answered and again after each hold and resume) after `mark`.
    pub fn expect_media(&self, mark: usize) {
        self.expect(mark, &["Media streams established with"]);
    }

    /// Waits for an incoming call, answers it, and waits until its media runs.
    pub fn answer(&mut self) {
        self.expect(0, &["Receiving new incoming call"]);
        self.command_until("answer", &["Media streams established with"]);
    }

    /// Holds the current call (`pause`: a re-INVITE with `a=sendonly`) and waits until it is.
    pub fn hold(&mut self) {
        self.command_until("pause", &["is now paused."]);
    }

    /// Resumes the held call and waits until its media runs again.
    pub fn resume(&mut self) {
        self.command_until("resume", &["Media streams established with"]);
    }

    /// Hangs the current call up (BYE) and waits until it ended.
    pub fn hang_up(&mut self) {
        self.command_until("terminate", &["ended"]);
    }

    /// Sends `line` and waits until the phone prints a line with every one of `words`.
    fn command_until(&mut self, line: &str, words: &[&str]) {
        let mark = self.mark();
        self.command(line);
        self.expect(mark, words);
    }

    /// Waits until the other party ended the call.
    pub fn expect_ended(&self, mark: usize) {
        self.expect(mark, &["ended"]);
    }

    /// The last `n` lines it printed, then the last `n` lines of its log (the SIP messages).
    pub fn tail(&self, n: usize) -> String {
        let output = self.output.lock().map(|o| o.clone()).unwrap_or_default();
        let log = std::fs::read_to_string(self.dir.join("linphone.log")).unwrap_or_default();
        let log: Vec<&str> = log.lines().collect();
        format!(
            "--- linphonec {} output ---\n{}\n--- its log ---\n{}",
            self.user,
            output[output.len().saturating_sub(n)..].join("\n"),
            log[log.len().saturating_sub(n)..].join("\n"),
        )
    }

    fn lines_since(&self, mark: usize) -> Vec<String> {
        let output = self.output.lock().map(|o| o.clone()).unwrap_or_default();
        output
            .get(mark..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    fn fail(&self, what: &str) -> ! {
        panic!("linphonec {} {what}\n{}", self.user, self.tail(30));
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.tail(20));
        }
    }
}

/// Writes a 16 kHz mono WAV of a `hz` sine at half scale, a minute long (longer than any call of
/// a test: linphone does not loop it), for [`Linphone::play`].
pub fn write_tone(path: &Path, hz: f32) {
    const RATE: u32 = 16_000;
    let step = 2.0 * std::f32::consts::PI * hz / RATE as f32;
    let samples: Vec<i16> = (0..RATE * 60)
        .map(|i| ((i as f32 * step).sin() * 16_384.0) as i16)
        .collect();
    std::fs::write(path, crate::audio::wav_bytes(RATE, 1, &samples)).expect("write a tone WAV");
}
