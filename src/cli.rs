//! Small command-line helpers shared by the binaries: a strict option parser (no
//! abbreviations, `--flag VALUE` or `--flag=VALUE`), typed values with messages that
//! say what to do, and reading a password without echo.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

/// Exit status for a usage mistake.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;

/// A command-line mistake; the message says what went wrong and what to do.
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

/// Prompts on the terminal and reads a password with echo turned off (through
/// `stty`, so no terminal code of our own is needed). Fails if there is no terminal.
pub fn prompt_password(prompt: &str) -> io::Result<String> {
    use std::fs::OpenOptions;
    use std::process::{Command, Stdio};
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let stty = |arg: &str| -> io::Result<()> {
        let status = Command::new("stty")
            .arg(arg)
            .stdin(tty.try_clone()?)
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other("stty failed"))
        }
    };
    let mut out = tty.try_clone()?;
    write!(out, "{prompt}")?;
    out.flush()?;
    stty("-echo")?;
    let result = crate::accounts::read_password_line(io::BufReader::new(tty.try_clone()?));
    let _ = stty("echo");
    let _ = writeln!(out);
    result
}

#[cfg(test)]
mod tests {
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
}
