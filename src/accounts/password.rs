//! Password hashes: the PHC text form, hashing and constant-time verification, the
//! dummy check an unknown name costs, and the [`PasswordGate`] that bounds how many
//! PBKDF2 computations run at once.
//!
//! It exists so every PBKDF2 computation of the server goes through one place, where
//! the work is counted ([`pbkdf2_iterations_run`]) and the bounds on what a users file
//! can make a login cost ([`MAX_ITERATIONS`], [`MAX_SALT_LEN`]) are applied.
//!
//! It must never:
//! - log, print, show in `Debug` or put in an error message a password, a salt or a
//!   hash;
//! - compare a computed hash with a stored one in time that depends on where they
//!   differ;
//! - accept a PHC string in more than one spelling, or one whose parameters are out
//!   of bounds.

use std::cell::Cell;
use std::fmt;
use std::sync::{Condvar, Mutex, PoisonError};

use super::lock;
use crate::crypto::{self, CryptoError, HASH_LEN};
use crate::encoding;
use crate::login::MAX_PASSWORD_LEN;

/// PBKDF2 iterations for new hashes (OWASP's 2023 figure for PBKDF2-HMAC-SHA-256), and
/// the work an unknown user's login costs while there are no accounts (otherwise it
/// costs the count most accounts use: [`super::Accounts::dummy_iterations`]).
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

/// The PHC algorithm identifier.
const PHC_ID: &str = "pbkdf2-sha256";
/// Length of the unpadded base64 of a 32-byte hash.
const HASH_B64_LEN: usize = 43;
/// Length of the unpadded base64 of [`MAX_SALT_LEN`] bytes.
const MAX_SALT_B64_LEN: usize = (MAX_SALT_LEN * 4).div_ceil(3);
/// The salt of the dummy hash an unknown or invalid name's password is checked
/// against, 16 bytes like the salts we make. It need not be secret: the dummy only
/// exists to cost the same work.
const DUMMY_SALT: [u8; SALT_LEN] = [0; SALT_LEN];

thread_local! {
    /// PBKDF2 iterations this thread has run through [`run_pbkdf2`].
    static PBKDF2_ITERATIONS_RUN: Cell<u64> = const { Cell::new(0) };
}

/// How many PBKDF2 iterations the calling thread has run through this module so far.
///
/// It exists so tests can confirm that a failed login really did the work (an unknown
/// user costs [`super::Accounts::dummy_iterations`], a known one its own count)
/// without timing anything. Per thread, so concurrent tests do not disturb each other.
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

/// Does the work of checking `password` against a hash of `iterations` iterations
/// that nothing matches: what a login for a name without an account costs.
pub(super) fn dummy_check(password: &str, iterations: u32) {
    // The result is thrown away, but black_box keeps the optimiser from throwing the
    // work away with it.
    let dummy = [0u8; HASH_LEN];
    std::hint::black_box(verify_raw(password, &DUMMY_SALT, iterations, &dummy));
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
pub(super) fn check_new_password(password: &str) -> Result<(), HashError> {
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

pub(super) fn check_iterations(iterations: u32) -> Result<(), HashError> {
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
    fn debug_output_hides_salt_and_hash() {
        let h = PasswordHash::with_salt("pw", 1, &[0xab; SALT_LEN]).unwrap();
        let shown = format!("{h:?}");
        assert!(!shown.contains(&encoding::b64_unpadded(&h.salt)), "{shown}");
        assert!(!shown.contains(&encoding::b64_unpadded(&h.hash)), "{shown}");
        assert!(!shown.contains("171"), "no raw bytes either: {shown}");
    }
}
