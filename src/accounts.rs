//! Accounts: the `users` file and password checks (in progress).

/// Longest username.
pub const MAX_USERNAME_LEN: usize = 32;

/// A username is 1-32 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn valid_username(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_USERNAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|&c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        && !b[0].is_ascii_uppercase()
}
