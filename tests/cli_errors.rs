//! Every mistake a new user is likely to make with `mpchatd` or `mpchat` ends with one
//! line on standard error that says what went wrong and what to do, and the exit
//! status the manual pages document: 2 for a usage mistake, 1 for a runtime failure.
//! Also: `--help` and `--version` work, and `mpchatd --help` and `mpchatd(8)` list
//! the same options.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{temp_dir, Server};

const MPCHATD: &str = env!("CARGO_BIN_EXE_mpchatd");
const MPCHAT: &str = env!("CARGO_BIN_EXE_mpchat");
/// Exit status of a usage mistake (mpchatd(8), mpchat(1)).
const USAGE: i32 = 2;
/// Exit status of a runtime failure.
const FAILURE: i32 = 1;
/// Longest any of these commands may take; none should wait for anything.
const LIMIT: Duration = Duration::from_secs(30);

/// What a finished command printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `program args` with no standard input (so no password prompt can wait) and
/// the user's default logging, killing it after [`LIMIT`].
fn run(program: &str, args: &[&str]) -> Ran {
    run_with_input(program, args, None)
}

/// [`run`] with `input` on standard input, if given.
fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Ran {
    let mut child = Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("MPCHAT_CONFIG_DIR")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
    }
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("{program} {args:?} still runs after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether `line` is an env_logger record (`[2026-01-01T00:00:00Z INFO ] ...`), as
/// mpchatd writes while it starts, before a failure.
fn is_log_record(line: &str) -> bool {
    line.starts_with('[') && line.contains("Z ") && line.contains(']')
}

/// Runs the command, expects exit status `code` and exactly one line of diagnosis on
/// standard error, naming the program and containing every one of `phrases`. The
/// server may have logged its start-up (its info records) before failing; the line
/// must then be the last one. Returns the line.
fn fails(program: &str, args: &[&str], code: i32, phrases: &[&str]) -> String {
    fails_with_input(program, args, None, code, phrases)
}

/// [`fails`] with `input` on standard input.
fn fails_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
    code: i32,
    phrases: &[&str],
) -> String {
    let ran = run_with_input(program, args, input);
    let what = format!("{program} {args:?}");
    assert_eq!(
        ran.code,
        Some(code),
        "{what}: exit status; stderr:\n{}",
        ran.stderr
    );
    assert_eq!(ran.stdout, "", "{what}: printed on standard output");
    assert!(
        ran.stderr.ends_with('\n'),
        "{what}: stderr does not end with a newline: {:?}",
        ran.stderr
    );
    let lines: Vec<&str> = ran.stderr.lines().collect();
    let (last, before) = lines
        .split_last()
        .unwrap_or_else(|| panic!("{what}: nothing on standard error"));
    for l in before {
        assert!(
            program == MPCHATD && is_log_record(l) && l.contains(" INFO "),
            "{what}: more than one line of diagnosis on standard error:\n{}",
            ran.stderr
        );
    }
    let name = Path::new(program)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        last.starts_with(&format!("{name}: ")) || last.starts_with(&format!("{name} ")),
        "{what}: the line does not start with the program's name: {last}"
    );
    for p in phrases {
        assert!(
            last.contains(p),
            "{what}: {p:?} is not in the message: {last}"
        );
    }
    last.to_string()
}

/// A port on 127.0.0.1 on which nothing listens (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config directory with a 2048-bit key; its `key.pub` also serves as a
/// well-formed server key for tests that never reach a server.
fn config_with_key() -> PathBuf {
    let dir = temp_dir("cli-cfg").join("cfg");
    mpchat::pins::keygen(&dir, 2048).unwrap();
    dir
}

fn write_password(text: &str) -> PathBuf {
    let path = temp_dir("cli-pw").join("pw");
    std::fs::write(&path, format!("{text}\n")).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---- mpchatd ----

#[test]
fn mpchatd_help_and_version_print_on_stdout_and_exit_zero() {
    let help = run(MPCHATD, &["--help"]);
    assert_eq!(help.code, Some(0));
    assert!(help.stdout.starts_with("usage: mpchatd"), "{}", help.stdout);
    assert!(help.stdout.contains("mpchatd(8)"));
    assert_eq!(help.stderr, "");
    let version = run(MPCHATD, &["--version"]);
    assert_eq!(version.code, Some(0));
    assert_eq!(
        version.stdout,
        format!("mpchatd {}\n", env!("CARGO_PKG_VERSION"))
    );
    let sub_help = run(MPCHATD, &["useradd", "--help"]);
    assert_eq!(sub_help.code, Some(0));
    assert!(sub_help.stdout.contains("mpchatd useradd NAME"));
}

#[test]
fn mpchatd_rejects_an_unknown_option_with_usage_status() {
    fails(
        MPCHATD,
        &["--bogus"],
        USAGE,
        &["unknown option --bogus", "mpchatd --help"],
    );
    fails(
        MPCHATD,
        &["-l", "127.0.0.1:0"],
        USAGE,
        &["unknown option -l", "--help"],
    );
    fails(
        MPCHATD,
        &["useradd", "alice", "--listen", "x"],
        USAGE,
        &["unknown option --listen", "--help"],
    );
    fails(
        MPCHATD,
        &["--version=2"],
        USAGE,
        &["--version takes no value", "--help"],
    );
    fails(
        MPCHATD,
        &["serve"],
        USAGE,
        &["unexpected argument \"serve\"", "subcommands are", "--help"],
    );
}

#[test]
fn mpchatd_rejects_missing_and_invalid_values_with_usage_status() {
    fails(
        MPCHATD,
        &["--listen"],
        USAGE,
        &["--listen needs a value", "--help"],
    );
    fails(
        MPCHATD,
        &["--max-connections", "0"],
        USAGE,
        &["--max-connections must be at least 1"],
    );
    // A time-out of 0 would close every connection at once (a socket time-out of 0
    // is refused by the system), so it is a usage error, not a server that serves no one.
    for flag in [
        "--heartbeat",
        "--heartbeat-timeout",
        "--login-grace",
        "--login-window",
    ] {
        fails(
            MPCHATD,
            &[flag, "0"],
            USAGE,
            &[&format!("{flag} must be at least 1")],
        );
    }
    fails(
        MPCHATD,
        &["--heartbeat", "soon"],
        USAGE,
        &["--heartbeat wants a whole number", "\"soon\""],
    );
    fails(
        MPCHATD,
        &["useradd"],
        USAGE,
        &["give exactly one user name", "--help"],
    );
    fails(MPCHATD, &["users", "alice"], USAGE, &["takes no user name"]);
    fails(
        MPCHATD,
        &["useradd", "Alice!", "--state-dir", "/nonexistent/mpchat"],
        USAGE,
        &["invalid user name \"Alice!\"", "a-z 0-9"],
    );
}

#[test]
fn mpchatd_says_when_the_state_directory_cannot_be_created() {
    // Not even root can create a directory in /proc.
    fails(
        MPCHATD,
        &["--state-dir", "/proc/mpchat", "--listen", "127.0.0.1:0"],
        FAILURE,
        &[
            "cannot create state directory /proc/mpchat",
            "--state-dir DIR",
        ],
    );
    // Nor one under a regular file.
    let file = temp_dir("cli-file").join("a-file");
    std::fs::write(&file, "").unwrap();
    let under = file.join("state");
    fails(
        MPCHATD,
        &["--state-dir", s(&under), "--listen", "127.0.0.1:0"],
        FAILURE,
        &["cannot create state directory", "Not a directory"],
    );
}

#[test]
fn mpchatd_says_when_the_state_directory_is_not_writable() {
    // /proc/self exists, and nobody may create files in it.
    fails(
        MPCHATD,
        &["--state-dir", "/proc/self", "--listen", "127.0.0.1:0"],
        FAILURE,
        &["cannot use the state directory /proc/self", "writable"],
    );
    fails_with_input(
        MPCHATD,
        &[
            "useradd",
            "alice",
            "--state-dir",
            "/proc/mpchat",
            "--password-stdin",
            "--iterations",
            "1000",
        ],
        Some("a-password\n"),
        FAILURE,
        &["/proc/mpchat", "writable"],
    );
}

#[test]
fn mpchatd_says_when_its_port_is_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let state = temp_dir("cli-port");
    fails(
        MPCHATD,
        &["--state-dir", s(&state), "--listen", &addr],
        FAILURE,
        &[&format!("cannot listen on {addr}"), "--listen ADDR:PORT"],
    );
    drop(taken);
}

#[test]
fn mpchatd_account_commands_need_a_password_on_stdin_without_a_terminal() {
    let state = temp_dir("cli-accounts");
    // No terminal here (stdin is /dev/null and the test has no controlling tty under
    // CI); the message says to use --password-stdin. With a terminal it would prompt,
    // so only check the message when there is none.
    if std::fs::File::open("/dev/tty").is_err() {
        fails(
            MPCHATD,
            &["useradd", "alice", "--state-dir", s(&state)],
            FAILURE,
            &["--password-stdin"],
        );
    }
    // An empty standard input is no password.
    fails(
        MPCHATD,
        &[
            "useradd",
            "alice",
            "--state-dir",
            s(&state),
            "--password-stdin",
            "--iterations",
            "1000",
        ],
        FAILURE,
        &["cannot read the password from standard input", "pipe"],
    );
    fails(
        MPCHATD,
        &["userdel", "nobody", "--state-dir", s(&state)],
        FAILURE,
        &["no user \"nobody\"", "useradd"],
    );
}

#[test]
fn mpchatd_help_and_manual_page_list_the_same_options() {
    let help = run(MPCHATD, &["--help"]).stdout;
    let from_help: BTreeSet<String> = help
        .split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '|')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect();
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/mpchatd.8"))
        .unwrap();
    let from_page: BTreeSet<String> = page
        .split(|c: char| c.is_whitespace())
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "Fl" && w[1].starts_with('-'))
        .map(|w| format!("-{}", w[1]))
        .collect();
    assert!(from_help.len() >= 15, "{from_help:?}");
    assert_eq!(
        from_help, from_page,
        "mpchatd --help and man/mpchatd.8 disagree"
    );
}

// ---- mpchat ----

#[test]
fn mpchat_help_and_version_print_on_stdout_and_exit_zero() {
    let help = run(MPCHAT, &["--help"]);
    assert_eq!(help.code, Some(0));
    assert!(
        help.stdout.starts_with("usage: mpchat --server"),
        "{}",
        help.stdout
    );
    assert!(help.stdout.contains("mpchat(1)"));
    assert_eq!(help.stderr, "");
    let version = run(MPCHAT, &["--version"]);
    assert_eq!(version.code, Some(0));
    assert_eq!(
        version.stdout,
        format!("mpchat {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(run(MPCHAT, &["keygen", "--help"]).code, Some(0));
}

#[test]
fn mpchat_rejects_an_unknown_option_with_usage_status() {
    fails(
        MPCHAT,
        &["--bogus"],
        USAGE,
        &["unknown option --bogus", "mpchat --help"],
    );
    fails(
        MPCHAT,
        &["-s", "host"],
        USAGE,
        &["unknown option -s", "--help"],
    );
    fails(
        MPCHAT,
        &["keygen", "--user", "alice"],
        USAGE,
        &["unknown option --user", "--help"],
    );
    fails(
        MPCHAT,
        &["chat"],
        USAGE,
        &["unexpected argument \"chat\"", "--help"],
    );
}

#[test]
fn mpchat_names_each_missing_required_option() {
    fails(
        MPCHAT,
        &[],
        USAGE,
        &["--server HOST[:PORT] is required", "--help"],
    );
    fails(
        MPCHAT,
        &["--server", "127.0.0.1"],
        USAGE,
        &["--server-key FILE is required", "--help"],
    );
    fails(
        MPCHAT,
        &["--server", "127.0.0.1", "--server-key", "k"],
        USAGE,
        &["--user NAME is required", "--help"],
    );
    fails(
        MPCHAT,
        &["--server"],
        USAGE,
        &["--server needs a value", "--help"],
    );
    fails(
        MPCHAT,
        &["--server", "h", "--server-key", "k", "--user", "Bob!"],
        USAGE,
        &["invalid user name \"Bob!\""],
    );
    fails(
        MPCHAT,
        &["keygen", "--bits", "1024"],
        USAGE,
        &["--bits must be between 2048 and 4096"],
    );
}

#[test]
fn mpchat_says_the_server_key_file_is_missing() {
    let missing = temp_dir("cli-nokey").join("server.pub");
    fails(
        MPCHAT,
        &[
            "--server",
            "127.0.0.1:1",
            "--server-key",
            s(&missing),
            "--user",
            "alice",
        ],
        FAILURE,
        &[
            "cannot use the server key",
            "server.pub",
            "ask the server's operator",
        ],
    );
    // A file that is not a key at all.
    let junk = temp_dir("cli-junkkey").join("server.pub");
    std::fs::write(&junk, "not a key\n").unwrap();
    fails(
        MPCHAT,
        &[
            "--server",
            "127.0.0.1:1",
            "--server-key",
            s(&junk),
            "--user",
            "alice",
        ],
        FAILURE,
        &["cannot use the server key"],
    );
}

#[test]
fn mpchat_says_what_to_do_about_a_missing_password_file_or_own_key() {
    let cfg = config_with_key();
    let key = cfg.join("key.pub");
    let port = format!("127.0.0.1:{}", closed_port());
    let no_pw = temp_dir("cli-nopw").join("alice.pw");
    fails(
        MPCHAT,
        &[
            "--server",
            &port,
            "--server-key",
            s(&key),
            "--user",
            "alice",
            "--password-file",
            s(&no_pw),
            "--config-dir",
            s(&cfg),
        ],
        FAILURE,
        &["cannot read the password file", "--password-file"],
    );
    let pw = write_password("secret");
    let empty_cfg = temp_dir("cli-emptycfg");
    fails(
        MPCHAT,
        &[
            "--server",
            &port,
            "--server-key",
            s(&key),
            "--user",
            "alice",
            "--password-file",
            s(&pw),
            "--config-dir",
            s(&empty_cfg),
        ],
        FAILURE,
        &["no key yet", "mpchat keygen"],
    );
    if std::fs::File::open("/dev/tty").is_err() {
        fails(
            MPCHAT,
            &[
                "--server",
                &port,
                "--server-key",
                s(&key),
                "--user",
                "alice",
                "--config-dir",
                s(&cfg),
            ],
            FAILURE,
            &["cannot prompt for a password", "--password-file FILE"],
        );
    }
}

#[test]
fn mpchat_says_when_the_server_cannot_be_reached() {
    let cfg = config_with_key();
    let pw = write_password("secret");
    let addr = format!("127.0.0.1:{}", closed_port());
    fails(
        MPCHAT,
        &[
            "--server",
            &addr,
            "--server-key",
            s(&cfg.join("key.pub")),
            "--user",
            "alice",
            "--password-file",
            s(&pw),
            "--config-dir",
            s(&cfg),
        ],
        FAILURE,
        &[
            &format!("cannot connect to {addr}"),
            "check that mpchatd runs there",
        ],
    );
}

#[test]
fn mpchat_says_when_the_login_is_refused_for_a_wrong_password() {
    let server = Server::start(&[]);
    server.add_user("alice", "the-right-password");
    let cfg = config_with_key();
    let wrong = write_password("a-wrong-password");
    let addr = server.addr.to_string();
    let line = fails(
        MPCHAT,
        &[
            "--server",
            &addr,
            "--server-key",
            s(&server.server_pub()),
            "--user",
            "alice",
            "--password-file",
            s(&wrong),
            "--config-dir",
            s(&cfg),
        ],
        FAILURE,
        &[
            &format!("login to {addr} refused"),
            "wrong user name or password",
        ],
    );
    assert!(
        !line.contains("a-wrong-password"),
        "the password is in the message: {line}"
    );
    // The right password gets in, so the refusal above was about the password.
    let right = write_password("the-right-password");
    let ok = run(
        MPCHAT,
        &[
            "--server",
            &addr,
            "--server-key",
            s(&server.server_pub()),
            "--user",
            "alice",
            "--password-file",
            s(&right),
            "--config-dir",
            s(&cfg),
        ],
    );
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
}

#[test]
fn mpchat_keygen_says_when_the_config_directory_cannot_be_written() {
    fails(
        MPCHAT,
        &["keygen", "--config-dir", "/proc/mpchat", "--bits", "2048"],
        FAILURE,
        &["/proc/mpchat", "--config-dir DIR"],
    );
    let cfg = config_with_key();
    fails(
        MPCHAT,
        &["keygen", "--config-dir", s(&cfg), "--bits", "2048"],
        FAILURE,
        &["a key already exists", "Move it away"],
    );
}
