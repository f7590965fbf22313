//! Sender keys: one's own (create, rotate, distribute in an `MPK2`, seal `MPM2`s) and
//! the peers' (open their `MPK2`s with the equivocation checks, open their `MPM2`s).
//!
//! Per session each participant has a sender key: a random non-zero 32-bit key id, a
//! hash-ratchet chain ([`super::ratchet`]) and an Ed25519 signing key. It sends the
//! chain key once to each recipient, wrapped with RSA-OAEP to the recipient's identity
//! key, signed (RSA-PSS) with its own identity key, with a signed commitment
//! `H("mpchat v2 sender key" || sid || author uid || key id || i || CK_i || signing
//! key)`: every recipient checks its unwrapped key against the commitment, so one
//! `MPM2` can only ever open to one text for everyone (issue 11's equivocation attack).
//!
//! Nothing here does I/O or reads the clock (`now_ms` is an argument), nothing logs,
//! and no plaintext leaves [`PeerSenderKeys::open_message`] before the signature, the
//! ratchet and the AEAD tag have all been checked. Used message keys are consumed.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use super::envelope::{
    self, Entry, MessageFields, SenderKeyFields, MAX_RECIPIENTS, MAX_RSA_LEN, MAX_TEXT_LEN,
    MIN_RSA_LEN,
};
use super::ratchet::{Arrival, ChainKey, ReceivingChain, CHAIN_KEY_LEN, MAX_SKIPPED_KEYS};
use super::Error;
use crate::crypto::{
    self, zeroize::Zeroize, CryptoError, Ed25519Signer, RsaPrivate, RsaPublic, ED25519_PUBLIC_LEN,
    ED25519_SEED_LEN, HASH_LEN,
};

/// Context of the `MPK2` commitment and of its RSA-PSS signature.
pub const SENDER_KEY_CONTEXT: &[u8] = b"mpchat v2 sender key";
/// AAD prefix of a message's AES-256-GCM.
pub const MESSAGE_AAD_CONTEXT: &[u8] = b"mpchat v2 message";
/// Context of a message's Ed25519 signature.
pub const MESSAGE_SIG_CONTEXT: &[u8] = b"mpchat v2 message sig";
/// A sender key is rotated after this many messages.
pub const ROTATE_AFTER_MESSAGES: u32 = 1_000;
/// A sender key is rotated once it is this old (24 hours, in milliseconds).
pub const ROTATE_AFTER_MS: i64 = 24 * 60 * 60 * 1000;
/// Most key ids kept per author; a fifth drops the oldest.
pub const MAX_KEYS_PER_AUTHOR: usize = 4;
/// Most retired key ids remembered per author, so that a replayed old `MPK2` of a
/// dropped key cannot bring that key (and the replay of its recorded messages) back.
/// Older ones than this are forgotten (256 rotations: months of use).
pub const MAX_RETIRED_KEY_IDS: usize = 256;

/// Why a sender key must be replaced before the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationReason {
    /// [`ROTATE_AFTER_MESSAGES`] messages were sent under it.
    Messages,
    /// It is [`ROTATE_AFTER_MS`] old (or the clock moved that far back).
    Age,
    /// Someone who holds it is no longer a recipient.
    HolderLeft,
    /// A holder's identity key changed (and was trusted).
    KeyChanged,
}

impl fmt::Display for RotationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RotationReason::Messages => "message count",
            RotationReason::Age => "age",
            RotationReason::HolderLeft => "a holder left",
            RotationReason::KeyChanged => "a holder's key changed",
        })
    }
}

/// The count and age rules: due after [`ROTATE_AFTER_MESSAGES`] messages, or when
/// `now_ms` is [`ROTATE_AFTER_MS`] or more away from `created_ms` in either direction
/// (a clock set back cannot keep a key alive).
pub fn rotation_due(messages_sent: u32, created_ms: i64, now_ms: i64) -> Option<RotationReason> {
    if messages_sent >= ROTATE_AFTER_MESSAGES {
        return Some(RotationReason::Messages);
    }
    if (i128::from(now_ms) - i128::from(created_ms)).abs() >= i128::from(ROTATE_AFTER_MS) {
        return Some(RotationReason::Age);
    }
    None
}

/// `H("mpchat v2 sender key" || sid || author uid || key id || i || CK_i || signing
/// public key)`.
pub fn commitment(
    sid: u64,
    author_uid: u64,
    key_id: u32,
    iteration: u32,
    chain_key: &[u8; CHAIN_KEY_LEN],
    signing_public: &[u8; ED25519_PUBLIC_LEN],
) -> [u8; HASH_LEN] {
    let mut data = crypto::zeroize::Zeroizing::new(Vec::with_capacity(
        SENDER_KEY_CONTEXT.len() + 8 + 8 + 4 + 4 + CHAIN_KEY_LEN + ED25519_PUBLIC_LEN,
    ));
    data.extend_from_slice(SENDER_KEY_CONTEXT);
    data.extend_from_slice(&sid.to_be_bytes());
    data.extend_from_slice(&author_uid.to_be_bytes());
    data.extend_from_slice(&key_id.to_be_bytes());
    data.extend_from_slice(&iteration.to_be_bytes());
    data.extend_from_slice(chain_key);
    data.extend_from_slice(signing_public);
    crypto::sha256(&data)
}

/// `context || sid || author uid || rest`: what every v2 signature and AAD covers.
fn bound(context: &[u8], sid: u64, author_uid: u64, rest: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(context.len() + 16 + rest.len());
    data.extend_from_slice(context);
    data.extend_from_slice(&sid.to_be_bytes());
    data.extend_from_slice(&author_uid.to_be_bytes());
    data.extend_from_slice(rest);
    data
}

// ---------------------------------------------------------------------------------
// Own sender key

/// This client's sender key in one session: key id, chain (at the next iteration to
/// use), signing key, creation time and the uids it was distributed to.
#[derive(Debug)]
pub struct OwnSenderKey {
    key_id: u32,
    chain: ChainKey,
    signer: Ed25519Signer,
    created_ms: i64,
    holders: BTreeSet<u64>,
}

impl OwnSenderKey {
    /// A fresh sender key made at `now_ms`: random chain key (iteration 0), signing key
    /// and non-zero key id, different from `previous_key_id` (the key it replaces), so
    /// receivers never take the new key for a conflicting copy of the old one.
    pub fn generate(now_ms: i64, previous_key_id: Option<u32>) -> Result<Self, Error> {
        let key_id = loop {
            let id = u32::from_be_bytes(crypto::random_array()?);
            if id != 0 && Some(id) != previous_key_id {
                break id;
            }
        };
        Ok(OwnSenderKey {
            key_id,
            chain: ChainKey::generate()?,
            signer: Ed25519Signer::generate()?,
            created_ms: now_ms,
            holders: BTreeSet::new(),
        })
    }

    /// A stored key (or fixed inputs, for test vectors). Refuses a key id of 0 and a
    /// holder set that breaks its bounds (uid 0, more than 99).
    pub fn from_parts(
        key_id: u32,
        chain: ChainKey,
        signing_seed: &[u8; ED25519_SEED_LEN],
        created_ms: i64,
        holders: BTreeSet<u64>,
    ) -> Result<Self, Error> {
        if key_id == 0 || holders.contains(&0) {
            return Err(Error::InvalidId);
        }
        if holders.len() > MAX_RECIPIENTS {
            return Err(Error::RecipientCount);
        }
        Ok(OwnSenderKey {
            key_id,
            chain,
            signer: Ed25519Signer::from_seed(signing_seed),
            created_ms,
            holders,
        })
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The chain at the next iteration to use (= messages sent, for a key that started
    /// at 0).
    pub fn chain_key(&self) -> &ChainKey {
        &self.chain
    }

    /// The Ed25519 seed (for storing).
    pub fn signing_seed(&self) -> &[u8; ED25519_SEED_LEN] {
        self.signer.seed()
    }

    /// The Ed25519 public key.
    pub fn signing_public(&self) -> [u8; ED25519_PUBLIC_LEN] {
        self.signer.public()
    }

    /// When the key was made (the creator's clock, Unix ms).
    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    /// The uids this key was distributed to.
    pub fn holders(&self) -> &BTreeSet<u64> {
        &self.holders
    }

    /// Why this key must be replaced before sending to `recipients` at `now_ms`, if it
    /// must: the count and age rules, a holder who is no longer a recipient, or a
    /// holder in `key_changed` (users whose changed identity key was just trusted).
    pub fn rotation_reason(
        &self,
        now_ms: i64,
        recipients: &BTreeSet<u64>,
        key_changed: &BTreeSet<u64>,
    ) -> Option<RotationReason> {
        if let Some(r) = rotation_due(self.chain.iteration(), self.created_ms, now_ms) {
            return Some(r);
        }
        if !self.holders.is_subset(recipients) {
            return Some(RotationReason::HolderLeft);
        }
        if !self.holders.is_disjoint(key_changed) {
            return Some(RotationReason::KeyChanged);
        }
        None
    }

    /// The recipients who do not hold this key yet: they get an `MPK2` first.
    pub fn recipients_without_key(&self, recipients: &BTreeSet<u64>) -> Vec<u64> {
        recipients.difference(&self.holders).copied().collect()
    }

    /// Records that `uids` were sent this key (call once the `MPK2` is queued, and
    /// persist). Refuses uid 0 and a set past 99.
    pub fn mark_holders(&mut self, uids: &[u64]) -> Result<(), Error> {
        if uids.contains(&0) {
            return Err(Error::InvalidId);
        }
        let mut next = self.holders.clone();
        next.extend(uids.iter().copied());
        if next.len() > MAX_RECIPIENTS {
            return Err(Error::RecipientCount);
        }
        self.holders = next;
        Ok(())
    }

    /// The `MPK2` giving this key at its current iteration to `recipients` (uid and
    /// identity key each, any order): per recipient the chain key under RSA-OAEP, the
    /// commitment, and the author's RSA-PSS signature bound to `sid` and `author_uid`.
    /// Changes nothing: call [`OwnSenderKey::mark_holders`] with the recipients.
    pub fn distribution(
        &self,
        sid: u64,
        author_uid: u64,
        author_key: &RsaPrivate,
        recipients: &[(u64, &RsaPublic)],
    ) -> Result<Vec<u8>, Error> {
        if sid == 0 || author_uid == 0 {
            return Err(Error::InvalidId);
        }
        if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
            return Err(Error::RecipientCount);
        }
        let mut sorted = recipients.to_vec();
        sorted.sort_by_key(|&(uid, _)| uid);
        for (i, &(uid, key)) in sorted.iter().enumerate() {
            if uid == 0 {
                return Err(Error::InvalidId);
            }
            if uid == author_uid {
                return Err(Error::AuthorIsRecipient);
            }
            if i > 0 && sorted[i - 1].0 == uid {
                return Err(Error::DuplicateRecipient);
            }
            if !(MIN_RSA_LEN..=MAX_RSA_LEN).contains(&key.size()) {
                return Err(Error::Crypto(CryptoError::InvalidKey));
            }
        }
        let iteration = self.chain.iteration();
        let signing_public = self.signer.public();
        let commitment = commitment(
            sid,
            author_uid,
            self.key_id,
            iteration,
            self.chain.key_bytes(),
            &signing_public,
        );
        let wrapped = sorted
            .iter()
            .map(|(_, key)| key.oaep_encrypt(self.chain.key_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let fields = SenderKeyFields {
            key_id: self.key_id,
            iteration,
            signing_public,
            commitment,
            entries: sorted
                .iter()
                .zip(&wrapped)
                .map(|(&(uid, _), w)| Entry { uid, wrapped: w })
                .collect(),
        };
        let signed = envelope::sender_key_signed_part(&fields)?;
        let signature =
            author_key.pss_sign(&bound(SENDER_KEY_CONTEXT, sid, author_uid, &signed))?;
        Ok(envelope::append_rsa_signature(signed, &signature)?)
    }

    /// Seals `text` as the next `MPM2` of this key, sent at `now_ms`, and advances the
    /// chain in memory. The caller persists the advanced state BEFORE the envelope
    /// leaves: a crash must never make it reuse an iteration (that would reuse a GCM
    /// key and nonce). Refuses empty or too long text, an id of 0, and a key due for
    /// rotation by count or age ([`Error::RotationDue`]).
    pub fn seal(
        &mut self,
        sid: u64,
        author_uid: u64,
        now_ms: i64,
        text: &str,
    ) -> Result<Vec<u8>, Error> {
        if text.is_empty() {
            return Err(Error::EmptyText);
        }
        if text.len() > MAX_TEXT_LEN {
            return Err(Error::TooLarge);
        }
        if sid == 0 || author_uid == 0 {
            return Err(Error::InvalidId);
        }
        if let Some(why) = rotation_due(self.chain.iteration(), self.created_ms, now_ms) {
            return Err(Error::RotationDue(why));
        }
        let header = envelope::message_header(&MessageFields {
            key_id: self.key_id,
            iteration: self.chain.iteration(),
            sent_ms: now_ms,
        })?;
        let next = self.chain.next()?;
        let sealed = self.chain.message_key().seal(
            &bound(MESSAGE_AAD_CONTEXT, sid, author_uid, &header),
            text.as_bytes(),
        );
        let mut env = Vec::with_capacity(header.len() + sealed.len() + 64);
        env.extend_from_slice(&header);
        env.extend_from_slice(&sealed);
        let signature = self
            .signer
            .sign(&bound(MESSAGE_SIG_CONTEXT, sid, author_uid, &env));
        env.extend_from_slice(&signature);
        self.chain = next;
        Ok(env)
    }
}

// ---------------------------------------------------------------------------------
// Peers' sender keys

/// One key id of a peer: what its `MPK2` gave us, and our receiving chain.
#[derive(Debug)]
pub struct PeerKey {
    key_id: u32,
    signing_public: [u8; ED25519_PUBLIC_LEN],
    commitment: [u8; HASH_LEN],
    first_iteration: u32,
    chain: ReceivingChain,
}

impl PeerKey {
    /// A stored key (the state file). Refuses a key id of 0 and a chain behind the
    /// iteration it was received at.
    pub fn from_parts(
        key_id: u32,
        signing_public: [u8; ED25519_PUBLIC_LEN],
        commitment: [u8; HASH_LEN],
        first_iteration: u32,
        chain: ReceivingChain,
    ) -> Option<Self> {
        if key_id == 0 || chain.position() < first_iteration {
            return None;
        }
        if chain
            .skipped()
            .next()
            .is_some_and(|k| k.iteration() < first_iteration)
        {
            return None;
        }
        Some(PeerKey {
            key_id,
            signing_public,
            commitment,
            first_iteration,
            chain,
        })
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 key that signs this key id's messages.
    pub fn signing_public(&self) -> &[u8; ED25519_PUBLIC_LEN] {
        &self.signing_public
    }

    /// The commitment of the `MPK2` we took the key from.
    pub fn commitment(&self) -> &[u8; HASH_LEN] {
        &self.commitment
    }

    /// The iteration of the chain key that `MPK2` carried.
    pub fn first_iteration(&self) -> u32 {
        self.first_iteration
    }

    /// Our receiving chain.
    pub fn chain(&self) -> &ReceivingChain {
        &self.chain
    }
}

/// What a valid `MPK2` changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistributionOutcome {
    /// A new key id, with an entry for us: stored at `iteration`.
    Stored {
        /// The key id.
        key_id: u32,
        /// The iteration we can read from.
        iteration: u32,
    },
    /// A key id we hold; its signing key is the same and its chain derives from ours.
    Confirmed {
        /// The key id.
        key_id: u32,
    },
    /// A key id we hold, same signing key, at an iteration our chain has passed (so it
    /// cannot be checked against ours); nothing changed.
    Unchecked {
        /// The key id.
        key_id: u32,
    },
    /// A new key id without an entry for us (a distribution to someone else): nothing
    /// to check or store.
    NotForUs,
}

/// What [`PeerSenderKeys::open_message`] gives once every check has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedMessage {
    /// The text (UTF-8, non-empty; escape it before printing).
    pub text: String,
    /// The author's clock when it sent, Unix ms.
    pub sent_ms: i64,
    /// The sender key's id.
    pub key_id: u32,
    /// The message's iteration.
    pub iteration: u32,
    /// In order, after a gap (print `missing N`), or late from a skipped key.
    pub arrival: Arrival,
}

/// One author's sender keys as this client knows them in one session: at most
/// [`MAX_KEYS_PER_AUTHOR`] key ids (oldest first), at most [`MAX_SKIPPED_KEYS`] skipped
/// message keys in all, and the ids of keys already dropped.
#[derive(Debug, Default)]
pub struct PeerSenderKeys {
    keys: VecDeque<PeerKey>,
    retired: VecDeque<u32>,
}

impl PeerSenderKeys {
    /// No key yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stored keys (oldest first) and retired ids (oldest first). Refuses what this
    /// type never holds: more keys or retired ids than the bounds, a repeated or zero
    /// key id, more skipped keys than [`MAX_SKIPPED_KEYS`] in all.
    pub fn from_parts(keys: Vec<PeerKey>, retired: Vec<u32>) -> Option<Self> {
        if keys.len() > MAX_KEYS_PER_AUTHOR || retired.len() > MAX_RETIRED_KEY_IDS {
            return None;
        }
        let mut ids = BTreeSet::new();
        for id in keys.iter().map(|k| k.key_id).chain(retired.iter().copied()) {
            if id == 0 || !ids.insert(id) {
                return None;
            }
        }
        if keys.iter().map(|k| k.chain.skipped_len()).sum::<usize>() > MAX_SKIPPED_KEYS {
            return None;
        }
        Some(PeerSenderKeys {
            keys: keys.into(),
            retired: retired.into(),
        })
    }

    /// The keys held, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = &PeerKey> {
        self.keys.iter()
    }

    /// Key ids dropped already, oldest first.
    pub fn retired(&self) -> impl Iterator<Item = u32> + '_ {
        self.retired.iter().copied()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key of `key_id`, if held.
    pub fn get(&self, key_id: u32) -> Option<&PeerKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }

    /// Skipped message keys held across all this author's keys.
    pub fn skipped_len(&self) -> usize {
        self.keys.iter().map(|k| k.chain.skipped_len()).sum()
    }

    fn retire(&mut self, key_id: u32) {
        self.retired.push_back(key_id);
        while self.retired.len() > MAX_RETIRED_KEY_IDS {
            self.retired.pop_front();
        }
    }

    /// Drops the oldest skipped keys (oldest key id first) past the per-author bound.
    fn enforce_skipped_bound(&mut self) {
        let mut total = self.skipped_len();
        for key in self.keys.iter_mut() {
            while total > MAX_SKIPPED_KEYS && key.chain.drop_oldest_skipped() {
                total -= 1;
            }
        }
    }

    /// Takes an `MPK2` by `author_uid` in session `sid` into account, in the design's
    /// order: layout; the author's RSA-PSS signature under `author_key` (the caller has
    /// checked that the author is in the statement, accepted, and that this is its
    /// pinned key); no entry for the author itself; our entry (`me_uid`), if any,
    /// unwrapped with `me_key` and checked against the commitment (nothing stored on
    /// failure); then a new key id with our entry is stored (the oldest of five
    /// dropped), and a known key id must have the same signing key and a chain that
    /// derives from ours, which is how equivocation across joiners shows. Our chain
    /// never moves backwards.
    pub fn receive_distribution(
        &mut self,
        envelope: &[u8],
        sid: u64,
        author_uid: u64,
        author_key: &RsaPublic,
        me_uid: u64,
        me_key: &RsaPrivate,
    ) -> Result<DistributionOutcome, Error> {
        let view = envelope::parse_sender_key(envelope)?;
        author_key
            .pss_verify(
                &bound(SENDER_KEY_CONTEXT, sid, author_uid, view.signed),
                view.signature,
            )
            .map_err(|_| Error::BadSignature)?;
        let f = &view.fields;
        if f.entries.iter().any(|e| e.uid == author_uid) {
            return Err(Error::AuthorIsRecipient);
        }
        let mine = match f.entries.binary_search_by_key(&me_uid, |e| e.uid) {
            Ok(at) => {
                let mut plain = me_key
                    .oaep_decrypt(f.entries[at].wrapped)
                    .map_err(|_| Error::Unwrap)?;
                if plain.len() != CHAIN_KEY_LEN {
                    return Err(Error::Unwrap);
                }
                let mut raw = [0u8; CHAIN_KEY_LEN];
                raw.copy_from_slice(&plain);
                plain.zeroize();
                let ck = ChainKey::new(raw, f.iteration);
                raw.zeroize();
                let c = commitment(
                    sid,
                    author_uid,
                    f.key_id,
                    f.iteration,
                    ck.key_bytes(),
                    &f.signing_public,
                );
                if !crypto::ct_eq(&c, &f.commitment) {
                    return Err(Error::CommitmentMismatch);
                }
                Some(ck)
            }
            Err(_) => None,
        };
        if let Some(known) = self.get(f.key_id) {
            return check_known(known, f, sid, author_uid);
        }
        let Some(ck) = mine else {
            return Ok(DistributionOutcome::NotForUs);
        };
        if self.retired.contains(&f.key_id) {
            return Err(Error::RetiredSenderKey { key_id: f.key_id });
        }
        if self.keys.len() >= MAX_KEYS_PER_AUTHOR {
            if let Some(old) = self.keys.pop_front() {
                self.retire(old.key_id);
            }
        }
        self.keys.push_back(PeerKey {
            key_id: f.key_id,
            signing_public: f.signing_public,
            commitment: f.commitment,
            first_iteration: f.iteration,
            chain: ReceivingChain::new(ck),
        });
        Ok(DistributionOutcome::Stored {
            key_id: f.key_id,
            iteration: f.iteration,
        })
    }

    /// Opens an `MPM2` by `author_uid` in session `sid`, in the design's order: layout;
    /// a key id we hold ([`Error::NoSenderKey`]); its Ed25519 signature; the iteration
    /// against our chain ([`ReceivingChain::receive`]: the chain moves, skipped keys
    /// are kept within the per-author bound); then the AES-256-GCM tag. The text is
    /// released only after all of them; the message key is consumed either way.
    pub fn open_message(
        &mut self,
        envelope: &[u8],
        sid: u64,
        author_uid: u64,
    ) -> Result<OpenedMessage, Error> {
        let view = envelope::parse_message(envelope)?;
        let f = view.fields;
        let key = self
            .keys
            .iter_mut()
            .find(|k| k.key_id == f.key_id)
            .ok_or(Error::NoSenderKey { key_id: f.key_id })?;
        crypto::ed25519_verify(
            &key.signing_public,
            &bound(MESSAGE_SIG_CONTEXT, sid, author_uid, view.signed),
            view.signature,
        )
        .map_err(|_| Error::BadSignature)?;
        let (message_key, arrival) = key.chain.receive(f.iteration)?;
        self.enforce_skipped_bound();
        let mut plain = message_key
            .open(
                &bound(MESSAGE_AAD_CONTEXT, sid, author_uid, view.header),
                view.sealed,
            )
            .map_err(|_| Error::CannotOpen)?;
        let text = match String::from_utf8(std::mem::take(&mut *plain)) {
            Ok(t) => t,
            Err(e) => {
                e.into_bytes().zeroize();
                return Err(Error::NotUtf8);
            }
        };
        Ok(OpenedMessage {
            text,
            sent_ms: f.sent_ms,
            key_id: f.key_id,
            iteration: f.iteration,
            arrival,
        })
    }
}

/// The equivocation check on a key id we hold (see
/// [`PeerSenderKeys::receive_distribution`]).
fn check_known(
    known: &PeerKey,
    f: &SenderKeyFields<'_>,
    sid: u64,
    author_uid: u64,
) -> Result<DistributionOutcome, Error> {
    if !crypto::ct_eq(&known.signing_public, &f.signing_public) {
        return Err(Error::ConflictingSenderKey);
    }
    let key_id = f.key_id;
    let p = known.chain.position();
    let ahead = f.iteration.checked_sub(p);
    if ahead.is_some_and(|a| a <= super::ratchet::MAX_FORWARD_JUMP) {
        let ck = known
            .chain
            .chain_key()
            .advanced_to(f.iteration)
            .ok_or(Error::ChainExhausted)?;
        let c = commitment(
            sid,
            author_uid,
            key_id,
            f.iteration,
            ck.key_bytes(),
            &f.signing_public,
        );
        return if crypto::ct_eq(&c, &f.commitment) {
            Ok(DistributionOutcome::Confirmed { key_id })
        } else {
            Err(Error::ConflictingSenderKey)
        };
    }
    if f.iteration == known.first_iteration {
        return if crypto::ct_eq(&known.commitment, &f.commitment) {
            Ok(DistributionOutcome::Confirmed { key_id })
        } else {
            Err(Error::ConflictingSenderKey)
        };
    }
    Ok(DistributionOutcome::Unchecked { key_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_due_after_1000_messages_or_24_hours_either_way() {
        let day = ROTATE_AFTER_MS;
        assert_eq!(rotation_due(0, 0, 0), None);
        assert_eq!(rotation_due(999, 0, day - 1), None);
        assert_eq!(rotation_due(1000, 0, 0), Some(RotationReason::Messages));
        assert_eq!(rotation_due(5, 0, day), Some(RotationReason::Age));
        assert_eq!(rotation_due(5, day, 0), Some(RotationReason::Age));
        assert_eq!(
            rotation_due(5, i64::MIN, i64::MAX),
            Some(RotationReason::Age)
        );
    }

    #[test]
    fn holders_leaving_or_changing_keys_force_a_rotation() {
        let mut k = OwnSenderKey::generate(0, None).unwrap();
        let rec: BTreeSet<u64> = [2, 3].into();
        assert_eq!(k.recipients_without_key(&rec), [2, 3]);
        k.mark_holders(&[2, 3]).unwrap();
        assert!(k.recipients_without_key(&rec).is_empty());
        assert_eq!(k.rotation_reason(1, &rec, &BTreeSet::new()), None);
        let fewer: BTreeSet<u64> = [2].into();
        assert_eq!(
            k.rotation_reason(1, &fewer, &BTreeSet::new()),
            Some(RotationReason::HolderLeft)
        );
        assert_eq!(
            k.rotation_reason(1, &rec, &[3].into()),
            Some(RotationReason::KeyChanged)
        );
        assert_eq!(k.rotation_reason(1, &rec, &[4].into()), None);
        assert_eq!(k.mark_holders(&[0]), Err(Error::InvalidId));
        let next = OwnSenderKey::generate(0, Some(k.key_id())).unwrap();
        assert_ne!(next.key_id(), k.key_id());
        assert_ne!(next.key_id(), 0);
    }

    #[test]
    fn seal_refuses_empty_text_and_a_key_due_for_rotation() {
        let mut k = OwnSenderKey::generate(0, None).unwrap();
        assert_eq!(k.seal(1, 2, 0, ""), Err(Error::EmptyText));
        assert_eq!(
            k.seal(1, 2, ROTATE_AFTER_MS, "hi"),
            Err(Error::RotationDue(RotationReason::Age))
        );
        let long = "x".repeat(MAX_TEXT_LEN + 1);
        assert_eq!(k.seal(1, 2, 0, &long), Err(Error::TooLarge));
        let env = k.seal(1, 2, 0, &long[1..]).unwrap();
        assert_eq!(env.len(), envelope::MAX_ENVELOPE_LEN);
        assert_eq!(
            k.chain_key().iteration(),
            1,
            "only a sealed message advances"
        );
        let mut worn = OwnSenderKey::from_parts(
            7,
            ChainKey::new([1; 32], ROTATE_AFTER_MESSAGES),
            &[2; 32],
            0,
            BTreeSet::new(),
        )
        .unwrap();
        assert_eq!(
            worn.seal(1, 2, 0, "hi"),
            Err(Error::RotationDue(RotationReason::Messages))
        );
        assert!(format!("{worn:?}").contains("<redacted>"));
    }
}
