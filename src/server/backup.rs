//! Consistent copies of the state directory: `mpchatd backup DEST`.
//!
//! A running server cannot be copied file by file: the journal grows and is replaced
//! by compactions while the copy is made. So the running server captures its state
//! under the registry lock (the same cheap capture a compaction makes: sessions are
//! cloned, envelopes shared) at the last record it numbered, waits until every record
//! up to that one is stored (a barrier through the journal thread's queue), and writes
//! that state as a snapshot into a fresh private directory inside the state
//! directory; the `mpchatd backup` process then copies it out with the accounts and
//! the keys ([`copy_out`]). A stopped server's files are copied as they are, under the
//! state directory's lock. Either way the copy is then recovered once, as a server
//! start would, so a backup that would not start is reported at once.
//!
//! It must never hold the registry lock for more than the capture (no disk I/O under
//! it), never report a backup whose records are not all stored (a journal write that
//! failed meanwhile fails the backup), never leave a partial copy that looks whole
//! (the snapshot is fsync'ed and renamed into place; a failed copy is reported), and
//! never put the copy anywhere readable by others (mode 0700, files 0600).

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::{Batch, Inflight};
use super::keys::{OLD_KEY_FILE, OLD_PUB_FILE};
use super::{Shared, SERVER_KEY_FILE, SERVER_PUB_FILE};
use crate::accounts::USERS_FILE;
use crate::registry::Pending;
use crate::session::Limits;
use crate::store::{self, StoreError, JOURNAL_FILE, SNAPSHOT_FILE};
use crate::{crypto, fsutil};

/// Directories the running server writes a backup's snapshot into, in the state
/// directory, named this prefix and 16 hex digits; the `backup` command removes its
/// own when done, and a server removes any left over at start-up.
pub const BACKUP_TMP_PREFIX: &str = "backup.tmp.";

/// The files of a state directory besides the session state, copied as they are.
const STATE_FILES: [&str; 5] = [
    USERS_FILE,
    SERVER_KEY_FILE,
    SERVER_PUB_FILE,
    OLD_KEY_FILE,
    OLD_PUB_FILE,
];

/// Why a backup failed.
#[derive(Debug)]
pub enum BackupError {
    /// The destination exists and is not an empty directory.
    DestinationInUse(PathBuf),
    /// A file or directory could not be made, read or written.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A write to the journal failed while the backup was taken, so its state was
    /// never all stored; nothing was backed up.
    JournalFailed,
    /// The journal thread has stopped (the server is stopping).
    JournalStopped,
    /// The copy does not recover: what a server start on it would say.
    Check(StoreError),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupError::DestinationInUse(p) => write!(
                f,
                "{} exists and is not an empty directory; give a new directory",
                p.display()
            ),
            BackupError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            BackupError::JournalFailed => f.write_str(
                "a write to the journal failed while the backup was taken; nothing was backed up; try again",
            ),
            BackupError::JournalStopped => {
                f.write_str("the server's journal has stopped; nothing was backed up")
            }
            BackupError::Check(e) => write!(f, "the copy does not recover: {e}"),
        }
    }
}

impl std::error::Error for BackupError {}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes backup directories a stopped `backup` left in the state directory.
pub(super) fn remove_leftovers(state_dir: &Path) {
    let Ok(entries) = fs::read_dir(state_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(BACKUP_TMP_PREFIX))
        {
            match fs::remove_dir_all(e.path()) {
                Ok(()) => log::info!("{}: removed an unfinished backup", e.path().display()),
                Err(err) => log::warn!("{}: cannot remove: {err}", e.path().display()),
            }
        }
    }
}

/// The running server's part of a backup (the control request `backup`): captures
/// the state, waits until it is all stored, writes it as a snapshot into a fresh
/// directory in the state directory and answers that directory's name, the LSN, the
/// number of sessions and how long the registry lock was held for the capture (the
/// only time the server paused for the backup), in microseconds.
pub(super) fn snapshot_for_backup(shared: &Arc<Shared>) -> Result<Vec<String>, BackupError> {
    let state_dir = &shared.config.state_dir;
    let id = crypto::random_nonzero_u64().map_err(|e| BackupError::Io {
        path: state_dir.clone(),
        source: io::Error::other(e.to_string()),
    })?;
    let name = format!("{BACKUP_TMP_PREFIX}{id:016x}");
    let dir = state_dir.join(&name);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io_at(&dir))?;
    let result = (|| {
        let (snapshot, epoch, held) = shared.with_registry(|reg| {
            let start = Instant::now();
            let snapshot = reg.snapshot();
            (snapshot, reg.epoch(), start.elapsed())
        });
        // Every record up to the capture's LSN was queued for the journal before the
        // capture (records are queued under the registry lock): once an empty batch
        // queued after it is done, they were all written, or one failed, which
        // changed the epoch.
        let barrier = Arc::new(Inflight::default());
        barrier.add();
        let batch = Batch {
            epoch,
            pending: Pending::default(),
            inflight: Some(barrier.clone()),
        };
        shared
            .journal_tx
            .send(batch)
            .map_err(|_| BackupError::JournalStopped)?;
        store::write_snapshot_to(&dir, &snapshot).map_err(io_at(&dir))?;
        barrier.wait_below(1);
        if shared.with_registry(|reg| reg.epoch()) != epoch {
            return Err(BackupError::JournalFailed);
        }
        log::info!(
            "backup: captured {} sessions at record {} in {held:?}",
            snapshot.session_count(),
            snapshot.lsn()
        );
        Ok(vec![
            name.clone(),
            format!("lsn {}", snapshot.lsn()),
            format!("sessions {}", snapshot.session_count()),
            format!("paused_us {}", held.as_micros()),
        ])
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

/// What a finished backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Sessions in the copy.
    pub sessions: usize,
    /// The last record the copy includes.
    pub lsn: u64,
    /// How long the running server held its registry lock for the capture (none for
    /// a stopped server's copy).
    pub paused: Option<Duration>,
}

/// Makes `dest` a new private directory: it must not exist, or be empty. Returns
/// whether it was created.
pub(super) fn make_destination(dest: &Path) -> Result<bool, BackupError> {
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::DestinationInUse(dest.to_path_buf()));
            }
            fs::set_permissions(dest, fs::Permissions::from_mode(0o700)).map_err(io_at(dest))?;
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(0o700)
            .create(dest)
            .map(|()| true)
            .map_err(io_at(dest)),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Err(BackupError::DestinationInUse(dest.to_path_buf()))
        }
        Err(e) => Err(io_at(dest)(e)),
    }
}

/// Copies `from` to `to` (mode 0600 for private files, 0644 for public keys) and
/// fsyncs it; a missing `from` is skipped when `optional`.
fn copy_file(from: &Path, to: &Path, optional: bool) -> Result<bool, BackupError> {
    let bytes = match fs::read(from) {
        Ok(b) => b,
        Err(e) if optional && e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_at(from)(e)),
    };
    let mode = fs::metadata(from).map_or(0o600, |m| m.permissions().mode() & 0o644);
    fsutil::atomic_write(to, &bytes, mode).map_err(io_at(to))?;
    Ok(true)
}

/// The `backup` command's part: copies the session state (the running server's
/// snapshot directory `server_snapshot`, or for a stopped server the journal and
/// snapshot as they are), the accounts and the keys from `state_dir` into `dest`,
/// then recovers the copy once, as a server start would, and reports what it holds.
pub(super) fn copy_out(
    state_dir: &Path,
    server_snapshot: Option<&Path>,
    dest: &Path,
    limits: Limits,
) -> Result<Report, BackupError> {
    match server_snapshot {
        Some(dir) => {
            copy_file(&dir.join(SNAPSHOT_FILE), &dest.join(SNAPSHOT_FILE), false)?;
        }
        None => {
            for file in [JOURNAL_FILE, SNAPSHOT_FILE] {
                copy_file(&state_dir.join(file), &dest.join(file), true)?;
            }
        }
    }
    for file in STATE_FILES {
        copy_file(&state_dir.join(file), &dest.join(file), true)?;
    }
    // A stopped server's state of the previous format is copied as it is: the server
    // started on it migrates it.
    let recovered = store::recover_with(dest, limits, store::Accept::CurrentOrPrevious)
        .map_err(BackupError::Check)?;
    Ok(Report {
        sessions: recovered.sessions.iter().count(),
        lsn: recovered.last_lsn,
        paused: None,
    })
}
