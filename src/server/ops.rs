//! The operator's subcommands that act on a server's state: `who`, `stats`,
//! `backup`, `rotate-key`, `retire-key` and `reset-key`.
//!
//! Each asks the running server through the control socket ([`crate::control`]). When
//! no server runs on the state directory, the ones that make sense without it
//! (`backup`, the key rollover, `reset-key`) take the state directory's lock, so that
//! no server can start meanwhile, and do the work on the files themselves; `who` and
//! `stats` say that no server runs. A server that holds the lock but does not answer
//! on its control socket (one older than this command, or one that could not make
//! the socket) is reported as such: nothing is done behind its back.
//!
//! It must never change a running server's files behind its back (everything
//! offline happens under the lock), never create a state directory that does not
//! exist, and never print a private key or a password.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::backup::{self, BackupError, Report};
use super::keys::{self, KeyOpError};
use super::LOCK_FILE;
use crate::accounts::UsersFile;
use crate::control::{self, Command, ControlError};
use crate::session::{Limits, Record};
use crate::upgrade;

/// Why an operator's subcommand failed. Each message says what to do.
#[derive(Debug)]
pub enum OpsError {
    /// The state directory does not exist.
    NoStateDir(PathBuf),
    /// Talking to the running server failed, or it refused.
    Control(ControlError),
    /// `who` or `stats` with no server running.
    NotRunning(PathBuf),
    /// A server holds the state directory's lock but does not answer on the control
    /// socket.
    Unreachable(PathBuf),
    /// The lock file could not be opened or locked.
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A key rollover step failed.
    Key(KeyOpError),
    /// A backup failed.
    Backup(BackupError),
    /// The server's answer lacks what it must say.
    BadReply,
    /// The state directory's files cannot be read or changed (offline); the text
    /// names the file and the problem.
    State(String),
}

impl fmt::Display for OpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpsError::NoStateDir(dir) => write!(
                f,
                "state directory {} does not exist; pass --state-dir DIR",
                dir.display()
            ),
            OpsError::Control(e) => e.fmt(f),
            OpsError::NotRunning(dir) => write!(
                f,
                "no mpchatd is running on {} (nothing answers on its control socket); start it, or pass the --state-dir it uses",
                dir.display()
            ),
            OpsError::Unreachable(dir) => write!(
                f,
                "an mpchatd holds {} but does not answer on its control socket (an older mpchatd, or one that could not make the socket: see its log); restart it with this version",
                dir.display()
            ),
            OpsError::Lock { path, source } => write!(f, "cannot lock {}: {source}", path.display()),
            OpsError::Key(e) => e.fmt(f),
            OpsError::Backup(e) => e.fmt(f),
            OpsError::BadReply => f.write_str(
                "the server's answer lacks what it must say; is it an mpchatd of another version?",
            ),
            OpsError::State(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for OpsError {}

impl From<KeyOpError> for OpsError {
    fn from(e: KeyOpError) -> Self {
        OpsError::Key(e)
    }
}

impl From<BackupError> for OpsError {
    fn from(e: BackupError) -> Self {
        OpsError::Backup(e)
    }
}

/// Checks that `state_dir` is a directory this user may look into.
fn check_state_dir(state_dir: &Path) -> Result<(), OpsError> {
    match std::fs::metadata(state_dir.join(LOCK_FILE)).and(std::fs::metadata(state_dir)) {
        Ok(m) if m.is_dir() => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(OpsError::Control(ControlError::Denied {
                path: control::socket_path(state_dir),
            }))
        }
        // A directory without a lock file has never been served: nothing to ask, but
        // the offline commands may still work on it.
        Err(e) if e.kind() == io::ErrorKind::NotFound && state_dir.is_dir() => Ok(()),
        _ => Err(OpsError::NoStateDir(state_dir.to_path_buf())),
    }
}

/// Asks the server on `state_dir`; `Ok(None)` when none answers there.
fn ask(state_dir: &Path, cmd: &Command) -> Result<Option<Vec<String>>, OpsError> {
    check_state_dir(state_dir)?;
    match control::request(state_dir, cmd, control::DEFAULT_TIMEOUT) {
        Ok(lines) => Ok(Some(lines)),
        Err(ControlError::NoServer { .. }) => Ok(None),
        Err(e) => Err(OpsError::Control(e)),
    }
}

/// Takes the state directory's lock for an offline change; fails if a server holds
/// it. The lock is held as long as the file is open.
fn lock_offline(state_dir: &Path) -> Result<File, OpsError> {
    let path = state_dir.join(LOCK_FILE);
    let lock_err = |source| OpsError::Lock {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(OpsError::Unreachable(state_dir.to_path_buf()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
    }
}

/// Runs `cmd` on the running server, or `offline` under the lock if none runs.
fn online_or_offline(
    state_dir: &Path,
    cmd: &Command,
    offline: impl FnOnce() -> Result<Vec<String>, OpsError>,
) -> Result<Vec<String>, OpsError> {
    if let Some(lines) = ask(state_dir, cmd)? {
        return Ok(lines);
    }
    let _lock = lock_offline(state_dir)?;
    offline()
}

/// Runs `cmd`, which needs the running server.
fn online_only(state_dir: &Path, cmd: &Command) -> Result<Vec<String>, OpsError> {
    ask(state_dir, cmd)?.ok_or_else(|| OpsError::NotRunning(state_dir.to_path_buf()))
}

/// `mpchatd who`: a line per online user, `NAME ADDRESS SINCE` (UTC, ISO 8601).
pub fn who(state_dir: &Path) -> Result<Vec<String>, OpsError> {
    online_only(state_dir, &Command::Who)
}

/// `mpchatd stats`: `NAME VALUE` lines.
pub fn stats(state_dir: &Path) -> Result<Vec<String>, OpsError> {
    online_only(state_dir, &Command::Stats)
}

/// `mpchatd rotate-key`: the lines to print.
pub fn rotate_key(state_dir: &Path) -> Result<Vec<String>, OpsError> {
    online_or_offline(state_dir, &Command::RotateKey, || {
        let now = keys::read(state_dir)?;
        let next = keys::rotate(state_dir, &now)?;
        Ok(keys::rotated_lines(&next))
    })
}

/// `mpchatd retire-key`: the lines to print.
pub fn retire_key(state_dir: &Path) -> Result<Vec<String>, OpsError> {
    online_or_offline(state_dir, &Command::RetireKey, || {
        let now = keys::read(state_dir)?;
        let next = keys::retire(state_dir, &now)?;
        Ok(vec![keys::retired_line(&now, &next)])
    })
}

/// `mpchatd reset-key NAME`: clears the key bound to account `name`.
pub fn reset_key(state_dir: &Path, name: &str) -> Result<Vec<String>, OpsError> {
    online_or_offline(state_dir, &Command::ResetKey(name.to_string()), || {
        let users = UsersFile::open(state_dir).map_err(|e| OpsError::State(e.to_string()))?;
        let uid =
            users.current().lookup(name).map(|a| a.uid).ok_or_else(|| {
                OpsError::State(format!("no user {name}; mpchatd users lists them"))
            })?;
        let mut recovered = upgrade::open_state(state_dir, Limits::default())
            .map_err(|e| OpsError::State(e.to_string()))?;
        if recovered.sessions.bindings().get(uid).is_none() {
            return Ok(vec![format!("{name} has no key bound; nothing changed")]);
        }
        let rec = Record::Unbind { uid };
        recovered
            .journal
            .append(&[(recovered.last_lsn + 1, rec)])
            .map_err(|e| OpsError::State(format!("{}: {e}", recovered.journal.path().display())))?;
        Ok(vec![format!(
            "cleared the key bound to {name}; the next key the account presents is bound"
        )])
    })
}

/// `mpchatd backup DEST`: a consistent copy of the state of `state_dir` in `dest`
/// (a new directory, or an empty one), made by the running server without stopping
/// it, or from a stopped server's files under its lock.
pub fn backup(state_dir: &Path, dest: &Path) -> Result<Report, OpsError> {
    check_state_dir(state_dir)?;
    let created = backup::make_destination(dest)?;
    let result = backup_into(state_dir, dest);
    if result.is_err() {
        // Nothing half-copied stays behind to be mistaken for a backup.
        if created {
            let _ = std::fs::remove_dir_all(dest);
        } else if let Ok(entries) = std::fs::read_dir(dest) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    result
}

fn backup_into(state_dir: &Path, dest: &Path) -> Result<Report, OpsError> {
    let limits = Limits::default();
    let Some(lines) = ask(state_dir, &Command::Backup)? else {
        let _lock = lock_offline(state_dir)?;
        return Ok(backup::copy_out(state_dir, None, dest, limits)?);
    };
    let [name, lsn, _sessions, paused] = &lines[..] else {
        return Err(OpsError::BadReply);
    };
    let field = |line: &str, key: &str| {
        line.strip_prefix(key)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(OpsError::BadReply)
    };
    let lsn = field(lsn, "lsn ")?;
    let paused = Duration::from_micros(field(paused, "paused_us ")?);
    if !name.starts_with(backup::BACKUP_TMP_PREFIX) || name.contains('/') {
        return Err(OpsError::BadReply);
    }
    let dir = state_dir.join(name);
    let copied = backup::copy_out(state_dir, Some(&dir), dest, limits);
    let _ = std::fs::remove_dir_all(&dir);
    let mut report = copied?;
    if report.lsn < lsn {
        // The copy's snapshot is the one the server wrote at `lsn`.
        return Err(OpsError::BadReply);
    }
    report.paused = Some(paused);
    Ok(report)
}
