//! One bounds-checked reader, and the writer helpers, for every binary format in the
//! crate: the MTP header, the relayed `n` prefix of a delivery, the end-to-end
//! envelope, the journal and snapshot entries and the seen-message file.
//!
//! Modelled on rustls' `Reader` and `Codec`: a [`Reader`] walks a borrowed slice and
//! every read is checked against what remains, so a length field a peer (or a damaged
//! file) controls can never index past the input. Each format keeps its own rules
//! (bounds, field meanings, error messages) and maps [`CodecError`] to its own error.
//!
//! This module must never panic on any input, never allocate (a reader hands out
//! sub-slices of its input, so nothing it returns is larger than the input), and
//! never know what the bytes mean.

use std::fmt;

/// Why a read failed. Carries no input bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    /// The input ended before the field: cut short, or a length field larger than
    /// what follows it. Whoever produced the bytes is at fault.
    Truncated,
    /// Bytes remain after the last field ([`Reader::expect_empty`]). Whoever produced
    /// the bytes is at fault (or speaks a later format).
    TrailingBytes,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodecError::Truncated => "input cut short",
            CodecError::TrailingBytes => "trailing bytes after the last field",
        })
    }
}

impl std::error::Error for CodecError {}

/// A cursor over untrusted bytes. Every read either returns exactly what was asked
/// for and moves past it, or fails and leaves the reader where it was.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// The whole input.
    input: &'a [u8],
    /// What is still to be read (a suffix of `input`).
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Reader { input, rest: input }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.rest.len() {
            return Err(CodecError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Everything not read yet; the reader is then empty.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// How many bytes are left to read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// How many bytes have been read.
    pub fn used(&self) -> usize {
        self.input.len() - self.rest.len()
    }

    /// The bytes read so far (what a signature over "everything before this field"
    /// covers).
    pub fn consumed(&self) -> &'a [u8] {
        self.input.split_at(self.used()).0
    }

    /// Succeeds only if every byte has been read: decoders are strict, so a trailing
    /// byte is an error rather than something silently ignored.
    pub fn expect_empty(&self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CodecError::TrailingBytes)
        }
    }
}

/// Appends one byte.
pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

/// Appends a big-endian `u16`.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian `u64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_integers_in_order() {
        let bytes = [1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 9];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(2));
        assert_eq!(r.u32(), Ok(3));
        assert_eq!(r.u64(), Ok(4));
        assert_eq!(r.used(), 15);
        assert_eq!(r.consumed(), &bytes[..15]);
        assert_eq!(r.expect_empty(), Err(CodecError::TrailingBytes));
        assert_eq!(r.rest(), &[9]);
        assert_eq!(r.expect_empty(), Ok(()));
        assert_eq!(r.rest(), &[] as &[u8]);
    }

    #[test]
    fn a_short_read_fails_and_moves_nothing() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), Err(CodecError::Truncated));
        assert_eq!(r.take(4), Err(CodecError::Truncated));
        assert_eq!(r.take(usize::MAX), Err(CodecError::Truncated));
        assert_eq!(r.remaining(), 3);
        assert_eq!(r.take(3), Ok(&[1u8, 2, 3][..]));
        assert_eq!(r.u8(), Err(CodecError::Truncated));
        assert_eq!(r.take(0), Ok(&[][..]));
    }

    #[test]
    fn every_prefix_of_an_input_reads_without_panicking() {
        let bytes: Vec<u8> = (0..40).collect();
        for len in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..len]);
            while r.u64().is_ok() {}
            while r.u16().is_ok() {}
            while r.u8().is_ok() {}
            assert_eq!(r.expect_empty(), Ok(()));
            assert_eq!(r.consumed(), &bytes[..len]);
        }
    }

    #[test]
    fn writers_append_big_endian() {
        let mut out = Vec::new();
        put_u8(&mut out, 1);
        put_u16(&mut out, 0x0203);
        put_u32(&mut out, 0x0405_0607);
        put_u64(&mut out, 0x0809_0a0b_0c0d_0e0f);
        assert_eq!(out, (1..=15).collect::<Vec<u8>>());
    }
}
