//! The login handshake, the first exchange on every connection, as state machines for
//! client and server with no sockets and no clock (`now` is an argument).
//!
//! Each step consumes the previous state, so no step can be skipped or repeated. The
//! server side runs in three steps so that the caller can keep locks and expensive
//! work apart: [`ExpectLoginReq::open`] (RSA and AEAD, no shared state),
//! [`OpenedLogin::check_fresh`] (timestamp window and replay cache, under the caller's
//! lock), then the password check by the caller (PBKDF2, gated) and
//! [`CheckPassword::accept`]. Every failure means "close the connection, no reply".

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use rsa::pkcs8::der::zeroize::Zeroizing;

use crate::accounts;
use crate::crypto::{self, AeadKey, CryptoError, Direction, RsaPrivate, RsaPublic, X25519Secret};
use crate::encoding::{self, hex};
use crate::mtp::{self, Header, MsgType, MtpError, Receiver, Sender, ETK_LEN, HEADER_LEN};

/// Accepted clock difference between client and server, either way.
pub const DEFAULT_LOGIN_WINDOW: Duration = Duration::from_secs(30);
/// Request hashes remembered at most. An attacker who knows the server's public key
/// can make valid login frames, each costing us an RSA decryption (about a thousand a
/// second per core); two windows of that fit well below this bound (about 10 MiB).
pub const REPLAY_CACHE_CAPACITY: usize = 200_000;
/// Longest password accepted in a login request.
pub const MAX_PASSWORD_LEN: usize = accounts::MAX_PASSWORD_LEN;
/// Length of `tk`.
pub const TK_LEN: usize = 32;
/// Length of `client_random` and `server_random`.
pub const RANDOM_LEN: usize = 16;

/// Why a login failed. On the server every variant closes the connection silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// The frame failed an MTP check (header, length, mac): a broken or hostile peer.
    BadFrame(MtpError),
    /// `etk` did not decrypt to a 32-byte key (every cause reports this one variant):
    /// the client used another server key, or the frame is forged.
    Decrypt,
    /// The payload does not follow the login format; the reason names the field.
    Malformed(&'static str),
    /// The request's timestamp is older than the window: a delayed or replayed request,
    /// or a client clock running slow.
    Stale,
    /// The request's timestamp is ahead of the window: a client clock running fast.
    Future,
    /// The request was seen before within the window: a replay.
    Replayed,
    /// The replay cache is full of unexpired entries: a login flood; refusing is safer
    /// than forgetting an entry and re-opening a replay.
    ReplayCacheFull,
    /// login_res answers a different request (client side): a man in the middle or
    /// a confused server.
    RequestHashMismatch,
    /// A cryptographic operation failed (bad X25519 share, RNG failure).
    Crypto(CryptoError),
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::BadFrame(e) => write!(f, "bad login frame: {e}"),
            LoginError::Decrypt => f.write_str("cannot decrypt the temporary key"),
            LoginError::Malformed(what) => write!(f, "malformed login payload: {what}"),
            LoginError::Stale => f.write_str("timestamp too old"),
            LoginError::Future => f.write_str("timestamp in the future"),
            LoginError::Replayed => f.write_str("replayed login request"),
            LoginError::ReplayCacheFull => f.write_str("replay cache full"),
            LoginError::RequestHashMismatch => f.write_str("login response answers another request"),
            LoginError::Crypto(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LoginError {}

impl From<MtpError> for LoginError {
    fn from(e: MtpError) -> Self {
        LoginError::BadFrame(e)
    }
}

impl From<CryptoError> for LoginError {
    fn from(e: CryptoError) -> Self {
        LoginError::Crypto(e)
    }
}

/// Both directions of a logged-in connection. Numbering continues from the login
/// exchange: the next frame sent is `sqn` 2 and the last one received was 1.
#[derive(Debug)]
pub struct Established {
    /// The authenticated user's id.
    pub uid: u64,
    /// Sealing state for our direction.
    pub sender: Sender,
    /// Opening state for the peer's direction.
    pub receiver: Receiver,
}

fn established(uid: u64, k_c2s: AeadKey, k_s2c: AeadKey, client: bool) -> Established {
    let (send_key, send_dir, recv_key, recv_dir) = if client {
        (k_c2s, Direction::ClientToServer, k_s2c, Direction::ServerToClient)
    } else {
        (k_s2c, Direction::ServerToClient, k_c2s, Direction::ClientToServer)
    };
    Established { uid, sender: Sender::new(send_key, send_dir, 2), receiver: Receiver::new(recv_key, recv_dir, 1) }
}

/// The client's side of the handshake.
pub struct ClientLogin;

/// The client after sending login_req, waiting for login_res.
pub struct ExpectLoginRes {
    tk: AeadKey,
    request_hash: [u8; 32],
    client_random: [u8; RANDOM_LEN],
    secret: X25519Secret,
}

impl fmt::Debug for ExpectLoginRes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExpectLoginRes(<redacted>)")
    }
}

impl ClientLogin {
    /// Builds login_req for `username`/`password` at Unix time `now_ns` (nanoseconds)
    /// and returns the frame to send and the state that waits for the answer.
    pub fn start(
        server_key: &RsaPublic,
        username: &str,
        password: &str,
        now_ns: u64,
    ) -> Result<(Vec<u8>, ExpectLoginRes), LoginError> {
        if !accounts::valid_username(username) {
            return Err(LoginError::Malformed("invalid user name"));
        }
        if password.is_empty() || password.len() > MAX_PASSWORD_LEN || password.contains('\n') {
            return Err(LoginError::Malformed("invalid password"));
        }
        let tk = AeadKey::new(crypto::random_array::<TK_LEN>()?);
        let client_random = crypto::random_array::<RANDOM_LEN>()?;
        let (secret, share) = X25519Secret::generate()?;
        let payload = Zeroizing::new(format!(
            "{now_ns}\n{username}\n{password}\n{}\n{}",
            hex(&client_random),
            hex(&share)
        ));
        let request_hash = crypto::sha256(payload.as_bytes());
        let mut frame = mtp::seal_frame(
            &tk,
            Direction::ClientToServer,
            MsgType::LOGIN_REQ,
            1,
            0,
            0,
            payload.as_bytes(),
            ETK_LEN,
        )?;
        let etk = server_key.oaep_encrypt(tk.raw())?;
        if etk.len() != ETK_LEN {
            return Err(LoginError::Crypto(CryptoError::InvalidKey));
        }
        frame.extend_from_slice(&etk);
        Ok((frame, ExpectLoginRes { tk, request_hash, client_random, secret }))
    }
}

/// Checks the header of a login frame: type, sqn 1, sid 0, uid 0 and the length.
fn check_login_header(frame: &[u8], typ: MsgType, trailer: usize) -> Result<Header, LoginError> {
    let header = mtp::frame_header(frame)?;
    if header.typ != typ {
        return Err(MtpError::Unexpected("not a login message").into());
    }
    if header.sqn != 1 || header.sid != 0 || header.uid != 0 {
        return Err(MtpError::Unexpected("login header must have sqn 1, sid 0, uid 0").into());
    }
    if frame.len() < mtp::MIN_FRAME_LEN + trailer {
        return Err(MtpError::TooShort(header.len).into());
    }
    Ok(header)
}

impl ExpectLoginRes {
    /// Checks login_res and derives the traffic keys; `tk` and the X25519 secret are
    /// forgotten either way.
    pub fn finish(self, frame: &[u8]) -> Result<Established, LoginError> {
        let header = check_login_header(frame, MsgType::LOGIN_RES, 0)?;
        let payload = Zeroizing::new(mtp::open_body(&self.tk, Direction::ServerToClient, &header, &frame[HEADER_LEN..])?);
        let text = std::str::from_utf8(&payload).map_err(|_| LoginError::Malformed("not UTF-8"))?;
        let f: Vec<&str> = text.split('\n').collect();
        let [hash, server_random, server_share, uid] = f[..] else {
            return Err(LoginError::Malformed("login response needs 4 fields"));
        };
        let hash = encoding::unhex::<32>(hash).ok_or(LoginError::Malformed("request_hash"))?;
        if !crypto::ct_eq(&hash, &self.request_hash) {
            return Err(LoginError::RequestHashMismatch);
        }
        let server_random = encoding::unhex::<RANDOM_LEN>(server_random).ok_or(LoginError::Malformed("server_random"))?;
        let server_share = encoding::unhex::<32>(server_share).ok_or(LoginError::Malformed("server_x25519"))?;
        let uid = encoding::parse_id(uid).filter(|&u| u != 0).ok_or(LoginError::Malformed("uid"))?;
        let shared = self.secret.agree(&server_share)?;
        let (k_c2s, k_s2c) = crypto::traffic_keys(&self.request_hash, &self.client_random, &server_random, &shared);
        Ok(established(uid, k_c2s, k_s2c, true))
    }
}

/// The server waiting for login_req.
pub struct ExpectLoginReq;

/// A login request that authenticated under its `tk`, not yet checked for freshness.
pub struct OpenedLogin {
    tk: AeadKey,
    request_hash: [u8; 32],
    timestamp: u64,
    username: String,
    password: Zeroizing<String>,
    client_random: [u8; RANDOM_LEN],
    client_share: [u8; 32],
}

impl fmt::Debug for OpenedLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenedLogin({})", self.username)
    }
}

/// A fresh login request whose password the caller must now check.
pub struct CheckPassword(OpenedLogin);

impl fmt::Debug for CheckPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckPassword({})", self.0.username)
    }
}

impl ExpectLoginReq {
    /// Decrypts `etk`, opens the request with `tk` and parses the payload strictly.
    pub fn open(server_key: &RsaPrivate, frame: &[u8]) -> Result<OpenedLogin, LoginError> {
        let header = check_login_header(frame, MsgType::LOGIN_REQ, ETK_LEN)?;
        let (body, etk) = frame[HEADER_LEN..].split_at(frame.len() - HEADER_LEN - ETK_LEN);
        let tk_bytes = server_key.oaep_decrypt(etk).map_err(|_| LoginError::Decrypt)?;
        let tk: [u8; TK_LEN] = tk_bytes.as_slice().try_into().map_err(|_| LoginError::Decrypt)?;
        let tk = AeadKey::new(tk);
        let payload = Zeroizing::new(mtp::open_body(&tk, Direction::ClientToServer, &header, body)?);
        let request_hash = crypto::sha256(&payload);
        let text = std::str::from_utf8(&payload).map_err(|_| LoginError::Malformed("not UTF-8"))?;
        let f: Vec<&str> = text.split('\n').collect();
        let [timestamp, username, password, client_random, client_share] = f[..] else {
            return Err(LoginError::Malformed("login request needs 5 fields"));
        };
        let timestamp = encoding::parse_decimal(timestamp).ok_or(LoginError::Malformed("timestamp"))?;
        if !accounts::valid_username(username) {
            return Err(LoginError::Malformed("username"));
        }
        if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
            return Err(LoginError::Malformed("password"));
        }
        let client_random = encoding::unhex::<RANDOM_LEN>(client_random).ok_or(LoginError::Malformed("client_random"))?;
        let client_share = encoding::unhex::<32>(client_share).ok_or(LoginError::Malformed("client_x25519"))?;
        Ok(OpenedLogin {
            tk,
            request_hash,
            timestamp,
            username: username.to_string(),
            password: Zeroizing::new(password.to_string()),
            client_random,
            client_share,
        })
    }
}

impl OpenedLogin {
    /// The request's timestamp (Unix nanoseconds).
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// Checks the timestamp against `now_ns` ± `window` and records the request's hash
    /// in the replay cache (before any password check, so a replay is refused even
    /// while the original is still being checked).
    pub fn check_fresh(self, now_ns: u64, window: Duration, replay: &mut ReplayCache) -> Result<CheckPassword, LoginError> {
        let w = window.as_nanos().min(u64::MAX as u128) as u64;
        if self.timestamp < now_ns.saturating_sub(w) {
            return Err(LoginError::Stale);
        }
        if self.timestamp > now_ns.saturating_add(w) {
            return Err(LoginError::Future);
        }
        replay.insert(self.request_hash, now_ns, w)?;
        Ok(CheckPassword(self))
    }
}

impl CheckPassword {
    /// The username the client claims.
    pub fn username(&self) -> &str {
        &self.0.username
    }

    /// The password to check (never log it).
    pub fn password(&self) -> &str {
        &self.0.password
    }

    /// The password was right for `uid`: builds login_res and derives the traffic
    /// keys. `tk` and the X25519 secret are forgotten.
    pub fn accept(self, uid: u64) -> Result<(Vec<u8>, Established), LoginError> {
        let o = self.0;
        let server_random = crypto::random_array::<RANDOM_LEN>()?;
        let (secret, share) = X25519Secret::generate()?;
        let shared = secret.agree(&o.client_share)?;
        let payload = format!(
            "{}\n{}\n{}\n{}",
            hex(&o.request_hash),
            hex(&server_random),
            hex(&share),
            encoding::id_hex(uid)
        );
        let frame = mtp::seal_frame(&o.tk, Direction::ServerToClient, MsgType::LOGIN_RES, 1, 0, 0, payload.as_bytes(), 0)?;
        let (k_c2s, k_s2c) = crypto::traffic_keys(&o.request_hash, &o.client_random, &server_random, &shared);
        Ok((frame, established(uid, k_c2s, k_s2c, false)))
    }
}

/// Hashes of recent login requests. Entries are kept twice the window (a request
/// older than the window is refused as stale anyway, so that is enough), in arrival
/// order so expiry is O(1) amortised.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    order: VecDeque<([u8; 32], u64)>,
    seen: HashSet<[u8; 32]>,
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` hashes.
    pub fn new(capacity: usize) -> Self {
        ReplayCache { capacity, order: VecDeque::new(), seen: HashSet::new() }
    }

    /// Number of remembered hashes.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Records `hash` at `now_ns`, first forgetting entries older than twice
    /// `window_ns`. Refuses a hash already present, and any hash when full.
    pub fn insert(&mut self, hash: [u8; 32], now_ns: u64, window_ns: u64) -> Result<(), LoginError> {
        let horizon = now_ns.saturating_sub(window_ns.saturating_mul(2));
        while let Some((h, at)) = self.order.front() {
            if *at >= horizon {
                break;
            }
            self.seen.remove(h);
            self.order.pop_front();
        }
        if self.seen.contains(&hash) {
            return Err(LoginError::Replayed);
        }
        if self.order.len() >= self.capacity {
            return Err(LoginError::ReplayCacheFull);
        }
        self.seen.insert(hash);
        self.order.push_back((hash, now_ns));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 30_000_000_000;

    #[test]
    fn replay_cache_refuses_repeats_and_forgets_after_two_windows() {
        let mut c = ReplayCache::new(10);
        c.insert([1; 32], 100 * W, W).unwrap();
        assert_eq!(c.insert([1; 32], 101 * W, W), Err(LoginError::Replayed));
        assert_eq!(c.insert([1; 32], 102 * W, W), Err(LoginError::Replayed), "kept two windows");
        c.insert([1; 32], 102 * W + 1, W).unwrap();
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn replay_cache_refuses_when_full_instead_of_evicting() {
        let mut c = ReplayCache::new(2);
        c.insert([1; 32], W, W).unwrap();
        c.insert([2; 32], W, W).unwrap();
        assert_eq!(c.insert([3; 32], W, W), Err(LoginError::ReplayCacheFull));
        assert_eq!(c.insert([1; 32], W, W), Err(LoginError::Replayed));
        c.insert([3; 32], 10 * W, W).unwrap();
    }
}
