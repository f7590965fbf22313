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
use std::collections::{HashMap, HashSet};
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

/// Who asks the [`PasswordGate`] for a permit: where the login comes from and the
/// account it claims (known or not: the gate treats both alike, so it reveals
/// nothing about which names exist).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GateKey {
    /// The source address (or network), as a number; see the server's per-source
    /// limits.
    pub source: u128,
    /// The claimed account name.
    pub account: String,
    /// The source is penalised for earlier failures: it comes after everyone else.
    pub penalised: bool,
}

/// Why the [`PasswordGate`] turned a login away without a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRefusal {
    /// A check for the same account from the same source is already at the gate: a
    /// second one could only be a guess racing the first.
    AccountBusy,
}

impl fmt::Display for GateRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GateRefusal::AccountBusy => {
                "a password check for this user from this address is already under way"
            }
        })
    }
}

/// A source's checks at the gate.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct AtGate {
    /// Checks waiting or running.
    checks: usize,
    /// Permits held.
    holding: usize,
    /// When it was last given a permit (the gate's grant count then; 0: never).
    last_grant: u64,
}

/// The gate's bookkeeping, under its lock.
#[derive(Default)]
struct GateState {
    in_use: usize,
    next_ticket: u64,
    grants: u64,
    /// Waiting checks in arrival order: `(ticket, key, granted)`.
    waiting: Vec<(u64, Option<GateKey>, bool)>,
    /// Per source with checks at the gate.
    sources: HashMap<u128, AtGate>,
    /// Per account: permits held.
    accounts: HashMap<String, usize>,
    /// (source, account) pairs at the gate.
    pairs: HashSet<(u128, String)>,
}

impl GateState {
    /// Hands a permit to `key`'s holder.
    fn grant(&mut self, key: Option<&GateKey>) {
        self.in_use += 1;
        self.grants += 1;
        if let Some(k) = key {
            let s = self.sources.entry(k.source).or_default();
            s.holding += 1;
            s.last_grant = self.grants;
            *self.accounts.entry(k.account.clone()).or_default() += 1;
        }
    }

    /// The waiting check that gets the next permit: sources in good standing first,
    /// then the source holding the fewest permits, then the one served least
    /// recently, then the account holding the fewest, then the check waiting
    /// longest. So sources take turns, one address cannot take every permit while
    /// another waits, and one account (a name attacked from many addresses) cannot
    /// either while another account's login waits.
    fn next(&self) -> Option<usize> {
        let rank = |key: &Option<GateKey>, ticket: u64| match key {
            Some(k) => {
                let s = self.sources.get(&k.source).copied().unwrap_or_default();
                (
                    k.penalised,
                    s.holding,
                    s.last_grant,
                    self.accounts.get(&k.account).copied().unwrap_or(0),
                    ticket,
                )
            }
            None => (false, 0, 0, 0, ticket),
        };
        self.waiting
            .iter()
            .enumerate()
            .filter(|(_, (_, _, granted))| !granted)
            .min_by_key(|(_, (ticket, key, _))| rank(key, *ticket))
            .map(|(i, _)| i)
    }
}

/// A counting semaphore that lets at most one PBKDF2 computation per core run at a
/// time, so a flood of logins queues up here instead of starving the threads that
/// relay messages; and that hands its permits out fairly (see [`GateKey`]), so that
/// one address or one account cannot monopolise them. How many checks wait here is
/// bounded by the caller (the server's pre-login table).
pub struct PasswordGate {
    permits: usize,
    state: Mutex<GateState>,
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
            state: Mutex::new(GateState::default()),
            freed: Condvar::new(),
        }
    }

    /// How many holders the gate admits at once.
    pub fn permits(&self) -> usize {
        self.permits
    }

    /// Waits for a permit as nobody in particular (no per-source or per-account
    /// bound, no turn-taking); it is given back when the returned guard is dropped.
    pub fn acquire(&self) -> Permit<'_> {
        self.wait(None)
    }

    /// Waits for a permit for a check from `key`, or refuses at once if that source
    /// already has a check of the same account at the gate. The permit is given back
    /// when the returned guard is dropped.
    pub fn enter(&self, key: GateKey) -> Result<Permit<'_>, GateRefusal> {
        {
            let mut st = lock(&self.state);
            if st.pairs.contains(&(key.source, key.account.clone())) {
                return Err(GateRefusal::AccountBusy);
            }
            st.pairs.insert((key.source, key.account.clone()));
            st.sources.entry(key.source).or_default().checks += 1;
        }
        Ok(self.wait(Some(key)))
    }

    fn wait(&self, key: Option<GateKey>) -> Permit<'_> {
        let mut st = lock(&self.state);
        if st.in_use < self.permits && st.waiting.iter().all(|w| w.2) {
            st.grant(key.as_ref());
            return Permit { gate: self, key };
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.waiting.push((ticket, key, false));
        loop {
            st = self.freed.wait(st).unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = st.waiting.iter().position(|w| w.0 == ticket) {
                if st.waiting[i].2 {
                    let (_, key, _) = st.waiting.remove(i);
                    return Permit { gate: self, key };
                }
            }
        }
    }

    /// Gives a permit back and hands it to the next waiting check.
    fn release(&self, key: Option<&GateKey>) {
        let mut st = lock(&self.state);
        st.in_use = st.in_use.saturating_sub(1);
        if let Some(k) = key {
            if let Some(s) = st.sources.get_mut(&k.source) {
                s.checks = s.checks.saturating_sub(1);
                s.holding = s.holding.saturating_sub(1);
                // A source with nothing at the gate is forgotten, its turn with it:
                // only a source that keeps checks waiting has a turn to lose.
                if s.checks == 0 {
                    st.sources.remove(&k.source);
                }
            }
            if let Some(n) = st.accounts.get_mut(&k.account) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.accounts.remove(&k.account);
                }
            }
            st.pairs.remove(&(k.source, k.account.clone()));
        }
        if st.in_use < self.permits {
            if let Some(i) = st.next() {
                let key = st.waiting[i].1.clone();
                st.grant(key.as_ref());
                st.waiting[i].2 = true;
                drop(st);
                self.freed.notify_all();
            }
        }
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
    key: Option<GateKey>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.gate.release(self.key.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    fn key(source: u128, account: &str, penalised: bool) -> GateKey {
        GateKey {
            source,
            account: account.into(),
            penalised,
        }
    }

    /// Queues `keys` at `gate` in order, each on its own thread, which reports its
    /// name on `tx` when it gets its permit and gives it back at once. Returns once
    /// every one of them waits.
    fn queue_up(gate: &Arc<PasswordGate>, keys: Vec<GateKey>, tx: &mpsc::Sender<String>) {
        for k in keys {
            let (g, tx) = (gate.clone(), tx.clone());
            let before = lock(&gate.state).waiting.len();
            std::thread::spawn(move || {
                let name = format!("{:x}/{}", k.source, k.account);
                let permit = g.enter(k).expect("admitted to the gate");
                tx.send(name).unwrap();
                drop(permit);
            });
            while lock(&gate.state).waiting.len() == before {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn the_gate_refuses_a_second_check_of_one_account_from_one_source() {
        let gate = Arc::new(PasswordGate::with_permits(1));
        let held = gate.enter(key(1, "victim", false)).unwrap();
        assert_eq!(
            gate.enter(key(1, "victim", false)).err(),
            Some(GateRefusal::AccountBusy)
        );
        // The same account from another source, another account from the same one.
        let (tx, rx) = mpsc::channel();
        queue_up(&gate, vec![key(2, "victim", false)], &tx);
        queue_up(&gate, vec![key(1, "alice", false)], &tx);
        drop(held);
        let order: Vec<String> = rx.iter().take(2).collect();
        assert_eq!(order.len(), 2);
        // Everything given back: the source may check again.
        assert!(gate.enter(key(1, "victim", false)).is_ok());
    }

    #[test]
    fn the_gate_gives_its_permits_to_sources_in_turn_and_penalised_ones_last() {
        let gate = Arc::new(PasswordGate::with_permits(1));
        let held = gate.enter(key(1, "x0", false)).unwrap();
        let (tx, rx) = mpsc::channel();
        // The flooding source 1 queued three checks first; source 2 one, then a
        // penalised source 3 one.
        queue_up(
            &gate,
            vec![
                key(1, "x1", false),
                key(1, "x2", false),
                key(1, "x3", false),
                key(3, "p", true),
                key(2, "alice", false),
            ],
            &tx,
        );
        drop(held);
        let order: Vec<String> = rx.iter().take(5).collect();
        assert_eq!(order, ["2/alice", "1/x1", "1/x2", "1/x3", "3/p"]);
    }

    #[test]
    fn the_gate_serves_another_account_before_one_that_holds_a_permit() {
        let gate = Arc::new(PasswordGate::with_permits(2));
        let held = gate.enter(key(1, "victim", false)).unwrap();
        let other = gate.enter(key(2, "victim", false)).unwrap();
        let (tx, rx) = mpsc::channel();
        queue_up(
            &gate,
            vec![key(3, "victim", false), key(4, "alice", false)],
            &tx,
        );
        drop(other);
        assert_eq!(rx.recv().unwrap(), "4/alice");
        drop(held);
        assert_eq!(rx.recv().unwrap(), "3/victim");
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
