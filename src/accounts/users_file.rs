//! The users file: its parser, and [`UsersFile`], the copy a running server reads
//! logins from and reloads when the file changes.
//!
//! It exists so the one spelling of the file is defined in one place, for the server
//! and for the administration commands alike.
//!
//! It must never:
//! - accept any part of a file that has a bad line: a hand edit that goes wrong is
//!   reported with its line number instead of being half-understood;
//! - put a password hash in an error message or a log line;
//! - panic or allocate without bound on whatever the file contains;
//! - drop the last good accounts because a new version of the file does not parse.
//!
//! # The users file
//!
//! `<state_dir>/users`, mode 0600, UTF-8, one account a line, every line (the last one
//! too) ending in `\n`:
//!
//! ```text
//! name:uid_hex:$pbkdf2-sha256$i=<iterations>$<salt_b64>$<hash_b64>
//! ```
//!
//! `name` follows [`valid_username`]; `uid_hex` is 16 lowercase hex digits, non-zero;
//! the base64 is the standard alphabet without padding; the salt is 8 to 64 bytes (16
//! when we make it), the hash exactly 32. There are no comments, no blank lines and no
//! `\r`, so every set of accounts has exactly one spelling (in name order, as
//! [`Accounts::to_text`] writes it) and a hand edit that goes wrong is reported with its
//! line number instead of being half-understood. Names and uids are unique. No file, or
//! an empty one, means no accounts.
//!
//! A running server holds a [`UsersFile`], which notices a replaced or edited file on
//! the next [`UsersFile::current`] call; a file that no longer parses is reported with
//! `log::warn!` and the last good copy stays in use.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{lock, Account, Accounts, EntryError, PasswordHash, PhcError};
use crate::encoding;
use crate::names::valid_username;

/// Largest users file read (about 80,000 accounts); anything bigger is surely not a
/// users file, and reading it would cost memory on a small box.
pub const MAX_USERS_FILE_LEN: u64 = 16 * 1024 * 1024;
/// Longest line in the users file, newline excluded. A legal line is at most about 210
/// bytes (32 name, 16 uid, 86 salt, 43 hash, separators and the iteration count).
pub const MAX_LINE_LEN: usize = 512;
/// Name of the users file in the state directory.
pub const USERS_FILE: &str = "users";

/// What is wrong with one line of the users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// The line is not UTF-8.
    NotUtf8,
    /// The line is longer than [`MAX_LINE_LEN`] bytes.
    TooLong,
    /// The last line has no `\n` at its end.
    NoNewline,
    /// The line holds a `\r` (a file saved with CRLF line endings).
    CarriageReturn,
    /// The line is empty; blank lines are not allowed.
    Blank,
    /// The line does not have exactly three `:`-separated fields (the count is given).
    Fields(usize),
    /// The uid is not 16 lowercase hex digits.
    BadUid,
    /// The password hash field is malformed.
    Hash(PhcError),
    /// The account clashes with another or breaks a rule.
    Entry(EntryError),
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::NotUtf8 => f.write_str("not UTF-8"),
            LineProblem::TooLong => write!(f, "longer than {MAX_LINE_LEN} bytes"),
            LineProblem::NoNewline => f.write_str("no newline at the end of the file"),
            LineProblem::CarriageReturn => {
                f.write_str("carriage return found; save the file with Unix (LF) line endings")
            }
            LineProblem::Blank => f.write_str("blank line; blank lines are not allowed"),
            LineProblem::Fields(n) => {
                write!(f, "{n} fields where NAME:UID:HASH needs exactly 3")
            }
            LineProblem::BadUid => f.write_str("uid is not 16 lowercase hex digits"),
            LineProblem::Hash(e) => e.fmt(f),
            LineProblem::Entry(e) => e.fmt(f),
        }
    }
}

/// Why the users file could not be read.
#[derive(Debug)]
pub enum UsersFileError {
    /// Opening or reading the file failed (permissions, I/O error, not a regular
    /// file). The administrator must fix the file or its directory.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is bigger than [`MAX_USERS_FILE_LEN`]: probably the wrong file.
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line is malformed; nothing of the file was used. Most likely a hand edit.
    Invalid {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: LineProblem,
    },
}

impl UsersFileError {
    /// The 1-based number of the offending line, for [`UsersFileError::Invalid`].
    pub fn line(&self) -> Option<usize> {
        match self {
            UsersFileError::Invalid { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// What is wrong with the offending line, for [`UsersFileError::Invalid`].
    pub fn problem(&self) -> Option<&LineProblem> {
        match self {
            UsersFileError::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }

    fn in_file(self, file: &Path) -> UsersFileError {
        match self {
            UsersFileError::Invalid { line, problem, .. } => UsersFileError::Invalid {
                path: Some(file.to_path_buf()),
                line,
                problem,
            },
            other => other,
        }
    }
}

impl fmt::Display for UsersFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsersFileError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            UsersFileError::TooLarge { path } => write!(
                f,
                "{}: larger than {MAX_USERS_FILE_LEN} bytes; is it really a users file?",
                path.display()
            ),
            UsersFileError::Invalid {
                path: Some(path),
                line,
                problem,
            } => {
                write!(f, "{} line {line}: {problem}", path.display())
            }
            UsersFileError::Invalid {
                path: None,
                line,
                problem,
            } => {
                write!(f, "users file line {line}: {problem}")
            }
        }
    }
}

impl std::error::Error for UsersFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UsersFileError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Parses one line (without its `\n`).
fn parse_line(line: &str) -> Result<Account, LineProblem> {
    if line.len() > MAX_LINE_LEN {
        return Err(LineProblem::TooLong);
    }
    if line.is_empty() {
        return Err(LineProblem::Blank);
    }
    if line.contains('\r') {
        return Err(LineProblem::CarriageReturn);
    }
    let fields: Vec<&str> = line.split(':').collect();
    let [name, uid_hex, phc] = fields[..] else {
        return Err(LineProblem::Fields(fields.len()));
    };
    if !valid_username(name) {
        return Err(LineProblem::Entry(EntryError::InvalidName(name.to_owned())));
    }
    let uid = encoding::parse_id(uid_hex).ok_or(LineProblem::BadUid)?;
    let hash = PasswordHash::parse_phc(phc).map_err(LineProblem::Hash)?;
    Ok(Account {
        name: name.to_owned(),
        uid,
        hash,
    })
}

/// Parses users file text (see the module docs for the format). The error names the
/// first bad line; nothing is accepted from a file with any bad line.
pub fn parse_users(text: &str) -> Result<Accounts, UsersFileError> {
    let mut accounts = Accounts::new();
    let mut rest = text;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let invalid = |problem| UsersFileError::Invalid {
            path: None,
            line: line_no,
            problem,
        };
        let Some((line, after)) = rest.split_once('\n') else {
            return Err(invalid(if rest.len() > MAX_LINE_LEN {
                LineProblem::TooLong
            } else {
                LineProblem::NoNewline
            }));
        };
        rest = after;
        let account = parse_line(line).map_err(invalid)?;
        accounts
            .insert(account)
            .map_err(|e| invalid(LineProblem::Entry(e)))?;
    }
    Ok(accounts)
}

/// Parses users file bytes, reporting invalid UTF-8 with its line number.
fn parse_users_bytes(bytes: &[u8]) -> Result<Accounts, UsersFileError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_users(text),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            // A line too long is the better report if the bad byte sits past the limit.
            let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let problem = if valid.len() - line_start > MAX_LINE_LEN {
                LineProblem::TooLong
            } else {
                LineProblem::NotUtf8
            };
            // An earlier line may be bad too; report the first problem in file order.
            match parse_users(&String::from_utf8_lossy(&bytes[..line_start])) {
                Err(earlier) => Err(earlier),
                Ok(_) => Err(UsersFileError::Invalid {
                    path: None,
                    line,
                    problem,
                }),
            }
        }
    }
}

/// Identifies one version of the users file, so a change is noticed with one `stat`.
/// A rewrite by [`crate::fsutil::atomic_write`] always changes the inode; an in-place edit
/// changes the length or the modification or change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// No file: no accounts.
    Missing,
    /// Neither `stat` nor `open` worked; the error kind tells one failure from the next.
    Unreadable(io::ErrorKind),
    /// A file.
    Present {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: i64,
        mtime_nsec: i64,
        ctime: i64,
        ctime_nsec: i64,
    },
}

impl Stamp {
    fn of_metadata(m: &fs::Metadata) -> Stamp {
        Stamp::Present {
            dev: m.dev(),
            ino: m.ino(),
            len: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }

    fn of_path(path: &Path) -> Stamp {
        match fs::metadata(path) {
            Ok(m) => Stamp::of_metadata(&m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Stamp::Missing,
            Err(e) => Stamp::Unreadable(e.kind()),
        }
    }
}

fn io_error(path: &Path, source: io::Error) -> UsersFileError {
    UsersFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and parses the users file at `path`, returning the stamp of the version read
/// (taken from the open file, so stamp and contents agree). A missing file is no
/// accounts.
fn load(path: &Path) -> (Stamp, Result<Accounts, UsersFileError>) {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return (Stamp::Missing, Ok(Accounts::new()))
        }
        // Stamp what stat sees (if anything), so the same failure is not retried and
        // reported on every call, while a chmod or a new file is still noticed.
        Err(e) => return (Stamp::of_path(path), Err(io_error(path, e))),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return (Stamp::Unreadable(e.kind()), Err(io_error(path, e))),
    };
    let stamp = Stamp::of_metadata(&meta);
    if !meta.is_file() {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
        return (stamp, Err(io_error(path, e)));
    }
    if meta.len() > MAX_USERS_FILE_LEN {
        return (
            stamp,
            Err(UsersFileError::TooLarge {
                path: path.to_path_buf(),
            }),
        );
    }
    if meta.mode() & 0o077 != 0 {
        log::warn!(
            "{}: mode {:03o} lets others read the password hashes; run chmod 600 on it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    // The length was checked above; take() also bounds a file that grows meanwhile.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    if let Err(e) = file.take(MAX_USERS_FILE_LEN + 1).read_to_end(&mut bytes) {
        return (stamp, Err(io_error(path, e)));
    }
    if bytes.len() as u64 > MAX_USERS_FILE_LEN {
        return (
            stamp,
            Err(UsersFileError::TooLarge {
                path: path.to_path_buf(),
            }),
        );
    }
    (
        stamp,
        parse_users_bytes(&bytes).map_err(|e| e.in_file(path)),
    )
}

/// Reads and parses the users file at `path` (a missing file is no accounts), for the
/// administration commands, which read it afresh each time.
pub(super) fn read_accounts(path: &Path) -> Result<Accounts, UsersFileError> {
    load(path).1
}

struct Cached {
    stamp: Stamp,
    accounts: Arc<Accounts>,
}

/// The users file as the running server sees it: the last good copy, refreshed when
/// the file changes. Shared by all connection threads.
pub struct UsersFile {
    path: PathBuf,
    /// The current copy; held only to compare stamps and swap the `Arc`.
    cache: Mutex<Cached>,
    /// Held while reading and parsing, so a change is loaded once, by one thread,
    /// while others keep using `cache`.
    reload: Mutex<()>,
}

impl UsersFile {
    /// Reads `<state_dir>/users`. A missing file means no accounts; a malformed one is
    /// an error (the server should refuse to start rather than run without users).
    pub fn open(state_dir: &Path) -> Result<UsersFile, UsersFileError> {
        let path = state_dir.join(USERS_FILE);
        let (stamp, result) = load(&path);
        let accounts = result?;
        Ok(UsersFile {
            path,
            cache: Mutex::new(Cached {
                stamp,
                accounts: Arc::new(accounts),
            }),
            reload: Mutex::new(()),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cached_if_current(&self, stamp: Stamp) -> Option<Arc<Accounts>> {
        let cache = lock(&self.cache);
        (cache.stamp == stamp).then(|| Arc::clone(&cache.accounts))
    }

    /// The current accounts. Costs one `stat` when nothing changed; when the file did
    /// change it is read again. If the new version cannot be used, a warning naming the
    /// file and line is logged (once per version) and the last good accounts stay.
    /// A deleted file means no accounts.
    pub fn current(&self) -> Arc<Accounts> {
        if let Some(accounts) = self.cached_if_current(Stamp::of_path(&self.path)) {
            return accounts;
        }
        let _reloading = lock(&self.reload);
        // Another thread may have loaded this version while we waited.
        if let Some(accounts) = self.cached_if_current(Stamp::of_path(&self.path)) {
            return accounts;
        }
        let (stamp, result) = load(&self.path);
        let mut cache = lock(&self.cache);
        match result {
            Ok(accounts) => {
                if stamp == Stamp::Missing {
                    log::warn!("{}: removed; no account can log in", self.path.display());
                } else {
                    log::info!(
                        "{}: reloaded, {} accounts",
                        self.path.display(),
                        accounts.len()
                    );
                }
                cache.accounts = Arc::new(accounts);
            }
            Err(e) => log::warn!(
                "{e}; still using the {} accounts read before",
                cache.accounts.len()
            ),
        }
        cache.stamp = stamp;
        Arc::clone(&cache.accounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::SALT_LEN;
    use crate::fsutil;

    #[test]
    fn invalid_utf8_is_reported_on_its_own_line() {
        let good = PasswordHash::with_salt("pw", 1, &[7; SALT_LEN])
            .unwrap()
            .to_phc();
        let mut bytes = format!("alice:0000000000000001:{good}\n").into_bytes();
        bytes.extend_from_slice(b"b\xffb:0000000000000002:x\n");
        let err = parse_users_bytes(&bytes).unwrap_err();
        assert_eq!(err.line(), Some(2));
        assert_eq!(err.problem(), Some(&LineProblem::NotUtf8));
    }

    #[test]
    fn an_earlier_bad_line_is_reported_before_later_invalid_utf8() {
        let bytes = b"garbage\nb\xffb\n";
        let err = parse_users_bytes(bytes).unwrap_err();
        assert_eq!(err.line(), Some(1));
        assert_eq!(err.problem(), Some(&LineProblem::Fields(1)));
    }

    #[test]
    fn stamp_changes_when_the_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("mpchat-accounts-unit-{}", std::process::id()));
        fsutil::ensure_private_dir(&dir).unwrap();
        let p = dir.join("f");
        assert_eq!(Stamp::of_path(&p), Stamp::Missing);
        fsutil::atomic_write(&p, b"one", 0o600).unwrap();
        let first = Stamp::of_path(&p);
        assert!(matches!(first, Stamp::Present { len: 3, .. }));
        fsutil::atomic_write(&p, b"two", 0o600).unwrap();
        assert_ne!(Stamp::of_path(&p), first, "same length, new inode");
        fs::remove_dir_all(&dir).unwrap();
    }
}
