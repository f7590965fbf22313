//! Small command-line helpers shared by the binaries: a strict option parser (no
//! abbreviations, `--flag VALUE` or `--flag=VALUE`), typed values with messages that
//! say what to do, and reading a password: from the terminal without echo
//! ([`crate::terminal`]), or one line from a pipe or file (`--password-stdin`,
//! `--password-file`).
//!
//! It must never put a password in an error message, and never echo one.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead};
use std::time::Duration;

use crate::login::MAX_PASSWORD_LEN;

/// Exit status for a usage mistake.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status after Ctrl-C at a password prompt: 128 + SIGINT, what a shell reports
/// for a command that Ctrl-C stopped.
pub const EXIT_INTERRUPTED: u8 = 130;

/// A mistake in the command line: an unknown option, a missing or malformed value,
/// the wrong number of arguments. The user who typed it is at fault (never the
/// program, the system or a peer), and can fix it by reading the message: it names
/// the program, says what is wrong and what to do (usually: see `--help`). The binary
/// prints it as it is and exits with [`EXIT_USAGE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a binary stops: a usage mistake (exit 2, the message already names the
/// program) or a runtime failure (exit 1, the program's name is prefixed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A command-line mistake.
    Usage(String),
    /// Something went wrong while running.
    Runtime(String),
    /// Something went wrong while running and the program's log already says what
    /// (a server that stops while serving): exit 1 with no further message.
    Logged,
    /// The user cancelled with Ctrl-C (at a password prompt): exit
    /// [`EXIT_INTERRUPTED`], as a shell reports a command that Ctrl-C stopped.
    Interrupted,
}

impl From<UsageError> for Failure {
    fn from(e: UsageError) -> Self {
        Failure::Usage(e.0)
    }
}

/// Prints `result`'s one-line diagnosis, if any, and returns the exit status.
pub fn exit_status(program: &str, result: Result<(), Failure>) -> std::process::ExitCode {
    use std::process::ExitCode;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("{program}: {msg}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(Failure::Logged) => ExitCode::from(EXIT_FAILURE),
        Err(Failure::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
    }
}

/// One parsed argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// `--name` with its value if the option takes one.
    Opt(String, Option<String>),
    /// A positional argument.
    Pos(String),
}

/// Splits `args` into options and positionals. `with_value` lists the options that
/// take a value; `flags` those that do not. Anything else is an error naming `--help`.
pub fn parse(
    program: &str,
    args: impl IntoIterator<Item = OsString>,
    with_value: &[&str],
    flags: &[&str],
) -> Result<Vec<Arg>, UsageError> {
    let mut out = Vec::new();
    let mut it = args.into_iter();
    let mut only_positionals = false;
    while let Some(arg) = it.next() {
        let arg = arg
            .into_string()
            .map_err(|_| UsageError(format!("{program}: arguments must be UTF-8")))?;
        if only_positionals || !arg.starts_with("--") || arg == "-" {
            if !only_positionals && arg.starts_with('-') && arg.len() > 1 {
                return Err(UsageError(format!(
                    "{program}: unknown option {arg}; see {program} --help"
                )));
            }
            out.push(Arg::Pos(arg));
            continue;
        }
        if arg == "--" {
            only_positionals = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if with_value.contains(&name.as_str()) {
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .ok_or_else(|| {
                        UsageError(format!(
                            "{program}: {name} needs a value; see {program} --help"
                        ))
                    })?,
            };
            out.push(Arg::Opt(name, Some(value)));
        } else if flags.contains(&name.as_str()) {
            if inline.is_some() {
                return Err(UsageError(format!(
                    "{program}: {name} takes no value; see {program} --help"
                )));
            }
            out.push(Arg::Opt(name, None));
        } else {
            return Err(UsageError(format!(
                "{program}: unknown option {name}; see {program} --help"
            )));
        }
    }
    Ok(out)
}

/// Parses a number option.
pub fn number<T: std::str::FromStr>(
    program: &str,
    name: &str,
    value: &str,
) -> Result<T, UsageError> {
    value.parse().map_err(|_| {
        UsageError(format!(
            "{program}: {name} wants a whole number, not {value:?}"
        ))
    })
}

/// Parses a duration in whole seconds.
pub fn seconds(program: &str, name: &str, value: &str) -> Result<Duration, UsageError> {
    number::<u64>(program, name, value).map(Duration::from_secs)
}

/// Prompts on the terminal and reads a password without echo
/// ([`crate::terminal::read_password`]): echo goes off before the prompt appears, and
/// the terminal is restored on every way out, Ctrl-C and signals included. Ctrl-C
/// gives [`io::ErrorKind::Interrupted`] (see [`Failure::Interrupted`]). Fails if there
/// is no terminal.
pub fn prompt_password(prompt: &str) -> io::Result<String> {
    crate::terminal::read_password(prompt)
}

/// Reads a password for `--password-stdin`: one line, without its `\n` or `\r\n`. A
/// last line without a newline is fine; an empty password, one over
/// [`MAX_PASSWORD_LEN`] bytes or one that is not UTF-8 is an error (whose message never
/// contains the password).
pub fn read_password_line<R: BufRead>(reader: R) -> io::Result<String> {
    let mut line = Vec::new();
    // Two bytes of slack for the line ending.
    reader
        .take(MAX_PASSWORD_LEN as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty password on standard input",
        ));
    }
    if line.len() > MAX_PASSWORD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("password on standard input is longer than {MAX_PASSWORD_LEN} bytes"),
        ));
    }
    String::from_utf8(line).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "password on standard input is not UTF-8",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_take_values_inline_or_separately() {
        let got = parse(
            "p",
            args(&["--a", "1", "--b=2", "--c", "pos"]),
            &["--a", "--b"],
            &["--c"],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Arg::Opt("--a".into(), Some("1".into())),
                Arg::Opt("--b".into(), Some("2".into())),
                Arg::Opt("--c".into(), None),
                Arg::Pos("pos".into())
            ]
        );
    }

    #[test]
    fn unknown_options_and_missing_values_are_usage_errors() {
        assert!(parse("p", args(&["--x"]), &[], &[])
            .unwrap_err()
            .0
            .contains("unknown option --x"));
        assert!(parse("p", args(&["-x"]), &[], &[])
            .unwrap_err()
            .0
            .contains("unknown option -x"));
        assert!(parse("p", args(&["--a"]), &["--a"], &[])
            .unwrap_err()
            .0
            .contains("needs a value"));
        assert!(parse("p", args(&["--c=1"]), &[], &["--c"])
            .unwrap_err()
            .0
            .contains("takes no value"));
    }

    #[test]
    fn read_password_line_strips_the_line_ending_only() {
        let read = |s: &[u8]| read_password_line(Cursor::new(s.to_vec()));
        assert_eq!(read(b"secret\n").unwrap(), "secret");
        assert_eq!(read(b"secret\r\n").unwrap(), "secret");
        assert_eq!(read(b"secret").unwrap(), "secret");
        assert_eq!(read(b" two words \nnext line\n").unwrap(), " two words ");
        assert_eq!(read(b"a\r\r\n").unwrap(), "a\r");
        assert!(read(b"").is_err());
        assert!(read(b"\n").is_err());
        assert!(read(b"\r\n").is_err());
        assert!(read(b"\xff\xfe\n").is_err());
        let max = "x".repeat(MAX_PASSWORD_LEN);
        assert_eq!(read(format!("{max}\r\n").as_bytes()).unwrap(), max);
        assert_eq!(read(max.as_bytes()).unwrap(), max);
        let err = read(format!("{max}x\n").as_bytes()).unwrap_err();
        assert!(
            !err.to_string().contains("xxxx"),
            "no password in errors: {err}"
        );
        assert!(read(format!("{max}xyz").as_bytes()).is_err());
    }

    #[test]
    fn read_password_line_leaves_the_rest_of_the_input() {
        let mut input = Cursor::new(b"first\nsecond\n".to_vec());
        assert_eq!(read_password_line(&mut input).unwrap(), "first");
        assert_eq!(read_password_line(&mut input).unwrap(), "second");
    }
}
