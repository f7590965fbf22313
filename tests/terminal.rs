//! The interactive client and the password prompts at a real terminal: each program
//! runs in a pseudo-terminal made by `script(1)` (util-linux), the test types into it
//! and reads what the terminal would show, escape sequences and all. After the program
//! ends, `stty -a` in the same terminal shows whether its settings came back.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{sid_of, users, Client, Server, User, WAIT};

/// A program in a pseudo-terminal: what it printed so far, and its keyboard.
struct Pty {
    child: Child,
    keys: ChildStdin,
    screen: Arc<(Mutex<Vec<u8>>, Condvar)>,
    /// How far [`Pty::expect`] has read.
    seen: usize,
}

impl Pty {
    /// Runs `sh -c SCRIPT` in a new pseudo-terminal, with `NO_COLOR` set (so the
    /// output is plain text but for the cursor sequences). `None` when there is no
    /// `script` command.
    fn start(shell: &str) -> Option<Pty> {
        Pty::start_with(shell, &[("NO_COLOR", "1")])
    }

    fn start_with(shell: &str, env: &[(&str, &str)]) -> Option<Pty> {
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-f", "-e", "-c", shell, "/dev/null"])
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: cannot run script(1) from util-linux: {e}");
                return None;
            }
        };
        let keys = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let screen = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let shared = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let (lock, cond) = &*shared;
                lock.lock().unwrap().extend_from_slice(&buf[..n]);
                cond.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        Some(Pty {
            child,
            keys,
            screen,
            seen: 0,
        })
    }

    /// Types `bytes`.
    fn typed(&mut self, bytes: &[u8]) {
        self.keys.write_all(bytes).unwrap();
        self.keys.flush().unwrap();
    }

    /// Everything shown so far, lossily as text.
    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.screen.0.lock().unwrap()).into_owned()
    }

    /// Waits until `text` is shown after what earlier expectations read; returns
    /// the position just after it.
    fn expect(&mut self, text: &str) -> usize {
        let deadline = Instant::now() + WAIT;
        let (lock, cond) = &*self.screen;
        let mut screen = lock.lock().unwrap();
        loop {
            if let Some(i) = find(&screen[self.seen..], text.as_bytes()) {
                self.seen += i + text.len();
                return self.seen;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "not shown within {WAIT:?}: {text:?}\nscreen:\n{:?}",
                String::from_utf8_lossy(&screen)
            );
            screen = cond.wait_timeout(screen, left).unwrap().0;
        }
    }

    /// Waits for the program to end; its exit status.
    fn wait(mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the terminal did not end; screen:\n{:?}", self.shown());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Quotes `s` for sh.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn path(p: &Path) -> String {
    q(p.to_str().unwrap())
}

/// The `mpchat` command line for `user`, with its password file unless `prompt`.
fn mpchat(server: &Server, user: &User, prompt: bool) -> String {
    let mut cmd = format!(
        "{} --server {} --server-key {} --user {} --config-dir {}",
        q(env!("CARGO_BIN_EXE_mpchat")),
        server.addr,
        path(&server.server_pub()),
        user.name,
        path(&user.config_dir)
    );
    if !prompt {
        cmd.push_str(&format!(" --password-file {}", path(&user.password_file)));
    }
    cmd
}

/// Shell that prints the exit status of the command before it, then the terminal's
/// settings once echo is back (polling: the guardian restores them from another
/// process), as `exit=N` and `stty: ...`.
const AFTER: &str = "; echo exit=$?; i=0; \
    while [ $i -lt 50 ] && ! stty -a | grep -q ' echo '; do sleep 0.1; i=$((i+1)); done; \
    echo \"stty: $(stty -a | tr '\\n' ' ')\"";

/// Checks the `stty -a` line shows a terminal as a shell wants it.
fn assert_restored(pty: &mut Pty) {
    pty.expect("stty: ");
    let shown = pty.shown();
    let settings = &shown[shown.rfind("stty: ").unwrap()..];
    for flag in [" echo ", " icanon ", " isig ", " iexten ", " ixon "] {
        assert!(settings.contains(flag), "{flag:?} not restored: {settings}");
    }
}

#[test]
fn the_prompt_survives_incoming_messages_and_history_names_and_prefixes_work() {
    let server = Server::start(&["--invite-wait", "5"]);
    let u = users(&server, &["alice", "bob"]);
    let mut bob = Client::start(&server, &u[1]);
    bob.send("/status");
    bob.expect("status none");
    let Some(mut alice) = Pty::start(&format!("{}{AFTER}", mpchat(&server, &u[0], false))) else {
        return;
    };
    alice.expect(&format!(
        "connected to {} as alice; server SHA256:",
        server.addr
    ));
    alice.expect("/help lists the commands");

    alice.typed(b"/init bob\r");
    let sid = sid_of(&bob.expect("invite "));
    bob.send(&format!("/accept {sid}"));
    alice.expect(&format!("session {sid} is live"));
    alice.expect("bob accepted the invitation");
    // The new session is the current one: the prompt names it by its default name.
    alice.expect("bob> ");

    // Half a line typed, then a message comes: it is printed above, and the prompt
    // with the half line is drawn again below it.
    alice.typed(b"hel");
    alice.expect("bob> hel");
    bob.send(&format!("/msg {sid} hi \x1b[31malice"));
    alice.expect("<bob> hi \\x1b[31malice\r");
    alice.expect("bob> hel");
    alice.typed(b"lo\r");
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice hello"));
    alice.expect("<alice> hello");

    // Up arrow: the last line again.
    alice.typed(b"\x1b[A\r");
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice hello"));

    // Editing: Ctrl-C clears a line, Home/Ctrl-A and arrows move, Ctrl-W deletes a
    // word.
    alice.typed(b"never sent\x03");
    alice.typed(b"ord\x01w\x1b[C\x1b[C\x1b[C\x05s and more junk\x17\x17\x17\x7f\r");
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice words"));

    // A name and a prefix reach the session as its id does.
    alice.typed(format!("/name {} lunch\r", &sid[..6]).as_bytes());
    alice.expect(&format!("session {sid} is now called lunch"));
    alice.expect("lunch> ");
    alice.typed(b"/msg lunch by name\r");
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice by name"));
    alice.typed(format!("/msg {} by prefix\r", &sid[..5]).as_bytes());
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice by prefix"));
    alice.typed(b"/msg nosuch x\r");
    alice.expect("msg failed: no session nosuch; known: ");

    // Ctrl-D on an empty line quits, and the terminal is as it was.
    alice.typed(b"\x04");
    alice.expect("exit=0");
    assert_restored(&mut alice);
    assert_eq!(alice.wait(), Some(0));
    let (status, _) = bob.finish();
    assert!(status.success());
}

#[test]
fn names_have_colours_unless_no_color_is_set() {
    let server = Server::start(&[]);
    let u = users(&server, &["alice"]);
    let cmd = format!("{}{AFTER}", mpchat(&server, &u[0], false));
    let Some(mut coloured) = Pty::start_with(&cmd, &[]) else {
        return;
    };
    coloured.expect("as \x1b[");
    coloured.expect("alice\x1b[0m;");
    coloured.typed(b"/quit\r");
    assert_eq!(coloured.wait(), Some(0));
    let Some(mut plain) = Pty::start_with(&cmd, &[("NO_COLOR", "1")]) else {
        return;
    };
    plain.expect("/help lists the commands");
    plain.typed(b"/quit\r");
    plain.expect("exit=0");
    assert!(!plain.shown().contains("\x1b[0m"), "{:?}", plain.shown());
    assert_eq!(plain.wait(), Some(0));
}

#[test]
fn ctrl_c_at_a_password_prompt_exits_130_and_restores_the_terminal() {
    let server = Server::start(&[]);
    let u = users(&server, &["alice"]);
    let Some(mut pty) = Pty::start(&format!("{}{AFTER}", mpchat(&server, &u[0], true))) else {
        return;
    };
    pty.expect("Password for alice: ");
    pty.typed(b"half a pass");
    pty.typed(b"\x03");
    pty.expect("exit=130");
    assert_restored(&mut pty);
    assert!(
        !pty.shown().contains("half a pass"),
        "echoed: {}",
        pty.shown()
    );
    pty.wait();

    // mpchatd's prompts are the same code: Ctrl-C at the second one.
    let useradd = format!(
        "{} useradd zed --state-dir {}{AFTER}",
        q(env!("CARGO_BIN_EXE_mpchatd")),
        path(&server.state)
    );
    let mut pty = Pty::start(&useradd).unwrap();
    pty.expect("Password: ");
    pty.typed(b"secret\r");
    pty.expect("Retype password: ");
    pty.typed(b"sec\x03");
    pty.expect("exit=130");
    assert_restored(&mut pty);
    assert!(!pty.shown().contains("secret"), "echoed: {}", pty.shown());
    pty.wait();
}

#[test]
fn a_password_prompt_killed_by_a_signal_still_gives_the_terminal_back() {
    let server = Server::start(&[]);
    let u = users(&server, &["alice"]);
    // In the background of a shell without job control, so the test can kill it;
    // it prompts on /dev/tty all the same.
    let shell = format!(
        "{} & echo pid=$!; wait $!{AFTER}",
        mpchat(&server, &u[0], true)
    );
    let Some(mut pty) = Pty::start(&shell) else {
        return;
    };
    pty.expect("pid=");
    let shown = pty.shown();
    let pid: String = shown[shown.find("pid=").unwrap() + 4..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    pty.expect("Password for alice: ");
    let killed = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    assert!(killed.success());
    pty.expect("exit=137");
    assert_restored(&mut pty);
    pty.wait();
}
