//! Accounts: the `users` file, password hashes, password checks and the
//! administration commands that edit the file.
//!
//! The server needs to know who may log in, with which password and under which uid;
//! `mpchatd useradd|passwd|userdel|users` need to change that while the server runs.
//! This module is that shared layer.
//!
//! It must never:
//! - log, print or put in an error message a password or a password hash;
//! - let a failed login reveal whether the user exists: an unknown name costs the same
//!   PBKDF2 work (at [`DEFAULT_ITERATIONS`], as the design fixes) as a wrong password;
//! - leave a torn or half-edited users file: every rewrite happens under an exclusive
//!   lock on `users.lock` and replaces the file atomically (temp file, fsync, rename);
//! - panic or allocate without bound on whatever the file contains.
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

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::crypto::{self, CryptoError, HASH_LEN};
use crate::encoding;
use crate::fsutil;

/// Longest username.
pub const MAX_USERNAME_LEN: usize = 32;

/// A username is 1-32 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn valid_username(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_USERNAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        && !b[0].is_ascii_uppercase()
}

/// PBKDF2 iterations for new hashes (OWASP's 2023 figure for PBKDF2-HMAC-SHA-256), and
/// the work an unknown user's login costs.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Fewest iterations accepted: PBKDF2's own minimum. Low counts are allowed so tests
/// and very slow boards can choose them; choosing is the administrator's business.
pub const MIN_ITERATIONS: u32 = 1;
/// Most iterations accepted. The count is read from each line, so this bounds the CPU
/// a corrupted or hostile users file can make one login cost (about 17 times the
/// default: seconds, not hours).
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Salt length of the hashes we make (16 bytes, as the design fixes).
pub const SALT_LEN: usize = 16;
/// Shortest salt accepted in the file (NIST SP 800-132 asks for at least 128 bits for
/// new hashes; we still read 64-bit salts other tools may have written).
pub const MIN_SALT_LEN: usize = 8;
/// Longest salt accepted in the file: bounds a line's length and the work per hash.
pub const MAX_SALT_LEN: usize = 64;
/// Longest password we hash or read from `--password-stdin`. Far beyond any real
/// password; it keeps a runaway pipe from filling memory.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Largest users file read (about 80,000 accounts); anything bigger is surely not a
/// users file, and reading it would cost memory on a small box.
pub const MAX_USERS_FILE_LEN: u64 = 16 * 1024 * 1024;
/// Longest line in the users file, newline excluded. A legal line is at most about 210
/// bytes (32 name, 16 uid, 86 salt, 43 hash, separators and the iteration count).
pub const MAX_LINE_LEN: usize = 512;
/// Name of the users file in the state directory.
pub const USERS_FILE: &str = "users";
/// Name of the lock file that serialises administrative rewrites of [`USERS_FILE`]. A
/// separate file, since each rewrite replaces the users file's inode.
pub const USERS_LOCK_FILE: &str = "users.lock";

/// The PHC algorithm identifier.
const PHC_ID: &str = "pbkdf2-sha256";
/// Length of the unpadded base64 of a 32-byte hash.
const HASH_B64_LEN: usize = 43;
/// Length of the unpadded base64 of [`MAX_SALT_LEN`] bytes.
const MAX_SALT_B64_LEN: usize = (MAX_SALT_LEN * 4).div_ceil(3);
/// The salt of the dummy hash an unknown user's password is checked against. It need
/// not be secret: the dummy only exists to cost the same work.
const DUMMY_SALT: [u8; SALT_LEN] = [0; SALT_LEN];

thread_local! {
    /// PBKDF2 iterations this thread has run through [`run_pbkdf2`].
    static PBKDF2_ITERATIONS_RUN: Cell<u64> = const { Cell::new(0) };
}

/// How many PBKDF2 iterations the calling thread has run through this module so far.
///
/// It exists so tests can confirm that a failed login really did the work (an unknown
/// user costs [`DEFAULT_ITERATIONS`], a known one its own count) without timing
/// anything. Per thread, so concurrent tests do not disturb each other.
pub fn pbkdf2_iterations_run() -> u64 {
    PBKDF2_ITERATIONS_RUN.with(Cell::get)
}

/// Every PBKDF2 computation in this module goes through here, so the work is counted.
fn run_pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    PBKDF2_ITERATIONS_RUN.with(|c| c.set(c.get().saturating_add(u64::from(iterations))));
    crypto::pbkdf2_sha256(password, salt, iterations)
}

/// Checks `password` against `expected` in time independent of where they differ.
fn verify_raw(password: &str, salt: &[u8], iterations: u32, expected: &[u8; HASH_LEN]) -> bool {
    let computed = run_pbkdf2(password.as_bytes(), salt, iterations);
    crypto::ct_eq(&computed, expected)
}

/// Why a password hash could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashError {
    /// The password is empty.
    EmptyPassword,
    /// The password is longer than [`MAX_PASSWORD_LEN`] bytes (its length is given).
    PasswordTooLong(usize),
    /// The password contains a newline, which the login request uses as its field
    /// separator, so such a password could never be sent.
    PasswordHasNewline,
    /// The iteration count is outside [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`].
    IterationsOutOfRange(u32),
    /// The salt is outside [`MIN_SALT_LEN`]..=[`MAX_SALT_LEN`] bytes.
    SaltLength(usize),
    /// The system's random number generator failed.
    Random(CryptoError),
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashError::EmptyPassword => f.write_str("empty password refused; give a non-empty one"),
            HashError::PasswordTooLong(n) => {
                write!(
                    f,
                    "password of {n} bytes refused; use at most {MAX_PASSWORD_LEN}"
                )
            }
            HashError::PasswordHasNewline => {
                f.write_str("password contains a newline, which no login can send; choose another")
            }
            HashError::IterationsOutOfRange(n) => write!(
                f,
                "{n} iterations is out of range; use {MIN_ITERATIONS} to {MAX_ITERATIONS} \
                 (the default is {DEFAULT_ITERATIONS})"
            ),
            HashError::SaltLength(n) => {
                write!(f, "salt of {n} bytes; use {MIN_SALT_LEN} to {MAX_SALT_LEN}")
            }
            HashError::Random(e) => {
                write!(
                    f,
                    "{e}; check that the system random number generator works"
                )
            }
        }
    }
}

impl std::error::Error for HashError {}

/// Checks a new password against the rules every stored password follows.
fn check_new_password(password: &str) -> Result<(), HashError> {
    if password.is_empty() {
        return Err(HashError::EmptyPassword);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(HashError::PasswordTooLong(password.len()));
    }
    if password.contains('\n') {
        return Err(HashError::PasswordHasNewline);
    }
    Ok(())
}

fn check_iterations(iterations: u32) -> Result<(), HashError> {
    if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        Ok(())
    } else {
        Err(HashError::IterationsOutOfRange(iterations))
    }
}

/// Why a PHC string was refused. None of these repeat the string itself: it is a
/// password hash, and error messages end up in logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhcError {
    /// Not `$pbkdf2-sha256$i=N$salt$hash`: wrong number of `$`-separated fields, or
    /// something before the first `$`.
    Shape,
    /// An algorithm other than `pbkdf2-sha256`.
    Algorithm,
    /// The parameter field is not `i=` and a decimal number in its one spelling.
    Iterations,
    /// The iteration count is outside [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`].
    IterationsOutOfRange(u64),
    /// The salt is not standard unpadded base64.
    SaltEncoding,
    /// The salt is outside [`MIN_SALT_LEN`]..=[`MAX_SALT_LEN`] bytes.
    SaltLength(usize),
    /// The hash is not standard unpadded base64 of 32 bytes.
    HashEncoding,
}

impl fmt::Display for PhcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhcError::Shape => f.write_str("password hash is not $pbkdf2-sha256$i=N$SALT$HASH"),
            PhcError::Algorithm => f.write_str("password hash algorithm is not pbkdf2-sha256"),
            PhcError::Iterations => {
                f.write_str("password hash parameter is not i=N with N a plain decimal number")
            }
            PhcError::IterationsOutOfRange(n) => write!(
                f,
                "password hash has {n} iterations, outside {MIN_ITERATIONS} to {MAX_ITERATIONS}"
            ),
            PhcError::SaltEncoding => {
                f.write_str("password hash salt is not standard base64 without padding")
            }
            PhcError::SaltLength(n) => write!(
                f,
                "password hash salt is {n} bytes, outside {MIN_SALT_LEN} to {MAX_SALT_LEN}"
            ),
            PhcError::HashEncoding => f.write_str(
                "password hash value is not 32 bytes of standard base64 without padding",
            ),
        }
    }
}

impl std::error::Error for PhcError {}

/// Decodes canonical unpadded standard base64 of at most `max_text` characters.
fn decode_b64_field(s: &str, max_text: usize) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() > max_text {
        return None;
    }
    let bytes = encoding::unb64_unpadded(s)?;
    // One spelling per value: refuse text whose unused low bits are set, which a lax
    // decoder would accept and our encoder would never write.
    (encoding::b64_unpadded(&bytes) == s).then_some(bytes)
}

/// A PBKDF2-HMAC-SHA-256 password hash with its parameters.
///
/// Its text form is `$pbkdf2-sha256$i=<iterations>$<salt_b64>$<hash_b64>`. `Debug`
/// shows only the iteration count and salt length, so a hash never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: u32,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

impl PasswordHash {
    /// Hashes `password` with `iterations` iterations and a fresh random 16-byte salt.
    pub fn new(password: &str, iterations: u32) -> Result<PasswordHash, HashError> {
        check_new_password(password)?;
        check_iterations(iterations)?;
        let salt: [u8; SALT_LEN] = crypto::random_array().map_err(HashError::Random)?;
        PasswordHash::with_salt(password, iterations, &salt)
    }

    /// Hashes `password` with a given salt. For tests and known-answer checks; new
    /// accounts get a random salt from [`PasswordHash::new`].
    pub fn with_salt(
        password: &str,
        iterations: u32,
        salt: &[u8],
    ) -> Result<PasswordHash, HashError> {
        check_new_password(password)?;
        check_iterations(iterations)?;
        if !(MIN_SALT_LEN..=MAX_SALT_LEN).contains(&salt.len()) {
            return Err(HashError::SaltLength(salt.len()));
        }
        Ok(PasswordHash {
            iterations,
            salt: salt.to_vec(),
            hash: run_pbkdf2(password.as_bytes(), salt, iterations),
        })
    }

    /// Parses the PHC text form strictly: exactly five `$`-separated fields (the first
    /// empty), iterations in their one decimal spelling within bounds, canonical
    /// unpadded base64, a salt of 8 to 64 bytes and a hash of exactly 32.
    pub fn parse_phc(s: &str) -> Result<PasswordHash, PhcError> {
        let fields: Vec<&str> = s.splitn(6, '$').collect();
        let [empty, id, param, salt_b64, hash_b64] = fields[..] else {
            return Err(PhcError::Shape);
        };
        if !empty.is_empty() {
            return Err(PhcError::Shape);
        }
        if id != PHC_ID {
            return Err(PhcError::Algorithm);
        }
        let count = param
            .strip_prefix("i=")
            .and_then(encoding::parse_decimal)
            .ok_or(PhcError::Iterations)?;
        let iterations = u32::try_from(count)
            .ok()
            .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
            .ok_or(PhcError::IterationsOutOfRange(count))?;
        let salt = decode_b64_field(salt_b64, MAX_SALT_B64_LEN).ok_or(PhcError::SaltEncoding)?;
        if !(MIN_SALT_LEN..=MAX_SALT_LEN).contains(&salt.len()) {
            return Err(PhcError::SaltLength(salt.len()));
        }
        let hash = decode_b64_field(hash_b64, HASH_B64_LEN)
            .and_then(|h| <[u8; HASH_LEN]>::try_from(h).ok())
            .ok_or(PhcError::HashEncoding)?;
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// The PHC text form.
    pub fn to_phc(&self) -> String {
        format!(
            "${PHC_ID}$i={}${}${}",
            self.iterations,
            encoding::b64_unpadded(&self.salt),
            encoding::b64_unpadded(&self.hash)
        )
    }

    /// Whether `password` matches, compared in constant time. Always runs the full
    /// PBKDF2 work for this hash's iteration count.
    pub fn verify(&self, password: &str) -> bool {
        verify_raw(password, &self.salt, self.iterations, &self.hash)
    }

    /// The PBKDF2 iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

/// One account: a line of the users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The username (the "public ID" of the design), valid per [`valid_username`].
    pub name: String,
    /// The user's id: random, non-zero, fixed at creation.
    pub uid: u64,
    /// The password hash.
    pub hash: PasswordHash,
}

/// Why an account cannot join a set of accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryError {
    /// The name breaks the username rule.
    InvalidName(String),
    /// The uid is zero, which the protocol reserves for the server.
    ZeroUid,
    /// Another account already has this name.
    DuplicateName(String),
    /// Another account already has this uid.
    DuplicateUid(u64),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryError::InvalidName(n) => write!(
                f,
                "invalid user name {n:?}: use 1 to {MAX_USERNAME_LEN} of a-z 0-9 . _ -, \
                 starting with a letter or digit"
            ),
            EntryError::ZeroUid => f.write_str("uid 0 is reserved for the server"),
            EntryError::DuplicateName(n) => write!(f, "user {n} appears more than once"),
            EntryError::DuplicateUid(u) => {
                write!(
                    f,
                    "uid {} belongs to more than one user",
                    encoding::id_hex(*u)
                )
            }
        }
    }
}

impl std::error::Error for EntryError {}

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

/// A set of accounts, by name and by uid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    by_name: BTreeMap<String, Account>,
    by_uid: HashMap<u64, String>,
}

impl Accounts {
    /// No accounts.
    pub fn new() -> Accounts {
        Accounts::default()
    }

    /// Adds an account with a valid, unused name and a non-zero, unused uid.
    pub fn insert(&mut self, account: Account) -> Result<(), EntryError> {
        if !valid_username(&account.name) {
            return Err(EntryError::InvalidName(account.name));
        }
        if account.uid == 0 {
            return Err(EntryError::ZeroUid);
        }
        if self.by_name.contains_key(&account.name) {
            return Err(EntryError::DuplicateName(account.name));
        }
        if self.by_uid.contains_key(&account.uid) {
            return Err(EntryError::DuplicateUid(account.uid));
        }
        self.by_uid.insert(account.uid, account.name.clone());
        self.by_name.insert(account.name.clone(), account);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Option<Account> {
        let account = self.by_name.remove(name)?;
        self.by_uid.remove(&account.uid);
        Some(account)
    }

    /// The account called `name`.
    pub fn lookup(&self, name: &str) -> Option<&Account> {
        self.by_name.get(name)
    }

    /// The name of the account with id `uid`.
    pub fn name_of(&self, uid: u64) -> Option<&str> {
        self.by_uid.get(&uid).map(String::as_str)
    }

    /// How many accounts there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The accounts in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Account> {
        self.by_name.values()
    }

    /// Checks a login: the uid of `name` if `password` is right, otherwise `None`.
    ///
    /// It always does PBKDF2 work: a known user's own iteration count, or for an
    /// unknown name a dummy hash at [`DEFAULT_ITERATIONS`], so a failed login looks the
    /// same whether or not the user exists. It takes no [`PasswordGate`] permit; the
    /// caller decides how many of these run at once.
    pub fn check_password(&self, name: &str, password: &str) -> Option<u64> {
        match self.by_name.get(name) {
            Some(account) => account.hash.verify(password).then_some(account.uid),
            None => {
                // The result is thrown away, but black_box keeps the optimiser from
                // throwing the work away with it.
                let dummy = [0u8; HASH_LEN];
                std::hint::black_box(verify_raw(
                    password,
                    &DUMMY_SALT,
                    DEFAULT_ITERATIONS,
                    &dummy,
                ));
                None
            }
        }
    }

    /// The users file text: one `name:uid_hex:PHC\n` line per account, in name order.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for a in self.iter() {
            text.push_str(&a.name);
            text.push(':');
            text.push_str(&encoding::id_hex(a.uid));
            text.push(':');
            text.push_str(&a.hash.to_phc());
            text.push('\n');
        }
        text
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
/// A rewrite by [`fsutil::atomic_write`] always changes the inode; an in-place edit
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

/// Locks `m`, recovering from poisoning: every critical section in this module leaves
/// its data consistent even if a panic were to unwind through it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    let mut accounts = load(&path).1.map_err(AdminError::UsersFile)?;
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
    let accounts = load(&state_dir.join(USERS_FILE))
        .1
        .map_err(AdminError::UsersFile)?;
    Ok(accounts
        .iter()
        .map(|a| (a.name.clone(), a.uid, a.hash.iterations()))
        .collect())
}

/// Reads a password for `--password-stdin`: one line, without its `\n` or `\r\n`. A
/// last line without a newline is fine; an empty password, one over
/// [`MAX_PASSWORD_LEN`] bytes or one that is not UTF-8 is an error (whose message never
/// contains the password).
pub fn read_password_line<R: BufRead>(reader: R) -> io::Result<String> {
    let mut line = Vec::new();
    // Two bytes of slack for the line ending.
    reader
        .take(MAX_PASSWORD_LEN as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty password on standard input",
        ));
    }
    if line.len() > MAX_PASSWORD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("password on standard input is longer than {MAX_PASSWORD_LEN} bytes"),
        ));
    }
    String::from_utf8(line).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "password on standard input is not UTF-8",
        )
    })
}

/// A counting semaphore that lets at most one PBKDF2 computation per core run at a
/// time, so a flood of logins queues up here instead of starving the threads that
/// relay messages.
pub struct PasswordGate {
    permits: usize,
    in_use: Mutex<usize>,
    freed: Condvar,
}

impl PasswordGate {
    /// A gate with one permit per available core (one if that cannot be found out).
    pub fn new() -> PasswordGate {
        PasswordGate::with_permits(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// A gate with `permits` permits (at least one: a gate with none would block every
    /// login forever).
    pub fn with_permits(permits: usize) -> PasswordGate {
        PasswordGate {
            permits: permits.max(1),
            in_use: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// How many holders the gate admits at once.
    pub fn permits(&self) -> usize {
        self.permits
    }

    /// Waits for a permit; it is given back when the returned guard is dropped.
    pub fn acquire(&self) -> Permit<'_> {
        let mut in_use = lock(&self.in_use);
        while *in_use >= self.permits {
            in_use = self
                .freed
                .wait(in_use)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *in_use += 1;
        Permit { gate: self }
    }
}

impl Default for PasswordGate {
    fn default() -> Self {
        PasswordGate::new()
    }
}

/// A permit from a [`PasswordGate`]; dropping it lets the next waiter in.
pub struct Permit<'a> {
    gate: &'a PasswordGate,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut in_use = lock(&self.gate.in_use);
        *in_use = in_use.saturating_sub(1);
        drop(in_use);
        self.gate.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rule_accepts_and_rejects_the_documented_forms() {
        for ok in [
            "a",
            "alice",
            "0day",
            "a.b_c-d",
            &"x".repeat(MAX_USERNAME_LEN),
        ] {
            assert!(valid_username(ok), "{ok:?}");
        }
        for bad in [
            "",
            "Alice",
            ".a",
            "_a",
            "-a",
            "a b",
            "a:b",
            "é",
            &"x".repeat(MAX_USERNAME_LEN + 1),
        ] {
            assert!(!valid_username(bad), "{bad:?}");
        }
    }

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

    #[test]
    fn debug_output_hides_salt_and_hash() {
        let h = PasswordHash::with_salt("pw", 1, &[0xab; SALT_LEN]).unwrap();
        let shown = format!("{h:?}");
        assert!(!shown.contains(&encoding::b64_unpadded(&h.salt)), "{shown}");
        assert!(!shown.contains(&encoding::b64_unpadded(&h.hash)), "{shown}");
        assert!(!shown.contains("171"), "no raw bytes either: {shown}");
    }
}
