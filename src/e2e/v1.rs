//! The end-to-end envelope: what a client puts in a msg_req payload so that the server
//! relays and stores a message it can neither read, forge, alter, move to another
//! session nor attribute to another author.
//!
//! Layout (all integers big-endian; `man/mpchat-protocol.7` has the same table):
//!
//! ```text
//! offset size field
//! 0      4    magic "MPE1"
//! 4      2    r: number of recipients, 1..=MAX_RECIPIENTS
//! then r entries, in strictly increasing uid order:
//!        8    recipient uid (non-zero)
//!        2    w: wrapped key length = the recipient's RSA modulus size (256..=512)
//!        w    RSA-OAEP(SHA-256, MGF1-SHA-256, empty label) of the 32-byte content key
//! then   4    c: sealed content length, c >= 16 + 12
//!        c    AES-256-GCM(content key, nonce = 12 zero bytes,
//!                         aad = "mpchat v1 e2e" || sid || author uid)
//!             of (16-byte message id || UTF-8 text), then the 12-byte mac
//! then   2    s: signature length = the author's RSA modulus size (256..=512)
//!        s    RSA-PSS(SHA-256, MGF1-SHA-256, 32-byte salt) by the author over
//!             "mpchat v1 e2e sig" || sid || author uid || every byte before `s`
//! ```
//!
//! The content key is fresh for every message, so the fixed nonce is never reused
//! under one key. The sid and the author's uid are not in the envelope: the receiver
//! takes them from the MTP header, and the signature and the AEAD bind them, so a
//! copy moved to another session or relabelled with another author fails.
//!
//! This module must never release any plaintext (or say anything about it) before the
//! signature and the content mac have both verified, and never reports two failures of
//! an RSA decryption differently. It has no I/O except [`ReplayGuard::load`],
//! [`ReplayGuard::save`], [`ReplayGuard::append`] and [`SeenWrite::write_to`], and it
//! never logs.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use crate::codec::{CodecError, Reader};
use crate::crypto::{self, AeadKey, CryptoError, RsaPrivate, RsaPublic};
use crate::fsutil;
use crate::proto::MAX_ENVELOPE_LEN;

/// First four bytes of every envelope: format `MPE`, version `1`. A later format gets
/// a new magic, so a receiver never misreads one as the other.
pub const MAGIC: [u8; 4] = *b"MPE1";
/// Most recipients in one envelope: the participant limit (100, creator included)
/// minus the author. Bounds the parser's work and the entry list it allocates.
pub const MAX_RECIPIENTS: usize = 99;
/// Length of the random message id at the start of the inner plaintext; receivers
/// drop a second copy with an id they have seen (see [`ReplayGuard`]).
pub const MSG_ID_LEN: usize = 16;
/// Length of the content key (AES-256).
pub const CONTENT_KEY_LEN: usize = crypto::KEY_LEN;
/// Smallest RSA modulus in bytes: wrapped keys and signatures are exactly this long or
/// longer (2048-bit keys).
pub const MIN_RSA_LEN: usize = crypto::MIN_USER_KEY_BITS / 8;
/// Largest RSA modulus in bytes (4096-bit keys); bounds a wrapped key and a signature.
pub const MAX_RSA_LEN: usize = crypto::MAX_USER_KEY_BITS / 8;
/// Smallest sealed content: a message id and a mac. (Empty text is refused when
/// building and when opening, but the layout itself allows it.)
pub const MIN_SEALED_LEN: usize = MSG_ID_LEN + crypto::MAC_LEN;
/// AAD prefix of the content encryption.
pub const AAD_CONTEXT: &[u8] = b"mpchat v1 e2e";
/// Prefix of the signed data; differs from [`AAD_CONTEXT`] and from every other
/// signature context so a signature can never be reused as something else.
pub const SIG_CONTEXT: &[u8] = b"mpchat v1 e2e sig";
/// The content nonce: twelve zero bytes. Safe because the content key is random and
/// used for exactly one encryption.
pub const CONTENT_NONCE: [u8; crypto::NONCE_LEN] = [0; crypto::NONCE_LEN];

/// Bytes of fixed overhead: magic, `r`, `c`, `s`.
const FIXED_LEN: usize = 4 + 2 + 4 + 2;
/// Bytes of a recipient entry besides the wrapped key: uid and `w`.
const ENTRY_HEAD_LEN: usize = 8 + 2;

/// Why an envelope could not be built or opened. The `Display` form is a short
/// lowercase reason for the client's `error msg <reason>` line; it never contains
/// message contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E2eError {
    /// The bytes do not follow the layout (the reason says which rule broke). Either
    /// the server altered the envelope or the author's client is broken.
    Malformed(&'static str),
    /// The envelope is, or would be, longer than [`MAX_ENVELOPE_LEN`]: when building,
    /// the text is too long for this many recipients and key sizes.
    TooLarge,
    /// The signature does not verify under the author's key for this sid and author
    /// uid: altered, moved to another session, re-attributed, or forged.
    BadSignature,
    /// The envelope is genuine but was not addressed to us (the author did not know we
    /// had joined, or left us out because our key changed for them).
    NotARecipient,
    /// Our wrapped content key did not decrypt to a 32-byte key. Every cause gives
    /// this one variant, on purpose (no padding oracle). The author is at fault.
    Decrypt,
    /// The content did not authenticate under the unwrapped key. Since the signature
    /// verified, the author's client produced it.
    BadMac,
    /// The decrypted text is not UTF-8 (the author's client is broken).
    NotUtf8,
    /// The text is empty: refused when building, and when opening since no correct
    /// client produces it.
    EmptyText,
    /// No recipients were given (when building).
    NoRecipients,
    /// More than [`MAX_RECIPIENTS`] recipients were given (when building).
    TooManyRecipients,
    /// The same uid appears twice among the recipients (when building).
    DuplicateRecipient,
    /// The author is among the recipients (when building; when opening, the author's
    /// client is broken).
    AuthorIsRecipient,
    /// A sid or uid of 0 was given: no session or user has that id.
    InvalidId,
    /// A cryptographic operation failed locally (a key of an unusable size, the random
    /// number generator).
    Crypto(CryptoError),
}

impl fmt::Display for E2eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E2eError::Malformed(why) => write!(f, "malformed envelope: {why}"),
            E2eError::TooLarge => f.write_str("message too large"),
            E2eError::BadSignature => f.write_str("bad signature"),
            E2eError::NotARecipient => f.write_str("not a recipient"),
            E2eError::Decrypt => f.write_str("cannot decrypt content key"),
            E2eError::BadMac => f.write_str("content authentication failed"),
            E2eError::NotUtf8 => f.write_str("text is not utf-8"),
            E2eError::EmptyText => f.write_str("empty text"),
            E2eError::NoRecipients => f.write_str("no recipients"),
            E2eError::TooManyRecipients => f.write_str("too many recipients"),
            E2eError::DuplicateRecipient => f.write_str("duplicate recipient"),
            E2eError::AuthorIsRecipient => f.write_str("author among recipients"),
            E2eError::InvalidId => f.write_str("invalid id 0"),
            E2eError::Crypto(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for E2eError {}

impl From<CryptoError> for E2eError {
    fn from(e: CryptoError) -> Self {
        E2eError::Crypto(e)
    }
}

/// One recipient entry of a parsed envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrappedKey<'a> {
    /// The recipient's uid.
    pub uid: u64,
    /// The content key under the recipient's RSA key (OAEP).
    pub wrapped: &'a [u8],
}

/// An envelope split into its fields by [`parse`]; nothing in it is verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeView<'a> {
    /// Recipient entries, in strictly increasing uid order.
    pub recipients: Vec<WrappedKey<'a>>,
    /// The content ciphertext (`c - 12` bytes).
    pub ciphertext: &'a [u8],
    /// The 12-byte content mac.
    pub mac: &'a [u8],
    /// Every envelope byte before the signature length field: what the signature
    /// covers after the context, sid and author uid.
    pub signed: &'a [u8],
    /// The author's signature.
    pub signature: &'a [u8],
}

/// The error for a field the envelope is too short to hold.
fn truncated(what: &'static str) -> impl Fn(CodecError) -> E2eError {
    move |_| E2eError::Malformed(what)
}

/// Splits an envelope into its fields, checking the whole layout strictly: the total
/// length first, then every length field against its named limit and against the
/// bytes that remain, before anything is allocated; recipients in strictly increasing
/// non-zero uid order; no trailing bytes. Verifies nothing cryptographic.
pub fn parse(envelope: &[u8]) -> Result<EnvelopeView<'_>, E2eError> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(E2eError::TooLarge);
    }
    let mut cur = Reader::new(envelope);
    if cur.array::<4>().map_err(truncated("truncated magic"))? != MAGIC {
        return Err(E2eError::Malformed("bad magic"));
    }
    let r = usize::from(cur.u16().map_err(truncated("truncated recipient count"))?);
    if r == 0 {
        return Err(E2eError::Malformed("no recipients"));
    }
    if r > MAX_RECIPIENTS {
        return Err(E2eError::Malformed("too many recipients"));
    }
    if r * (ENTRY_HEAD_LEN + MIN_RSA_LEN) > cur.remaining() {
        return Err(E2eError::Malformed("truncated recipient list"));
    }
    let mut recipients = Vec::with_capacity(r);
    let mut last_uid = 0u64;
    for _ in 0..r {
        let uid = cur.u64().map_err(truncated("truncated recipient uid"))?;
        if uid == 0 {
            return Err(E2eError::Malformed("recipient uid 0"));
        }
        // uid > last_uid also rejects duplicates; last_uid starts at 0, never a uid.
        if uid <= last_uid {
            return Err(E2eError::Malformed(
                "recipients not in increasing uid order",
            ));
        }
        last_uid = uid;
        let w = usize::from(
            cur.u16()
                .map_err(truncated("truncated wrapped key length"))?,
        );
        if !(MIN_RSA_LEN..=MAX_RSA_LEN).contains(&w) {
            return Err(E2eError::Malformed("bad wrapped key length"));
        }
        let wrapped = cur.take(w).map_err(truncated("truncated wrapped key"))?;
        recipients.push(WrappedKey { uid, wrapped });
    }
    // A u32 that does not fit usize would exceed the remaining bytes anyway.
    let c = cur.u32().map_err(truncated("truncated content length"))?;
    let c = usize::try_from(c).unwrap_or(usize::MAX);
    if c < MIN_SEALED_LEN {
        return Err(E2eError::Malformed("content too short"));
    }
    let sealed = cur.take(c).map_err(truncated("truncated content"))?;
    let (ciphertext, mac) = sealed.split_at(c - crypto::MAC_LEN);
    let signed = cur.consumed();
    let s = usize::from(cur.u16().map_err(truncated("truncated signature length"))?);
    if !(MIN_RSA_LEN..=MAX_RSA_LEN).contains(&s) {
        return Err(E2eError::Malformed("bad signature length"));
    }
    let signature = cur.take(s).map_err(truncated("truncated signature"))?;
    cur.expect_empty()
        .map_err(|_| E2eError::Malformed("trailing bytes"))?;
    Ok(EnvelopeView {
        recipients,
        ciphertext,
        mac,
        signed,
        signature,
    })
}

/// The AAD of the content encryption: `"mpchat v1 e2e" || sid || author uid`.
fn content_aad(sid: u64, author_uid: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_CONTEXT.len() + 16);
    aad.extend_from_slice(AAD_CONTEXT);
    aad.extend_from_slice(&sid.to_be_bytes());
    aad.extend_from_slice(&author_uid.to_be_bytes());
    aad
}

/// The data the author signs: `"mpchat v1 e2e sig" || sid || author uid || signed`.
fn signed_data(sid: u64, author_uid: u64, signed: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(SIG_CONTEXT.len() + 16 + signed.len());
    data.extend_from_slice(SIG_CONTEXT);
    data.extend_from_slice(&sid.to_be_bytes());
    data.extend_from_slice(&author_uid.to_be_bytes());
    data.extend_from_slice(signed);
    data
}

fn usable_key_size(size: usize) -> Result<usize, E2eError> {
    if (MIN_RSA_LEN..=MAX_RSA_LEN).contains(&size) {
        Ok(size)
    } else {
        Err(E2eError::Crypto(CryptoError::InvalidKey))
    }
}

/// Builds the envelope of `text` from `author_uid` in session `sid` to `recipients`
/// (uid and public key each; any order: they are sorted by uid).
///
/// Refuses empty text, no or too many recipients, a duplicate uid, the author among the
/// recipients, an id of 0, keys outside 2048..=4096 bits, and (before doing any RSA
/// work) an envelope that would exceed [`MAX_ENVELOPE_LEN`]. The content key and the
/// message id are fresh random values.
pub fn seal(
    sid: u64,
    author_uid: u64,
    author_key: &RsaPrivate,
    recipients: &[(u64, &RsaPublic)],
    text: &str,
) -> Result<Vec<u8>, E2eError> {
    if text.is_empty() {
        return Err(E2eError::EmptyText);
    }
    if sid == 0 || author_uid == 0 {
        return Err(E2eError::InvalidId);
    }
    if recipients.is_empty() {
        return Err(E2eError::NoRecipients);
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(E2eError::TooManyRecipients);
    }
    let mut sorted: Vec<(u64, &RsaPublic)> = recipients.to_vec();
    sorted.sort_by_key(|&(uid, _)| uid);
    let mut total = FIXED_LEN + MIN_SEALED_LEN;
    for (i, &(uid, key)) in sorted.iter().enumerate() {
        if uid == 0 {
            return Err(E2eError::InvalidId);
        }
        if uid == author_uid {
            return Err(E2eError::AuthorIsRecipient);
        }
        if i > 0 && sorted[i - 1].0 == uid {
            return Err(E2eError::DuplicateRecipient);
        }
        total += ENTRY_HEAD_LEN + usable_key_size(key.size())?;
    }
    let sig_len = usable_key_size(author_key.size())?;
    total += sig_len;
    // Checked before the addition so a huge text cannot overflow the sum.
    if text.len() > MAX_ENVELOPE_LEN || total + text.len() > MAX_ENVELOPE_LEN {
        return Err(E2eError::TooLarge);
    }

    let content_key = crypto::random_array::<CONTENT_KEY_LEN>()?;
    let msg_id = crypto::random_array::<MSG_ID_LEN>()?;
    let mut out = Vec::with_capacity(total + text.len());
    out.extend_from_slice(&MAGIC);
    // Both fit: r <= 99, w and s <= 512, c < 65,491; checked above.
    out.extend_from_slice(&(sorted.len() as u16).to_be_bytes());
    for &(uid, key) in &sorted {
        let wrapped = key.oaep_encrypt(&content_key)?;
        if wrapped.len() != key.size() {
            return Err(E2eError::Crypto(CryptoError::InvalidInput));
        }
        out.extend_from_slice(&uid.to_be_bytes());
        out.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
        out.extend_from_slice(&wrapped);
    }
    let sealed_len = MSG_ID_LEN + text.len() + crypto::MAC_LEN;
    out.extend_from_slice(&(sealed_len as u32).to_be_bytes());
    let body_start = out.len();
    out.extend_from_slice(&msg_id);
    out.extend_from_slice(text.as_bytes());
    let key = AeadKey::new(content_key);
    let mac = key.seal_in_place_raw(
        CONTENT_NONCE,
        &content_aad(sid, author_uid),
        &mut out[body_start..],
    );
    out.extend_from_slice(&mac);
    let signature = author_key.pss_sign(&signed_data(sid, author_uid, &out))?;
    if signature.len() != sig_len {
        return Err(E2eError::Crypto(CryptoError::InvalidInput));
    }
    out.extend_from_slice(&(signature.len() as u16).to_be_bytes());
    out.extend_from_slice(&signature);
    debug_assert_eq!(out.len(), total + text.len());
    Ok(out)
}

/// A successfully opened message.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The random message id: feed `(sid, author, msg_id)` to [`ReplayGuard`].
    pub msg_id: [u8; MSG_ID_LEN],
    /// The text, as the author wrote it (escape control characters before printing).
    pub text: String,
    /// Every uid the author addressed, in increasing order (us included).
    pub recipients: Vec<u64>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("msg_id", &crate::encoding::hex(&self.msg_id))
            .field(
                "text",
                &format_args!("<{} bytes redacted>", self.text.len()),
            )
            .field("recipients", &self.recipients)
            .finish()
    }
}

/// Opens an envelope delivered in session `sid` (from the MTP header) by `author_uid`
/// (from the MTP header) whose key is `author_key` (the key pinned for that user), for
/// us (`my_uid`, `my_key`).
///
/// Checks, in order: the layout ([`parse`]); the signature (so nothing below runs on
/// unauthenticated bytes); the author not among the recipients; our entry (absent:
/// [`E2eError::NotARecipient`]); the content key (every failure
/// [`E2eError::Decrypt`]); the content mac; UTF-8 and non-empty text. No plaintext
/// leaves this function unless every check passed. The caller must still check the
/// message id with a [`ReplayGuard`].
pub fn open(
    sid: u64,
    author_uid: u64,
    author_key: &RsaPublic,
    my_uid: u64,
    my_key: &RsaPrivate,
    envelope: &[u8],
) -> Result<Opened, E2eError> {
    if sid == 0 || author_uid == 0 || my_uid == 0 {
        return Err(E2eError::InvalidId);
    }
    let view = parse(envelope)?;
    if view.signature.len() != author_key.size() {
        return Err(E2eError::BadSignature);
    }
    author_key
        .pss_verify(&signed_data(sid, author_uid, view.signed), view.signature)
        .map_err(|_| E2eError::BadSignature)?;
    // Entries are sorted and unique (parse checked), so binary search is exact.
    let find = |uid: u64| view.recipients.binary_search_by_key(&uid, |e| e.uid);
    if find(author_uid).is_ok() {
        return Err(E2eError::AuthorIsRecipient);
    }
    let mine = match find(my_uid) {
        Ok(i) => view.recipients[i],
        Err(_) => return Err(E2eError::NotARecipient),
    };
    if mine.wrapped.len() != my_key.size() {
        return Err(E2eError::Decrypt);
    }
    let content_key = my_key
        .oaep_decrypt(mine.wrapped)
        .map_err(|_| E2eError::Decrypt)?;
    let raw: [u8; CONTENT_KEY_LEN] = content_key[..].try_into().map_err(|_| E2eError::Decrypt)?;
    let key = AeadKey::new(raw);
    let mut plain = key
        .open_raw(
            CONTENT_NONCE,
            &content_aad(sid, author_uid),
            view.ciphertext,
            view.mac,
        )
        .map_err(|_| E2eError::BadMac)?;
    // parse guarantees ciphertext >= MSG_ID_LEN bytes.
    let text = plain.split_off(MSG_ID_LEN);
    let mut msg_id = [0u8; MSG_ID_LEN];
    msg_id.copy_from_slice(&plain);
    let text = match String::from_utf8(text) {
        Ok(t) => t,
        Err(e) => {
            wipe(e.into_bytes());
            return Err(E2eError::NotUtf8);
        }
    };
    if text.is_empty() {
        return Err(E2eError::EmptyText);
    }
    Ok(Opened {
        msg_id,
        text,
        recipients: view.recipients.iter().map(|e| e.uid).collect(),
    })
}

/// Best-effort wipe of plaintext we refuse to release.
fn wipe(mut v: Vec<u8>) {
    v.fill(0);
    std::hint::black_box(&v);
}

/// How many message ids a [`ReplayGuard`] remembers.
///
/// The trade-off: memory and file size against how old a replay can be and still be
/// caught. An id costs 32 bytes in the file (3.2 MB at most) and roughly twice that in
/// memory. Once more than this many newer messages have been opened, the oldest ids are
/// forgotten (first in, first out) and a replay of such an old message would be shown
/// again. The server bounds a session's backlog at 10,000 messages, so 100,000 covers
/// the whole backlog of several busy sessions; a server that keeps copies beyond that
/// on purpose is already known to be hostile and can only repeat old, genuine text.
pub const MAX_SEEN_IDS: usize = 100_000;
/// First bytes of a saved [`ReplayGuard`] file.
pub const SEEN_FILE_MAGIC: [u8; 8] = *b"MPSEEN1\n";
/// One record in the file: sid (8), author uid (8), message id (16).
const SEEN_RECORD_LEN: usize = 8 + 8 + MSG_ID_LEN;
/// Largest [`ReplayGuard`] file read: the magic and twice [`MAX_SEEN_IDS`] records
/// (ids are appended one by one and the file is rewritten with the remembered ones
/// when it holds twice the limit).
pub const MAX_SEEN_FILE_LEN: usize = SEEN_FILE_MAGIC.len() + 2 * MAX_SEEN_IDS * SEEN_RECORD_LEN;

type SeenId = (u64, u64, [u8; MSG_ID_LEN]);

/// Remembers the `(sid, author uid, message id)` of opened messages so that a copy the
/// server delivers again, even under a new `n`, is dropped rather than shown twice.
///
/// Record an id only after [`open`] succeeded (the id is only trustworthy then). Bounded
/// by a limit ([`MAX_SEEN_IDS`] by default) with first-in-first-out eviction. The file
/// form ([`ReplayGuard::save`], [`ReplayGuard::load`]) is [`SEEN_FILE_MAGIC`] followed
/// by 32-byte records, oldest first: sid (8 bytes, big-endian), author uid (8), message
/// id (16). A client should save before it acknowledges, so a restart cannot show a
/// message twice.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    set: HashSet<SeenId>,
    order: VecDeque<SeenId>,
    limit: usize,
    /// Records in the file it was loaded from or last written to.
    on_disk: usize,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayGuard {
    /// An empty guard remembering up to [`MAX_SEEN_IDS`] ids.
    pub fn new() -> Self {
        Self::with_limit(MAX_SEEN_IDS)
    }

    /// An empty guard remembering up to `limit` ids (at least 1, at most
    /// [`MAX_SEEN_IDS`], so a saved file can always be loaded).
    pub fn with_limit(limit: usize) -> Self {
        ReplayGuard {
            set: HashSet::new(),
            order: VecDeque::new(),
            limit: limit.clamp(1, MAX_SEEN_IDS),
            on_disk: 0,
        }
    }

    /// Returns `true` if this id was not seen before (it is now recorded: show the
    /// message), `false` if it was (a replayed copy: drop it).
    pub fn check_and_record(&mut self, sid: u64, author: u64, msg_id: [u8; MSG_ID_LEN]) -> bool {
        let id = (sid, author, msg_id);
        if self.set.contains(&id) {
            return false;
        }
        while self.order.len() >= self.limit {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id);
        self.order.push_back(id);
        true
    }

    /// Whether this id has been recorded (and not evicted yet).
    pub fn contains(&self, sid: u64, author: u64, msg_id: &[u8; MSG_ID_LEN]) -> bool {
        self.set.contains(&(sid, author, *msg_id))
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Forgets every id of session `sid` (for example once it is closed: its sid is
    /// never reused, so nothing can be replayed into it).
    pub fn forget_session(&mut self, sid: u64) {
        self.order.retain(|id| id.0 != sid);
        self.set.retain(|id| id.0 != sid);
    }

    /// Reads a guard saved by [`ReplayGuard::save`]; a missing file gives an empty
    /// guard. Refuses a file that is too long, not a whole number of records, has the
    /// wrong magic or repeats an id (none of which `save` writes).
    pub fn load(path: &Path) -> io::Result<ReplayGuard> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReplayGuard::new()),
            Err(e) => return Err(e),
        };
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", path.display()),
            )
        };
        let mut data = Vec::new();
        // Read one byte past the limit to tell "at the limit" from "over it".
        file.take(MAX_SEEN_FILE_LEN as u64 + 1)
            .read_to_end(&mut data)?;
        if data.len() > MAX_SEEN_FILE_LEN {
            return Err(bad("too large for a seen-message file"));
        }
        let Some(records) = data.strip_prefix(&SEEN_FILE_MAGIC[..]) else {
            return Err(bad("not a seen-message file (bad magic)"));
        };
        // A partial last record is an append cut short by a crash: it was never
        // synced, so the message it names was never acknowledged; drop it.
        let mut guard = ReplayGuard::new();
        let mut r = Reader::new(records);
        while r.remaining() >= SEEN_RECORD_LEN {
            let (Ok(sid), Ok(author), Ok(msg_id)) = (r.u64(), r.u64(), r.array::<MSG_ID_LEN>())
            else {
                break;
            };
            // An id can appear twice: forgotten past the limit, then seen again.
            guard.check_and_record(sid, author, msg_id);
        }
        guard.on_disk = records.len() / SEEN_RECORD_LEN;
        Ok(guard)
    }

    /// Records that `(sid, author, msg_id)` was shown and says how to bring the file up
    /// to date, without touching it: append one record, at constant cost, or (when there
    /// is no file yet, after a failed write, or once the file holds twice the limit)
    /// rewrite it with just the remembered ids. The caller writes it
    /// ([`SeenWrite::write_to`]) before acknowledging the message, and calls
    /// [`ReplayGuard::mark_unsaved`] if the write fails.
    pub fn record(&mut self, sid: u64, author: u64, msg_id: [u8; MSG_ID_LEN]) -> SeenWrite {
        self.check_and_record(sid, author, msg_id);
        if self.on_disk == 0 || self.on_disk >= 2 * self.limit {
            self.on_disk = self.order.len();
            return SeenWrite::Rewrite(self.to_bytes());
        }
        let mut rec = Vec::with_capacity(SEEN_RECORD_LEN);
        rec.extend_from_slice(&sid.to_be_bytes());
        rec.extend_from_slice(&author.to_be_bytes());
        rec.extend_from_slice(&msg_id);
        self.on_disk += 1;
        SeenWrite::Append(rec)
    }

    /// Says the last [`SeenWrite`] did not reach the file: the next
    /// [`ReplayGuard::record`] rewrites it whole.
    pub fn mark_unsaved(&mut self) {
        self.on_disk = 0;
    }

    /// Records that `(sid, author, msg_id)` was shown, durably, at constant cost
    /// ([`ReplayGuard::record`], then its write, synced).
    pub fn append(
        &mut self,
        path: &Path,
        sid: u64,
        author: u64,
        msg_id: [u8; MSG_ID_LEN],
    ) -> io::Result<()> {
        let write = self.record(sid, author, msg_id);
        write.write_to(path).inspect_err(|_| self.mark_unsaved())
    }

    /// The whole file form: the magic, then every remembered id, oldest first.
    fn to_bytes(&self) -> Vec<u8> {
        let mut data =
            Vec::with_capacity(SEEN_FILE_MAGIC.len() + self.order.len() * SEEN_RECORD_LEN);
        data.extend_from_slice(&SEEN_FILE_MAGIC);
        for (sid, author, msg_id) in &self.order {
            data.extend_from_slice(&sid.to_be_bytes());
            data.extend_from_slice(&author.to_be_bytes());
            data.extend_from_slice(msg_id);
        }
        data
    }

    /// Writes the guard to `path` atomically, mode 0600 (the ids reveal who wrote how
    /// much, when, in which session).
    pub fn save(&mut self, path: &Path) -> io::Result<()> {
        fsutil::atomic_write(path, &self.to_bytes(), 0o600)?;
        self.on_disk = self.order.len();
        Ok(())
    }
}

/// What [`ReplayGuard::record`] asks to be written to the seen-message file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeenWrite {
    /// One record to append to the existing file.
    Append(Vec<u8>),
    /// The whole file, to write in place of the old one (atomically).
    Rewrite(Vec<u8>),
}

impl SeenWrite {
    /// Applies the write to `path`, mode 0600, synced before it returns.
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match self {
            SeenWrite::Rewrite(data) => fsutil::atomic_write(path, data, 0o600),
            SeenWrite::Append(rec) => {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(rec)?;
                f.sync_data()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_ids_are_compacted_once_the_file_holds_twice_the_limit() {
        let dir = std::env::temp_dir().join(format!("mpchat-seen-{}", std::process::id()));
        fsutil::ensure_private_dir(&dir).unwrap();
        let path = dir.join("seen");
        let mut g = ReplayGuard::with_limit(2);
        for i in 0..7u8 {
            g.append(&path, 1, 2, [i; MSG_ID_LEN]).unwrap();
            let records = (std::fs::metadata(&path).unwrap().len() as usize
                - SEEN_FILE_MAGIC.len())
                / SEEN_RECORD_LEN;
            assert!(
                records <= 2 * 2 + 1,
                "the file stays bounded: {records} records"
            );
        }
        let loaded = ReplayGuard::load(&path).unwrap();
        assert!(loaded.contains(1, 2, &[6; MSG_ID_LEN]) && loaded.contains(1, 2, &[5; MSG_ID_LEN]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn max_envelope_len_matches_the_design() {
        assert_eq!(MAX_ENVELOPE_LEN, 65_491);
        assert_eq!(MIN_SEALED_LEN, 28);
    }

    /// A syntactically valid envelope to `uids`, with filler keys, content and signature.
    fn skeleton(uids: &[u64], w: u16, c: u32, s: u16) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&(uids.len() as u16).to_be_bytes());
        for uid in uids {
            v.extend_from_slice(&uid.to_be_bytes());
            v.extend_from_slice(&w.to_be_bytes());
            v.extend(std::iter::repeat_n(0xaa, w as usize));
        }
        v.extend_from_slice(&c.to_be_bytes());
        v.extend(std::iter::repeat_n(0xbb, c as usize));
        v.extend_from_slice(&s.to_be_bytes());
        v.extend(std::iter::repeat_n(0xcc, s as usize));
        v
    }

    #[test]
    fn parse_splits_a_well_formed_envelope_into_fields() {
        let env = skeleton(&[3, 9], 256, 40, 384);
        let view = parse(&env).unwrap();
        assert_eq!(
            view.recipients.iter().map(|e| e.uid).collect::<Vec<_>>(),
            [3, 9]
        );
        assert!(view.recipients.iter().all(|e| e.wrapped.len() == 256));
        assert_eq!(view.ciphertext.len(), 28);
        assert_eq!(view.mac.len(), 12);
        assert_eq!(view.signed.len(), env.len() - 2 - 384);
        assert_eq!(view.signature.len(), 384);
    }

    #[test]
    fn parse_rejects_each_broken_rule() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (skeleton(&[], 256, 40, 256), "no recipients"),
            (skeleton(&[0], 256, 40, 256), "recipient uid 0"),
            (
                skeleton(&[5, 5], 256, 40, 256),
                "recipients not in increasing uid order",
            ),
            (
                skeleton(&[6, 5], 256, 40, 256),
                "recipients not in increasing uid order",
            ),
            (skeleton(&[5], 255, 40, 256), "bad wrapped key length"),
            (skeleton(&[5], 513, 40, 256), "bad wrapped key length"),
            (skeleton(&[5], 256, 27, 256), "content too short"),
            (skeleton(&[5], 256, 40, 255), "bad signature length"),
            (skeleton(&[5], 256, 40, 513), "bad signature length"),
        ];
        for (env, why) in cases {
            assert_eq!(parse(&env), Err(E2eError::Malformed(why)), "{why}");
        }
        let uids: Vec<u64> = (1..=100).collect();
        assert_eq!(
            parse(&skeleton(&uids, 256, 40, 256)),
            Err(E2eError::Malformed("too many recipients"))
        );
        let mut many = MAGIC.to_vec();
        many.extend_from_slice(&100u16.to_be_bytes());
        assert_eq!(
            parse(&many),
            Err(E2eError::Malformed("too many recipients"))
        );
        let mut bad_magic = skeleton(&[5], 256, 40, 256);
        bad_magic[3] = b'2';
        assert_eq!(parse(&bad_magic), Err(E2eError::Malformed("bad magic")));
        let mut trailing = skeleton(&[5], 256, 40, 256);
        trailing.push(0);
        assert_eq!(parse(&trailing), Err(E2eError::Malformed("trailing bytes")));
        let mut huge_c = skeleton(&[5], 256, 40, 256);
        let at = 4 + 2 + 10 + 256;
        huge_c[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            parse(&huge_c),
            Err(E2eError::Malformed("truncated content"))
        );
    }

    #[test]
    fn parse_rejects_every_truncation_without_panicking() {
        let env = skeleton(&[1, 2, 3], 256, 50, 256);
        for len in 0..env.len() {
            assert!(
                matches!(parse(&env[..len]), Err(E2eError::Malformed(_))),
                "length {len}"
            );
        }
    }

    #[test]
    fn parse_refuses_envelopes_over_the_relay_limit() {
        assert_eq!(
            parse(&vec![0u8; MAX_ENVELOPE_LEN + 1]),
            Err(E2eError::TooLarge)
        );
    }

    #[test]
    fn replay_guard_evicts_the_oldest_id_first() {
        let mut g = ReplayGuard::with_limit(2);
        assert!(g.check_and_record(1, 2, [1; 16]));
        assert!(g.check_and_record(1, 2, [2; 16]));
        assert!(!g.check_and_record(1, 2, [1; 16]));
        assert!(g.check_and_record(1, 2, [3; 16]));
        assert_eq!(g.len(), 2);
        assert!(!g.contains(1, 2, &[1; 16]), "oldest evicted");
        assert!(g.contains(1, 2, &[2; 16]));
        assert!(
            g.check_and_record(2, 2, [3; 16]),
            "another session is another id"
        );
        assert!(
            g.check_and_record(2, 3, [3; 16]),
            "another author is another id"
        );
    }

    #[test]
    fn replay_guard_forgets_a_closed_session() {
        let mut g = ReplayGuard::new();
        assert!(g.check_and_record(1, 2, [1; 16]));
        assert!(g.check_and_record(7, 2, [1; 16]));
        g.forget_session(1);
        assert_eq!(g.len(), 1);
        assert!(g.contains(7, 2, &[1; 16]));
        assert!(!g.contains(1, 2, &[1; 16]));
    }

    #[test]
    fn errors_display_short_lowercase_reasons() {
        for e in [
            E2eError::Malformed("trailing bytes"),
            E2eError::TooLarge,
            E2eError::BadSignature,
            E2eError::NotARecipient,
            E2eError::Decrypt,
            E2eError::BadMac,
            E2eError::NotUtf8,
            E2eError::EmptyText,
            E2eError::DuplicateRecipient,
            E2eError::AuthorIsRecipient,
        ] {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n') && s.len() < 60, "{s}");
            assert_eq!(
                s.chars().next(),
                s.chars().next().map(|c| c.to_ascii_lowercase())
            );
        }
    }
}
