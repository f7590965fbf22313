//! Accounts: who may log in, with which password and under which uid.
//!
//! The server needs to know who may log in; `mpchatd useradd|passwd|userdel|users`
//! need to change that while the server runs. This module is that shared layer, in
//! parts by job:
//!
//! - `password.rs`: PHC password hashes, PBKDF2 and its counter, the
//!   dummy check for unknown names, and the [`PasswordGate`];
//! - `users_file.rs`: the users file's format and parser, and
//!   [`UsersFile`], the server's hot-reloaded copy;
//! - `admin.rs`: the administration commands, under the users file lock;
//! - this file: [`Account`] and [`Accounts`], the set a login is checked against.
//!
//! The username rule is not here but in [`crate::names`], and the password bound in
//! [`crate::login`]: the protocol and the client apply them without the server.
//!
//! It must never:
//! - log, print or put in an error message a password or a password hash;
//! - let a failed login reveal whether the user exists: an unknown or invalid name
//!   costs the same PBKDF2 work as a wrong password (a dummy hash at the iteration
//!   count most accounts use, see [`Accounts::dummy_iterations`]);
//! - leave a torn or half-edited users file (see `admin.rs`);
//! - panic or allocate without bound on whatever the file contains.

mod admin;
mod password;
mod users_file;

pub use admin::{add_user, list_users, remove_user, set_password, AdminError, USERS_LOCK_FILE};
pub use password::{
    pbkdf2_iterations_run, GateKey, GateRefusal, HashError, PasswordGate, PasswordHash, Permit,
    PhcError, DEFAULT_ITERATIONS, MAX_ITERATIONS, MAX_SALT_LEN, MIN_ITERATIONS, MIN_SALT_LEN,
    SALT_LEN,
};
pub use users_file::{
    parse_users, LineProblem, UsersFile, UsersFileError, MAX_LINE_LEN, MAX_USERS_FILE_LEN,
    USERS_FILE,
};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::encoding;
use crate::names::{valid_username, MAX_USERNAME_LEN};
use password::dummy_check;

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

/// A set of accounts, by name and by uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    by_name: BTreeMap<String, Account>,
    by_uid: HashMap<u64, String>,
    /// How many accounts use each iteration count.
    by_iterations: BTreeMap<u32, usize>,
    /// The count of the dummy hash a name without an account is checked against: the
    /// mode of `by_iterations`, kept up to date by every insert and removal, so it is
    /// known as soon as the file is read and costs nothing per login.
    dummy_iterations: u32,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            by_name: BTreeMap::new(),
            by_uid: HashMap::new(),
            by_iterations: BTreeMap::new(),
            dummy_iterations: DEFAULT_ITERATIONS,
        }
    }
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
        let iterations = account.hash.iterations();
        let n = self.by_iterations.entry(iterations).or_insert(0);
        *n += 1;
        // Only this count's number grew, so the mode is either the old one or this.
        let mode = self.dummy_iterations;
        let mode_n = self.by_iterations.get(&mode).copied().unwrap_or(0);
        if (self.by_iterations[&iterations], iterations) > (mode_n, mode) {
            self.dummy_iterations = iterations;
        }
        self.by_uid.insert(account.uid, account.name.clone());
        self.by_name.insert(account.name.clone(), account);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Option<Account> {
        let account = self.by_name.remove(name)?;
        self.by_uid.remove(&account.uid);
        let iterations = account.hash.iterations();
        if let Some(n) = self.by_iterations.get_mut(&iterations) {
            *n -= 1;
            if *n == 0 {
                self.by_iterations.remove(&iterations);
            }
        }
        // Removals are administrative edits, never per login: recount.
        self.dummy_iterations = self
            .by_iterations
            .iter()
            .max_by_key(|&(&iterations, &n)| (n, iterations))
            .map_or(DEFAULT_ITERATIONS, |(&iterations, _)| iterations);
        Some(account)
    }

    /// The PBKDF2 iteration count a login for a name without an account costs: the
    /// count most accounts use (the larger one on a tie), or [`DEFAULT_ITERATIONS`]
    /// when there are no accounts.
    ///
    /// Not the default whatever the accounts use: with accounts at 1,000 iterations, a
    /// dummy at 600,000 made an unknown name fail in about 110 ms and a known one in
    /// 2 ms, which told anyone timing failed logins which names exist. With the mode,
    /// most known names cost exactly what an unknown one does; a minority of accounts
    /// at another count (one whose password was rehashed at a new count, say) still
    /// stands out, which is why `mpchatd passwd` at one count for everyone is the cure.
    pub fn dummy_iterations(&self) -> u32 {
        self.dummy_iterations
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
    /// It always does PBKDF2 work: a known user's own iteration count, or for a name
    /// without an account, whether unknown or breaking the username rule, a dummy hash
    /// at [`Accounts::dummy_iterations`], so a failed login looks the same whether or
    /// not the user exists (DECISIONS 4 in mpchat-protocol(7)). It takes no
    /// [`PasswordGate`] permit; the caller decides how many of these run at once.
    pub fn check_password(&self, name: &str, password: &str) -> Option<u64> {
        // No account has an invalid name (insert refuses them); the check only says so.
        let account = valid_username(name)
            .then(|| self.by_name.get(name))
            .flatten();
        match account {
            Some(account) => account.hash.verify(password).then_some(account.uid),
            None => {
                dummy_check(password, self.dummy_iterations);
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

/// Locks `m`, recovering from poisoning: every critical section in these modules leaves
/// its data consistent even if a panic were to unwind through it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
