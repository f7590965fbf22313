//! `mpchatd`: the mpchat server, and its account administration subcommands.
//! Argument parsing, logging set-up and exit codes only; the work is in the library.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use mpchat::accounts;
use mpchat::cli::{self, Arg, Failure, UsageError};
use mpchat::server::{self, Config, RunError, Server};

const USAGE: &str = "\
usage: mpchatd [--state-dir DIR] [--listen ADDR:PORT] [limits...]
       mpchatd useradd NAME [--state-dir DIR] [--password-stdin] [--iterations N]
       mpchatd passwd NAME [--state-dir DIR] [--password-stdin] [--iterations N]
       mpchatd userdel NAME [--state-dir DIR]
       mpchatd users [--state-dir DIR]
       mpchatd who | stats [--state-dir DIR]
       mpchatd backup DEST [--state-dir DIR]
       mpchatd rotate-key | retire-key [--state-dir DIR]
       mpchatd reset-key NAME [--state-dir DIR]
       mpchatd SUBCOMMAND --help
       mpchatd --help | --version

Serve mpchat on ADDR:PORT (default 0.0.0.0:5150) with state in DIR (default
/var/lib/mpchat). Limits (defaults in brackets):
  --login-grace SECS          time to finish the login [10]
  --max-pending-logins N | START:RATE:FULL
                              connections still logging in, with random early
                              drop from START at RATE% [32:30:64]
  --max-pending-logins-per-source N
                              of them from one address or IPv6 /64 [8]
  --source-penalty-max SECS   most penalty a source's failed logins earn,
                              0 = no penalties [600]
  --max-connections N         connections in all [10000]
  --login-window SECS         accepted login clock skew, plus or minus [30]
  --invite-wait SECS          wait for online invitees before init_res [30]
  --heartbeat SECS            idle time before a heartbeat [60]
  --heartbeat-timeout SECS    time to answer a heartbeat [30]
  --queue-len N               frames queued per connection [256]
  --max-participants N        per session, creator included [100]
  --backlog-messages N        unacknowledged messages per session [10000]
  --backlog-bytes N           unacknowledged envelope bytes per session [67108864]
  --max-open-sessions N       sessions a user has created and not closed [256]
  --max-pending-invitations N unanswered invitations a user holds [100]
  --user-backlog-bytes N      unacknowledged envelope bytes of one user's
                              messages, all sessions together [16777216]
  --compact-bytes N           journal size that triggers a snapshot [67108864]
  --max-group N               requests stored with one fsync, 1 = no group commit [1024]
See mpchatd(8).";

const SERVE_OPTS: &[&str] = &[
    "--state-dir",
    "--listen",
    "--login-grace",
    "--max-pending-logins",
    "--max-pending-logins-per-source",
    "--source-penalty-max",
    "--max-connections",
    "--login-window",
    "--invite-wait",
    "--heartbeat",
    "--heartbeat-timeout",
    "--queue-len",
    "--max-participants",
    "--backlog-messages",
    "--backlog-bytes",
    "--max-open-sessions",
    "--max-pending-invitations",
    "--user-backlog-bytes",
    "--compact-bytes",
    "--max-group",
];

/// The subcommands that act on a server's state, with their help text.
const OPS: &[(&str, &str)] = &[
    (
        "who",
        "usage: mpchatd who [--state-dir DIR]\n\n\
         Lists the users online on the server running on DIR, one a line: name,\n\
         address and login time (UTC). Fails when no server runs there.",
    ),
    (
        "stats",
        "usage: mpchatd stats [--state-dir DIR]\n\n\
         Prints what the server running on DIR holds, one NAME VALUE a line:\n\
         connections, logins in progress, users online, sessions, backlog messages\n\
         and bytes, bound keys, journal and snapshot sizes. Fails when no server runs.",
    ),
    (
        "backup",
        "usage: mpchatd backup DEST [--state-dir DIR]\n\n\
         Makes a consistent copy of the state in DIR (sessions, messages, accounts and\n\
         keys) in DEST, a new or empty directory, made mode 0700. A running server\n\
         writes it without stopping; a stopped one is copied under its lock. Restore by\n\
         starting mpchatd with --state-dir DEST (or moving DEST in place of DIR).",
    ),
    (
        "rotate-key",
        "usage: mpchatd rotate-key [--state-dir DIR]\n\n\
         Makes a new server key in server.key and server.pub; the old one moves to\n\
         server.old.key and is still accepted. Hand the new server.pub to every user,\n\
         then run mpchatd retire-key. Works with the server running or stopped.",
    ),
    (
        "retire-key",
        "usage: mpchatd retire-key [--state-dir DIR]\n\n\
         Stops accepting the key that rotate-key replaced, and deletes server.old.key.\n\
         Works with the server running or stopped.",
    ),
    (
        "reset-key",
        "usage: mpchatd reset-key NAME [--state-dir DIR]\n\n\
         Clears the end-to-end key bound to account NAME (a user who lost their key);\n\
         the next key the account presents is bound. Works with the server running or\n\
         stopped.",
    ),
];

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let sub = args.first().and_then(|a| a.to_str()).map(str::to_string);
    // The subcommands print what they did; the log says only what went wrong.
    let level = match sub.as_deref() {
        Some(s) if OPS.iter().any(|(name, _)| *name == s) => "warn",
        _ => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
    cli::exit_status("mpchatd", run(args, sub))
}

fn run(mut args: Vec<std::ffi::OsString>, sub: Option<String>) -> Result<(), Failure> {
    match sub.as_deref() {
        Some("useradd") | Some("passwd") | Some("userdel") | Some("users") => {
            args.remove(0);
            admin(sub.as_deref().unwrap_or_default(), args)
        }
        Some(s) if OPS.iter().any(|(name, _)| *name == s) => {
            args.remove(0);
            ops(s, args)
        }
        _ => serve(args),
    }
}

/// who, stats, backup, rotate-key, retire-key, reset-key.
fn ops(sub: &str, args: Vec<std::ffi::OsString>) -> Result<(), Failure> {
    let p = format!("mpchatd {sub}");
    let help = OPS
        .iter()
        .find(|(name, _)| *name == sub)
        .map_or("", |(_, h)| h);
    let mut state_dir = PathBuf::from(server::DEFAULT_STATE_DIR);
    let mut positional = Vec::new();
    for arg in cli::parse(&p, args, &["--state-dir"], &["--help"])? {
        match arg {
            Arg::Pos(x) => positional.push(x),
            Arg::Opt(name, value) => match name.as_str() {
                "--help" => {
                    println!("{help}");
                    return Ok(());
                }
                "--state-dir" => state_dir = PathBuf::from(value.unwrap_or_default()),
                _ => unreachable!("cli::parse only returns listed options"),
            },
        }
    }
    let wants = match sub {
        "backup" => Some("a destination directory"),
        "reset-key" => Some("a user name"),
        _ => None,
    };
    match (wants, positional.len()) {
        (Some(what), n) if n != 1 => {
            return Err(Failure::Usage(format!(
                "{p}: give exactly one argument, {what}; see {p} --help"
            )))
        }
        (None, n) if n != 0 => {
            return Err(Failure::Usage(format!(
                "{p}: takes no argument; see {p} --help"
            )))
        }
        _ => {}
    }
    let rt = |e: server::ops::OpsError| Failure::Runtime(e.to_string());
    let lines = match sub {
        "who" => server::ops::who(&state_dir).map_err(rt)?,
        "stats" => server::ops::stats(&state_dir).map_err(rt)?,
        "rotate-key" => server::ops::rotate_key(&state_dir).map_err(rt)?,
        "retire-key" => server::ops::retire_key(&state_dir).map_err(rt)?,
        "reset-key" => {
            let name = &positional[0];
            if !mpchat::names::valid_username(name) {
                return Err(Failure::Usage(format!(
                    "{p}: invalid user name {name:?}; see {p} --help"
                )));
            }
            server::ops::reset_key(&state_dir, name).map_err(rt)?
        }
        _ => {
            let dest = PathBuf::from(&positional[0]);
            let report = server::ops::backup(&state_dir, &dest).map_err(rt)?;
            let mut line = format!(
                "backed up {} to {}: {} sessions, every record up to {}",
                state_dir.display(),
                dest.display(),
                report.sessions,
                report.lsn
            );
            if let Some(paused) = report.paused {
                line.push_str(&format!(
                    "; the running server paused {} µs for it",
                    paused.as_micros()
                ));
            }
            vec![line]
        }
    };
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

fn serve(args: Vec<std::ffi::OsString>) -> Result<(), Failure> {
    let p = "mpchatd";
    let mut config = Config::default();
    for arg in cli::parse(p, args, SERVE_OPTS, &["--help", "--version"])? {
        let (name, value) = match arg {
            Arg::Pos(x) => {
                return Err(Failure::Usage(format!(
                    "mpchatd: unexpected argument {x:?}; subcommands are useradd, passwd, userdel, users, who, stats, backup, rotate-key, retire-key and reset-key; see mpchatd --help"
                )))
            }
            Arg::Opt(name, value) => (name, value.unwrap_or_default()),
        };
        let v = value.as_str();
        match name.as_str() {
            "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--version" => {
                println!("mpchatd {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            "--state-dir" => config.state_dir = PathBuf::from(v),
            "--listen" => config.listen = v.to_string(),
            "--login-grace" => config.login_grace = Duration::from_secs(positive(p, &name, v)?),
            "--max-pending-logins" => {
                let (full, early_drop) = startups(p, &name, v)?;
                config.max_prelogin = full;
                config.early_drop = early_drop;
            }
            "--max-pending-logins-per-source" => {
                config.max_prelogin_per_source = positive(p, &name, v)?
            }
            "--source-penalty-max" => config.penalties.max = cli::seconds(p, &name, v)?,
            "--max-connections" => config.max_connections = positive(p, &name, v)?,
            "--login-window" => config.login_window = Duration::from_secs(positive(p, &name, v)?),
            "--invite-wait" => config.invite_wait = cli::seconds(p, &name, v)?,
            "--heartbeat" => config.heartbeat_idle = Duration::from_secs(positive(p, &name, v)?),
            "--heartbeat-timeout" => {
                config.heartbeat_timeout = Duration::from_secs(positive(p, &name, v)?)
            }
            "--queue-len" => config.queue_len = positive(p, &name, v)?,
            "--max-participants" => {
                let n: usize = positive(p, &name, v)?;
                if !(2..=mpchat::store::MAX_STORED_PARTICIPANTS).contains(&n) {
                    return Err(Failure::Usage(format!(
                        "{p}: --max-participants must be between 2 and {}",
                        mpchat::store::MAX_STORED_PARTICIPANTS
                    )));
                }
                config.limits.max_participants = n;
            }
            "--backlog-messages" => config.limits.backlog_messages = positive(p, &name, v)?,
            "--backlog-bytes" => config.limits.backlog_bytes = positive(p, &name, v)?,
            "--max-open-sessions" => config.limits.max_open_sessions = positive(p, &name, v)?,
            "--max-pending-invitations" => {
                config.limits.max_pending_invitations = positive(p, &name, v)?
            }
            "--user-backlog-bytes" => config.limits.user_backlog_bytes = positive(p, &name, v)?,
            "--compact-bytes" => config.compact_bytes = positive(p, &name, v)?,
            "--max-group" => config.max_group = positive(p, &name, v)?,
            _ => unreachable!("cli::parse only returns listed options"),
        }
    }
    let server = Server::bind(config).map_err(|e| Failure::Runtime(e.to_string()))?;
    let addr = server
        .local_addr()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    println!("listening on {addr}");
    let _ = io::stdout().flush();
    match server.run() {
        // A server that could not start a thread says so like any start-up failure.
        stop @ RunError::Thread { .. } => Err(Failure::Runtime(stop.to_string())),
        // Once it serves, what it has to say goes to its log, this last line too.
        stop => {
            log::error!("{stop}");
            Err(Failure::Logged)
        }
    }
}

/// `--max-pending-logins`: `FULL` alone (no random early drop, as in OpenSSH's
/// MaxStartups), or `START:RATE:FULL`.
fn startups(p: &str, name: &str, v: &str) -> Result<(usize, server::EarlyDrop), UsageError> {
    let parts: Vec<&str> = v.split(':').collect();
    let (start, rate, full) = match parts[..] {
        [full] => {
            let full: usize = positive(p, name, full)?;
            (full, 100, full)
        }
        [start, rate, full] => (
            positive(p, name, start)?,
            cli::number::<u32>(p, name, rate)?,
            positive(p, name, full)?,
        ),
        _ => {
            return Err(UsageError(format!(
                "{p}: {name} wants N or START:RATE:FULL, not {v:?}"
            )))
        }
    };
    if start > full || rate > 100 {
        return Err(UsageError(format!(
            "{p}: {name} {v}: START must be at most FULL and RATE at most 100"
        )));
    }
    Ok((full, server::EarlyDrop { start, rate }))
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    p: &str,
    name: &str,
    v: &str,
) -> Result<T, UsageError> {
    let n: T = cli::number(p, name, v)?;
    if n <= T::default() {
        return Err(UsageError(format!("{p}: {name} must be at least 1")));
    }
    Ok(n)
}

fn admin(sub: &str, args: Vec<std::ffi::OsString>) -> Result<(), Failure> {
    let p = format!("mpchatd {sub}");
    let mut state_dir = PathBuf::from(server::DEFAULT_STATE_DIR);
    let mut password_stdin = false;
    let mut iterations = accounts::DEFAULT_ITERATIONS;
    let mut names = Vec::new();
    for arg in cli::parse(
        &p,
        args,
        &["--state-dir", "--iterations"],
        &["--password-stdin", "--help"],
    )? {
        match arg {
            Arg::Pos(n) => names.push(n),
            Arg::Opt(name, value) => match (name.as_str(), value.unwrap_or_default()) {
                ("--help", _) => {
                    println!("{USAGE}");
                    return Ok(());
                }
                ("--state-dir", v) => state_dir = PathBuf::from(v),
                ("--iterations", v) => iterations = positive(&p, &name, &v)?,
                ("--password-stdin", _) => password_stdin = true,
                _ => unreachable!("cli::parse only returns listed options"),
            },
        }
    }
    let wants_name = sub != "users";
    if wants_name && names.len() != 1 {
        return Err(Failure::Usage(format!(
            "{p}: give exactly one user name; see mpchatd --help"
        )));
    }
    if !wants_name && !names.is_empty() {
        return Err(Failure::Usage(format!(
            "{p}: takes no user name; see mpchatd --help"
        )));
    }
    let rt = |e: accounts::AdminError| Failure::Runtime(e.to_string());
    let password = || -> Result<String, Failure> {
        if password_stdin {
            return cli::read_password_line(io::stdin().lock()).map_err(|e| {
                Failure::Runtime(format!(
                    "cannot read the password from standard input: {e}; pipe it in as one line"
                ))
            });
        }
        let prompt = |p: &str| {
            cli::prompt_password(p).map_err(|e| match e.kind() {
                io::ErrorKind::Interrupted => Failure::Interrupted,
                _ => Failure::Runtime(format!(
                    "cannot prompt for a password ({e}); pass --password-stdin and pipe it in"
                )),
            })
        };
        // Twice, as passwd(1) does: a typo nobody saw would lock the user out.
        let first = prompt("Password: ")?;
        if prompt("Retype password: ")? != first {
            return Err(Failure::Runtime(
                "the two passwords differ; nothing was changed, try again".into(),
            ));
        }
        Ok(first)
    };
    match sub {
        "useradd" => {
            let name = &names[0];
            if !mpchat::names::valid_username(name) {
                return Err(Failure::Usage(format!(
                    "{p}: invalid user name {name:?}: use 1-32 characters of a-z 0-9 . _ -, starting with a letter or digit"
                )));
            }
            let pw = password()?;
            let uid = accounts::add_user(&state_dir, name, &pw, iterations).map_err(rt)?;
            println!("added {name} uid {uid:016x}");
        }
        "passwd" => {
            let pw = password()?;
            accounts::set_password(&state_dir, &names[0], &pw, iterations).map_err(rt)?;
            println!("changed the password of {}", names[0]);
        }
        "userdel" => {
            accounts::remove_user(&state_dir, &names[0]).map_err(rt)?;
            println!("removed {}", names[0]);
        }
        _ => {
            if !state_dir.is_dir() {
                return Err(Failure::Runtime(format!(
                    "state directory {} does not exist; pass --state-dir DIR",
                    state_dir.display()
                )));
            }
            for (name, uid, iters) in accounts::list_users(&state_dir).map_err(rt)? {
                println!("{name} {uid:016x} {iters}");
            }
        }
    }
    Ok(())
}
