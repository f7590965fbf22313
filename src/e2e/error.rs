//! Why a v2 envelope could not be built, opened or taken into account.
//!
//! One enum for the whole v2 layer, so the client maps each failure to its one
//! `error msg ...` line in one place. `Display` gives a short lowercase reason that
//! never contains message contents or key material.

use std::fmt;

use super::envelope::EnvelopeError;
use super::sender_key::RotationReason;
use crate::crypto::CryptoError;

/// What went wrong in the v2 end-to-end layer, and who is likely at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The bytes break the envelope layout (the server altered them, or the author's
    /// client is broken).
    Envelope(EnvelopeError),
    /// A signature (RSA-PSS over a statement or a distribution, Ed25519 over a message)
    /// does not verify for this sid and author: altered, moved to another session,
    /// re-attributed to another author, or forged.
    BadSignature,
    /// A statement names another creator (uid or name) than the session's status: a
    /// statement of another session, or a forgery.
    WrongCreator,
    /// A statement differs from the valid one already held for the session (the
    /// creator signed two member lists); the first one stays.
    ConflictingStatement,
    /// A message under a key id we do not hold for its author (sent before we joined,
    /// or its distribution never reached us).
    NoSenderKey {
        /// The unknown key id.
        key_id: u32,
    },
    /// Our entry in a distribution did not decrypt to a 32-byte chain key. Every cause
    /// gives this one variant, on purpose (no padding oracle).
    Unwrap,
    /// The chain key we unwrapped does not match the distribution's signed commitment:
    /// the author wrapped different keys for different recipients (equivocation).
    CommitmentMismatch,
    /// A distribution for a key id we hold carries another signing key, or a chain
    /// that does not derive from ours (the author equivocates across recipients).
    ConflictingSenderKey,
    /// A distribution, with an entry for us, of a key id this author used before and
    /// we dropped (a replayed old `MPK2`: taking it back would let the server replay
    /// that key's recorded messages).
    RetiredSenderKey {
        /// The key id.
        key_id: u32,
    },
    /// A distribution includes its own author among the recipients (a broken client).
    AuthorIsRecipient,
    /// A message at an iteration we already used and hold no skipped key for:
    /// a replay, or an old copy.
    OldOrReplayed {
        /// The message's iteration.
        iteration: u32,
    },
    /// A message further ahead than the forward bound: nothing changed.
    TooFarAhead {
        /// How many iterations it would skip.
        skipped: u32,
    },
    /// The chain reached the last iteration a u32 can number (senders rotate long
    /// before).
    ChainExhausted,
    /// The message's ciphertext did not authenticate under its message key: since the
    /// signature verified, the author's client produced it.
    CannotOpen,
    /// The opened text is not UTF-8 (the author's client is broken).
    NotUtf8,
    /// Building: the text is empty.
    EmptyText,
    /// Building: the envelope would exceed the relay limit.
    TooLarge,
    /// Building: no recipient, or more than 99.
    RecipientCount,
    /// Building: a recipient (or invitee name) appears twice.
    DuplicateRecipient,
    /// Building: a sid or uid of 0.
    InvalidId,
    /// Building: a name is not a valid username, or a statement's names break its rules.
    InvalidName,
    /// Sealing: the sender key is due for rotation; rotate, distribute, then send.
    RotationDue(RotationReason),
    /// A cryptographic operation failed locally (a key of an unusable size, the random
    /// number generator).
    Crypto(CryptoError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Envelope(e) => write!(f, "malformed envelope: {e}"),
            Error::BadSignature => f.write_str("bad signature"),
            Error::WrongCreator => f.write_str("member list names another creator"),
            Error::ConflictingStatement => f.write_str("conflicting member list"),
            Error::NoSenderKey { .. } => f.write_str("no sender key for this message"),
            Error::Unwrap => f.write_str("sender key cannot be unwrapped"),
            Error::CommitmentMismatch => f.write_str("sender key does not match its commitment"),
            Error::ConflictingSenderKey => f.write_str("conflicting sender key"),
            Error::RetiredSenderKey { .. } => f.write_str("old sender key distributed again"),
            Error::AuthorIsRecipient => f.write_str("author among the recipients"),
            Error::OldOrReplayed { iteration } => {
                write!(f, "replayed or old message (iteration {iteration})")
            }
            Error::TooFarAhead { skipped } => write!(f, "too far ahead ({skipped} skipped)"),
            Error::ChainExhausted => f.write_str("sender key chain exhausted"),
            Error::CannotOpen => f.write_str("cannot be opened"),
            Error::NotUtf8 => f.write_str("cannot be opened: text is not utf-8"),
            Error::EmptyText => f.write_str("empty text"),
            Error::TooLarge => f.write_str("message too large"),
            Error::RecipientCount => f.write_str("bad number of recipients"),
            Error::DuplicateRecipient => f.write_str("duplicate recipient"),
            Error::InvalidId => f.write_str("invalid id 0"),
            Error::InvalidName => f.write_str("invalid name"),
            Error::RotationDue(why) => write!(f, "sender key due for rotation ({why})"),
            Error::Crypto(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<EnvelopeError> for Error {
    fn from(e: EnvelopeError) -> Self {
        Error::Envelope(e)
    }
}

impl From<CryptoError> for Error {
    fn from(e: CryptoError) -> Self {
        Error::Crypto(e)
    }
}
