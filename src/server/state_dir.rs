//! The state directory at start-up: its lock (one server per directory) and the
//! server's RSA key pair.
//!
//! It exists so that what a server owns on disk before it serves is claimed in one
//! place, with errors that tell the operator what to fix. It must never run after
//! start-up (nothing here is called with the registry lock held or on a connection's
//! thread) and never log or print the private key.

use std::fs::File;
use std::path::Path;

use super::StartError;
use crate::crypto::{self, RsaPrivate};

/// Name of the server's private key file in the state directory.
pub const SERVER_KEY_FILE: &str = "server.key";
/// Lock file in the state directory, held while a server runs.
pub const LOCK_FILE: &str = "lock";
/// Name of the server's public key file in the state directory.
pub const SERVER_PUB_FILE: &str = "server.pub";

/// Creates the state directory (mode 0700) if it does not exist.
fn ensure_state_dir(state_dir: &Path) -> Result<(), StartError> {
    crate::fsutil::ensure_private_dir(state_dir).map_err(|source| StartError::CreateStateDir {
        dir: state_dir.to_path_buf(),
        source,
    })
}

/// Loads the server key from `state_dir`, creating the directory and the key pair on
/// first start. Returns the key and whether it was created.
pub fn load_server_key(state_dir: &Path) -> Result<(RsaPrivate, bool), StartError> {
    ensure_state_dir(state_dir)?;
    crypto::load_or_create_key_pair(
        &state_dir.join(SERVER_KEY_FILE),
        &state_dir.join(SERVER_PUB_FILE),
        crypto::SERVER_KEY_BITS,
    )
    .map_err(|e| match e {
        crypto::KeyFileError::Io(source) => StartError::ServerKeyIo {
            dir: state_dir.to_path_buf(),
            source,
        },
        crypto::KeyFileError::Invalid => StartError::ServerKeyInvalid {
            path: state_dir.join(SERVER_KEY_FILE),
        },
    })
}

/// Creates the state directory if need be and takes its lock: one server per state
/// directory (a second one would interleave journals). The lock is held as long as
/// the returned file is open.
pub(super) fn lock_state_dir(state_dir: &Path) -> Result<File, StartError> {
    ensure_state_dir(state_dir)?;
    let lock_path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| StartError::StateDirNotWritable {
            dir: state_dir.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked {
            dir: state_dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::Lock {
            path: lock_path,
            source,
        }),
    }
}
