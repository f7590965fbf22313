//! Usernames: the rule every name in the protocol follows, and its length bound.
//!
//! A username is the "public ID" a user logs in with and others invite by. The login,
//! the client, the pin store, the session records and the accounts all apply the same
//! rule, so it lives here, below all of them, rather than in the server's users-file
//! module.
//!
//! This module must never depend on anything but `core` and `std`: the protocol and
//! the client use it without pulling in the server.

use std::fmt;

/// Longest username, in bytes (every character is ASCII, so also in characters).
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

/// A name someone claimed, fit for a log line: a valid username as it is, anything
/// else quoted with its control characters and non-ASCII escaped, so a hostile peer
/// cannot forge or garble log lines through the name it sends.
pub fn shown(name: &str) -> Shown<'_> {
    Shown(name)
}

/// The [`fmt::Display`] of [`shown`].
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if valid_username(self.0) {
            f.write_str(self.0)
        } else {
            write!(f, "\"{}\" (not a valid user name)", self.0.escape_default())
        }
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
    fn a_valid_name_is_shown_as_it_is_and_any_other_escaped() {
        assert_eq!(shown("alice").to_string(), "alice");
        assert_eq!(
            shown("a\u{1b}[2Jb\r\u{e9}").to_string(),
            "\"a\\u{1b}[2Jb\\r\\u{e9}\" (not a valid user name)"
        );
        assert_eq!(shown("").to_string(), "\"\" (not a valid user name)");
    }
}
