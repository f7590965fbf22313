//! The client's key material on disk: the user's own end-to-end key and the keys of
//! other users pinned on first use.
//!
//! The server hands out every participant's public key in session status, so it could
//! hand out its own instead. Pinning stops that after first contact: the first key seen
//! for a username is remembered in `known_keys`; a different key later is reported as
//! [`PinStatus::Changed`] with both fingerprints and the old pin stays until the user
//! says `/trust NAME` ([`PinSet::trust`]). Until then the client must neither encrypt
//! to the new key nor accept signatures made with it: it verifies a user's messages
//! with the pinned key ([`PinSet::get`]), never with the key the server just sent.
//!
//! [`PinSet`] is the rule alone, in memory (the client's core uses it and never touches
//! a file); [`load_pins`] and [`save_pins`] are its file, and [`KnownKeys`] the two
//! together, saving every change before it takes effect.
//!
//! Config directory layout (see [`default_config_dir`]):
//!
//! | file | contents | mode |
//! |---|---|---|
//! | [`KEY_FILE`] `key.pem` | the user's RSA private key, PKCS#8 PEM | 0600 |
//! | [`PUBLIC_KEY_FILE`] `key.pub` | its public half, SubjectPublicKeyInfo PEM | 0644 |
//! | [`KNOWN_KEYS_FILE`] `known_keys` | the pins | 0600 |
//! | [`SEEN_FILE`] `seen` | the [`crate::e2e::ReplayGuard`] of opened message ids | 0600 |
//! | [`crate::client::store::RECEIVED_FILE`] `received` | the last message number shown per session | 0600 |
//!
//! This module never prints or logs key material; only fingerprints leave it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::crypto::{self, CryptoError, KeyFileError, RsaPrivate, RsaPublic};
use crate::fsutil;
use crate::names;

/// The user's private key in the config directory.
pub const KEY_FILE: &str = "key.pem";
/// The user's public key in the config directory.
pub const PUBLIC_KEY_FILE: &str = "key.pub";
/// The pinned keys of other users in the config directory.
pub const KNOWN_KEYS_FILE: &str = "known_keys";
/// The saved [`crate::e2e::ReplayGuard`] in the config directory.
pub const SEEN_FILE: &str = "seen";

/// Key size `mpchat keygen` uses unless told otherwise.
///
/// 3072 bits, not the faster 2048: this key wraps every content key sent to the user
/// and the server stores those envelopes, so the key must keep them confidential for
/// years (NIST SP 800-57 retires 2048-bit RSA after 2030; 3072 bits is the 128-bit
/// level). It is also an identity pinned by every peer, so it should not need
/// replacing early. The price is paid rarely: key generation is once per user (seconds
/// on a small board), and per message one 3072-bit decryption and, per author, one
/// verification. 4096 bits would cost more and shrink the room for text in a
/// 99-recipient envelope for little gain.
pub const DEFAULT_KEY_BITS: usize = 3072;

/// Largest `known_keys` file read: about 10,000 pins of 4096-bit keys (a line is at
/// most 32 + 1 + 736 + 1 bytes). Checked before reading, so a corrupt or hostile file
/// cannot exhaust memory.
pub const MAX_KNOWN_KEYS_FILE_LEN: u64 = 8 * 1024 * 1024;

/// Why a key or pin operation failed. Each message says what went wrong and, where
/// there is one, what to do.
#[derive(Debug)]
pub enum PinError {
    /// Reading or writing a file failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `keygen` found a key already in place; it never overwrites one.
    KeyExists(PathBuf),
    /// There is no private key yet.
    NoKey(PathBuf),
    /// The private key file is not a usable RSA key (2048 to 4096 bits, PKCS#8 PEM).
    BadKeyFile(PathBuf),
    /// The private key file can be read by group or others.
    KeyFileMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key size outside 2048..=4096 bits was asked for.
    BadKeyBits(usize),
    /// Key generation failed (the random number generator).
    Crypto(CryptoError),
    /// A username that cannot be pinned (not a valid account name).
    InvalidName,
    /// The `known_keys` file is larger than [`MAX_KNOWN_KEYS_FILE_LEN`].
    KnownKeysTooLarge(PathBuf),
    /// A line of the `known_keys` file is malformed.
    KnownKeysSyntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::Io { path, source } => write!(
                f,
                "{}: {source}; check the file's permissions, or pass --config-dir DIR",
                path.display()
            ),
            PinError::KeyExists(p) => write!(
                f,
                "{}: a key already exists; refusing to overwrite it (peers have pinned it). \
                 Move it away first if you really want a new key",
                p.display()
            ),
            PinError::NoKey(p) => {
                let dir = p
                    .parent()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default();
                write!(
                    f,
                    "{}: no key yet; run `mpchat keygen --config-dir {dir}` first",
                    p.display()
                )
            }
            PinError::BadKeyFile(p) => write!(
                f,
                "{}: not a usable RSA private key (PKCS#8 PEM, 2048 to 4096 bits)",
                p.display()
            ),
            PinError::KeyFileMode { path, mode } => write!(
                f,
                "{}: permissions {mode:04o} are too open; run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
            PinError::BadKeyBits(b) => {
                write!(f, "key size {b} bits is not allowed; use 2048 to 4096")
            }
            PinError::Crypto(e) => write!(f, "key generation failed: {e}"),
            PinError::InvalidName => f.write_str("invalid username"),
            PinError::KnownKeysTooLarge(p) => write!(
                f,
                "{}: larger than {MAX_KNOWN_KEYS_FILE_LEN} bytes; not a known_keys file",
                p.display()
            ),
            PinError::KnownKeysSyntax { path, line, reason } => {
                write!(f, "{}:{line}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for PinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PinError::Io { source, .. } => Some(source),
            PinError::Crypto(e) => Some(e),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The client's config directory: `$MPCHAT_CONFIG_DIR` if set, else
/// `$XDG_CONFIG_HOME/mpchat`, else `$HOME/.config/mpchat`, else (no home at all)
/// `.config/mpchat` under the current directory. Empty variables count as unset, and
/// a relative `$XDG_CONFIG_HOME` is ignored, as the XDG specification says.
pub fn default_config_dir() -> PathBuf {
    config_dir_from(
        std::env::var_os("MPCHAT_CONFIG_DIR"),
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

fn config_dir_from(
    mpchat: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(mpchat) {
        return dir;
    }
    if let Some(xdg) = set(xdg).filter(|p| p.is_absolute()) {
        return xdg.join("mpchat");
    }
    set(home).unwrap_or_default().join(".config").join("mpchat")
}

/// Creates a new key pair of `bits` bits in `config_dir` (made with mode 0700 if
/// missing): [`KEY_FILE`] mode 0600 and [`PUBLIC_KEY_FILE`] mode 0644. Returns the public
/// key (show its fingerprint) and the private key's path. Refuses to overwrite an
/// existing key: peers have pinned it, and replacing it makes them all see a changed key.
pub fn keygen(config_dir: &Path, bits: usize) -> Result<(RsaPublic, PathBuf), PinError> {
    if !(crypto::MIN_USER_KEY_BITS..=crypto::MAX_USER_KEY_BITS).contains(&bits)
        || !bits.is_multiple_of(8)
    {
        return Err(PinError::BadKeyBits(bits));
    }
    let private_path = config_dir.join(KEY_FILE);
    let public_path = config_dir.join(PUBLIC_KEY_FILE);
    let exists = |p: &Path| p.symlink_metadata().is_ok();
    if exists(&private_path) {
        return Err(PinError::KeyExists(private_path));
    }
    fsutil::ensure_private_dir(config_dir).map_err(io_err(config_dir))?;
    let key = RsaPrivate::generate(bits).map_err(PinError::Crypto)?;
    // Generation takes seconds: look again, so a second keygen run meanwhile is not
    // silently overwritten (a narrow race remains; keygen is a manual, one-off step).
    if exists(&private_path) {
        return Err(PinError::KeyExists(private_path));
    }
    crypto::write_key_pair(&key, &private_path, &public_path).map_err(|e| match e {
        KeyFileError::Io(source) => PinError::Io {
            path: private_path.clone(),
            source,
        },
        KeyFileError::Invalid => PinError::BadKeyFile(private_path.clone()),
    })?;
    Ok((key.public(), private_path))
}

/// Loads the user's private key from `config_dir`. Refuses a key file that group or
/// others may read (as ssh does), and says to run `mpchat keygen` when there is none.
pub fn load_own_key(config_dir: &Path) -> Result<RsaPrivate, PinError> {
    let path = config_dir.join(KEY_FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PinError::NoKey(path)),
        Err(source) => return Err(PinError::Io { path, source }),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PinError::KeyFileMode { path, mode });
    }
    crypto::read_private_key(&path).map_err(|e| match e {
        KeyFileError::Io(e) if e.kind() == io::ErrorKind::NotFound => PinError::NoKey(path.clone()),
        KeyFileError::Io(source) => PinError::Io {
            path: path.clone(),
            source,
        },
        KeyFileError::Invalid => PinError::BadKeyFile(path.clone()),
    })
}

/// What [`KnownKeys::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinStatus {
    /// No key was pinned for this user: this one is now pinned (and, by
    /// [`KnownKeys::check`], saved).
    New,
    /// The key is the pinned one.
    Match,
    /// The key differs from the pinned one, which stays pinned. Do not encrypt to the
    /// new key or accept its signatures until the user trusts it.
    Changed {
        /// Fingerprint of the pinned key.
        old_fingerprint: String,
        /// Fingerprint of the key now offered.
        new_fingerprint: String,
    },
}

/// The pinned keys in memory: the rules of pinning, with no file behind them.
///
/// The client's I/O-free core holds one and hands a copy to its shell to write after
/// every change ([`save_pins`]); [`KnownKeys`] wraps one with its file for callers that
/// want each change saved at once.
///
/// File form ([`PinSet::to_text`], [`PinSet::parse`]): UTF-8 text, one pin a line, each
/// line ending in `\n`: `<username> <public_key>`, where `<username>` follows the
/// account name rule and `<public_key>` is the wire form (standard padded base64 of the
/// SubjectPublicKeyInfo DER, 2048- to 4096-bit RSA, canonical encoding). A username
/// appears once; lines are written in username order. No comments or blank lines: the
/// file is rewritten whole (atomically, mode 0600) on every change. To forget a pin by
/// hand, delete its line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PinSet {
    pins: BTreeMap<String, RsaPublic>,
}

impl PinSet {
    /// No pins.
    pub fn new() -> PinSet {
        PinSet::default()
    }

    /// Parses the file form; `path` only names the file in errors. Any malformed line
    /// is an error naming the file and line.
    pub fn parse(data: &[u8], path: &Path) -> Result<PinSet, PinError> {
        let mut this = PinSet::new();
        let syntax = |line: usize, reason| PinError::KnownKeysSyntax {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let text = match std::str::from_utf8(data) {
            Ok(t) => t,
            Err(e) => {
                let line = 1 + data[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                return Err(syntax(line, "not UTF-8"));
            }
        };
        if text.is_empty() {
            return Ok(this);
        }
        let Some(body) = text.strip_suffix('\n') else {
            return Err(syntax(
                text.split('\n').count(),
                "last line does not end in a newline",
            ));
        };
        for (i, line) in body.split('\n').enumerate() {
            let n = i + 1;
            let Some((name, key)) = line.split_once(' ') else {
                return Err(syntax(n, "expected `<username> <base64 public key>`"));
            };
            if !names::valid_username(name) {
                return Err(syntax(n, "invalid username"));
            }
            let key = RsaPublic::from_base64(key)
                .map_err(|_| syntax(n, "not a base64 RSA public key of 2048 to 4096 bits"))?;
            if this.pins.insert(name.to_owned(), key).is_some() {
                return Err(syntax(n, "username pinned twice"));
            }
        }
        Ok(this)
    }

    /// The file form: every pin, in username order.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for (name, key) in &self.pins {
            text.push_str(name);
            text.push(' ');
            text.push_str(&key.to_base64());
            text.push('\n');
        }
        text
    }

    /// The key pinned for `name`, if any: the one to encrypt to and to verify with.
    pub fn get(&self, name: &str) -> Option<&RsaPublic> {
        self.pins.get(name)
    }

    /// The user a key is pinned for, if any. A key belongs to one name: a server that
    /// offers a known key under another name is relabelling someone.
    pub fn name_of(&self, key: &RsaPublic) -> Option<&str> {
        self.pins
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(n, _)| n.as_str())
    }

    /// Number of pinned users.
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    /// Whether no user is pinned.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// Compares `key` with the pin for `name`. A first key is pinned (trust on first
    /// use: [`PinStatus::New`], save the set); a different key is reported and not
    /// pinned.
    pub fn check(&mut self, name: &str, key: &RsaPublic) -> Result<PinStatus, PinError> {
        if !names::valid_username(name) {
            return Err(PinError::InvalidName);
        }
        match self.pins.get(name) {
            Some(old) if old == key => Ok(PinStatus::Match),
            Some(old) => Ok(PinStatus::Changed {
                old_fingerprint: old.fingerprint(),
                new_fingerprint: key.fingerprint(),
            }),
            None => {
                self.pins.insert(name.to_owned(), key.clone());
                Ok(PinStatus::New)
            }
        }
    }

    /// Pins `key` for `name`, replacing any earlier pin (the user's explicit `/trust`);
    /// returns the earlier pin. Save the set afterwards.
    pub fn trust(&mut self, name: &str, key: &RsaPublic) -> Result<Option<RsaPublic>, PinError> {
        if !names::valid_username(name) {
            return Err(PinError::InvalidName);
        }
        Ok(self.pins.insert(name.to_owned(), key.clone()))
    }

    /// Puts back what [`PinSet::trust`] or a [`PinStatus::New`] check replaced: `old`
    /// for `name`, or no pin at all.
    fn restore(&mut self, name: &str, old: Option<RsaPublic>) {
        match old {
            Some(old) => self.pins.insert(name.to_owned(), old),
            None => self.pins.remove(name),
        };
    }
}

/// Reads a `known_keys` file; a missing file means no pins yet (it is created on the
/// first pin). Refuses a file over [`MAX_KNOWN_KEYS_FILE_LEN`] before reading it whole.
pub fn load_pins(path: &Path) -> Result<PinSet, PinError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PinSet::new()),
        Err(source) => {
            return Err(PinError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut data = Vec::new();
    file.take(MAX_KNOWN_KEYS_FILE_LEN + 1)
        .read_to_end(&mut data)
        .map_err(io_err(path))?;
    if data.len() as u64 > MAX_KNOWN_KEYS_FILE_LEN {
        return Err(PinError::KnownKeysTooLarge(path.to_path_buf()));
    }
    PinSet::parse(&data, path)
}

/// Writes every pin to `path`, atomically, mode 0600 (it lists whom the user talks
/// to), creating the directory (mode 0700) if needed.
pub fn save_pins(path: &Path, pins: &PinSet) -> Result<(), PinError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fsutil::ensure_private_dir(dir).map_err(io_err(dir))?;
    }
    fsutil::atomic_write(path, pins.to_text().as_bytes(), 0o600).map_err(io_err(path))
}

/// The pinned keys, backed by a `known_keys` file (format: see [`PinSet`]): every
/// change is saved before it takes effect, and a change that cannot be saved is undone.
#[derive(Debug)]
pub struct KnownKeys {
    path: PathBuf,
    set: PinSet,
}

impl KnownKeys {
    /// Loads the pins from `path` ([`load_pins`]).
    pub fn load(path: &Path) -> Result<KnownKeys, PinError> {
        Ok(KnownKeys {
            path: path.to_path_buf(),
            set: load_pins(path)?,
        })
    }

    /// The file these pins are saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pins themselves.
    pub fn pins(&self) -> &PinSet {
        &self.set
    }

    /// The key pinned for `name`, if any: the one to encrypt to and to verify with.
    pub fn get(&self, name: &str) -> Option<&RsaPublic> {
        self.set.get(name)
    }

    /// The user a key is pinned for, if any ([`PinSet::name_of`]).
    pub fn name_of(&self, key: &RsaPublic) -> Option<&str> {
        self.set.name_of(key)
    }

    /// Number of pinned users.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether no user is pinned.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Compares `key` with the pin for `name`. A first key is pinned and saved at once
    /// (trust on first use); a different key is reported and not pinned.
    pub fn check(&mut self, name: &str, key: &RsaPublic) -> Result<PinStatus, PinError> {
        let status = self.set.check(name, key)?;
        if status == PinStatus::New {
            if let Err(e) = self.save() {
                // Not on disk means not pinned: a restart would pin anew.
                self.set.restore(name, None);
                return Err(e);
            }
        }
        Ok(status)
    }

    /// Pins `key` for `name`, replacing any earlier pin (the user's explicit `/trust`),
    /// and saves. On a save failure the earlier pin stays in force.
    pub fn trust(&mut self, name: &str, key: &RsaPublic) -> Result<(), PinError> {
        let old = self.set.trust(name, key)?;
        if let Err(e) = self.save() {
            self.set.restore(name, old);
            return Err(e);
        }
        Ok(())
    }

    /// Writes every pin to the file ([`save_pins`]).
    pub fn save(&self) -> Result<(), PinError> {
        save_pins(&self.path, &self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn config_dir_prefers_mpchat_then_xdg_then_home() {
        assert_eq!(
            config_dir_from(os("/m"), os("/x"), os("/h")),
            PathBuf::from("/m")
        );
        assert_eq!(
            config_dir_from(None, os("/x"), os("/h")),
            PathBuf::from("/x/mpchat")
        );
        assert_eq!(
            config_dir_from(os(""), os(""), os("/h")),
            PathBuf::from("/h/.config/mpchat")
        );
        assert_eq!(
            config_dir_from(None, os("relative"), os("/h")),
            PathBuf::from("/h/.config/mpchat"),
            "a relative XDG_CONFIG_HOME is ignored"
        );
        assert_eq!(
            config_dir_from(None, None, None),
            PathBuf::from(".config/mpchat")
        );
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mpchat-pins-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        fsutil::ensure_private_dir(&d).unwrap();
        d
    }

    #[test]
    fn known_keys_reports_the_bad_line_by_number() {
        let dir = temp_dir("syntax");
        let p = dir.join(KNOWN_KEYS_FILE);
        for (content, line, reason) in [
            ("alice\n", 1, "expected `<username> <base64 public key>`"),
            ("Alice AAAA\n", 1, "invalid username"),
            (
                "alice AAAA\n",
                1,
                "not a base64 RSA public key of 2048 to 4096 bits",
            ),
            ("\n", 1, "expected `<username> <base64 public key>`"),
            ("alice AAAA", 1, "last line does not end in a newline"),
        ] {
            std::fs::write(&p, content).unwrap();
            match KnownKeys::load(&p) {
                Err(PinError::KnownKeysSyntax {
                    line: l,
                    reason: r,
                    path,
                }) => {
                    assert_eq!((l, r), (line, reason), "{content:?}");
                    assert_eq!(path, p);
                }
                other => panic!("{content:?}: {other:?}"),
            }
        }
        std::fs::write(&p, b"\xff\n").unwrap();
        assert!(matches!(
            KnownKeys::load(&p),
            Err(PinError::KnownKeysSyntax {
                line: 1,
                reason: "not UTF-8",
                ..
            })
        ));
        std::fs::write(&p, "").unwrap();
        assert!(KnownKeys::load(&p).unwrap().is_empty());
        assert!(KnownKeys::load(&dir.join("absent")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn known_keys_refuses_an_oversized_file() {
        let dir = temp_dir("size");
        let p = dir.join(KNOWN_KEYS_FILE);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_KNOWN_KEYS_FILE_LEN + 1).unwrap();
        assert!(matches!(
            KnownKeys::load(&p),
            Err(PinError::KnownKeysTooLarge(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_own_key_says_to_run_keygen_when_missing() {
        let dir = temp_dir("nokey");
        let e = load_own_key(&dir).unwrap_err();
        assert!(matches!(e, PinError::NoKey(_)));
        assert!(e.to_string().contains("mpchat keygen"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keygen_refuses_sizes_outside_the_design_range() {
        let dir = temp_dir("bits");
        assert!(matches!(
            keygen(&dir, 1024),
            Err(PinError::BadKeyBits(1024))
        ));
        assert!(matches!(
            keygen(&dir, 8192),
            Err(PinError::BadKeyBits(8192))
        ));
        assert!(!dir.join(KEY_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
