//! Upgrades of the state directory's format, at start-up.
//!
//! The journal and the snapshot carry a format version in their headers ([`store`]).
//! A server reads its own version ([`store::FORMAT_VERSION`]) and migrates the one
//! before it ([`store::PREVIOUS_FORMAT_VERSION`]) in place; anything else is refused
//! with the file and the version named, so an old server never misreads a newer
//! state and a new one never guesses at an ancient one. The other files of the state
//! directory need no version of their own: the users file names its hash scheme on
//! every line (PHC, `$pbkdf2-sha256$`; another is refused with its line number), the
//! keys are PEM with their type in the armour, and the lock and control socket hold
//! nothing.
//!
//! Migrating from version 1 (before key bindings) to 2:
//! 1. the state files as they are (journal, snapshot, users file, keys) are copied
//!    into a new directory `pre-upgrade-format-1` in the state directory (a suffix
//!    makes the name unique), fsync'ed;
//! 2. the state is recovered from the version 1 files, as a version 1 server would;
//! 3. each account is bound to the key its sessions hold for it where that is
//!    unambiguous (one key, owned by no other account: see
//!    [`bindings::seed_from_sessions`]); the others stay unbound and their next key
//!    binds;
//! 4. a version 2 snapshot is written and the journal replaced by an empty version 2
//!    one, as a compaction does.
//!
//! A crash at any point leaves either the version 1 files (the next start migrates
//! again), or a version 2 snapshot with the version 1 journal, whose records the
//! snapshot includes and which the next start migrates the same way.
//!
//! It must never change the state files before the copy is made and synced, never
//! bind a key two accounts have used, and never accept a version it does not know.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::bindings;
use crate::fsutil;
use crate::session::{Limits, Record};
use crate::store::{
    self, Accept, Recovered, StoreError, FORMAT_VERSION, JOURNAL_FILE, JOURNAL_MAGIC,
    PREVIOUS_FORMAT_VERSION, SNAPSHOT_FILE, SNAPSHOT_MAGIC,
};

/// The files copied before a migration: the session state, the accounts and the
/// keys (the server's files that exist are copied; the rest are skipped).
const COPIED: [&str; 7] = [
    JOURNAL_FILE,
    SNAPSHOT_FILE,
    "users",
    "server.key",
    "server.pub",
    "server.old.key",
    "server.old.pub",
];

/// Name of the directory (in the state directory) that keeps the files of format
/// `version` as they were before the migration.
pub fn backup_dir_name(version: u32) -> String {
    format!("pre-upgrade-format-{version}")
}

/// Recovers the state of `state_dir`, first migrating it from the previous format
/// version if its files are of that version. What a server start calls.
pub fn open_state(state_dir: &Path, limits: Limits) -> Result<Recovered, StoreError> {
    let journal_path = state_dir.join(JOURNAL_FILE);
    let snapshot_path = state_dir.join(SNAPSHOT_FILE);
    let versions = [
        (
            store::file_version(&journal_path, JOURNAL_MAGIC, "journal")?,
            journal_path,
        ),
        (
            store::file_version(&snapshot_path, SNAPSHOT_MAGIC, "snapshot")?,
            snapshot_path,
        ),
    ];
    // A version this build does not know is reported first, whatever the other
    // file holds: it is the one to do something about.
    for (version, path) in &versions {
        if let Some(found) = *version {
            if found != FORMAT_VERSION && found != PREVIOUS_FORMAT_VERSION {
                return Err(StoreError::Version {
                    path: path.clone(),
                    found,
                });
            }
        }
    }
    if versions
        .iter()
        .any(|(v, _)| *v == Some(PREVIOUS_FORMAT_VERSION))
    {
        migrate(state_dir, limits)?;
    }
    store::recover(state_dir, limits)
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Copies the state files into a new private directory; returns it.
fn copy_aside(state_dir: &Path) -> Result<PathBuf, StoreError> {
    let base = backup_dir_name(PREVIOUS_FORMAT_VERSION);
    let mut dir = state_dir.join(&base);
    let mut n = 1;
    loop {
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                n += 1;
                dir = state_dir.join(format!("{base}.{n}"));
            }
            Err(e) => return Err(io_err(&dir, "create")(e)),
        }
    }
    for file in COPIED {
        let from = state_dir.join(file);
        let bytes = match fs::read(&from) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&from, "read")(e)),
        };
        let mode = if file.ends_with(".pub") { 0o644 } else { 0o600 };
        let to = dir.join(file);
        fsutil::atomic_write(&to, &bytes, mode).map_err(io_err(&to, "write"))?;
    }
    fsutil::sync_dir(state_dir).map_err(io_err(state_dir, "sync"))?;
    Ok(dir)
}

/// Migrates `state_dir` from the previous format to this one (see the module docs).
fn migrate(state_dir: &Path, limits: Limits) -> Result<(), StoreError> {
    let aside = copy_aside(state_dir)?;
    log::info!(
        "{}: the state is of format version {PREVIOUS_FORMAT_VERSION}; copied it to {} before migrating it to version {FORMAT_VERSION}",
        state_dir.display(),
        aside.display()
    );
    let Recovered {
        mut sessions,
        last_lsn,
        mut journal,
    } = store::recover_with(state_dir, limits, Accept::CurrentOrPrevious)?;
    let (seed, ambiguous) = bindings::seed_from_sessions(sessions.iter(), sessions.bindings());
    let bound = seed.len();
    for (uid, key) in seed {
        let rec = Record::Bind { uid, key };
        if !sessions.apply(&rec) {
            log::warn!("could not bind the key of uid {uid:016x}; its next key binds");
        }
    }
    for uid in &ambiguous {
        log::warn!(
            "uid {uid:016x} used several keys, or one another account used too: left unbound; its next key binds"
        );
    }
    journal
        .compact(last_lsn, &sessions)
        .map_err(io_err(journal.path(), "write the migrated snapshot"))?;
    log::info!(
        "{}: migrated to format version {FORMAT_VERSION}: {} sessions, {bound} keys bound, {} accounts left unbound; once satisfied, delete {}",
        state_dir.display(),
        sessions.iter().count(),
        ambiguous.len(),
        aside.display()
    );
    Ok(())
}
