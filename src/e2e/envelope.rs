//! The byte layouts of the three v2 envelopes, `MPS2` (membership statement), `MPK2`
//! (sender-key distribution) and `MPM2` (message): strict parsing into borrowed views
//! and building from fields. All integers big-endian.
//!
//! ```text
//! MPS2  0 "MPS2" | 4 creator uid (8) | 12 created_ms (8) | 20 c (1) | creator name (c)
//!       | k (1) | k x { len (1), name } ascending, unique, not the creator
//!       | s (2) | RSA-PSS signature (s)
//! MPK2  0 "MPK2" | 4 key id (4) | 8 iteration (4) | 12 Ed25519 public key (32)
//!       | 44 commitment (32) | 76 r (2) | r x { uid (8), w (2), RSA-OAEP (w) } uid ascending
//!       | s (2) | RSA-PSS signature (s)
//! MPM2  0 "MPM2" | 4 key id (4) | 8 iteration (4) | 12 sent_ms (8, signed)
//!       | 20 AES-256-GCM ciphertext with its 16-byte tag (c >= 17) | Ed25519 signature (64)
//! ```
//!
//! This module checks layout only, never a signature, key or tag: that is
//! [`super::members`] and [`super::sender_key`]. Every size a peer controls is a named
//! constant checked before anything is allocated, trailing bytes are refused, and the
//! builders refuse exactly what the parsers refuse, so nothing built here fails to
//! parse. It never panics on any input.

use std::fmt;

use crate::codec::{CodecError, Reader};
use crate::{crypto, names};

/// Magic of a membership statement.
pub const STATEMENT_MAGIC: [u8; 4] = *b"MPS2";
/// Magic of a sender-key distribution.
pub const SENDER_KEY_MAGIC: [u8; 4] = *b"MPK2";
/// Magic of a message.
pub const MESSAGE_MAGIC: [u8; 4] = *b"MPM2";
/// Length of every magic.
pub const MAGIC_LEN: usize = 4;

/// The largest envelope the server relays: 65,535 (largest frame) - 24 (header) - 12
/// (mac) - 8 (the `n` prefix on delivery). Checked before anything else.
pub const MAX_ENVELOPE_LEN: usize = crate::proto::MAX_ENVELOPE_LEN;
/// Most invitees in a statement and most recipients in a distribution: a session has
/// at most 100 participants, so at most 99 besides the creator or the author. The e2e
/// layer does not support larger sessions, whatever the server allows.
pub const MAX_RECIPIENTS: usize = 99;
/// Longest name (a username).
pub const MAX_NAME_LEN: usize = names::MAX_USERNAME_LEN;
/// Smallest RSA modulus in bytes (2048-bit identity keys): the least length of a
/// wrapped key and of an RSA signature.
pub const MIN_RSA_LEN: usize = crypto::MIN_USER_KEY_BITS / 8;
/// Largest RSA modulus in bytes (4096-bit identity keys).
pub const MAX_RSA_LEN: usize = crypto::MAX_USER_KEY_BITS / 8;
/// Ed25519 public key length.
pub const SIGNING_KEY_LEN: usize = crypto::ED25519_PUBLIC_LEN;
/// Length of the `MPK2` commitment (SHA-256).
pub const COMMITMENT_LEN: usize = crypto::HASH_LEN;
/// `MPK2` bytes before the entries: magic, key id, iteration, signing key,
/// commitment, `r`.
pub const SENDER_KEY_HEAD_LEN: usize = MAGIC_LEN + 4 + 4 + SIGNING_KEY_LEN + COMMITMENT_LEN + 2;
/// An `MPK2` entry's bytes besides the wrapped key: uid and `w`.
pub const ENTRY_HEAD_LEN: usize = 8 + 2;
/// `MPM2` bytes before the ciphertext: magic, key id, iteration, sent_ms.
pub const MESSAGE_HEADER_LEN: usize = MAGIC_LEN + 4 + 4 + 8;
/// `MPM2` signature length (Ed25519).
pub const MESSAGE_SIGNATURE_LEN: usize = crypto::ED25519_SIGNATURE_LEN;
/// Shortest `MPM2` ciphertext: one byte of text (empty text is never sent) and the tag.
pub const MIN_SEALED_LEN: usize = 1 + crypto::TAG_LEN;
/// What an `MPM2` adds to its text, whatever the number of participants: 100 bytes.
pub const MESSAGE_OVERHEAD: usize = MESSAGE_HEADER_LEN + crypto::TAG_LEN + MESSAGE_SIGNATURE_LEN;
/// Longest text an `MPM2` can carry (UTF-8 bytes).
pub const MAX_TEXT_LEN: usize = MAX_ENVELOPE_LEN - MESSAGE_OVERHEAD;
/// Longest possible `MPS2`: every field at its bound (3,835 bytes).
pub const MAX_STATEMENT_LEN: usize = MAGIC_LEN
    + 8
    + 8
    + 1
    + MAX_NAME_LEN
    + 1
    + MAX_RECIPIENTS * (1 + MAX_NAME_LEN)
    + 2
    + MAX_RSA_LEN;
/// Longest possible `MPK2` (52,270 bytes: always relayable).
pub const MAX_SENDER_KEY_LEN: usize =
    SENDER_KEY_HEAD_LEN + MAX_RECIPIENTS * (ENTRY_HEAD_LEN + MAX_RSA_LEN) + 2 + MAX_RSA_LEN;

const _: () = assert!(MESSAGE_OVERHEAD == 100);
const _: () = assert!(MAX_STATEMENT_LEN <= MAX_ENVELOPE_LEN);
const _: () = assert!(MAX_SENDER_KEY_LEN <= MAX_ENVELOPE_LEN);

/// Why bytes are not a well-formed v2 envelope. Either the server altered them or the
/// author's client is broken; nothing in them was looked at beyond the broken rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Longer than [`MAX_ENVELOPE_LEN`]: no server relays it.
    TooLarge,
    /// The first four bytes name no v2 envelope (the old `MPE1` included).
    UnknownKind,
    /// The bytes end inside the named field.
    Truncated(&'static str),
    /// Bytes follow the signature.
    TrailingBytes,
    /// A uid of 0 (no user has it): the creator or a recipient.
    ZeroUid,
    /// A key id of 0 (key ids are random and non-zero).
    ZeroKeyId,
    /// A name length outside 1..=32.
    NameLength,
    /// A name that is not a valid username.
    InvalidName,
    /// Invitee names not in strictly ascending byte order (a duplicate included).
    NamesNotAscending,
    /// The creator's own name among the invitees.
    CreatorInvited,
    /// An invitee count outside 1..=99.
    InviteeCount,
    /// A recipient entry count outside 1..=99.
    EntryCount,
    /// Recipient uids not strictly increasing (a duplicate included).
    EntriesNotIncreasing,
    /// A wrapped key length outside 256..=512 bytes.
    WrappedKeyLength,
    /// An RSA signature length outside 256..=512 bytes.
    SignatureLength,
    /// An `MPM2` ciphertext shorter than [`MIN_SEALED_LEN`] (no text).
    CiphertextTooShort,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::TooLarge => f.write_str("envelope too large"),
            EnvelopeError::UnknownKind => f.write_str("not a v2 envelope"),
            EnvelopeError::Truncated(what) => write!(f, "truncated {what}"),
            EnvelopeError::TrailingBytes => f.write_str("trailing bytes"),
            EnvelopeError::ZeroUid => f.write_str("uid 0"),
            EnvelopeError::ZeroKeyId => f.write_str("key id 0"),
            EnvelopeError::NameLength => f.write_str("bad name length"),
            EnvelopeError::InvalidName => f.write_str("invalid name"),
            EnvelopeError::NamesNotAscending => f.write_str("names not in ascending order"),
            EnvelopeError::CreatorInvited => f.write_str("creator among the invitees"),
            EnvelopeError::InviteeCount => f.write_str("bad invitee count"),
            EnvelopeError::EntryCount => f.write_str("bad recipient count"),
            EnvelopeError::EntriesNotIncreasing => {
                f.write_str("recipients not in increasing uid order")
            }
            EnvelopeError::WrappedKeyLength => f.write_str("bad wrapped key length"),
            EnvelopeError::SignatureLength => f.write_str("bad signature length"),
            EnvelopeError::CiphertextTooShort => f.write_str("ciphertext too short"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// The error for a field the input is too short to hold.
fn short(what: &'static str) -> impl Fn(CodecError) -> EnvelopeError {
    move |_| EnvelopeError::Truncated(what)
}

/// The kind of a v2 envelope, from its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `MPS2`, a membership statement.
    Statement,
    /// `MPK2`, a sender-key distribution.
    SenderKey,
    /// `MPM2`, a message.
    Message,
}

/// The kind of `envelope`, after the length bound. Anything else, the old `MPE1`
/// included, is [`EnvelopeError::UnknownKind`].
pub fn kind(envelope: &[u8]) -> Result<Kind, EnvelopeError> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::TooLarge);
    }
    match envelope.get(..MAGIC_LEN) {
        Some(m) if m == STATEMENT_MAGIC => Ok(Kind::Statement),
        Some(m) if m == SENDER_KEY_MAGIC => Ok(Kind::SenderKey),
        Some(m) if m == MESSAGE_MAGIC => Ok(Kind::Message),
        _ => Err(EnvelopeError::UnknownKind),
    }
}

fn expect_magic(r: &mut Reader<'_>, magic: [u8; 4]) -> Result<(), EnvelopeError> {
    if r.array::<MAGIC_LEN>()
        .map_err(short("magic"))
        .map_err(|_| EnvelopeError::UnknownKind)?
        != magic
    {
        return Err(EnvelopeError::UnknownKind);
    }
    Ok(())
}

fn check_rsa_len(len: usize, err: EnvelopeError) -> Result<(), EnvelopeError> {
    if (MIN_RSA_LEN..=MAX_RSA_LEN).contains(&len) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Reads `s` and the RSA signature, then requires the end of the input.
fn rsa_signature<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], EnvelopeError> {
    let s = usize::from(r.u16().map_err(short("signature length"))?);
    check_rsa_len(s, EnvelopeError::SignatureLength)?;
    let sig = r.take(s).map_err(short("signature"))?;
    r.expect_empty().map_err(|_| EnvelopeError::TrailingBytes)?;
    Ok(sig)
}

/// Appends `s` and an RSA signature to the signed part of an `MPS2` or `MPK2`.
pub fn append_rsa_signature(
    mut signed: Vec<u8>,
    signature: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    check_rsa_len(signature.len(), EnvelopeError::SignatureLength)?;
    if signed.len() + 2 + signature.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::TooLarge);
    }
    signed.extend_from_slice(&(signature.len() as u16).to_be_bytes());
    signed.extend_from_slice(signature);
    Ok(signed)
}

// ---------------------------------------------------------------------------------
// MPS2

/// The fields of a membership statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFields<'a> {
    /// The creator's uid (non-zero).
    pub creator_uid: u64,
    /// The creator's clock when it signed, Unix milliseconds.
    pub created_ms: u64,
    /// The creator's name.
    pub creator_name: &'a str,
    /// The invitees' names, strictly ascending bytewise.
    pub invitees: Vec<&'a str>,
}

/// A parsed `MPS2`; its signature is not verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementView<'a> {
    /// The fields.
    pub fields: StatementFields<'a>,
    /// Every byte before the signature length: what the signature covers after
    /// `"mpchat v2 members" || sid`.
    pub signed: &'a [u8],
    /// The creator's RSA-PSS signature.
    pub signature: &'a [u8],
}

fn check_name(name: &str) -> Result<(), EnvelopeError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(EnvelopeError::NameLength);
    }
    if !names::valid_username(name) {
        return Err(EnvelopeError::InvalidName);
    }
    Ok(())
}

fn read_name<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<&'a str, EnvelopeError> {
    let len = usize::from(r.u8().map_err(short(what))?);
    if len == 0 || len > MAX_NAME_LEN {
        return Err(EnvelopeError::NameLength);
    }
    let bytes = r.take(len).map_err(short(what))?;
    let name = std::str::from_utf8(bytes).map_err(|_| EnvelopeError::InvalidName)?;
    check_name(name)?;
    Ok(name)
}

/// The rules on the invitee list beyond each name: count, order, not the creator.
fn check_invitees(creator: &str, invitees: &[&str]) -> Result<(), EnvelopeError> {
    if invitees.is_empty() || invitees.len() > MAX_RECIPIENTS {
        return Err(EnvelopeError::InviteeCount);
    }
    for (i, name) in invitees.iter().enumerate() {
        check_name(name)?;
        // Strictly ascending also rules out duplicates.
        if i > 0 && invitees[i - 1].as_bytes() >= name.as_bytes() {
            return Err(EnvelopeError::NamesNotAscending);
        }
        if *name == creator {
            return Err(EnvelopeError::CreatorInvited);
        }
    }
    Ok(())
}

/// Parses an `MPS2` strictly.
pub fn parse_statement(envelope: &[u8]) -> Result<StatementView<'_>, EnvelopeError> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::TooLarge);
    }
    let mut r = Reader::new(envelope);
    expect_magic(&mut r, STATEMENT_MAGIC)?;
    let creator_uid = r.u64().map_err(short("creator uid"))?;
    if creator_uid == 0 {
        return Err(EnvelopeError::ZeroUid);
    }
    let created_ms = r.u64().map_err(short("created_ms"))?;
    let creator_name = read_name(&mut r, "creator name")?;
    let k = usize::from(r.u8().map_err(short("invitee count"))?);
    if k == 0 || k > MAX_RECIPIENTS {
        return Err(EnvelopeError::InviteeCount);
    }
    // Each invitee takes at least two bytes: bound the list before allocating it.
    if k * 2 > r.remaining() {
        return Err(EnvelopeError::Truncated("invitees"));
    }
    let mut invitees: Vec<&str> = Vec::with_capacity(k);
    for _ in 0..k {
        let name = read_name(&mut r, "invitee name")?;
        if let Some(last) = invitees.last() {
            if last.as_bytes() >= name.as_bytes() {
                return Err(EnvelopeError::NamesNotAscending);
            }
        }
        if name == creator_name {
            return Err(EnvelopeError::CreatorInvited);
        }
        invitees.push(name);
    }
    let signed = r.consumed();
    let signature = rsa_signature(&mut r)?;
    Ok(StatementView {
        fields: StatementFields {
            creator_uid,
            created_ms,
            creator_name,
            invitees,
        },
        signed,
        signature,
    })
}

/// The signed part of an `MPS2` (every byte before the signature length). Refuses
/// what [`parse_statement`] refuses: the invitees must already be sorted.
pub fn statement_signed_part(fields: &StatementFields<'_>) -> Result<Vec<u8>, EnvelopeError> {
    if fields.creator_uid == 0 {
        return Err(EnvelopeError::ZeroUid);
    }
    check_name(fields.creator_name)?;
    check_invitees(fields.creator_name, &fields.invitees)?;
    let len = MAGIC_LEN
        + 8
        + 8
        + 1
        + fields.creator_name.len()
        + 1
        + fields.invitees.iter().map(|n| 1 + n.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len + 2 + MAX_RSA_LEN);
    out.extend_from_slice(&STATEMENT_MAGIC);
    out.extend_from_slice(&fields.creator_uid.to_be_bytes());
    out.extend_from_slice(&fields.created_ms.to_be_bytes());
    out.push(fields.creator_name.len() as u8);
    out.extend_from_slice(fields.creator_name.as_bytes());
    out.push(fields.invitees.len() as u8);
    for name in &fields.invitees {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// MPK2

/// One recipient entry of an `MPK2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The recipient's uid.
    pub uid: u64,
    /// The chain key under the recipient's identity key (RSA-OAEP).
    pub wrapped: &'a [u8],
}

/// The fields of a sender-key distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderKeyFields<'a> {
    /// The key id (non-zero).
    pub key_id: u32,
    /// The iteration of the chain key carried.
    pub iteration: u32,
    /// The Ed25519 public key that signs this key id's messages.
    pub signing_public: [u8; SIGNING_KEY_LEN],
    /// `H("mpchat v2 sender key" || sid || author uid || key id || i || CK_i || signing
    /// public key)`.
    pub commitment: [u8; COMMITMENT_LEN],
    /// Recipient entries, uids strictly increasing.
    pub entries: Vec<Entry<'a>>,
}

/// A parsed `MPK2`; nothing in it is verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderKeyView<'a> {
    /// The fields.
    pub fields: SenderKeyFields<'a>,
    /// Every byte before the signature length: what the signature covers after
    /// `"mpchat v2 sender key" || sid || author uid`.
    pub signed: &'a [u8],
    /// The author's RSA-PSS signature.
    pub signature: &'a [u8],
}

fn check_entries(entries: &[Entry<'_>]) -> Result<(), EnvelopeError> {
    if entries.is_empty() || entries.len() > MAX_RECIPIENTS {
        return Err(EnvelopeError::EntryCount);
    }
    let mut last = 0u64;
    for e in entries {
        if e.uid == 0 {
            return Err(EnvelopeError::ZeroUid);
        }
        // last starts at 0, never a uid, so this also rejects duplicates.
        if e.uid <= last {
            return Err(EnvelopeError::EntriesNotIncreasing);
        }
        last = e.uid;
        check_rsa_len(e.wrapped.len(), EnvelopeError::WrappedKeyLength)?;
    }
    Ok(())
}

/// Parses an `MPK2` strictly.
pub fn parse_sender_key(envelope: &[u8]) -> Result<SenderKeyView<'_>, EnvelopeError> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::TooLarge);
    }
    let mut r = Reader::new(envelope);
    expect_magic(&mut r, SENDER_KEY_MAGIC)?;
    let key_id = r.u32().map_err(short("key id"))?;
    if key_id == 0 {
        return Err(EnvelopeError::ZeroKeyId);
    }
    let iteration = r.u32().map_err(short("iteration"))?;
    let signing_public = r.array().map_err(short("signing key"))?;
    let commitment = r.array().map_err(short("commitment"))?;
    let count = usize::from(r.u16().map_err(short("recipient count"))?);
    if count == 0 || count > MAX_RECIPIENTS {
        return Err(EnvelopeError::EntryCount);
    }
    if count * (ENTRY_HEAD_LEN + MIN_RSA_LEN) > r.remaining() {
        return Err(EnvelopeError::Truncated("recipient entries"));
    }
    let mut entries = Vec::with_capacity(count);
    let mut last = 0u64;
    for _ in 0..count {
        let uid = r.u64().map_err(short("recipient uid"))?;
        if uid == 0 {
            return Err(EnvelopeError::ZeroUid);
        }
        if uid <= last {
            return Err(EnvelopeError::EntriesNotIncreasing);
        }
        last = uid;
        let w = usize::from(r.u16().map_err(short("wrapped key length"))?);
        check_rsa_len(w, EnvelopeError::WrappedKeyLength)?;
        let wrapped = r.take(w).map_err(short("wrapped key"))?;
        entries.push(Entry { uid, wrapped });
    }
    let signed = r.consumed();
    let signature = rsa_signature(&mut r)?;
    Ok(SenderKeyView {
        fields: SenderKeyFields {
            key_id,
            iteration,
            signing_public,
            commitment,
            entries,
        },
        signed,
        signature,
    })
}

/// The signed part of an `MPK2` (every byte before the signature length). Refuses
/// what [`parse_sender_key`] refuses: entries must already be in uid order.
pub fn sender_key_signed_part(fields: &SenderKeyFields<'_>) -> Result<Vec<u8>, EnvelopeError> {
    if fields.key_id == 0 {
        return Err(EnvelopeError::ZeroKeyId);
    }
    check_entries(&fields.entries)?;
    let len = SENDER_KEY_HEAD_LEN
        + fields
            .entries
            .iter()
            .map(|e| ENTRY_HEAD_LEN + e.wrapped.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(len + 2 + MAX_RSA_LEN);
    out.extend_from_slice(&SENDER_KEY_MAGIC);
    out.extend_from_slice(&fields.key_id.to_be_bytes());
    out.extend_from_slice(&fields.iteration.to_be_bytes());
    out.extend_from_slice(&fields.signing_public);
    out.extend_from_slice(&fields.commitment);
    out.extend_from_slice(&(fields.entries.len() as u16).to_be_bytes());
    for e in &fields.entries {
        out.extend_from_slice(&e.uid.to_be_bytes());
        out.extend_from_slice(&(e.wrapped.len() as u16).to_be_bytes());
        out.extend_from_slice(e.wrapped);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// MPM2

/// The clear fields of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageFields {
    /// The sender key's id (non-zero).
    pub key_id: u32,
    /// The chain iteration whose message key sealed the text.
    pub iteration: u32,
    /// The author's clock when it sent, Unix milliseconds (signed).
    pub sent_ms: i64,
}

/// A parsed `MPM2`; nothing in it is verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView<'a> {
    /// The clear fields.
    pub fields: MessageFields,
    /// Bytes 0..20: what the AEAD binds after `"mpchat v2 message" || sid || author uid`.
    pub header: &'a [u8],
    /// The AES-256-GCM ciphertext and its 16-byte tag.
    pub sealed: &'a [u8],
    /// Bytes 0..20+c: what the signature covers after
    /// `"mpchat v2 message sig" || sid || author uid`.
    pub signed: &'a [u8],
    /// The Ed25519 signature.
    pub signature: &'a [u8; MESSAGE_SIGNATURE_LEN],
}

/// The 20 header bytes of an `MPM2`.
pub fn message_header(fields: &MessageFields) -> Result<[u8; MESSAGE_HEADER_LEN], EnvelopeError> {
    if fields.key_id == 0 {
        return Err(EnvelopeError::ZeroKeyId);
    }
    let mut h = [0u8; MESSAGE_HEADER_LEN];
    h[..4].copy_from_slice(&MESSAGE_MAGIC);
    h[4..8].copy_from_slice(&fields.key_id.to_be_bytes());
    h[8..12].copy_from_slice(&fields.iteration.to_be_bytes());
    h[12..20].copy_from_slice(&fields.sent_ms.to_be_bytes());
    Ok(h)
}

/// Parses an `MPM2` strictly: the ciphertext is everything between the header and the
/// last 64 bytes.
pub fn parse_message(envelope: &[u8]) -> Result<MessageView<'_>, EnvelopeError> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::TooLarge);
    }
    let mut r = Reader::new(envelope);
    expect_magic(&mut r, MESSAGE_MAGIC)?;
    let key_id = r.u32().map_err(short("key id"))?;
    if key_id == 0 {
        return Err(EnvelopeError::ZeroKeyId);
    }
    let iteration = r.u32().map_err(short("iteration"))?;
    let sent_ms = r
        .array::<8>()
        .map(i64::from_be_bytes)
        .map_err(short("sent_ms"))?;
    let c = r
        .remaining()
        .checked_sub(MESSAGE_SIGNATURE_LEN)
        .ok_or(EnvelopeError::Truncated("signature"))?;
    if c < MIN_SEALED_LEN {
        return Err(EnvelopeError::CiphertextTooShort);
    }
    let header = r.consumed();
    let sealed = r.take(c).map_err(short("ciphertext"))?;
    let signed = r.consumed();
    let signature: &[u8; MESSAGE_SIGNATURE_LEN] = r
        .take(MESSAGE_SIGNATURE_LEN)
        .map_err(short("signature"))?
        .try_into()
        .map_err(|_| EnvelopeError::Truncated("signature"))?;
    Ok(MessageView {
        fields: MessageFields {
            key_id,
            iteration,
            sent_ms,
        },
        header,
        sealed,
        signed,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(invitees: &[&str], s: usize) -> Vec<u8> {
        let f = StatementFields {
            creator_uid: 7,
            created_ms: 1_700_000_000_000,
            creator_name: "alice",
            invitees: invitees.to_vec(),
        };
        append_rsa_signature(statement_signed_part(&f).unwrap(), &vec![0xcc; s]).unwrap()
    }

    fn sender_key(uids: &[u64], w: usize) -> Vec<u8> {
        let wrapped = vec![0xaa; w];
        let f = SenderKeyFields {
            key_id: 9,
            iteration: 3,
            signing_public: [1; 32],
            commitment: [2; 32],
            entries: uids
                .iter()
                .map(|&uid| Entry {
                    uid,
                    wrapped: &wrapped,
                })
                .collect(),
        };
        append_rsa_signature(sender_key_signed_part(&f).unwrap(), &[0xcc; 256]).unwrap()
    }

    #[test]
    fn sizes_match_the_design() {
        assert_eq!(MAX_ENVELOPE_LEN, 65_491);
        assert_eq!(MESSAGE_OVERHEAD, 100);
        assert_eq!(MAX_STATEMENT_LEN, 3_835);
        assert_eq!(MAX_SENDER_KEY_LEN, 52_270);
        assert_eq!(SENDER_KEY_HEAD_LEN, 78);
    }

    #[test]
    fn a_built_statement_parses_back_to_its_fields() {
        let env = statement(&["bob", "carol"], 384);
        let v = parse_statement(&env).unwrap();
        assert_eq!(v.fields.creator_uid, 7);
        assert_eq!(v.fields.creator_name, "alice");
        assert_eq!(v.fields.invitees, ["bob", "carol"]);
        assert_eq!(v.signature.len(), 384);
        assert_eq!(v.signed.len(), env.len() - 2 - 384);
        assert_eq!(kind(&env), Ok(Kind::Statement));
    }

    #[test]
    fn statement_rules_are_refused_by_builder_and_parser_alike() {
        for (names, err) in [
            (&["carol", "bob"][..], EnvelopeError::NamesNotAscending),
            (&["bob", "bob"][..], EnvelopeError::NamesNotAscending),
            (&["alice", "bob"][..], EnvelopeError::CreatorInvited),
            (&["Bob"][..], EnvelopeError::InvalidName),
            (&[""][..], EnvelopeError::NameLength),
            (&[][..], EnvelopeError::InviteeCount),
        ] {
            let f = StatementFields {
                creator_uid: 7,
                created_ms: 0,
                creator_name: "alice",
                invitees: names.to_vec(),
            };
            assert_eq!(statement_signed_part(&f), Err(err), "{names:?}");
        }
        // The parser, on hand-made bytes: "carol" then "bob".
        let mut env = statement(&["bob", "carol"], 256);
        let at = 4 + 8 + 8 + 1 + 5 + 1;
        let swapped: Vec<u8> = [&[5u8][..], b"carol", &[3], b"bob"].concat();
        env[at..at + 10].copy_from_slice(&swapped);
        assert_eq!(parse_statement(&env), Err(EnvelopeError::NamesNotAscending));
        let mut trailing = statement(&["bob"], 256);
        trailing.push(0);
        assert_eq!(
            parse_statement(&trailing),
            Err(EnvelopeError::TrailingBytes)
        );
        let short_sig = statement(&["bob"], 256);
        let mut bad = short_sig[..short_sig.len() - 256 - 2].to_vec();
        bad.extend_from_slice(&255u16.to_be_bytes());
        bad.extend_from_slice(&[0; 255]);
        assert_eq!(parse_statement(&bad), Err(EnvelopeError::SignatureLength));
        let names: Vec<String> = (0..100).map(|i| format!("u{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let f = StatementFields {
            creator_uid: 7,
            created_ms: 0,
            creator_name: "alice",
            invitees: refs,
        };
        assert_eq!(statement_signed_part(&f), Err(EnvelopeError::InviteeCount));
    }

    #[test]
    fn every_truncation_of_each_kind_is_refused_without_panicking() {
        let st = statement(&["bob", "carol"], 256);
        let sk = sender_key(&[1, 2], 256);
        let mut msg = message_header(&MessageFields {
            key_id: 1,
            iteration: 0,
            sent_ms: -5,
        })
        .unwrap()
        .to_vec();
        msg.extend_from_slice(&[0; 17 + 64]);
        assert!(parse_message(&msg).is_ok());
        for len in 0..st.len() {
            assert!(parse_statement(&st[..len]).is_err(), "{len}");
        }
        for len in 0..sk.len() {
            assert!(parse_sender_key(&sk[..len]).is_err(), "{len}");
        }
        for len in 0..msg.len() {
            assert!(parse_message(&msg[..len]).is_err(), "{len}");
        }
    }

    #[test]
    fn sender_key_entries_must_be_increasing_bounded_and_sized() {
        let env = sender_key(&[3, 9], 384);
        let v = parse_sender_key(&env).unwrap();
        assert_eq!(v.fields.entries.len(), 2);
        assert_eq!(v.fields.entries[1].uid, 9);
        assert_eq!(v.fields.key_id, 9);
        assert_eq!(v.fields.iteration, 3);
        // Build refuses what parse refuses.
        let w = [0u8; 256];
        for (uids, err) in [
            (&[9u64, 3][..], EnvelopeError::EntriesNotIncreasing),
            (&[3, 3][..], EnvelopeError::EntriesNotIncreasing),
            (&[0][..], EnvelopeError::ZeroUid),
            (&[][..], EnvelopeError::EntryCount),
        ] {
            let f = SenderKeyFields {
                key_id: 1,
                iteration: 0,
                signing_public: [0; 32],
                commitment: [0; 32],
                entries: uids.iter().map(|&uid| Entry { uid, wrapped: &w }).collect(),
            };
            assert_eq!(sender_key_signed_part(&f), Err(err), "{uids:?}");
        }
        // Hand-edited bytes: uid order, count, wrapped length.
        let mut e = env.clone();
        e[78..86].copy_from_slice(&10u64.to_be_bytes());
        assert_eq!(
            parse_sender_key(&e),
            Err(EnvelopeError::EntriesNotIncreasing)
        );
        let mut e = env.clone();
        e[76..78].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(parse_sender_key(&e), Err(EnvelopeError::EntryCount));
        let mut e = env.clone();
        e[86..88].copy_from_slice(&513u16.to_be_bytes());
        assert_eq!(parse_sender_key(&e), Err(EnvelopeError::WrappedKeyLength));
        let mut e = env.clone();
        e[4..8].copy_from_slice(&[0; 4]);
        assert_eq!(parse_sender_key(&e), Err(EnvelopeError::ZeroKeyId));
        let mut e = env;
        e.extend_from_slice(b"x");
        assert_eq!(parse_sender_key(&e), Err(EnvelopeError::TrailingBytes));
    }

    #[test]
    fn message_needs_one_byte_of_text_and_a_full_signature() {
        let h = message_header(&MessageFields {
            key_id: 0x0102_0304,
            iteration: 5,
            sent_ms: -1,
        })
        .unwrap();
        assert_eq!(&h[..4], b"MPM2");
        let mut env = h.to_vec();
        env.extend_from_slice(&[7; 16 + 64]);
        assert_eq!(parse_message(&env), Err(EnvelopeError::CiphertextTooShort));
        env.push(7);
        let v = parse_message(&env).unwrap();
        assert_eq!(v.fields.sent_ms, -1);
        assert_eq!(v.fields.iteration, 5);
        assert_eq!(v.sealed.len(), 17);
        assert_eq!(v.signed.len(), env.len() - 64);
        assert_eq!(v.header, &h[..]);
        assert_eq!(
            message_header(&MessageFields {
                key_id: 0,
                iteration: 0,
                sent_ms: 0
            }),
            Err(EnvelopeError::ZeroKeyId)
        );
    }

    #[test]
    fn kind_refuses_v1_unknown_and_oversized_envelopes() {
        assert_eq!(kind(b"MPE1rest"), Err(EnvelopeError::UnknownKind));
        assert_eq!(kind(b"MP"), Err(EnvelopeError::UnknownKind));
        assert_eq!(kind(b"MPK2"), Ok(Kind::SenderKey));
        assert_eq!(kind(b"MPM2"), Ok(Kind::Message));
        let mut big = b"MPM2".to_vec();
        big.resize(MAX_ENVELOPE_LEN + 1, 0);
        assert_eq!(kind(&big), Err(EnvelopeError::TooLarge));
        assert_eq!(parse_message(&big), Err(EnvelopeError::TooLarge));
        assert_eq!(
            parse_statement(b"MPK2...."),
            Err(EnvelopeError::UnknownKind)
        );
    }
}
