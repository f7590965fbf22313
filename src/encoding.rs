//! Text encodings used on the wire and in files: lowercase hex for ids and randoms,
//! standard base64 (padded) for public keys, unpadded base64 for PHC strings and
//! fingerprints.
//!
//! Decoders here are strict: they reject wrong lengths, uppercase hex and anything a
//! second encoder would not produce, so one value has one spelling.

use base64ct::{Base64, Base64Unpadded, Encoding};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes exactly `2 * N` lowercase hex digits.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(out)
}

/// An id (sid or uid) as 16 lowercase hex digits.
pub fn id_hex(id: u64) -> String {
    hex(&id.to_be_bytes())
}

/// Parses an id written as exactly 16 lowercase hex digits.
pub fn parse_id(s: &str) -> Option<u64> {
    unhex::<8>(s).map(u64::from_be_bytes)
}

/// Standard base64 with padding (public keys on the wire).
pub fn b64(bytes: &[u8]) -> String {
    Base64::encode_string(bytes)
}

/// Decodes standard padded base64; rejects non-canonical input.
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    Base64::decode_vec(s).ok()
}

/// Standard base64 without padding (PHC strings, fingerprints).
pub fn b64_unpadded(bytes: &[u8]) -> String {
    Base64Unpadded::encode_string(bytes)
}

/// Decodes standard unpadded base64.
pub fn unb64_unpadded(s: &str) -> Option<Vec<u8>> {
    Base64Unpadded::decode_vec(s).ok()
}

/// Parses a decimal number with no sign, no leading `+`, no spaces and no leading zeros
/// (other than "0" itself), so each number has one spelling.
pub fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_uppercase() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex::<3>("00abff"), Some([0, 0xab, 0xff]));
        assert_eq!(unhex::<3>("00ABff"), None);
        assert_eq!(unhex::<3>("00abf"), None);
        assert_eq!(parse_id("00000000000000ff"), Some(255));
        assert_eq!(id_hex(255), "00000000000000ff");
    }

    #[test]
    fn decimal_has_one_spelling() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("42"), Some(42));
        assert_eq!(parse_decimal("042"), None);
        assert_eq!(parse_decimal("+4"), None);
        assert_eq!(parse_decimal(""), None);
        assert_eq!(parse_decimal("18446744073709551616"), None);
    }

    #[test]
    fn base64_variants() {
        assert_eq!(b64(b"ab"), "YWI=");
        assert_eq!(b64_unpadded(b"ab"), "YWI");
        assert_eq!(unb64("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(unb64("YWI"), None);
        assert_eq!(unb64_unpadded("YWI").as_deref(), Some(&b"ab"[..]));
    }
}
