//! The client's files in its config directory: read once at start-up into what the
//! core needs ([`Store::load`]), then written when the core asks ([`Store::write`]).
//!
//! | file | contents | written |
//! |---|---|---|
//! | `key.pem` | our end-to-end key ([`pins::load_own_key`]) | by `mpchat keygen` only |
//! | `known_keys` | the pins ([`crate::pins::PinSet`]) | whole, atomically |
//! | `seen` | ids of shown messages ([`crate::e2e::ReplayGuard`]) | appended, synced; compacted atomically |
//! | [`RECEIVED_FILE`] | the last message number handled per session | whole, atomically |
//! | [`NAMES_FILE`] | the names the user gave sessions ([`super::names`]) | whole, atomically |
//!
//! The formats of `known_keys` and `seen` live with their rules (src/pins.rs and
//! src/e2e.rs), of `names` with its rules in [`super::names`]; the `received` format
//! is here. Every write is durable before
//! [`Store::write`] returns: the core's order (print, persist, then acknowledge) is only
//! a crash-safety rule if "persisted" means "on disk". This module never prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::names::{self, NAMES_FILE};
use super::state::{Persist, Saved};
use super::ClientError;
use crate::crypto::RsaPrivate;
use crate::e2e::ReplayGuard;
use crate::{encoding, fsutil, pins};

/// File in the config directory holding the last message number handled per session.
///
/// Private to the client: one line per session, `<sid> <n>` (16 lowercase hex digits,
/// a space, decimal, `\n`), in sid order. A line that does not parse is ignored, and an
/// unreadable file reads as empty: the cost is that redeliveries are shown again
/// (the `seen` file still drops copies of messages it remembers).
pub const RECEIVED_FILE: &str = "received";

/// Parses the `received` file (see [`RECEIVED_FILE`]).
pub fn parse_received(text: &str) -> BTreeMap<u64, u64> {
    let mut last = BTreeMap::new();
    for line in text.lines() {
        if let Some((sid, n)) = line.split_once(' ') {
            if let (Some(sid), Some(n)) = (encoding::parse_id(sid), encoding::parse_decimal(n)) {
                last.insert(sid, n);
            }
        }
    }
    last
}

/// The `received` file's text for `last` (see [`RECEIVED_FILE`]).
pub fn received_text(last: &BTreeMap<u64, u64>) -> String {
    let mut text = String::new();
    for (sid, n) in last {
        let _ = writeln!(text, "{} {}", encoding::id_hex(*sid), n);
    }
    text
}

/// The config directory's state files.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The files in `config_dir`.
    pub fn new(config_dir: &Path) -> Store {
        Store {
            dir: config_dir.to_path_buf(),
        }
    }

    /// The config directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads our own key and every state the core persisted in an earlier run. A
    /// missing file is a first run; a damaged `known_keys` or `seen` file stops the
    /// client rather than silently dropping what it protects.
    pub fn load(&self) -> Result<(RsaPrivate, Saved), ClientError> {
        let my_key =
            pins::load_own_key(&self.dir).map_err(|e| ClientError::Config(e.to_string()))?;
        let pins = pins::load_pins(&self.dir.join(pins::KNOWN_KEYS_FILE))
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let seen = ReplayGuard::load(&self.dir.join(pins::SEEN_FILE)).map_err(|e| {
            ClientError::Config(format!(
                "cannot read the seen-message file: {e}; move it away to start afresh (copies of older messages then go undetected)"
            ))
        })?;
        let received = std::fs::read_to_string(self.dir.join(RECEIVED_FILE))
            .map(|text| parse_received(&text))
            .unwrap_or_default();
        let names = std::fs::read_to_string(self.dir.join(NAMES_FILE))
            .map(|text| names::parse_names(&text))
            .unwrap_or_default();
        Ok((
            my_key,
            Saved {
                pins,
                seen,
                received,
                names,
            },
        ))
    }

    /// Writes what the core asked for, durably; `Err` is the reason, for the core's
    /// error line ([`super::state::Input::PersistFailed`]).
    pub fn write(&self, what: &Persist) -> Result<(), String> {
        match what {
            Persist::Received(last) => {
                let path = self.dir.join(RECEIVED_FILE);
                fsutil::atomic_write(&path, received_text(last).as_bytes(), 0o600)
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
            Persist::Seen(write) => write
                .write_to(&self.dir.join(pins::SEEN_FILE))
                .map_err(|e| e.to_string()),
            Persist::Pins(set) => pins::save_pins(&self.dir.join(pins::KNOWN_KEYS_FILE), set)
                .map_err(|e| e.to_string()),
            Persist::Names(set) => {
                let path = self.dir.join(NAMES_FILE);
                fsutil::atomic_write(&path, names::names_text(set).as_bytes(), 0o600)
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_text_round_trips_and_skips_lines_that_do_not_parse() {
        let mut last = BTreeMap::new();
        last.insert(0x0a, 7);
        last.insert(0x0102_0304_0506_0708, 65_536);
        let text = received_text(&last);
        assert_eq!(text, "000000000000000a 7\n0102030405060708 65536\n");
        assert_eq!(parse_received(&text), last);
        let damaged = format!("{text}junk\n00000000000000zz 3\n000000000000000b x\n");
        assert_eq!(parse_received(&damaged), last);
    }
}
