//! A session's persisted end-to-end state, as bytes: the held membership statement,
//! this client's own sender key, the peers' sender keys with their chains and skipped
//! message keys, and the last delivery number handled.
//!
//! ```text
//! "MPCS2\n" (6) | version 1 (1) | sid (8, non-zero) | last handled n (8)
//! | flags (1): bit 0 = the statement was signed here and not yet sent; others 0
//! | statement length (2, 0 = none) | the MPS2 bytes as received (<= 3,835)
//! | own key present (1: 0 or 1)
//!   [ key id (4) | iteration (4) | chain key (32) | Ed25519 seed (32)
//!     | created_ms (8, signed) | holders (1, <= 99) | holder uid (8) ascending ]
//! | authors (1, <= 99), uid ascending, each:
//!     uid (8) | keys (1, <= 4) | retired ids (2, <= 256) | retired key id (4) each
//!     | per key, oldest first: key id (4) | Ed25519 public (32) | commitment (32)
//!       | first iteration (4) | position (4) | chain key at position (32)
//!       | skipped (2) | { iteration (4) | message key (44) } ascending,
//!         first iteration <= iteration < position; <= 2,000 per author in all
//! ```
//!
//! Chains are stored only advanced and used message keys never: nothing in these bytes
//! opens a message that was already read (forward secrecy). The bytes hold secrets:
//! [`SessionState::encode`] returns them in a wiping buffer, and the caller writes
//! them atomically with mode 0600. [`SessionState::decode`] is strict: a damaged file
//! is an error, never a panic, and nothing is allocated beyond what the bytes bound.
//! This module does no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::envelope::{MAX_RECIPIENTS, MAX_STATEMENT_LEN};
use super::members::{Statement, StatementArrival};
use super::ratchet::{
    ChainKey, MessageKey, ReceivingChain, CHAIN_KEY_LEN, MAX_SKIPPED_KEYS, MESSAGE_KEY_LEN,
};
use super::sender_key::{
    DistributionOutcome, OpenedMessage, OwnSenderKey, PeerKey, PeerSenderKeys, MAX_KEYS_PER_AUTHOR,
    MAX_RETIRED_KEY_IDS,
};
use super::Error;
use crate::codec::{CodecError, Reader};
use crate::crypto::{
    zeroize::Zeroizing, RsaPrivate, RsaPublic, ED25519_PUBLIC_LEN, ED25519_SEED_LEN, HASH_LEN,
};

/// First bytes of a session state file.
pub const STATE_MAGIC: [u8; 6] = *b"MPCS2\n";
/// The format version written after the magic.
pub const STATE_VERSION: u8 = 1;
/// Most other authors in a session: 100 participants at most, less oneself.
pub const MAX_AUTHORS: usize = MAX_RECIPIENTS;

const FLAG_STATEMENT_UNSENT: u8 = 0x01;
const HEAD_LEN: usize = STATE_MAGIC.len() + 1 + 8 + 8 + 1;
const OWN_FIXED_LEN: usize = 4 + 4 + CHAIN_KEY_LEN + ED25519_SEED_LEN + 8 + 1;
const OWN_LEN: usize = 1 + OWN_FIXED_LEN + MAX_RECIPIENTS * 8;
const KEY_HEAD_LEN: usize = 4 + ED25519_PUBLIC_LEN + HASH_LEN + 4 + 4 + CHAIN_KEY_LEN + 2;
const SKIPPED_LEN: usize = 4 + MESSAGE_KEY_LEN;
const AUTHOR_LEN: usize = 8
    + 1
    + 2
    + MAX_RETIRED_KEY_IDS * 4
    + MAX_KEYS_PER_AUTHOR * KEY_HEAD_LEN
    + MAX_SKIPPED_KEYS * SKIPPED_LEN;
/// Longest state file (about 9.7 MB, with every bound reached): read no more.
pub const MAX_STATE_LEN: usize =
    HEAD_LEN + 2 + MAX_STATEMENT_LEN + OWN_LEN + 1 + MAX_AUTHORS * AUTHOR_LEN;

/// Why bytes are not a session state this version wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// Longer than [`MAX_STATE_LEN`].
    TooLarge,
    /// Not a session state file (wrong magic).
    BadMagic,
    /// A version this build does not read.
    UnsupportedVersion(u8),
    /// The bytes end inside the named field.
    Truncated(&'static str),
    /// Bytes follow the last author.
    TrailingBytes,
    /// A field breaks the named rule.
    Invalid(&'static str),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::TooLarge => f.write_str("session state file too large"),
            StateError::BadMagic => f.write_str("not a session state file"),
            StateError::UnsupportedVersion(v) => {
                write!(f, "session state version {v} is not supported")
            }
            StateError::Truncated(what) => write!(f, "session state truncated in {what}"),
            StateError::TrailingBytes => f.write_str("session state has trailing bytes"),
            StateError::Invalid(what) => write!(f, "session state damaged: {what}"),
        }
    }
}

impl std::error::Error for StateError {}

/// The error for a field the input is too short to hold.
fn short(what: &'static str) -> impl Fn(CodecError) -> StateError {
    move |_| StateError::Truncated(what)
}

/// One session's end-to-end state.
#[derive(Debug)]
pub struct SessionState {
    sid: u64,
    /// The highest delivery number `n` handled (shown, or refused with a line) and so
    /// acknowledged; a delivery at or below it is acknowledged again, not shown.
    pub last_n: u64,
    /// The valid membership statement held, if any.
    pub statement: Option<Statement>,
    /// This client created the session, signed [`SessionState::statement`] and has not
    /// had it accepted by the server yet: send it (again) before anything else.
    pub statement_unsent: bool,
    /// This client's sender key, once made.
    pub own: Option<OwnSenderKey>,
    peers: BTreeMap<u64, PeerSenderKeys>,
}

impl SessionState {
    /// The empty state of session `sid`.
    pub fn new(sid: u64) -> Self {
        SessionState {
            sid,
            last_n: 0,
            statement: None,
            statement_unsent: false,
            own: None,
            peers: BTreeMap::new(),
        }
    }

    /// The session id.
    pub fn sid(&self) -> u64 {
        self.sid
    }

    /// The other authors whose keys are held, by uid.
    pub fn peers(&self) -> impl Iterator<Item = (u64, &PeerSenderKeys)> {
        self.peers.iter().map(|(&uid, p)| (uid, p))
    }

    /// The keys held for `author_uid`.
    pub fn peer(&self, author_uid: u64) -> Option<&PeerSenderKeys> {
        self.peers.get(&author_uid)
    }

    /// Checks a statement received for this session (layout, creator as the status
    /// gives it, signature under the creator's pinned key) and stores it if none is
    /// held. Identical bytes: [`StatementArrival::Identical`], nothing changes. Another
    /// valid statement: [`Error::ConflictingStatement`], the first one stays.
    pub fn receive_statement(
        &mut self,
        bytes: &[u8],
        creator_uid: u64,
        creator_name: &str,
        creator_key: &RsaPublic,
    ) -> Result<StatementArrival, Error> {
        let st = Statement::verify(bytes, self.sid, creator_uid, creator_name, creator_key)?;
        match st.arrival(self.statement.as_ref()) {
            StatementArrival::New => {
                self.statement = Some(st);
                Ok(StatementArrival::New)
            }
            StatementArrival::Identical => Ok(StatementArrival::Identical),
            StatementArrival::Conflicting => Err(Error::ConflictingStatement),
        }
    }

    /// [`PeerSenderKeys::receive_distribution`] for `author_uid` in this session; a new
    /// author is added only when a key of theirs is stored (at most [`MAX_AUTHORS`]).
    pub fn receive_distribution(
        &mut self,
        envelope: &[u8],
        author_uid: u64,
        author_key: &RsaPublic,
        me_uid: u64,
        me_key: &RsaPrivate,
    ) -> Result<DistributionOutcome, Error> {
        if author_uid == 0 {
            return Err(Error::InvalidId);
        }
        if let Some(peer) = self.peers.get_mut(&author_uid) {
            return peer
                .receive_distribution(envelope, self.sid, author_uid, author_key, me_uid, me_key);
        }
        let mut peer = PeerSenderKeys::new();
        let outcome =
            peer.receive_distribution(envelope, self.sid, author_uid, author_key, me_uid, me_key)?;
        if !peer.is_empty() {
            if self.peers.len() >= MAX_AUTHORS {
                return Err(Error::RecipientCount);
            }
            self.peers.insert(author_uid, peer);
        }
        Ok(outcome)
    }

    /// [`PeerSenderKeys::open_message`] for `author_uid` in this session.
    pub fn open_message(
        &mut self,
        envelope: &[u8],
        author_uid: u64,
    ) -> Result<OpenedMessage, Error> {
        match self.peers.get_mut(&author_uid) {
            Some(peer) => peer.open_message(envelope, self.sid, author_uid),
            None => PeerSenderKeys::new().open_message(envelope, self.sid, author_uid),
        }
    }

    /// The exact length of [`SessionState::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let statement = self.statement.as_ref().map_or(0, |s| s.bytes().len());
        let own = self
            .own
            .as_ref()
            .map_or(0, |o| OWN_FIXED_LEN + o.holders().len() * 8);
        let peers: usize = self
            .peers
            .values()
            .map(|p| {
                8 + 1
                    + 2
                    + p.retired().count() * 4
                    + p.keys().count() * KEY_HEAD_LEN
                    + p.skipped_len() * SKIPPED_LEN
            })
            .sum();
        HEAD_LEN + 2 + statement + 1 + own + 1 + peers
    }

    /// The state as bytes (see the module documentation), in a buffer wiped on drop
    /// (allocated once at its exact size, so no reallocation leaves a stray copy).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.encoded_len()));
        out.extend_from_slice(&STATE_MAGIC);
        out.push(STATE_VERSION);
        out.extend_from_slice(&self.sid.to_be_bytes());
        out.extend_from_slice(&self.last_n.to_be_bytes());
        out.push(if self.statement_unsent {
            FLAG_STATEMENT_UNSENT
        } else {
            0
        });
        match &self.statement {
            Some(st) => {
                out.extend_from_slice(&(st.bytes().len() as u16).to_be_bytes());
                out.extend_from_slice(st.bytes());
            }
            None => out.extend_from_slice(&0u16.to_be_bytes()),
        }
        match &self.own {
            Some(own) => {
                out.push(1);
                out.extend_from_slice(&own.key_id().to_be_bytes());
                out.extend_from_slice(&own.chain_key().iteration().to_be_bytes());
                out.extend_from_slice(own.chain_key().key_bytes());
                out.extend_from_slice(own.signing_seed());
                out.extend_from_slice(&own.created_ms().to_be_bytes());
                out.push(own.holders().len() as u8);
                for uid in own.holders() {
                    out.extend_from_slice(&uid.to_be_bytes());
                }
            }
            None => out.push(0),
        }
        out.push(self.peers.len() as u8);
        for (uid, peer) in &self.peers {
            out.extend_from_slice(&uid.to_be_bytes());
            out.push(peer.keys().count() as u8);
            out.extend_from_slice(&(peer.retired().count() as u16).to_be_bytes());
            for id in peer.retired() {
                out.extend_from_slice(&id.to_be_bytes());
            }
            for key in peer.keys() {
                out.extend_from_slice(&key.key_id().to_be_bytes());
                out.extend_from_slice(key.signing_public());
                out.extend_from_slice(key.commitment());
                out.extend_from_slice(&key.first_iteration().to_be_bytes());
                let chain = key.chain();
                out.extend_from_slice(&chain.position().to_be_bytes());
                out.extend_from_slice(chain.chain_key().key_bytes());
                out.extend_from_slice(&(chain.skipped_len() as u16).to_be_bytes());
                for mk in chain.skipped() {
                    out.extend_from_slice(&mk.iteration().to_be_bytes());
                    out.extend_from_slice(mk.bytes());
                }
            }
        }
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// Reads bytes written by [`SessionState::encode`], checking every field and bound;
    /// anything else is a [`StateError`].
    pub fn decode(bytes: &[u8]) -> Result<SessionState, StateError> {
        if bytes.len() > MAX_STATE_LEN {
            return Err(StateError::TooLarge);
        }
        let mut r = Reader::new(bytes);
        if r.array::<6>().map_err(|_| StateError::BadMagic)? != STATE_MAGIC {
            return Err(StateError::BadMagic);
        }
        let version = r.u8().map_err(short("version"))?;
        if version != STATE_VERSION {
            return Err(StateError::UnsupportedVersion(version));
        }
        let sid = r.u64().map_err(short("sid"))?;
        if sid == 0 {
            return Err(StateError::Invalid("sid 0"));
        }
        let last_n = r.u64().map_err(short("last n"))?;
        let flags = r.u8().map_err(short("flags"))?;
        if flags & !FLAG_STATEMENT_UNSENT != 0 {
            return Err(StateError::Invalid("unknown flags"));
        }
        let statement_len = usize::from(r.u16().map_err(short("statement length"))?);
        if statement_len > MAX_STATEMENT_LEN {
            return Err(StateError::Invalid("statement too long"));
        }
        let statement = match statement_len {
            0 => None,
            n => Some(
                Statement::from_trusted_bytes(r.take(n).map_err(short("statement"))?.to_vec())
                    .map_err(|_| StateError::Invalid("statement"))?,
            ),
        };
        let statement_unsent = flags & FLAG_STATEMENT_UNSENT != 0;
        if statement_unsent && statement.is_none() {
            return Err(StateError::Invalid("unsent statement missing"));
        }
        let own = match r.u8().map_err(short("own key flag"))? {
            0 => None,
            1 => Some(decode_own(&mut r)?),
            _ => return Err(StateError::Invalid("own key flag")),
        };
        let authors = usize::from(r.u8().map_err(short("author count"))?);
        if authors > MAX_AUTHORS {
            return Err(StateError::Invalid("too many authors"));
        }
        let mut peers = BTreeMap::new();
        let mut last_uid = 0u64;
        for _ in 0..authors {
            let uid = r.u64().map_err(short("author uid"))?;
            if uid <= last_uid {
                return Err(StateError::Invalid("authors not in increasing uid order"));
            }
            last_uid = uid;
            peers.insert(uid, decode_peer(&mut r)?);
        }
        r.expect_empty().map_err(|_| StateError::TrailingBytes)?;
        Ok(SessionState {
            sid,
            last_n,
            statement,
            statement_unsent,
            own,
            peers,
        })
    }
}

fn decode_own(r: &mut Reader<'_>) -> Result<OwnSenderKey, StateError> {
    let key_id = r.u32().map_err(short("own key id"))?;
    let iteration = r.u32().map_err(short("own iteration"))?;
    let chain = ChainKey::new(r.array().map_err(short("own chain key"))?, iteration);
    let seed = Zeroizing::new(
        r.array::<ED25519_SEED_LEN>()
            .map_err(short("own signing seed"))?,
    );
    let created_ms = r
        .array::<8>()
        .map(i64::from_be_bytes)
        .map_err(short("own created_ms"))?;
    let count = usize::from(r.u8().map_err(short("holder count"))?);
    if count > MAX_RECIPIENTS {
        return Err(StateError::Invalid("too many holders"));
    }
    let mut holders = BTreeSet::new();
    let mut last = 0u64;
    for _ in 0..count {
        let uid = r.u64().map_err(short("holder uid"))?;
        if uid <= last {
            return Err(StateError::Invalid("holders not in increasing uid order"));
        }
        last = uid;
        holders.insert(uid);
    }
    OwnSenderKey::from_parts(key_id, chain, &seed, created_ms, holders)
        .map_err(|_| StateError::Invalid("own key"))
}

fn decode_peer(r: &mut Reader<'_>) -> Result<PeerSenderKeys, StateError> {
    let key_count = usize::from(r.u8().map_err(short("key count"))?);
    if key_count > MAX_KEYS_PER_AUTHOR {
        return Err(StateError::Invalid("too many keys for an author"));
    }
    let retired_count = usize::from(r.u16().map_err(short("retired count"))?);
    if retired_count > MAX_RETIRED_KEY_IDS {
        return Err(StateError::Invalid("too many retired key ids"));
    }
    if retired_count * 4 > r.remaining() {
        return Err(StateError::Truncated("retired key ids"));
    }
    let mut retired = Vec::with_capacity(retired_count);
    for _ in 0..retired_count {
        retired.push(r.u32().map_err(short("retired key id"))?);
    }
    let mut keys = Vec::with_capacity(key_count);
    let mut skipped_total = 0usize;
    for _ in 0..key_count {
        let key_id = r.u32().map_err(short("key id"))?;
        let signing_public = r.array().map_err(short("signing key"))?;
        let commitment = r.array().map_err(short("commitment"))?;
        let first_iteration = r.u32().map_err(short("first iteration"))?;
        let position = r.u32().map_err(short("position"))?;
        let chain = ChainKey::new(r.array().map_err(short("chain key"))?, position);
        let skipped_count = usize::from(r.u16().map_err(short("skipped count"))?);
        skipped_total += skipped_count;
        if skipped_total > MAX_SKIPPED_KEYS {
            return Err(StateError::Invalid("too many skipped keys"));
        }
        if skipped_count * SKIPPED_LEN > r.remaining() {
            return Err(StateError::Truncated("skipped keys"));
        }
        let mut skipped = Vec::with_capacity(skipped_count);
        for _ in 0..skipped_count {
            let iteration = r.u32().map_err(short("skipped iteration"))?;
            let bytes = Zeroizing::new(r.array::<MESSAGE_KEY_LEN>().map_err(short("skipped key"))?);
            skipped.push(MessageKey::from_bytes(iteration, *bytes));
        }
        let chain = ReceivingChain::from_parts(chain, skipped)
            .ok_or(StateError::Invalid("skipped keys out of order"))?;
        let key = PeerKey::from_parts(key_id, signing_public, commitment, first_iteration, chain)
            .ok_or(StateError::Invalid("peer key"))?;
        keys.push(key);
    }
    PeerSenderKeys::from_parts(keys, retired).ok_or(StateError::Invalid("author keys"))
}

// Keeps the envelope module's bound and this one's in step: a stored statement always
// fits its 2-byte length.
const _: () = assert!(MAX_STATEMENT_LEN <= u16::MAX as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto;

    fn test_key() -> RsaPrivate {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/server_test_key.pem"
        );
        crypto::read_private_key(std::path::Path::new(path)).unwrap()
    }

    fn sample() -> SessionState {
        let key = test_key();
        let mut s = SessionState::new(0x55);
        s.last_n = 41;
        s.statement = Some(Statement::sign(0x55, 7, "alice", &["bob", "carol"], 9, &key).unwrap());
        s.statement_unsent = true;
        let mut own = OwnSenderKey::generate(1_000, None).unwrap();
        own.mark_holders(&[8, 9]).unwrap();
        own.seal(0x55, 7, 1_001, "hello").unwrap();
        s.own = Some(own);
        let mut rx = ReceivingChain::new(ChainKey::new([3; 32], 10));
        rx.receive(14).unwrap();
        let k1 = PeerKey::from_parts(0x11, [4; 32], [5; 32], 10, rx).unwrap();
        let k2 = PeerKey::from_parts(
            0x12,
            [6; 32],
            [7; 32],
            0,
            ReceivingChain::new(ChainKey::new([8; 32], 0)),
        )
        .unwrap();
        s.peers.insert(
            8,
            PeerSenderKeys::from_parts(vec![k1, k2], vec![0x10, 0x0f]).unwrap(),
        );
        s.peers.insert(9, PeerSenderKeys::new());
        s
    }

    #[test]
    fn encode_then_decode_gives_back_the_same_bytes() {
        let s = sample();
        let bytes = s.encode();
        assert_eq!(&bytes[..6], b"MPCS2\n");
        assert_eq!(bytes[6], STATE_VERSION);
        let back = SessionState::decode(&bytes).unwrap();
        assert_eq!(back.sid(), 0x55);
        assert_eq!(back.last_n, 41);
        assert!(back.statement_unsent);
        assert_eq!(back.statement, s.statement);
        assert_eq!(back.own.as_ref().unwrap().chain_key().iteration(), 1);
        assert_eq!(back.peer(8).unwrap().skipped_len(), 4);
        assert_eq!(&back.encode()[..], &bytes[..]);
        let empty = SessionState::new(3).encode();
        assert_eq!(
            &SessionState::decode(&empty).unwrap().encode()[..],
            &empty[..]
        );
    }

    #[test]
    fn truncated_or_corrupted_state_is_an_error_and_never_a_panic() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(SessionState::decode(&bytes[..len]).is_err(), "{len}");
        }
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.to_vec();
                b[i] ^= bit;
                let _ = SessionState::decode(&b);
            }
        }
        let mut b = bytes.to_vec();
        b.push(0);
        assert_eq!(
            SessionState::decode(&b).unwrap_err(),
            StateError::TrailingBytes
        );
        let mut b = bytes.to_vec();
        b[6] = 2;
        assert_eq!(
            SessionState::decode(&b).unwrap_err(),
            StateError::UnsupportedVersion(2)
        );
        let mut b = bytes.to_vec();
        b[0] = b'X';
        assert_eq!(SessionState::decode(&b).unwrap_err(), StateError::BadMagic);
        let mut b = bytes.to_vec();
        b[23] |= 0x02;
        assert_eq!(
            SessionState::decode(&b).unwrap_err(),
            StateError::Invalid("unknown flags")
        );
        assert_eq!(
            SessionState::decode(&vec![0; MAX_STATE_LEN + 1]).unwrap_err(),
            StateError::TooLarge
        );
    }

    #[test]
    fn the_size_bound_is_under_ten_mebibytes_and_the_head_is_24_bytes() {
        const { assert!(MAX_STATE_LEN < 10 * 1024 * 1024) };
        assert_eq!(HEAD_LEN, 24);
        assert_eq!(MAX_STATE_LEN, 9_654_761);
    }
}
