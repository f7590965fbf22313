//! The administration commands (`mpchatd useradd|passwd|userdel|users`): edits of the
//! users file that are safe while the server runs.
//!
//! It exists so that every rewrite of the file goes through one lock and one atomic
//! replacement, whoever runs it and however many run at once.
//!
//! It must never:
//! - leave a torn or half-edited users file: every rewrite happens under an exclusive
//!   lock on `users.lock`, reads the file after taking it, and replaces the file
//!   atomically (temp file, fsync, rename), mode 0600;
//! - change anything when an edit fails (an invalid name, a bad password, a corrupt
//!   file);
//! - print or put in an error message a password or a password hash.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::password::{check_iterations, check_new_password};
use super::users_file::read_accounts;
use super::{Account, Accounts, EntryError, HashError, PasswordHash, UsersFileError, USERS_FILE};
use crate::crypto;
use crate::fsutil;
use crate::names::valid_username;

/// Name of the lock file that serialises administrative rewrites of [`USERS_FILE`]. A
/// separate file, since each rewrite replaces the users file's inode.
pub const USERS_LOCK_FILE: &str = "users.lock";

/// Why an administrative command failed. Each message says what to do next.
#[derive(Debug)]
pub enum AdminError {
    /// The name breaks the username rule.
    InvalidName(String),
    /// `useradd` of a name that exists.
    UserExists(String),
    /// `passwd` or `userdel` of a name that does not exist in `path`.
    UnknownUser {
        /// The name asked for.
        name: String,
        /// The users file looked in.
        path: PathBuf,
    },
    /// The password or iteration count is unacceptable, or no salt could be made.
    Hash(HashError),
    /// Creating the state directory, locking or writing failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The existing users file is unreadable or malformed; it was left alone.
    UsersFile(UsersFileError),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::InvalidName(name) => EntryError::InvalidName(name.clone()).fmt(f),
            AdminError::UserExists(name) => {
                write!(
                    f,
                    "user {name} already exists; use passwd to change the password"
                )
            }
            AdminError::UnknownUser { name, path } => write!(
                f,
                "no user {name:?} in {}; use users to list them, useradd to create one",
                path.display()
            ),
            AdminError::Hash(e) => e.fmt(f),
            AdminError::Io { path, source } => write!(
                f,
                "{}: {source}; check the state directory exists and is writable by you",
                path.display()
            ),
            AdminError::UsersFile(e) => {
                write!(
                    f,
                    "{e}; fix the file by hand or restore a backup, then try again"
                )
            }
        }
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdminError::Io { source, .. } => Some(source),
            AdminError::Hash(e) => Some(e),
            AdminError::UsersFile(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HashError> for AdminError {
    fn from(e: HashError) -> Self {
        AdminError::Hash(e)
    }
}

/// Runs `edit` on the accounts under an exclusive lock on `users.lock`, reading the
/// file after taking the lock, and writes the result back atomically (mode 0600) only
/// if `edit` succeeds. A failed edit leaves the file untouched.
fn edit_users<T>(
    state_dir: &Path,
    edit: impl FnOnce(&mut Accounts, &Path) -> Result<T, AdminError>,
) -> Result<T, AdminError> {
    let lock_path = state_dir.join(USERS_LOCK_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AdminError::Io { path, source }
    };
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    // Released when lock_file is closed, on every return path.
    lock_file.lock().map_err(io(&lock_path))?;
    let path = state_dir.join(USERS_FILE);
    let mut accounts = read_accounts(&path).map_err(AdminError::UsersFile)?;
    let out = edit(&mut accounts, &path)?;
    fsutil::atomic_write(&path, accounts.to_text().as_bytes(), 0o600).map_err(io(&path))?;
    Ok(out)
}

/// `mpchatd useradd`: creates account `name` with a fresh random non-zero uid and
/// returns the uid. An invalid or existing name, or a bad password, changes nothing.
/// Creates the state directory (mode 0700) if needed.
pub fn add_user(
    state_dir: &Path,
    name: &str,
    password: &str,
    iterations: u32,
) -> Result<u64, AdminError> {
    if !valid_username(name) {
        return Err(AdminError::InvalidName(name.to_owned()));
    }
    check_new_password(password)?;
    check_iterations(iterations)?;
    fsutil::ensure_private_dir(state_dir).map_err(|source| AdminError::Io {
        path: state_dir.to_path_buf(),
        source,
    })?;
    edit_users(state_dir, |accounts, _| {
        if accounts.lookup(name).is_some() {
            return Err(AdminError::UserExists(name.to_owned()));
        }
        let hash = PasswordHash::new(password, iterations)?;
        let uid = loop {
            let uid = crypto::random_nonzero_u64().map_err(HashError::Random)?;
            if accounts.name_of(uid).is_none() {
                break uid;
            }
        };
        let account = Account {
            name: name.to_owned(),
            uid,
            hash,
        };
        // Name and uid were checked just above, under the lock.
        accounts
            .insert(account)
            .map_err(|_| AdminError::UserExists(name.to_owned()))?;
        Ok(uid)
    })
}

/// Fails with [`AdminError::UnknownUser`] if there is no state directory, without
/// creating one (there is nobody to change or remove).
fn require_state_dir(state_dir: &Path, name: &str) -> Result<(), AdminError> {
    if state_dir.is_dir() {
        Ok(())
    } else {
        Err(AdminError::UnknownUser {
            name: name.to_owned(),
            path: state_dir.join(USERS_FILE),
        })
    }
}

/// `mpchatd passwd`: gives `name` a new password hash (fresh salt, `iterations`
/// iterations); the uid stays.
pub fn set_password(
    state_dir: &Path,
    name: &str,
    password: &str,
    iterations: u32,
) -> Result<(), AdminError> {
    check_new_password(password)?;
    check_iterations(iterations)?;
    require_state_dir(state_dir, name)?;
    edit_users(state_dir, |accounts, path| {
        let Some(old) = accounts.remove(name) else {
            return Err(AdminError::UnknownUser {
                name: name.to_owned(),
                path: path.to_path_buf(),
            });
        };
        let hash = PasswordHash::new(password, iterations)?;
        accounts
            .insert(Account { hash, ..old })
            .map_err(|_| AdminError::UserExists(name.to_owned()))
    })
}

/// `mpchatd userdel`: removes `name` and returns its uid.
pub fn remove_user(state_dir: &Path, name: &str) -> Result<u64, AdminError> {
    require_state_dir(state_dir, name)?;
    edit_users(state_dir, |accounts, path| match accounts.remove(name) {
        Some(account) => Ok(account.uid),
        None => Err(AdminError::UnknownUser {
            name: name.to_owned(),
            path: path.to_path_buf(),
        }),
    })
}

/// `mpchatd users`: every account as (name, uid, iterations), in name order. Needs no
/// lock: the file is only ever replaced whole.
pub fn list_users(state_dir: &Path) -> Result<Vec<(String, u64, u32)>, AdminError> {
    let accounts = read_accounts(&state_dir.join(USERS_FILE)).map_err(AdminError::UsersFile)?;
    Ok(accounts
        .iter()
        .map(|a| (a.name.clone(), a.uid, a.hash.iterations()))
        .collect())
}
