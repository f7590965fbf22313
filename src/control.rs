//! The control socket: how `mpchatd who`, `stats`, `backup`, `rotate-key`,
//! `retire-key` and `reset-key` talk to the running server on the same machine.
//!
//! It exists so that an operator can ask the running server what only it knows (who
//! is online, what it holds in memory) and have it do what must happen inside it (a
//! snapshot at a journal point, a new server key taken into use, a key binding
//! cleared through the journal) without stopping it. This module holds the wire form
//! of the requests and replies and the client's side; the server's side is
//! `server::control`.
//!
//! # Wire form
//!
//! A Unix stream socket [`CONTROL_SOCKET`] in the state directory. The client sends
//! one request line (UTF-8, at most [`MAX_REQUEST_LEN`] bytes, ending in `\n`):
//! `who`, `stats`, `backup`, `rotate-key`, `retire-key` or `reset-key NAME`. The
//! server answers `ok` or `error TEXT` on the first line, then for `ok` zero or more
//! data lines, each ending in `\n`, and closes the connection.
//!
//! # Who may ask
//!
//! Only the user the server runs as (and root). std offers no way to read a Unix
//! socket peer's credentials without unsafe code (`SO_PEERCRED` is not stable), so
//! the server relies on the file system, which the kernel enforces at `connect(2)`:
//! the socket file is mode 0600, owned by the server's user, made inside a private
//! directory and renamed into place so that it is never reachable with a wider mode,
//! and the state directory itself is mode 0700. Anyone else's `connect` fails with
//! `EACCES`, which [`request`] reports as [`ControlError::Denied`].
//!
//! This module must never send or print a password or a private key, and never wait
//! on the server without a timeout.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::names::valid_username;

/// The control socket's file name in the state directory.
pub const CONTROL_SOCKET: &str = "control";
/// Longest request line, newline included.
pub const MAX_REQUEST_LEN: usize = 1024;
/// Longest reply the client reads: a `who` line is under 100 bytes, so this is room
/// for 160,000 users online.
pub const MAX_REPLY_LEN: u64 = 16 << 20;
/// How long a client waits for the server's answer by default. A backup of a large
/// state writes its whole snapshot before it answers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A request to the running server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `who`: the users online, with their address and login time.
    Who,
    /// `stats`: counts of connections, sessions, backlog and files.
    Stats,
    /// `backup`: write a snapshot at a journal point into a fresh directory inside
    /// the state directory and answer its name (the client copies it out).
    Backup,
    /// `rotate-key`: make a new server key and accept it alongside the current one.
    RotateKey,
    /// `retire-key`: stop accepting the previous server key.
    RetireKey,
    /// `reset-key NAME`: clear the key bound to account NAME.
    ResetKey(String),
}

impl Command {
    /// The request line, `\n` included.
    pub fn encode(&self) -> String {
        match self {
            Command::Who => "who\n".into(),
            Command::Stats => "stats\n".into(),
            Command::Backup => "backup\n".into(),
            Command::RotateKey => "rotate-key\n".into(),
            Command::RetireKey => "retire-key\n".into(),
            Command::ResetKey(name) => format!("reset-key {name}\n"),
        }
    }

    /// Parses a request line (without its `\n`). The error is the text of the
    /// `error` reply.
    pub fn decode(line: &str) -> Result<Command, String> {
        Ok(match line.split_once(' ') {
            None => match line {
                "who" => Command::Who,
                "stats" => Command::Stats,
                "backup" => Command::Backup,
                "rotate-key" => Command::RotateKey,
                "retire-key" => Command::RetireKey,
                _ => return Err(unknown(line)),
            },
            Some(("reset-key", name)) if valid_username(name) => Command::ResetKey(name.into()),
            Some(("reset-key", _)) => return Err("reset-key needs a valid user name".into()),
            Some((cmd, _)) => return Err(unknown(cmd)),
        })
    }
}

fn unknown(cmd: &str) -> String {
    let shown: String = cmd.chars().take(32).filter(|c| !c.is_control()).collect();
    format!("unknown control request {shown:?} (is the server older than this mpchatd?)")
}

/// The reply's text: `ok` and data lines, or `error TEXT`.
pub fn encode_reply(reply: &Result<Vec<String>, String>) -> String {
    match reply {
        Ok(lines) => {
            let mut s = String::from("ok\n");
            for l in lines {
                s.push_str(l);
                s.push('\n');
            }
            s
        }
        Err(text) => format!("error {}\n", text.replace('\n', " ")),
    }
}

/// Why a control request got no answer, or a refusal.
#[derive(Debug)]
pub enum ControlError {
    /// No server listens on the state directory: the socket does not exist or
    /// nobody accepts on it (a server that stopped, or a leftover file).
    NoServer {
        /// The socket's path.
        path: PathBuf,
    },
    /// The socket (or the state directory) is not this user's: the kernel refused
    /// the connection. Run the command as the user the server runs as.
    Denied {
        /// The socket's path.
        path: PathBuf,
    },
    /// Talking to the server failed otherwise (a timeout, a reset, a path too long
    /// for a Unix socket).
    Io {
        /// The socket's path.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The server answered `error TEXT`.
    Refused(String),
    /// The server's answer is not in the control form (another program on the
    /// socket, or a server of another version).
    BadReply,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::NoServer { path } => write!(
                f,
                "no mpchatd is running on this state directory (nothing answers on {}); start it, or pass the --state-dir it uses",
                path.display()
            ),
            ControlError::Denied { path } => write!(
                f,
                "permission denied on {}: only the user mpchatd runs as may use it (the socket is mode 0600 in a mode 0700 directory); run this as that user, e.g. sudo -u mpchat",
                path.display()
            ),
            ControlError::Io { path, source } => {
                write!(f, "cannot talk to the server on {}: {source}", path.display())
            }
            ControlError::Refused(text) => write!(f, "the server refused: {text}"),
            ControlError::BadReply => {
                f.write_str("the server's answer is not in the control form; is it an mpchatd of another version?")
            }
        }
    }
}

impl std::error::Error for ControlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ControlError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The control socket of `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CONTROL_SOCKET)
}

/// Sends `cmd` to the server running on `state_dir` and returns its data lines.
/// Waits at most `timeout` for each read and write.
pub fn request(
    state_dir: &Path,
    cmd: &Command,
    timeout: Duration,
) -> Result<Vec<String>, ControlError> {
    let path = socket_path(state_dir);
    let io_err = |source: io::Error| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            return Err(match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ControlError::NoServer { path }
                }
                io::ErrorKind::PermissionDenied => ControlError::Denied { path },
                _ => io_err(e),
            })
        }
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    stream.write_all(cmd.encode().as_bytes()).map_err(io_err)?;
    let mut text = String::new();
    BufReader::new(stream)
        .take(MAX_REPLY_LEN)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => ControlError::BadReply,
            _ => io_err(e),
        })?;
    decode_reply(&text)
}

/// Parses a whole reply.
pub fn decode_reply(text: &str) -> Result<Vec<String>, ControlError> {
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().ok_or(ControlError::BadReply)?;
    let first = first.strip_suffix('\n').ok_or(ControlError::BadReply)?;
    if let Some(reason) = first.strip_prefix("error ") {
        return Err(ControlError::Refused(reason.to_string()));
    }
    if first != "ok" {
        return Err(ControlError::BadReply);
    }
    lines
        .map(|l| l.strip_suffix('\n').map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or(ControlError::BadReply)
}

/// Reads one request line of at most [`MAX_REQUEST_LEN`] bytes (for the server).
pub fn read_request(r: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    r.take(MAX_REQUEST_LEN as u64).read_until(b'\n', &mut buf)?;
    if buf.pop() != Some(b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the request is not one line of at most 1024 bytes",
        ));
    }
    String::from_utf8(buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the request is not UTF-8"))
}

/// `t` as UTC in ISO 8601 to the second, `2026-12-02T12:28:00Z` (for `who`).
pub fn utc_time(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_writes_iso_8601_in_utc() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |s| utc_time(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_764_678_480), "2025-12-02T12:28:00Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn every_command_round_trips_through_its_request_line() {
        for cmd in [
            Command::Who,
            Command::Stats,
            Command::Backup,
            Command::RotateKey,
            Command::RetireKey,
            Command::ResetKey("bob".into()),
        ] {
            let line = cmd.encode();
            assert_eq!(Command::decode(line.trim_end_matches('\n')), Ok(cmd));
        }
    }

    #[test]
    fn unknown_or_malformed_requests_are_refused_with_a_reason() {
        assert!(Command::decode("shutdown").unwrap_err().contains("unknown"));
        assert!(Command::decode("who am i").unwrap_err().contains("unknown"));
        assert!(Command::decode("reset-key Bad Name").is_err());
        assert!(Command::decode("reset-key ").is_err());
        assert!(Command::decode("").is_err());
    }

    #[test]
    fn replies_decode_to_their_lines_or_the_refusal() {
        let ok = encode_reply(&Ok(vec!["a 1".into(), "b 2".into()]));
        assert_eq!(decode_reply(&ok).unwrap(), vec!["a 1", "b 2"]);
        assert_eq!(decode_reply("ok\n").unwrap(), Vec::<String>::new());
        let err = encode_reply(&Err("no\nway".into()));
        assert!(matches!(decode_reply(&err), Err(ControlError::Refused(t)) if t == "no way"));
        assert!(matches!(decode_reply(""), Err(ControlError::BadReply)));
        assert!(matches!(decode_reply("ok"), Err(ControlError::BadReply)));
        assert!(matches!(decode_reply("ok\nx"), Err(ControlError::BadReply)));
        assert!(matches!(
            decode_reply("hello\n"),
            Err(ControlError::BadReply)
        ));
    }

    #[test]
    fn a_request_line_is_bounded_and_must_end_in_a_newline() {
        let mut r = io::Cursor::new(b"who\nstats\n".to_vec());
        assert_eq!(read_request(&mut r).unwrap(), "who");
        let long = vec![b'a'; MAX_REQUEST_LEN + 10];
        assert!(read_request(&mut io::Cursor::new(long)).is_err());
        assert!(read_request(&mut io::Cursor::new(b"who".to_vec())).is_err());
        assert!(read_request(&mut io::Cursor::new(b"\xff\n".to_vec())).is_err());
    }
}
