//! The sender-key hash ratchet (libsignal's): a chain key per iteration, one message
//! key per iteration, and the receiving side's chain with its skipped keys.
//!
//! ```text
//! seed_i   = HMAC-SHA-256(key = CK_i, data = 0x01)
//! CK_{i+1} = HMAC-SHA-256(key = CK_i, data = 0x02)
//! aes_key_i || nonce_i = HKDF-SHA-256(salt = empty, IKM = seed_i,
//!                                     info = "mpchat v2 message key", L = 44)
//! ```
//!
//! A chain only moves forward: from `CK_i` nothing computes `CK_j` for `j < i` or any
//! earlier message key, which is what forward secrecy rests on. A message key is used
//! once and consumed by that use. This module never stores a used message key, never
//! moves a chain backwards, and never allocates more than its bounds allow.

use std::collections::VecDeque;
use std::fmt;

use super::Error;
use crate::crypto::{self, zeroize::Zeroizing, CryptoError, KEY_LEN, NONCE_LEN};

/// Chain key length.
pub const CHAIN_KEY_LEN: usize = 32;
/// A message key: the AES-256 key and the 12-byte nonce, 44 bytes.
pub const MESSAGE_KEY_LEN: usize = KEY_LEN + NONCE_LEN;
/// HMAC data byte that derives an iteration's message key seed.
pub const SEED_BYTE: u8 = 0x01;
/// HMAC data byte that derives the next chain key.
pub const NEXT_CHAIN_BYTE: u8 = 0x02;
/// HKDF info of the message key.
pub const MESSAGE_KEY_INFO: &[u8] = b"mpchat v2 message key";
/// Furthest a received iteration may lie ahead of the chain's position (libsignal's
/// bound): a hostile or broken author cannot make a receiver derive millions of keys.
pub const MAX_FORWARD_JUMP: u32 = 2_000;
/// Most skipped message keys kept, per chain here and per author in
/// [`super::sender_key::PeerSenderKeys`] (libsignal's MAX_MESSAGE_KEYS); the oldest go
/// first.
pub const MAX_SKIPPED_KEYS: usize = 2_000;

/// A chain key at a known iteration. Wiped on drop, never printed.
#[derive(Clone)]
pub struct ChainKey {
    key: Zeroizing<[u8; CHAIN_KEY_LEN]>,
    iteration: u32,
}

impl ChainKey {
    /// The chain key `key` as `CK_iteration`.
    pub fn new(key: [u8; CHAIN_KEY_LEN], iteration: u32) -> Self {
        ChainKey {
            key: Zeroizing::new(key),
            iteration,
        }
    }

    /// A fresh random chain key at iteration 0.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(ChainKey {
            key: Zeroizing::new(crypto::random_array()?),
            iteration: 0,
        })
    }

    /// This key's iteration `i`.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// The raw `CK_i` (for wrapping, committing and storing).
    pub fn key_bytes(&self) -> &[u8; CHAIN_KEY_LEN] {
        &self.key
    }

    /// `seed_i = HMAC(CK_i, 0x01)`.
    pub fn seed(&self) -> Zeroizing<[u8; CHAIN_KEY_LEN]> {
        crypto::hmac_sha256(&self.key[..], &[SEED_BYTE])
    }

    /// The message key of this iteration.
    pub fn message_key(&self) -> MessageKey {
        MessageKey::from_seed(self.iteration, &self.seed())
    }

    /// `CK_{i+1} = HMAC(CK_i, 0x02)`; [`Error::ChainExhausted`] past `u32::MAX`.
    pub fn next(&self) -> Result<ChainKey, Error> {
        let iteration = self.iteration.checked_add(1).ok_or(Error::ChainExhausted)?;
        Ok(ChainKey {
            key: crypto::hmac_sha256(&self.key[..], &[NEXT_CHAIN_BYTE]),
            iteration,
        })
    }

    /// `CK_target`, derived forward; `None` if `target` is behind this key (a chain
    /// never goes back). Costs `target - i` HMACs: callers bound the distance.
    pub fn advanced_to(&self, target: u32) -> Option<ChainKey> {
        if target < self.iteration {
            return None;
        }
        let mut ck = self.clone();
        while ck.iteration < target {
            ck = ck.next().ok()?;
        }
        Some(ck)
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainKey(iteration {}, <redacted>)", self.iteration)
    }
}

/// One iteration's message key: AES-256 key and nonce. Used once: sealing and opening
/// consume it. Wiped on drop, never printed.
pub struct MessageKey {
    iteration: u32,
    bytes: Zeroizing<[u8; MESSAGE_KEY_LEN]>,
}

impl MessageKey {
    /// `HKDF(salt = empty, IKM = seed, info = "mpchat v2 message key", 44)`.
    pub fn from_seed(iteration: u32, seed: &[u8; CHAIN_KEY_LEN]) -> Self {
        MessageKey {
            iteration,
            bytes: crypto::hkdf_sha256::<MESSAGE_KEY_LEN>(&[], seed, MESSAGE_KEY_INFO),
        }
    }

    /// A stored message key (a skipped one read back from the state file).
    pub fn from_bytes(iteration: u32, bytes: [u8; MESSAGE_KEY_LEN]) -> Self {
        MessageKey {
            iteration,
            bytes: Zeroizing::new(bytes),
        }
    }

    /// The iteration this key belongs to.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// `aes_key || nonce` (for storing a skipped key and for test vectors).
    pub fn bytes(&self) -> &[u8; MESSAGE_KEY_LEN] {
        &self.bytes
    }

    fn split(&self) -> ([u8; KEY_LEN], [u8; NONCE_LEN]) {
        let mut key = [0u8; KEY_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        key.copy_from_slice(&self.bytes[..KEY_LEN]);
        nonce.copy_from_slice(&self.bytes[KEY_LEN..]);
        (key, nonce)
    }

    /// AES-256-GCM seal of `plaintext` with the full tag; consumes the key.
    pub fn seal(self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let (key, nonce) = self.split();
        let key = Zeroizing::new(key);
        crypto::aes256gcm_seal(&key, &nonce, aad, plaintext)
    }

    /// AES-256-GCM open; consumes the key whether or not the tag verifies.
    pub fn open(self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (key, nonce) = self.split();
        let key = Zeroizing::new(key);
        crypto::aes256gcm_open(&key, &nonce, aad, sealed)
    }
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageKey(iteration {}, <redacted>)", self.iteration)
    }
}

/// How a message's iteration related to the receiving chain when its key was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next iteration expected.
    InOrder,
    /// Ahead of the chain: `missing` earlier iterations were skipped (their keys are
    /// kept, so they can still be read if they arrive). The client prints `missing N`.
    AfterGap {
        /// How many iterations were skipped (`i - p`).
        missing: u32,
    },
    /// Behind the chain, read with a skipped key kept for it (now deleted).
    Late,
}

/// The receiving side of one sender key: the chain at its position `p` (the next
/// unused iteration) and the message keys of skipped iterations below `p`.
#[derive(Debug)]
pub struct ReceivingChain {
    chain: ChainKey,
    /// Strictly increasing iterations, all below the chain's position.
    skipped: VecDeque<MessageKey>,
}

impl ReceivingChain {
    /// A chain at `chain`'s iteration, with no skipped keys.
    pub fn new(chain: ChainKey) -> Self {
        ReceivingChain {
            chain,
            skipped: VecDeque::new(),
        }
    }

    /// A stored chain: `skipped` must hold at most [`MAX_SKIPPED_KEYS`] keys of strictly
    /// increasing iterations below the chain's position (else `None`).
    pub fn from_parts(chain: ChainKey, skipped: Vec<MessageKey>) -> Option<Self> {
        if skipped.len() > MAX_SKIPPED_KEYS {
            return None;
        }
        let ordered = skipped.windows(2).all(|w| w[0].iteration < w[1].iteration);
        let below = skipped.last().is_none_or(|k| k.iteration < chain.iteration);
        if !(ordered && below) {
            return None;
        }
        Some(ReceivingChain {
            chain,
            skipped: skipped.into(),
        })
    }

    /// The position `p`: the next iteration not yet used.
    pub fn position(&self) -> u32 {
        self.chain.iteration
    }

    /// The chain key at the position.
    pub fn chain_key(&self) -> &ChainKey {
        &self.chain
    }

    /// The skipped keys, oldest (lowest iteration) first.
    pub fn skipped(&self) -> impl Iterator<Item = &MessageKey> {
        self.skipped.iter()
    }

    /// Number of skipped keys kept.
    pub fn skipped_len(&self) -> usize {
        self.skipped.len()
    }

    /// Deletes the oldest skipped key; `false` if there was none.
    pub fn drop_oldest_skipped(&mut self) -> bool {
        self.skipped.pop_front().is_some()
    }

    /// The message key of `iteration`, moving the chain as the design says (p is the
    /// position):
    /// - `i < p`: the skipped key for `i`, deleted from the store ([`Arrival::Late`]);
    ///   none kept: [`Error::OldOrReplayed`];
    /// - `i == p`: derived, and the chain moves to `p + 1` ([`Arrival::InOrder`]);
    /// - `p < i <= p + 2000`: the keys of `p..i` are kept as skipped (the oldest
    ///   dropped past [`MAX_SKIPPED_KEYS`]), `i`'s is derived, the chain moves to
    ///   `i + 1` ([`Arrival::AfterGap`]);
    /// - `i > p + 2000`: [`Error::TooFarAhead`], nothing changes.
    ///
    /// The caller must have verified the message's signature first: this moves the
    /// chain. Iteration `u32::MAX` is refused ([`Error::ChainExhausted`]): the chain
    /// could not move past it.
    pub fn receive(&mut self, iteration: u32) -> Result<(MessageKey, Arrival), Error> {
        let p = self.chain.iteration;
        if iteration < p {
            let at = self
                .skipped
                .binary_search_by_key(&iteration, |k| k.iteration)
                .map_err(|_| Error::OldOrReplayed { iteration })?;
            let key = self
                .skipped
                .remove(at)
                .ok_or(Error::OldOrReplayed { iteration })?;
            return Ok((key, Arrival::Late));
        }
        let missing = iteration - p;
        if missing > MAX_FORWARD_JUMP {
            return Err(Error::TooFarAhead { skipped: missing });
        }
        if iteration == u32::MAX {
            return Err(Error::ChainExhausted);
        }
        let mut ck = self.chain.clone();
        while ck.iteration < iteration {
            self.skipped.push_back(ck.message_key());
            if self.skipped.len() > MAX_SKIPPED_KEYS {
                self.skipped.pop_front();
            }
            ck = ck.next()?;
        }
        let key = ck.message_key();
        self.chain = ck.next()?;
        let arrival = if missing == 0 {
            Arrival::InOrder
        } else {
            Arrival::AfterGap { missing }
        };
        Ok((key, arrival))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> ChainKey {
        ChainKey::new([0x42; 32], 0)
    }

    #[test]
    fn next_and_seed_are_hmac_with_0x02_and_0x01() {
        let ck = chain();
        assert_eq!(*ck.seed(), *crypto::hmac_sha256(&[0x42; 32], &[1]));
        let n = ck.next().unwrap();
        assert_eq!(n.iteration(), 1);
        assert_eq!(n.key_bytes(), &*crypto::hmac_sha256(&[0x42; 32], &[2]));
        assert_eq!(
            ck.advanced_to(5).unwrap().key_bytes(),
            n.advanced_to(5).unwrap().key_bytes()
        );
        assert!(n.advanced_to(0).is_none(), "a chain never goes back");
        assert!(ChainKey::new([0; 32], u32::MAX).next().is_err());
    }

    #[test]
    fn message_keys_open_what_they_sealed_and_nothing_else() {
        let ck = chain();
        let sealed = ck.message_key().seal(b"aad", b"hi");
        assert_eq!(sealed.len(), 2 + 16);
        assert_eq!(&ck.message_key().open(b"aad", &sealed).unwrap()[..], b"hi");
        assert!(ck.message_key().open(b"aax", &sealed).is_err());
        let other = ck.next().unwrap().message_key();
        assert!(other.open(b"aad", &sealed).is_err());
        assert_eq!(
            format!("{:?}", ck.message_key()),
            "MessageKey(iteration 0, <redacted>)"
        );
        assert_eq!(format!("{ck:?}"), "ChainKey(iteration 0, <redacted>)");
    }

    #[test]
    fn in_order_gap_late_and_replayed_iterations() {
        let ck = chain();
        let mut rx = ReceivingChain::new(ck.clone());
        let (k0, a) = rx.receive(0).unwrap();
        assert_eq!(a, Arrival::InOrder);
        assert_eq!(k0.bytes(), ck.message_key().bytes());
        assert_eq!(rx.position(), 1);
        let (k4, a) = rx.receive(4).unwrap();
        assert_eq!(a, Arrival::AfterGap { missing: 3 });
        assert_eq!(k4.bytes(), ck.advanced_to(4).unwrap().message_key().bytes());
        assert_eq!(rx.position(), 5);
        assert_eq!(rx.skipped_len(), 3);
        let (k2, a) = rx.receive(2).unwrap();
        assert_eq!(a, Arrival::Late);
        assert_eq!(k2.bytes(), ck.advanced_to(2).unwrap().message_key().bytes());
        assert_eq!(rx.skipped_len(), 2);
        assert_eq!(
            rx.receive(2).unwrap_err(),
            Error::OldOrReplayed { iteration: 2 }
        );
        assert_eq!(
            rx.receive(0).unwrap_err(),
            Error::OldOrReplayed { iteration: 0 }
        );
        assert_eq!(
            rx.receive(4).unwrap_err(),
            Error::OldOrReplayed { iteration: 4 }
        );
    }

    #[test]
    fn a_jump_past_the_forward_bound_changes_nothing() {
        let mut rx = ReceivingChain::new(chain());
        assert_eq!(
            rx.receive(2001).unwrap_err(),
            Error::TooFarAhead { skipped: 2001 }
        );
        assert_eq!(rx.position(), 0);
        assert_eq!(rx.skipped_len(), 0);
        let (_, a) = rx.receive(2000).unwrap();
        assert_eq!(a, Arrival::AfterGap { missing: 2000 });
        assert_eq!(rx.skipped_len(), 2000);
        assert_eq!(rx.position(), 2001);
    }

    #[test]
    fn skipped_keys_are_bounded_and_the_oldest_go_first() {
        let mut rx = ReceivingChain::new(chain());
        rx.receive(1500).unwrap(); // keeps 0..=1499
        rx.receive(3000).unwrap(); // adds 1501..=2999: 2,999 in all, the oldest 999 go
        assert_eq!(rx.skipped_len(), MAX_SKIPPED_KEYS);
        assert_eq!(rx.skipped().next().unwrap().iteration(), 999);
        assert!(matches!(
            rx.receive(998),
            Err(Error::OldOrReplayed { iteration: 998 })
        ));
        assert!(rx.receive(999).is_ok());
        assert!(rx.receive(2999).is_ok());
    }

    #[test]
    fn the_last_u32_iteration_is_refused() {
        let mut rx = ReceivingChain::new(ChainKey::new([1; 32], u32::MAX - 1));
        assert!(rx.receive(u32::MAX - 1).is_ok());
        assert_eq!(rx.receive(u32::MAX).unwrap_err(), Error::ChainExhausted);
    }

    #[test]
    fn stored_parts_must_be_ordered_and_below_the_position() {
        let ck = ChainKey::new([1; 32], 10);
        let k = |i| MessageKey::from_bytes(i, [0; 44]);
        assert!(ReceivingChain::from_parts(ck.clone(), vec![k(1), k(9)]).is_some());
        assert!(ReceivingChain::from_parts(ck.clone(), vec![k(9), k(1)]).is_none());
        assert!(ReceivingChain::from_parts(ck.clone(), vec![k(1), k(1)]).is_none());
        assert!(ReceivingChain::from_parts(ck, vec![k(10)]).is_none());
    }
}
