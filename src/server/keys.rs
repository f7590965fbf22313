//! The server's keys and their rollover: `server.key` is the key clients are given
//! (its public half `server.pub`), and during a rollover `server.old.key` is the one
//! it replaced, still accepted until `mpchatd retire-key`.
//!
//! It exists so that replacing the server key never locks out a client that still
//! has the old `server.pub`: `rotate-key` makes a new key and the server accepts
//! logins under both; users are handed the new `server.pub` at their own pace; then
//! `retire-key` drops the old one. It must never lose a key that is in use (every
//! step writes the new files before the old ones go, each atomically, so a crash at
//! any point leaves a state the next start repairs), never keep more than two keys,
//! and never log or print a private key.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::state_dir::{load_server_key, SERVER_KEY_FILE, SERVER_PUB_FILE};
use super::StartError;
use crate::crypto::{self, KeyFileError, RsaPrivate};
use crate::fsutil;

/// The previous server key during a rollover (PKCS#8 PEM, mode 0600).
pub const OLD_KEY_FILE: &str = "server.old.key";
/// Its public half (SPKI PEM).
pub const OLD_PUB_FILE: &str = "server.old.pub";

/// The keys a server accepts logins under.
#[derive(Debug)]
pub struct ServerKeys {
    /// The key in `server.key`, whose public half clients are handed.
    pub current: RsaPrivate,
    /// The key it replaced, accepted until it is retired.
    pub previous: Option<RsaPrivate>,
}

impl ServerKeys {
    /// Every accepted key, the current one first.
    pub fn all(&self) -> Vec<&RsaPrivate> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .collect()
    }
}

/// Why a key rollover step failed.
#[derive(Debug)]
pub enum KeyOpError {
    /// `rotate-key` while a previous key is still accepted: the operator retires it
    /// first, so that at most two keys are ever accepted.
    PreviousStillAccepted,
    /// `retire-key` with no previous key.
    NothingToRetire,
    /// The state directory has no server key yet.
    NoKey(PathBuf),
    /// A key file is not a valid key.
    Invalid(PathBuf),
    /// A file could not be read, written or removed.
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The random number generator failed while making the key.
    Generate,
}

impl std::fmt::Display for KeyOpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOpError::PreviousStillAccepted => write!(
                f,
                "a previous key ({OLD_KEY_FILE}) is still accepted; run mpchatd retire-key once every user has the current {SERVER_PUB_FILE}, then rotate again"
            ),
            KeyOpError::NothingToRetire => write!(
                f,
                "there is no previous key to retire (no {OLD_KEY_FILE}); only the current key is accepted"
            ),
            KeyOpError::NoKey(path) => write!(
                f,
                "{} does not exist; start mpchatd once to create the server key",
                path.display()
            ),
            KeyOpError::Invalid(path) => write!(
                f,
                "{} is not a valid RSA-2048 PKCS#8 PEM key; restore it from a backup",
                path.display()
            ),
            KeyOpError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            KeyOpError::Generate => {
                f.write_str("cannot make a key: the system's random number generator failed")
            }
        }
    }
}

impl std::error::Error for KeyOpError {}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> KeyOpError + '_ {
    move |source| KeyOpError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A copy of a private key (through its PEM: the key type has no `Clone`).
fn copy_key(key: &RsaPrivate) -> Result<RsaPrivate, KeyOpError> {
    let pem = key.to_pkcs8_pem().map_err(|_| KeyOpError::Generate)?;
    RsaPrivate::from_pkcs8_pem(&pem).map_err(|_| KeyOpError::Generate)
}

/// Writes `key` to `key_file` (0600) and its public half to `pub_file` (0644), each
/// atomically, the private key first.
fn write_pair(
    dir: &Path,
    key: &RsaPrivate,
    key_file: &str,
    pub_file: &str,
) -> Result<(), KeyOpError> {
    let (kp, pp) = (dir.join(key_file), dir.join(pub_file));
    crypto::write_key_pair(key, &kp, &pp).map_err(|e| match e {
        KeyFileError::Io(source) => KeyOpError::Io { path: kp, source },
        KeyFileError::Invalid => KeyOpError::Invalid(kp),
    })
}

/// Makes sure `pub_file` holds the public half of `key` (a crash between writing a
/// key and its public half leaves the old one).
fn repair_pub(dir: &Path, key: &RsaPrivate, pub_file: &str) -> io::Result<()> {
    let path = dir.join(pub_file);
    let want = key.public();
    if crypto::read_public_key(&path).ok().as_ref() != Some(&want) {
        fsutil::atomic_write(&path, want.to_spki_pem().as_bytes(), 0o644)?;
        log::info!("{}: rewritten to match its private key", path.display());
    }
    Ok(())
}

/// Loads the server's keys at start-up, creating the state directory and the key
/// on first start and repairing what an interrupted rollover left: a public key file
/// that does not match its key is rewritten, and an old key equal to the current one
/// (a `rotate-key` that stopped half-way) is removed. Returns the keys and whether
/// the current one was created.
pub fn load(state_dir: &Path) -> Result<(ServerKeys, bool), StartError> {
    let (current, created) = load_server_key(state_dir)?;
    let io_err = |source| StartError::ServerKeyIo {
        dir: state_dir.to_path_buf(),
        source,
    };
    repair_pub(state_dir, &current, SERVER_PUB_FILE).map_err(io_err)?;
    let old_path = state_dir.join(OLD_KEY_FILE);
    let previous = match crypto::read_private_key(&old_path) {
        Ok(old) if old.public() == current.public() => {
            remove_old(state_dir).map_err(|e| match e {
                KeyOpError::Io { source, .. } => io_err(source),
                _ => io_err(io::Error::other(e.to_string())),
            })?;
            log::info!(
                "{}: removed, it was the current key (a rotate-key that did not finish)",
                old_path.display()
            );
            None
        }
        Ok(old) => {
            repair_pub(state_dir, &old, OLD_PUB_FILE).map_err(io_err)?;
            Some(old)
        }
        Err(KeyFileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => None,
        Err(KeyFileError::Io(e)) => return Err(io_err(e)),
        Err(KeyFileError::Invalid) => return Err(StartError::ServerKeyInvalid { path: old_path }),
    };
    Ok((ServerKeys { current, previous }, created))
}

/// Reads the keys of a stopped server's state directory (for the offline commands),
/// without creating or repairing anything.
pub fn read(state_dir: &Path) -> Result<ServerKeys, KeyOpError> {
    let read_one = |file: &str| {
        let path = state_dir.join(file);
        match crypto::read_private_key(&path) {
            Ok(k) => Ok(Some(k)),
            Err(KeyFileError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(KeyFileError::Io(source)) => Err(KeyOpError::Io { path, source }),
            Err(KeyFileError::Invalid) => Err(KeyOpError::Invalid(path)),
        }
    };
    let current = read_one(SERVER_KEY_FILE)?
        .ok_or_else(|| KeyOpError::NoKey(state_dir.join(SERVER_KEY_FILE)))?;
    let previous = read_one(OLD_KEY_FILE)?.filter(|old| old.public() != current.public());
    Ok(ServerKeys { current, previous })
}

fn remove_old(state_dir: &Path) -> Result<(), KeyOpError> {
    for file in [OLD_KEY_FILE, OLD_PUB_FILE] {
        let path = state_dir.join(file);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&path)(e)),
        }
    }
    fsutil::sync_dir(state_dir).map_err(io_at(state_dir))
}

/// `rotate-key`: makes a new RSA-2048 key, moves the current one to
/// `server.old.key` and puts the new one in `server.key` and `server.pub`. Returns
/// the keys to accept from now on. The caller holds the state directory (the
/// running server, or the offline command with the lock).
///
/// Order, for crash safety: the current key is copied to `server.old.key` first
/// (a crash then leaves two equal keys, which the next start tidies up), then the new
/// key replaces `server.key` (the old one is safe in `server.old.key` by then), then
/// `server.pub`.
pub fn rotate(state_dir: &Path, keys: &ServerKeys) -> Result<ServerKeys, KeyOpError> {
    if keys.previous.is_some() {
        return Err(KeyOpError::PreviousStillAccepted);
    }
    let new = RsaPrivate::generate(crypto::SERVER_KEY_BITS).map_err(|_| KeyOpError::Generate)?;
    write_pair(state_dir, &keys.current, OLD_KEY_FILE, OLD_PUB_FILE)?;
    write_pair(state_dir, &new, SERVER_KEY_FILE, SERVER_PUB_FILE)?;
    Ok(ServerKeys {
        previous: Some(copy_key(&keys.current)?),
        current: new,
    })
}

/// `retire-key`: removes `server.old.key` and `server.old.pub`. Returns the keys to
/// accept from now on (the current one only).
pub fn retire(state_dir: &Path, keys: &ServerKeys) -> Result<ServerKeys, KeyOpError> {
    if keys.previous.is_none() {
        return Err(KeyOpError::NothingToRetire);
    }
    remove_old(state_dir)?;
    Ok(ServerKeys {
        current: copy_key(&keys.current)?,
        previous: None,
    })
}

/// The lines `rotate-key` prints.
pub fn rotated_lines(keys: &ServerKeys) -> Vec<String> {
    let mut lines = vec![format!(
        "new key {} in {SERVER_KEY_FILE}: hand the new {SERVER_PUB_FILE} to every user",
        keys.current.public().fingerprint()
    )];
    if let Some(old) = &keys.previous {
        lines.push(format!(
            "old key {} in {OLD_KEY_FILE}: still accepted until mpchatd retire-key",
            old.public().fingerprint()
        ));
    }
    lines
}

/// The line `retire-key` prints.
pub fn retired_line(before: &ServerKeys, after: &ServerKeys) -> String {
    format!(
        "retired the old key {}; only {} is accepted now",
        before
            .previous
            .as_ref()
            .map(|k| k.public().fingerprint())
            .unwrap_or_default(),
        after.current.public().fingerprint()
    )
}
