//! Why the server cannot start, and why a running server stops.
//!
//! It exists so that every way `mpchatd` gives up is one typed value that says who is
//! likely at fault (the operator's flags, files and permissions, or the system) and
//! what to do, for `bin/mpchatd.rs` to turn into a message and an exit status. It
//! must never decide the exit itself (no `process::exit`) and never carry a key, a
//! password or a message's contents.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::accounts::UsersFileError;
use crate::store::StoreError;

/// Why the server could not start; each message says what to do.
#[derive(Debug)]
pub enum StartError {
    /// The listen address cannot be bound: another process has the port, the address
    /// is not one of this host's, or the port is privileged. The operator's
    /// `--listen`.
    Listen {
        /// The address as given.
        addr: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// The state directory cannot be created: a parent that is a file or that this
    /// user may not write to. The operator's `--state-dir`.
    CreateStateDir {
        /// The state directory.
        dir: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The state directory exists but this user cannot write to it. The operator's
    /// permissions (or the service's user).
    StateDirNotWritable {
        /// The state directory.
        dir: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another `mpchatd` holds the state directory's lock: the operator started a
    /// second server on the same state.
    Locked {
        /// The state directory.
        dir: PathBuf,
    },
    /// Taking the lock failed for a reason of the system's (a file system without
    /// locks, an I/O error).
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The server key files cannot be read or written: permissions (the operator) or
    /// I/O (the system).
    ServerKeyIo {
        /// The state directory.
        dir: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// `server.key` is not an RSA-2048 PKCS#8 PEM key: damaged or replaced by hand. The
    /// operator restores it, or moves it away to have a new one made.
    ServerKeyInvalid {
        /// The key file.
        path: PathBuf,
    },
    /// The users file cannot be read or is malformed; its error says which, and who
    /// must fix what.
    Accounts {
        /// The state directory.
        dir: PathBuf,
        /// What is wrong with the file.
        source: UsersFileError,
    },
    /// The sessions cannot be recovered from the state directory: damage, a file of
    /// another format version, or I/O; its error names the file.
    Recover(StoreError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Listen { addr, source } => write!(
                f,
                "cannot listen on {addr}: {source}; choose another address with --listen ADDR:PORT"
            ),
            StartError::CreateStateDir { dir, source } => write!(
                f,
                "cannot create state directory {}: {source}; create it or pass --state-dir DIR",
                dir.display()
            ),
            StartError::StateDirNotWritable { dir, source } => write!(
                f,
                "cannot use the state directory {}: {source}; check that it is writable by this user",
                dir.display()
            ),
            StartError::Locked { dir } => write!(
                f,
                "another mpchatd is already using {}; stop it first or pass another --state-dir",
                dir.display()
            ),
            StartError::Lock { path, source } => {
                write!(f, "cannot lock {}: {source}", path.display())
            }
            StartError::ServerKeyIo { dir, source } => write!(
                f,
                "cannot use the server key in {}: {source}; check that the directory is writable by this user",
                dir.display()
            ),
            StartError::ServerKeyInvalid { path } => write!(
                f,
                "{} is not a valid RSA-2048 PKCS#8 PEM key; restore it from a backup or move it away to create a new one",
                path.display()
            ),
            StartError::Accounts { dir, source } => {
                write!(f, "cannot read the accounts in {}: {source}", dir.display())
            }
            StartError::Recover(e) => write!(f, "cannot recover the sessions: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Listen { source, .. }
            | StartError::CreateStateDir { source, .. }
            | StartError::StateDirNotWritable { source, .. }
            | StartError::Lock { source, .. }
            | StartError::ServerKeyIo { source, .. } => Some(source),
            StartError::Accounts { source, .. } => Some(source),
            StartError::Recover(e) => Some(e),
            StartError::Locked { .. } | StartError::ServerKeyInvalid { .. } => None,
        }
    }
}

/// Why a running server stopped.
#[derive(Debug)]
pub enum RunError {
    /// A thread the server needs cannot be started: the system is out of memory or
    /// of threads.
    Thread {
        /// Which thread.
        name: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// A write to the journal failed and the state could not be read back from disk
    /// either (the disk or the state directory went bad under the server): serving
    /// on would answer from state that was not stored.
    Reload(StoreError),
    /// The journal thread ended without a reason, which only a bug (a panic) can do:
    /// nothing could be stored any more.
    JournalStopped,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Thread { name, source } => {
                write!(f, "cannot start the {name} thread: {source}")
            }
            RunError::Reload(e) => write!(
                f,
                "cannot reload the sessions after a failed write: {e}; stopping"
            ),
            RunError::JournalStopped => f.write_str(
                "the journal thread stopped unexpectedly, so nothing can be stored; stopping",
            ),
        }
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunError::Thread { source, .. } => Some(source),
            RunError::Reload(e) => Some(e),
            RunError::JournalStopped => None,
        }
    }
}
