//! The one module that names `ring`, `rsa` and `pbkdf2`.
//!
//! Everything cryptographic that mpchat does goes through here: AES-256-GCM with the
//! protocol's 12-byte mac, the nonce layout, HKDF-SHA-256 (key schedule and rekey),
//! X25519, SHA-256, PBKDF2-HMAC-SHA-256, RSA-OAEP and RSA-PSS, and the key files; and
//! for the end-to-end v2 envelope HMAC-SHA-256, HKDF-SHA-256 with any output length,
//! Ed25519 and AES-256-GCM with its full 16-byte tag.
//! It must never release plaintext before its mac has been checked, and never report
//! two RSA decryption failures differently (the Marvin attack feeds on such hints).
//!
//! Secrets held here are wiped on drop and never printed. `ring` keeps its own
//! expanded copies inside its key objects (HMAC pads, AES round keys, the Ed25519
//! scalar) and does not wipe those: short-lived where we can (an HMAC or AES key is
//! built per use), and the one long-lived one ([`Ed25519Signer`]) is documented.

use std::fmt;
use std::path::Path;

use ring::signature::KeyPair as _;
use ring::{aead, agreement, digest, hkdf, hmac, signature};
use rsa::pkcs8::der::zeroize::{Zeroize, Zeroizing};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;

use crate::encoding;
use crate::fsutil;

/// Length of an AES-256-GCM key and of every derived key.
pub const KEY_LEN: usize = 32;
/// The protocol's mac: the first 12 bytes of the 16-byte GCM tag.
pub const MAC_LEN: usize = 12;
/// Length of a nonce.
pub const NONCE_LEN: usize = 12;
/// SHA-256 output length.
pub const HASH_LEN: usize = 32;
/// X25519 public key and shared secret length.
pub const X25519_LEN: usize = 32;
/// Server key size in bits (fixed by the design: `etk` is 256 bytes).
pub const SERVER_KEY_BITS: usize = 2048;
/// Smallest user key accepted for end-to-end messages.
pub const MIN_USER_KEY_BITS: usize = 2048;
/// Largest user key accepted; also bounds the cost a peer's key can impose on us.
pub const MAX_USER_KEY_BITS: usize = 4096;
/// PSS salt length (the digest length), fixed by the design.
pub const PSS_SALT_LEN: usize = 32;
/// Full AES-GCM tag length (the end-to-end v2 envelope keeps all 16 bytes).
pub const TAG_LEN: usize = 16;
/// Ed25519 private key seed length (RFC 8032).
pub const ED25519_SEED_LEN: usize = 32;
/// Ed25519 public key length.
pub const ED25519_PUBLIC_LEN: usize = 32;
/// Ed25519 signature length.
pub const ED25519_SIGNATURE_LEN: usize = 64;
/// HMAC-SHA-256 output length.
pub const HMAC_LEN: usize = 32;
/// Longest HKDF-SHA-256 output (RFC 5869: 255 hash lengths).
pub const MAX_HKDF_LEN: usize = 255 * HASH_LEN;

/// What went wrong in a cryptographic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoError {
    /// A mac did not verify: the data was altered, or sealed under another key or
    /// nonce. The peer is faulty or hostile.
    BadMac,
    /// An RSA decryption failed. Every cause reports this one variant, on purpose.
    Decrypt,
    /// An RSA signature did not verify.
    BadSignature,
    /// A key could not be parsed, or is of an unacceptable kind or size.
    InvalidKey,
    /// A peer's X25519 share was invalid (for example a low-order point).
    KeyAgreement,
    /// The operating system's random number generator failed.
    Rng,
    /// An operation was asked for with impossible inputs (too long to seal or encrypt).
    InvalidInput,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CryptoError::BadMac => "message authentication failed",
            CryptoError::Decrypt => "decryption failed",
            CryptoError::BadSignature => "signature verification failed",
            CryptoError::InvalidKey => "invalid key",
            CryptoError::KeyAgreement => "key agreement failed",
            CryptoError::Rng => "random number generator failed",
            CryptoError::InvalidInput => "invalid input to a cryptographic operation",
        })
    }
}

impl std::error::Error for CryptoError {}

/// Fills `buf` from the operating system's random number generator.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Rng)
}

/// `N` fresh random bytes.
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// A random non-zero 64-bit id (uids, sids).
pub fn random_nonzero_u64() -> Result<u64, CryptoError> {
    loop {
        let v = u64::from_be_bytes(random_array()?);
        if v != 0 {
            return Ok(v);
        }
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; HASH_LEN] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// Which way a message travels; part of every nonce so the two directions never share
/// a nonce even though they count sequence numbers independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: nonce byte `00`.
    ClientToServer,
    /// Server to client: nonce byte `01`.
    ServerToClient,
}

impl Direction {
    fn byte(self) -> u8 {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }
}

/// An MTP nonce: `sqn` (2 bytes, big-endian) || direction (1 byte) || nine zero bytes.
///
/// Sequence numbers never repeat under one key (the rekey after `0xFFFF` guarantees
/// it), so (key, nonce) pairs are unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    /// The message's sequence number.
    pub sqn: u16,
    /// The message's direction.
    pub dir: Direction,
}

impl Nonce {
    /// The 12 nonce bytes.
    pub fn to_bytes(self) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..2].copy_from_slice(&self.sqn.to_be_bytes());
        n[2] = self.dir.byte();
        n
    }
}

/// An AES-256-GCM key. Keeps its raw bytes (the rekey derives the next key from them),
/// wipes them on drop and never prints them.
pub struct AeadKey {
    raw: Zeroizing<[u8; KEY_LEN]>,
    key: aead::LessSafeKey,
}

impl AeadKey {
    /// Wraps 32 raw key bytes.
    pub fn new(raw: [u8; KEY_LEN]) -> Self {
        let raw = Zeroizing::new(raw);
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &raw[..])
            .expect("AES-256-GCM accepts every 32-byte key");
        AeadKey {
            raw,
            key: aead::LessSafeKey::new(unbound),
        }
    }

    /// The raw key bytes (for the rekey and for test vectors).
    pub fn raw(&self) -> &[u8; KEY_LEN] {
        &self.raw
    }

    /// The next key for this direction after `sqn = 0xFFFF`:
    /// `HKDF-Expand(PRK = old key, info = "mpchat v1 rekey", 32)`.
    pub fn rekeyed(&self) -> AeadKey {
        AeadKey::new(rekey(&self.raw))
    }

    /// Encrypts `in_out` in place and returns the 12-byte mac over `aad` and the
    /// ciphertext.
    pub fn seal_in_place(&self, nonce: Nonce, aad: &[u8], in_out: &mut [u8]) -> [u8; MAC_LEN] {
        self.seal_in_place_raw(nonce.to_bytes(), aad, in_out)
    }

    /// [`AeadKey::seal_in_place`] with raw nonce bytes, for keys used outside the MTP
    /// (an end-to-end content key is fresh per message, so any fixed nonce is unique).
    pub fn seal_in_place_raw(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> [u8; MAC_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                in_out,
            )
            .expect("GCM seals any message shorter than 64 GiB");
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        mac
    }

    /// Checks `mac` over `aad` and `ciphertext` and returns the plaintext.
    ///
    /// `ring` verifies only full 16-byte tags, so this recomputes the tag: GCM
    /// encryption is an XOR with a keystream, so "sealing" the ciphertext yields the
    /// plaintext, and sealing that plaintext again yields the ciphertext's true tag.
    /// The plaintext is released only after a constant-time comparison of 12 bytes.
    pub fn open(
        &self,
        nonce: Nonce,
        aad: &[u8],
        ciphertext: &[u8],
        mac: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.open_raw(nonce.to_bytes(), aad, ciphertext, mac)
    }

    /// [`AeadKey::open`] with raw nonce bytes.
    pub fn open_raw(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
        mac: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if mac.len() != MAC_LEN {
            return Err(CryptoError::BadMac);
        }
        let mut plain = ciphertext.to_vec();
        self.seal_in_place_raw(nonce, &[], &mut plain);
        let mut again = plain.clone();
        let tag = self.seal_in_place_raw(nonce, aad, &mut again);
        if ct_eq(&tag, mac) {
            Ok(plain)
        } else {
            plain.zeroize();
            Err(CryptoError::BadMac)
        }
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AeadKey(<redacted>)")
    }
}

/// Output-length marker for `ring`'s HKDF: always 32 bytes here.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

fn expand(prk: &hkdf::Prk, info: &[u8]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    prk.expand(&[info], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-SHA-256 can expand to 32 bytes");
    out
}

/// Info string of the per-direction rekey.
pub const REKEY_INFO: &[u8] = b"mpchat v1 rekey";
/// Info string of the client-to-server traffic key.
pub const C2S_INFO: &[u8] = b"mpchat v1 c2s";
/// Info string of the server-to-client traffic key.
pub const S2C_INFO: &[u8] = b"mpchat v1 s2c";

/// `HKDF-Expand(PRK = old, info = "mpchat v1 rekey", 32)`.
pub fn rekey(old: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    expand(
        &hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, old),
        REKEY_INFO,
    )
}

/// The login key schedule. Returns `(k_c2s, k_s2c)`.
///
/// `PRK = HKDF-Extract(salt = request_hash, IKM = client_random || server_random ||
/// shared)`; each key is `HKDF-Expand(PRK, "mpchat v1 c2s" | "mpchat v1 s2c", 32)`.
pub fn traffic_keys(
    request_hash: &[u8; HASH_LEN],
    client_random: &[u8; 16],
    server_random: &[u8; 16],
    shared: &[u8; X25519_LEN],
) -> (AeadKey, AeadKey) {
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..16].copy_from_slice(client_random);
    ikm[16..32].copy_from_slice(server_random);
    ikm[32..].copy_from_slice(shared);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, request_hash).extract(&ikm[..]);
    (
        AeadKey::new(expand(&prk, C2S_INFO)),
        AeadKey::new(expand(&prk, S2C_INFO)),
    )
}

/// An ephemeral X25519 secret, usable once.
pub struct X25519Secret(agreement::EphemeralPrivateKey);

impl X25519Secret {
    /// A fresh key pair: the secret and its 32-byte public share.
    pub fn generate() -> Result<(Self, [u8; X25519_LEN]), CryptoError> {
        let rng = ring::rand::SystemRandom::new();
        let secret = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
            .map_err(|_| CryptoError::Rng)?;
        let public = secret.compute_public_key().map_err(|_| CryptoError::Rng)?;
        let mut share = [0u8; X25519_LEN];
        share.copy_from_slice(public.as_ref());
        Ok((X25519Secret(secret), share))
    }

    /// The shared secret with `peer`; consumes the secret so it cannot be reused.
    pub fn agree(
        self,
        peer: &[u8; X25519_LEN],
    ) -> Result<Zeroizing<[u8; X25519_LEN]>, CryptoError> {
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer);
        agreement::agree_ephemeral(self.0, &peer, |ss| {
            let mut out = Zeroizing::new([0u8; X25519_LEN]);
            out.copy_from_slice(ss);
            out
        })
        .map_err(|_| CryptoError::KeyAgreement)
    }
}

impl fmt::Debug for X25519Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("X25519Secret(<redacted>)")
    }
}

/// HMAC-SHA-256 of `data` under `key`, wiped on drop (in mpchat its outputs are chain
/// keys and message key seeds).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Zeroizing<[u8; HMAC_LEN]> {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = Zeroizing::new([0u8; HMAC_LEN]);
    out.copy_from_slice(tag.as_ref());
    out
}

/// Output-length marker for `ring`'s HKDF with a length chosen by the caller.
struct HkdfLen(usize);

impl hkdf::KeyType for HkdfLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA-256 (RFC 5869): extract with `salt` (an empty salt is HashLen zero bytes,
/// as the RFC says; HMAC pads both to the same block), then expand `N` bytes with
/// `info`. `N` must be at most [`MAX_HKDF_LEN`]; that is checked at compile time.
pub fn hkdf_sha256<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; N]> {
    const { assert!(N > 0 && N <= MAX_HKDF_LEN) };
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let mut out = Zeroizing::new([0u8; N]);
    prk.expand(&[info], HkdfLen(N))
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("HKDF-SHA-256 expands to at most 255 hash lengths, checked above");
    out
}

/// AES-256-GCM with the full 16-byte tag: `ciphertext || tag` of `plaintext`.
///
/// The caller guarantees that `(key, nonce)` is never used for two different messages
/// (in mpchat both come from a one-time message key of the sender-key ratchet).
pub fn aes256gcm_seal(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_256_GCM, key).expect("AES-256 takes 32-byte keys"),
    );
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(*nonce),
        aead::Aad::from(aad),
        &mut out,
    )
    .expect("GCM seals any message shorter than 64 GiB");
    out
}

/// Opens `ciphertext || tag` made by [`aes256gcm_seal`], in one pass (`ring` checks a
/// full tag itself). The plaintext is released only if the tag verifies; on failure
/// `ring` has already zeroed the buffer.
pub fn aes256gcm_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < TAG_LEN {
        return Err(CryptoError::BadMac);
    }
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_256_GCM, key).expect("AES-256 takes 32-byte keys"),
    );
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key(*nonce),
            aead::Aad::from(aad),
            &mut buf[..],
        )
        .map_err(|_| CryptoError::BadMac)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// An Ed25519 signing key (RFC 8032), kept with its 32-byte seed so it can be stored.
///
/// The seed is wiped on drop and never printed. `ring`'s key pair inside holds the
/// expanded private scalar, which `ring` does not wipe; it lives as long as this value.
pub struct Ed25519Signer {
    seed: Zeroizing<[u8; ED25519_SEED_LEN]>,
    pair: signature::Ed25519KeyPair,
}

impl Ed25519Signer {
    /// A fresh key pair from the operating system's random number generator.
    pub fn generate() -> Result<Self, CryptoError> {
        let seed = Zeroizing::new(random_array::<ED25519_SEED_LEN>()?);
        Ok(Self::from_seed(&seed))
    }

    /// The key pair of a 32-byte seed (every seed is valid).
    pub fn from_seed(seed: &[u8; ED25519_SEED_LEN]) -> Self {
        let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .expect("every 32-byte seed is an Ed25519 private key");
        Ed25519Signer {
            seed: Zeroizing::new(*seed),
            pair,
        }
    }

    /// The seed, for storing the key.
    pub fn seed(&self) -> &[u8; ED25519_SEED_LEN] {
        &self.seed
    }

    /// The 32-byte public key.
    pub fn public(&self) -> [u8; ED25519_PUBLIC_LEN] {
        let mut out = [0u8; ED25519_PUBLIC_LEN];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// The (deterministic) signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; ED25519_SIGNATURE_LEN] {
        let mut out = [0u8; ED25519_SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519Signer(<redacted>)")
    }
}

/// Verifies an Ed25519 signature over `msg` under the 32-byte public key `public`.
pub fn ed25519_verify(
    public: &[u8; ED25519_PUBLIC_LEN],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), CryptoError> {
    if sig.len() != ED25519_SIGNATURE_LEN {
        return Err(CryptoError::BadSignature);
    }
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(msg, sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// PBKDF2-HMAC-SHA-256 with a 32-byte output.
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// An RSA private key (the server's, or a user's end-to-end key).
pub struct RsaPrivate(rsa::PrivateKey);

impl RsaPrivate {
    /// Generates a key of `bits` bits with exponent 65537.
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        let mut rng = getrandom::SysRng;
        rsa::PrivateKey::new(&mut rng, bits)
            .map(RsaPrivate)
            .map_err(|_| CryptoError::Rng)
    }

    /// Parses a PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = rsa::PrivateKey::from_pkcs8_pem(pem).map_err(|_| CryptoError::InvalidKey)?;
        let bits = key.size() * 8;
        if !(MIN_USER_KEY_BITS..=MAX_USER_KEY_BITS).contains(&bits) {
            return Err(CryptoError::InvalidKey);
        }
        Ok(RsaPrivate(key))
    }

    /// PKCS#8 PEM, wiped when dropped.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| CryptoError::InvalidKey)
    }

    /// The public half.
    pub fn public(&self) -> RsaPublic {
        RsaPublic::from_key(self.0.to_public_key())
            .expect("a valid private key has an encodable public key")
    }

    /// Modulus size in bytes (the length of ciphertexts and signatures).
    pub fn size(&self) -> usize {
        self.0.size()
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) decryption, blinded. Every
    /// failure is the same [`CryptoError::Decrypt`].
    pub fn oaep_decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.0
            .oaep_decrypt::<Sha256>(ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }

    /// RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) signature over `msg`.
    pub fn pss_sign(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0.pss_sign::<Sha256>(msg).map_err(|_| CryptoError::Rng)
    }
}

impl fmt::Debug for RsaPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RsaPrivate(<redacted>)")
    }
}

/// An RSA public key together with its SubjectPublicKeyInfo DER encoding, which is
/// what goes on the wire, what fingerprints hash and what pins compare.
#[derive(Clone)]
pub struct RsaPublic {
    key: rsa::PublicKey,
    spki_der: Vec<u8>,
}

impl PartialEq for RsaPublic {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}

impl Eq for RsaPublic {}

impl RsaPublic {
    fn from_key(key: rsa::PublicKey) -> Result<Self, CryptoError> {
        let spki_der = key
            .to_public_key_der()
            .map_err(|_| CryptoError::InvalidKey)?
            .into_vec();
        Ok(RsaPublic { key, spki_der })
    }

    /// Parses SubjectPublicKeyInfo DER; accepts 2048- to 4096-bit keys only.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        // Bound the input before parsing: a 4096-bit SPKI is well under 1 KiB.
        if der.len() > MAX_SPKI_DER_LEN {
            return Err(CryptoError::InvalidKey);
        }
        let key = rsa::PublicKey::from_public_key_der(der).map_err(|_| CryptoError::InvalidKey)?;
        let bits = key.size() * 8;
        if !(MIN_USER_KEY_BITS..=MAX_USER_KEY_BITS).contains(&bits) {
            return Err(CryptoError::InvalidKey);
        }
        let this = Self::from_key(key)?;
        // Only the canonical encoding is accepted, so one key has one fingerprint.
        if this.spki_der != der {
            return Err(CryptoError::InvalidKey);
        }
        Ok(this)
    }

    /// Parses an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_spki_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = rsa::PublicKey::from_public_key_pem(pem).map_err(|_| CryptoError::InvalidKey)?;
        let this = Self::from_key(key)?;
        Self::from_spki_der(&this.spki_der)
    }

    /// SPKI PEM text.
    pub fn to_spki_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("a parsed key re-encodes")
    }

    /// The SubjectPublicKeyInfo DER bytes.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The wire form: standard padded base64 of the SPKI DER, one line.
    pub fn to_base64(&self) -> String {
        encoding::b64(&self.spki_der)
    }

    /// Parses the wire form.
    pub fn from_base64(s: &str) -> Result<Self, CryptoError> {
        if s.len() > MAX_SPKI_DER_LEN * 4 / 3 + 4 {
            return Err(CryptoError::InvalidKey);
        }
        Self::from_spki_der(&encoding::unb64(s).ok_or(CryptoError::InvalidKey)?)
    }

    /// `SHA256:` and the unpadded base64 of SHA-256 over the SPKI DER, as `ssh-keygen -l`
    /// writes fingerprints.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", encoding::b64_unpadded(&sha256(&self.spki_der)))
    }

    /// Modulus size in bytes.
    pub fn size(&self) -> usize {
        self.key.size()
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) encryption.
    pub fn oaep_encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.key
            .oaep_encrypt::<Sha256>(plaintext)
            .map_err(|_| CryptoError::InvalidInput)
    }

    /// Verifies an RSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) signature.
    pub fn pss_verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        if sig.len() != self.size() {
            return Err(CryptoError::BadSignature);
        }
        self.key
            .pss_verify::<Sha256>(msg, sig)
            .map_err(|_| CryptoError::BadSignature)
    }
}

impl fmt::Debug for RsaPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaPublic({})", self.fingerprint())
    }
}

/// Upper bound on an SPKI DER we parse (a 4096-bit RSA SPKI is 550 bytes).
pub const MAX_SPKI_DER_LEN: usize = 1024;
/// Upper bound on a key file we read.
pub const MAX_KEY_FILE_LEN: u64 = 16 * 1024;

/// Why a key file could not be used.
#[derive(Debug)]
pub enum KeyFileError {
    /// Reading or writing failed.
    Io(std::io::Error),
    /// The file is not a key of the expected kind.
    Invalid,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::Io(e) => write!(f, "{e}"),
            KeyFileError::Invalid => f.write_str("not a valid RSA key in PEM form"),
        }
    }
}

impl std::error::Error for KeyFileError {}

impl From<std::io::Error> for KeyFileError {
    fn from(e: std::io::Error) -> Self {
        KeyFileError::Io(e)
    }
}

fn read_bounded(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut s = Zeroizing::new(String::new());
    f.take(MAX_KEY_FILE_LEN)
        .read_to_string(&mut s)
        .map_err(|_| KeyFileError::Invalid)?;
    Ok(s)
}

/// Reads a PKCS#8 PEM private key file.
pub fn read_private_key(path: &Path) -> Result<RsaPrivate, KeyFileError> {
    RsaPrivate::from_pkcs8_pem(&read_bounded(path)?).map_err(|_| KeyFileError::Invalid)
}

/// Reads an SPKI PEM public key file.
pub fn read_public_key(path: &Path) -> Result<RsaPublic, KeyFileError> {
    RsaPublic::from_spki_pem(&read_bounded(path)?).map_err(|_| KeyFileError::Invalid)
}

/// Writes `key` to `private_path` (PKCS#8 PEM, mode 0600) and its public half to
/// `public_path` (SPKI PEM, mode 0644), each atomically.
pub fn write_key_pair(
    key: &RsaPrivate,
    private_path: &Path,
    public_path: &Path,
) -> Result<(), KeyFileError> {
    let pem = key.to_pkcs8_pem().map_err(|_| KeyFileError::Invalid)?;
    fsutil::atomic_write(private_path, pem.as_bytes(), 0o600)?;
    fsutil::atomic_write(public_path, key.public().to_spki_pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Loads the key pair at `private_path`, or generates a `bits`-bit one and writes both
/// files if there is none yet. Returns the key and whether it was created.
pub fn load_or_create_key_pair(
    private_path: &Path,
    public_path: &Path,
    bits: usize,
) -> Result<(RsaPrivate, bool), KeyFileError> {
    match read_private_key(private_path) {
        Ok(key) => {
            if !public_path.exists() {
                fsutil::atomic_write(public_path, key.public().to_spki_pem().as_bytes(), 0o644)?;
            }
            Ok((key, false))
        }
        Err(KeyFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = RsaPrivate::generate(bits).map_err(|_| KeyFileError::Invalid)?;
            write_key_pair(&key, private_path, public_path)?;
            Ok((key, true))
        }
        Err(e) => Err(e),
    }
}

/// Wipe-on-drop wrappers for secrets held outside this module (passwords, decrypted
/// login payloads), re-exported so that no other module names `rsa`.
pub mod zeroize {
    pub use rsa::pkcs8::der::zeroize::{Zeroize, Zeroizing};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> AeadKey {
        AeadKey::new([b; KEY_LEN])
    }

    #[test]
    fn nonce_layout_is_sqn_direction_then_zeros() {
        let n = Nonce {
            sqn: 0x0102,
            dir: Direction::ServerToClient,
        }
        .to_bytes();
        assert_eq!(n, [1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let n = Nonce {
            sqn: 0xFFFF,
            dir: Direction::ClientToServer,
        }
        .to_bytes();
        assert_eq!(n, [0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn open_reverses_seal_and_rejects_any_change() {
        let k = key(7);
        let nonce = Nonce {
            sqn: 5,
            dir: Direction::ClientToServer,
        };
        let mut buf = b"hello world".to_vec();
        let mac = k.seal_in_place(nonce, b"header", &mut buf);
        assert_eq!(
            k.open(nonce, b"header", &buf, &mac).unwrap(),
            b"hello world"
        );
        assert_eq!(
            k.open(nonce, b"headex", &buf, &mac),
            Err(CryptoError::BadMac)
        );
        let other = Nonce { sqn: 6, ..nonce };
        assert_eq!(
            k.open(other, b"header", &buf, &mac),
            Err(CryptoError::BadMac)
        );
        assert_eq!(
            key(8).open(nonce, b"header", &buf, &mac),
            Err(CryptoError::BadMac)
        );
        let mut bad = buf.clone();
        bad[0] ^= 1;
        assert_eq!(
            k.open(nonce, b"header", &bad, &mac),
            Err(CryptoError::BadMac)
        );
        let mut badmac = mac;
        badmac[11] ^= 0x80;
        assert_eq!(
            k.open(nonce, b"header", &buf, &badmac),
            Err(CryptoError::BadMac)
        );
        assert_eq!(
            k.open(nonce, b"header", &buf, &mac[..11]),
            Err(CryptoError::BadMac)
        );
    }

    #[test]
    fn empty_payload_seals_to_mac_only() {
        let k = key(1);
        let nonce = Nonce {
            sqn: 1,
            dir: Direction::ServerToClient,
        };
        let mut buf = Vec::new();
        let mac = k.seal_in_place(nonce, b"h", &mut buf);
        assert_eq!(k.open(nonce, b"h", &[], &mac).unwrap(), b"");
    }

    #[test]
    fn rekey_changes_the_key_deterministically() {
        let k = key(3);
        assert_eq!(k.rekeyed().raw(), key(3).rekeyed().raw());
        assert_ne!(k.rekeyed().raw(), k.raw());
    }

    #[test]
    fn x25519_agreement_matches_on_both_sides() {
        let (a, pa) = X25519Secret::generate().unwrap();
        let (b, pb) = X25519Secret::generate().unwrap();
        assert_eq!(*a.agree(&pb).unwrap(), *b.agree(&pa).unwrap());
        let (c, _) = X25519Secret::generate().unwrap();
        assert_eq!(c.agree(&[0u8; 32]).unwrap_err(), CryptoError::KeyAgreement);
    }

    #[test]
    fn ct_eq_compares_contents_and_lengths() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        let out = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            encoding::hex(&out[..]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hkdf_sha256_matches_rfc5869_case_1_and_treats_an_empty_salt_as_zeros() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let okm = hkdf_sha256::<42>(&salt, &ikm, &info);
        assert_eq!(
            encoding::hex(&okm[..]),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
        // RFC 5869 case 3: no salt, no info.
        let okm = hkdf_sha256::<42>(&[], &ikm, &[]);
        assert_eq!(
            encoding::hex(&okm[..]),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
        assert_eq!(*okm, *hkdf_sha256::<42>(&[0u8; 32], &ikm, &[]));
    }

    #[test]
    fn aes256gcm_with_full_tag_matches_nist_case_14_and_rejects_any_change() {
        let sealed = aes256gcm_seal(&[0; 32], &[0; 12], b"", &[0; 16]);
        assert_eq!(
            encoding::hex(&sealed),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
        assert_eq!(
            &aes256gcm_open(&[0; 32], &[0; 12], b"", &sealed).unwrap()[..],
            &[0; 16]
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(
                aes256gcm_open(&[0; 32], &[0; 12], b"", &bad).unwrap_err(),
                CryptoError::BadMac
            );
        }
        assert!(aes256gcm_open(&[0; 32], &[0; 12], b"x", &sealed).is_err());
        assert!(aes256gcm_open(&[0; 32], &[1; 12], b"", &sealed).is_err());
        assert!(aes256gcm_open(&[1; 32], &[0; 12], b"", &sealed).is_err());
        assert!(aes256gcm_open(&[0; 32], &[0; 12], b"", &sealed[..15]).is_err());
    }

    #[test]
    fn ed25519_matches_rfc8032_test_1_and_rejects_other_messages() {
        let seed: [u8; 32] =
            encoding::unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap();
        let signer = Ed25519Signer::from_seed(&seed);
        assert_eq!(
            encoding::hex(&signer.public()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = signer.sign(b"");
        assert_eq!(
            encoding::hex(&sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert_eq!(ed25519_verify(&signer.public(), b"", &sig), Ok(()));
        assert_eq!(
            ed25519_verify(&signer.public(), b"x", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            ed25519_verify(&signer.public(), b"", &sig[..63]),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(format!("{signer:?}"), "Ed25519Signer(<redacted>)");
        let other = Ed25519Signer::generate().unwrap();
        assert_ne!(other.public(), signer.public());
    }

    #[test]
    fn pbkdf2_matches_rfc7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64), first 32 bytes.
        let out = pbkdf2_sha256(b"passwd", b"salt", 1);
        assert_eq!(
            encoding::hex(&out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }
}
