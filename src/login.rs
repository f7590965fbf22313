//! The login handshake, the first exchange on every connection, as client and server
//! state machines with no sockets and no clock: every instant is an argument (`now_ns`,
//! Unix time in nanoseconds), so the window and the replay cache are tested without
//! sleeping and a client is driven against a server in memory.
//!
//! Each state is a type and each step consumes it, so no step can be skipped or run
//! twice. The client goes [`ClientLogin::start`] -> [`ExpectLoginRes::finish`] ->
//! [`Established`]. The server runs in steps so that its caller can keep locks and
//! expensive work apart: [`ExpectLoginReq::open`] (RSA and AEAD, no shared state),
//! [`OpenedLogin::check_fresh`] (the window and the [`ReplayCache`], under the caller's
//! lock), the password check by the caller (PBKDF2, gated; this module knows no
//! accounts), then [`CheckPassword::accept`]. Dropping a [`CheckPassword`] is the
//! rejection; every error means "close the connection, no reply".
//!
//! The server side does not apply the username rule: a name that breaks it goes on to
//! the password check, which handles it like an unknown name, with the same PBKDF2
//! work (DECISIONS 4 in mpchat-protocol(7)). Refused here, it would fail in a fraction
//! of the time a known or unknown name takes, and a failed login would no longer look
//! the same whatever is wrong with it.
//!
//! This module must never touch a socket or read the clock, never release a payload
//! whose mac has not verified, never report two RSA decryption failures differently,
//! and never print a password or a key (the states redact themselves in `Debug`).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::crypto::zeroize::Zeroizing;
use crate::crypto::{
    self, AeadKey, CryptoError, Direction, RsaPrivate, RsaPublic, X25519Secret, HASH_LEN,
    X25519_LEN,
};
use crate::encoding;
use crate::mtp::{self, Header, MsgType, MtpError, Receiver, Sender, ETK_LEN, HEADER_LEN};
use crate::names::{self, MAX_USERNAME_LEN};

/// How far a login request's timestamp may be from the server's clock, either way,
/// unless the server is configured otherwise. The design's default.
pub const DEFAULT_LOGIN_WINDOW: Duration = Duration::from_secs(30);

/// Most request hashes the server remembers at once.
///
/// Anyone who has the server's public key can make login requests that authenticate
/// (the client picks `tk`), so the cache must be bounded. Each entry costs the flooder
/// one RSA-2048 decryption by the server, roughly a thousand a second per core, and is
/// kept for two windows (60 s by default): 200,000 covers a flood saturating three
/// cores, at a worst case of about 20 MiB (a hash in a set and a hash with its arrival
/// time in a queue). Past it the server refuses logins until entries expire, because
/// evicting an unexpired entry would let its request be replayed.
pub const REPLAY_CACHE_CAPACITY: usize = 200_000;

/// Longest password, in bytes, a login request may carry, and so the longest the
/// accounts store or `--password-stdin` reads. Far beyond any real password; it bounds
/// the PBKDF2 input a stranger can make the server hash, and keeps a runaway pipe from
/// filling memory.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Length of the temporary key `tk`.
pub const TK_LEN: usize = crypto::KEY_LEN;

/// Length of `client_random` and `server_random`.
pub const RANDOM_LEN: usize = 16;

/// Digits of the largest Unix-nanosecond timestamp (`u64::MAX` has 20).
const MAX_TIMESTAMP_DIGITS: usize = 20;

/// Longest valid login request payload: the five fields at their longest and four
/// separators. Longer requests are refused before the RSA decryption is spent on them.
pub const MAX_LOGIN_REQ_PAYLOAD_LEN: usize = MAX_TIMESTAMP_DIGITS
    + MAX_USERNAME_LEN
    + MAX_PASSWORD_LEN
    + 2 * RANDOM_LEN
    + 2 * X25519_LEN
    + 4;

/// Exact length of a login response payload: 64 + 32 + 64 + 16 hex digits and three
/// separators.
pub const LOGIN_RES_PAYLOAD_LEN: usize = 2 * HASH_LEN + 2 * RANDOM_LEN + 2 * X25519_LEN + 16 + 3;

/// Why a login failed. On the server every variant closes the connection with no
/// reply; the variants exist for logs and tests, never for the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// The frame failed an MTP check: version, type, length, a header field a login
    /// frame must not have (sqn other than 1, non-zero sid or uid), or the mac. A broken
    /// or hostile peer, or someone altering bytes on the path.
    BadFrame(MtpError),
    /// `etk` did not decrypt to a 32-byte key. Every cause reports this one variant, on
    /// purpose. Usually a client holding another server's public key; otherwise a forgery.
    Decrypt,
    /// The payload authenticated but breaks the login format; the text names the field.
    /// The peer's software is broken (an honest peer cannot produce this).
    Malformed(&'static str),
    /// The request's timestamp is older than the window: a delayed or replayed request,
    /// or a client whose clock runs slow.
    Stale,
    /// The request's timestamp is beyond the window ahead: a client whose clock runs
    /// fast (or an attacker preparing requests to replay later).
    Future,
    /// The request's hash was seen within twice the window: a replay of a captured
    /// request, by whoever sends it.
    Replayed,
    /// The request is stamped before the replay cache began (the server process
    /// started): a copy of a request an earlier process may have accepted, or a
    /// client whose clock is behind by more than the time since the start.
    BeforeStart,
    /// The replay cache is full of unexpired entries: a login flood. Refusing is safer
    /// than forgetting an entry, which would re-open its replay.
    ReplayCacheFull,
    /// login_res answers a different request than the one we sent: a man in the middle
    /// splicing handshakes, or a broken server.
    RequestHashMismatch,
    /// A cryptographic step failed: the peer's X25519 share is invalid (the peer's
    /// fault), the server key is not RSA-2048 (the local configuration's), or the random
    /// number generator failed (the local system's).
    Crypto(CryptoError),
    /// The local caller asked for something the protocol cannot carry (an invalid
    /// username, an empty, too long or multi-line password, uid 0). Our own mistake,
    /// found before anything was sent.
    InvalidInput(&'static str),
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::BadFrame(e) => write!(f, "invalid login frame: {e}"),
            LoginError::Decrypt => {
                f.write_str("the temporary key does not decrypt (wrong server key?)")
            }
            LoginError::Malformed(what) => write!(f, "malformed login payload: {what}"),
            LoginError::Stale => f.write_str("login timestamp older than the window"),
            LoginError::Future => f.write_str("login timestamp ahead of the window"),
            LoginError::Replayed => f.write_str("replayed login request"),
            LoginError::BeforeStart => f.write_str(
                "login timestamp before the server started (a replay from before a restart, or a client clock behind)",
            ),
            LoginError::ReplayCacheFull => {
                f.write_str("replay cache full; refusing logins until entries expire")
            }
            LoginError::RequestHashMismatch => {
                f.write_str("login response answers another request")
            }
            LoginError::Crypto(e) => write!(f, "login: {e}"),
            LoginError::InvalidInput(what) => write!(f, "cannot log in: {what}"),
        }
    }
}

impl std::error::Error for LoginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoginError::BadFrame(e) => Some(e),
            LoginError::Crypto(e) => Some(e),
            _ => None,
        }
    }
}

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
/// exchange (which used `sqn` 1 each way under `tk`): the sender's next frame is 2 and
/// the receiver has accepted 1. The client sends with `k_c2s` and receives with
/// `k_s2c`; the server the reverse.
#[derive(Debug)]
pub struct Established {
    /// The authenticated user's id (non-zero).
    pub uid: u64,
    /// Sealing state for our own direction.
    pub sender: Sender,
    /// Opening state for the peer's direction.
    pub receiver: Receiver,
}

impl Established {
    fn new(uid: u64, k_c2s: AeadKey, k_s2c: AeadKey, side: Side) -> Established {
        let (sender, receiver) = match side {
            Side::Client => (
                Sender::new(k_c2s, Direction::ClientToServer, 2),
                Receiver::new(k_s2c, Direction::ServerToClient, 1),
            ),
            Side::Server => (
                Sender::new(k_s2c, Direction::ServerToClient, 2),
                Receiver::new(k_c2s, Direction::ClientToServer, 1),
            ),
        };
        Established {
            uid,
            sender,
            receiver,
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

/// Whether `password` can travel in a login request: non-empty, at most
/// [`MAX_PASSWORD_LEN`] bytes, no `\n` (the field separator).
fn valid_password(password: &str) -> bool {
    !password.is_empty() && password.len() <= MAX_PASSWORD_LEN && !password.contains('\n')
}

/// Splits `text` at `\n` into exactly `N` fields, or `None`.
fn fields<const N: usize>(text: &str) -> Option<[&str; N]> {
    let mut parts = text.split('\n');
    let mut out = [""; N];
    for slot in &mut out {
        *slot = parts.next()?;
    }
    match parts.next() {
        None => Some(out),
        Some(_) => None,
    }
}

/// Checks the header of a login frame: `typ`, sqn 1, sid 0, uid 0, `len` equal to the
/// frame's length and at least `min_len`.
fn login_header(frame: &[u8], typ: MsgType, min_len: usize) -> Result<Header, LoginError> {
    let header = mtp::frame_header(frame)?;
    if header.typ != typ {
        return Err(MtpError::Unexpected("not a login message").into());
    }
    // The design fixes these: any other value closes the connection, even though the
    // mac (which covers the header) would verify.
    if header.sqn != 1 {
        return Err(MtpError::Unexpected("login frame sqn is not 1").into());
    }
    if header.sid != 0 || header.uid != 0 {
        return Err(MtpError::Unexpected("login frame sid or uid is not 0").into());
    }
    if frame.len() < min_len {
        return Err(MtpError::TooShort(header.len).into());
    }
    Ok(header)
}

fn window_ns(window: Duration) -> u64 {
    u64::try_from(window.as_nanos()).unwrap_or(u64::MAX)
}

/// The client's side of the handshake; [`ClientLogin::start`] begins it.
pub struct ClientLogin;

impl ClientLogin {
    /// Builds login_req for `username` and `password` at Unix time `now_ns` and returns
    /// the frame to send and the state that waits for login_res.
    ///
    /// Makes a fresh `tk`, `client_random` and X25519 key pair; the payload is
    /// `<timestamp>\n<username>\n<password>\n<client_random>\n<client_x25519>`, sealed
    /// with `tk` (sqn 1, client-to-server) in a frame whose `len` counts the `etk`,
    /// RSA-OAEP(`tk`) under `server_key`, appended last.
    pub fn start(
        server_key: &RsaPublic,
        username: &str,
        password: &str,
        now_ns: u64,
    ) -> Result<(Vec<u8>, ExpectLoginRes), LoginError> {
        if !names::valid_username(username) {
            return Err(LoginError::InvalidInput("invalid username"));
        }
        if !valid_password(password) {
            return Err(LoginError::InvalidInput(
                "the password must be 1 to 1024 bytes with no newline",
            ));
        }
        if server_key.size() != ETK_LEN {
            // etk is 256 bytes on the wire: only an RSA-2048 server key fits.
            return Err(LoginError::Crypto(CryptoError::InvalidKey));
        }
        let tk = AeadKey::new(crypto::random_array::<TK_LEN>()?);
        let client_random = crypto::random_array::<RANDOM_LEN>()?;
        let (secret, share) = X25519Secret::generate()?;

        let timestamp = now_ns.to_string();
        let random_hex = encoding::hex(&client_random);
        let share_hex = encoding::hex(&share);
        let parts = [
            timestamp.as_str(),
            username,
            password,
            &random_hex,
            &share_hex,
        ];
        // Built at its final capacity, so no reallocation leaves a copy of the password.
        let len = parts.iter().map(|p| p.len()).sum::<usize>() + parts.len() - 1;
        let mut payload = Zeroizing::new(String::with_capacity(len));
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                payload.push('\n');
            }
            payload.push_str(part);
        }
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
        Ok((
            frame,
            ExpectLoginRes {
                tk,
                request_hash,
                client_random,
                secret,
            },
        ))
    }
}

/// The client after sending login_req: holds `tk` and the X25519 secret until
/// login_res arrives, and forgets both in [`ExpectLoginRes::finish`], whatever its
/// outcome.
pub struct ExpectLoginRes {
    tk: AeadKey,
    request_hash: [u8; HASH_LEN],
    client_random: [u8; RANDOM_LEN],
    secret: X25519Secret,
}

impl fmt::Debug for ExpectLoginRes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExpectLoginRes(<redacted>)")
    }
}

impl ExpectLoginRes {
    /// The SHA-256 of the login_req payload we sent, which login_res must echo.
    pub fn request_hash(&self) -> &[u8; HASH_LEN] {
        &self.request_hash
    }

    /// Checks login_res (typ `00 10`, sqn 1, sid 0, uid 0, the mac under `tk` with
    /// nonce(1, server-to-client), the payload
    /// `<request_hash>\n<server_random>\n<server_x25519>\n<uid>` echoing our request)
    /// and derives the traffic keys.
    pub fn finish(self, frame: &[u8]) -> Result<Established, LoginError> {
        let header = login_header(frame, MsgType::LOGIN_RES, mtp::MIN_FRAME_LEN)?;
        let payload = mtp::open_body(
            &self.tk,
            Direction::ServerToClient,
            &header,
            &frame[HEADER_LEN..],
        )?;
        if payload.len() != LOGIN_RES_PAYLOAD_LEN {
            return Err(LoginError::Malformed("login response of the wrong length"));
        }
        let text = std::str::from_utf8(&payload)
            .map_err(|_| LoginError::Malformed("login response is not UTF-8"))?;
        let [hash, server_random, server_share, uid] =
            fields::<4>(text).ok_or(LoginError::Malformed("login response needs 4 fields"))?;
        let hash = encoding::unhex::<HASH_LEN>(hash).ok_or(LoginError::Malformed(
            "request_hash is not 64 lowercase hex digits",
        ))?;
        if !crypto::ct_eq(&hash, &self.request_hash) {
            return Err(LoginError::RequestHashMismatch);
        }
        let server_random = encoding::unhex::<RANDOM_LEN>(server_random).ok_or(
            LoginError::Malformed("server_random is not 32 lowercase hex digits"),
        )?;
        let server_share = encoding::unhex::<X25519_LEN>(server_share).ok_or(
            LoginError::Malformed("server_x25519 is not 64 lowercase hex digits"),
        )?;
        let uid = encoding::parse_id(uid)
            .ok_or(LoginError::Malformed("uid is not 16 lowercase hex digits"))?;
        if uid == 0 {
            return Err(LoginError::Malformed("uid is zero"));
        }
        let shared = self.secret.agree(&server_share)?;
        let (k_c2s, k_s2c) = crypto::traffic_keys(
            &self.request_hash,
            &self.client_random,
            &server_random,
            &shared,
        );
        // `self.tk` is dropped (and wiped) here; the X25519 secret was consumed above.
        Ok(Established::new(uid, k_c2s, k_s2c, Side::Client))
    }
}

/// The server waiting for the first frame of a connection, which must be login_req.
pub struct ExpectLoginReq;

impl ExpectLoginReq {
    /// Checks the header (typ `00 00`, sqn 1, sid 0, uid 0, `len` equal to the frame's
    /// length and room for the `etk`), decrypts the trailing 256-byte `etk` to `tk`,
    /// opens `epd || mac` with `tk` and nonce(1, client-to-server) and parses the
    /// payload strictly. Touches no shared state.
    pub fn open(server_key: &RsaPrivate, frame: &[u8]) -> Result<OpenedLogin, LoginError> {
        Self::open_any(&[server_key], frame)
    }

    /// [`ExpectLoginReq::open`] for a server that accepts several keys (during a key
    /// rollover: the new one and the one it replaces). The `etk` is decrypted under
    /// every key and the body opened once per key (with a dummy key where the
    /// decryption failed), whatever the outcome, so neither the time nor the error
    /// tells which key the request was for or whether any was right: every failure
    /// is the same [`LoginError::Decrypt`] or mac failure as with one key. The first
    /// key under which the body authenticates wins.
    pub fn open_any(server_keys: &[&RsaPrivate], frame: &[u8]) -> Result<OpenedLogin, LoginError> {
        let header = login_header(frame, MsgType::LOGIN_REQ, mtp::MIN_LOGIN_FRAME_LEN)?;
        if frame.len() > mtp::MIN_LOGIN_FRAME_LEN + MAX_LOGIN_REQ_PAYLOAD_LEN {
            return Err(LoginError::Malformed("longer than any valid login request"));
        }
        let (body, etk) = frame[HEADER_LEN..].split_at(frame.len() - HEADER_LEN - ETK_LEN);

        let decrypted: Vec<Option<Zeroizing<[u8; TK_LEN]>>> = server_keys
            .iter()
            .map(|key| {
                key.oaep_decrypt(etk)
                    .ok()
                    .and_then(|plain| <[u8; TK_LEN]>::try_from(plain.as_slice()).ok())
                    .map(Zeroizing::new)
            })
            .collect();
        // Whether the etk decrypted or not, the same AEAD work follows, so the time to
        // close the connection tells nothing about the RSA step (the decrypted key of a
        // failed etk is replaced by a dummy and the outcome discarded).
        let mut found: Option<(AeadKey, Result<Vec<u8>, MtpError>)> = None;
        for tk_bytes in &decrypted {
            let tk = AeadKey::new(tk_bytes.as_deref().copied().unwrap_or([0; TK_LEN]));
            let opened = mtp::open_body(&tk, Direction::ClientToServer, &header, body);
            if tk_bytes.is_none() {
                continue;
            }
            let better = matches!((&found, &opened), (None, _) | (Some((_, Err(_))), Ok(_)));
            if better {
                found = Some((tk, opened));
            }
        }
        let Some((tk, opened)) = found else {
            return Err(LoginError::Decrypt);
        };
        let payload = Zeroizing::new(opened?);
        OpenedLogin::parse(tk, &payload)
    }
}

/// Applies the login_req payload checks of [`ExpectLoginReq::open`] to a payload on
/// its own, without the frame and its cryptography (for the fuzzer).
pub fn check_request_payload(payload: &[u8]) -> Result<(), LoginError> {
    OpenedLogin::parse(AeadKey::new([0; TK_LEN]), payload).map(drop)
}

/// A login request that authenticated under its `tk` and parsed, not yet checked for
/// freshness. Holds the password (wiped on drop).
pub struct OpenedLogin {
    tk: AeadKey,
    request_hash: [u8; HASH_LEN],
    timestamp_ns: u64,
    username: String,
    password: Zeroizing<String>,
    client_random: [u8; RANDOM_LEN],
    client_share: [u8; X25519_LEN],
}

impl fmt::Debug for OpenedLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OpenedLogin({}, <redacted>)",
            names::shown(&self.username)
        )
    }
}

impl OpenedLogin {
    fn parse(tk: AeadKey, payload: &[u8]) -> Result<OpenedLogin, LoginError> {
        let request_hash = crypto::sha256(payload);
        let text = std::str::from_utf8(payload)
            .map_err(|_| LoginError::Malformed("login request is not UTF-8"))?;
        let [timestamp, username, password, client_random, client_share] =
            fields::<5>(text).ok_or(LoginError::Malformed("login request needs 5 fields"))?;
        let timestamp_ns = encoding::parse_decimal(timestamp).ok_or(LoginError::Malformed(
            "timestamp is not a plain decimal number",
        ))?;
        // Any name without a newline passes: one breaking the username rule is
        // handled like an unknown one by the password check (see the module docs).
        if !valid_password(password) {
            return Err(LoginError::Malformed("password empty or too long"));
        }
        let client_random = encoding::unhex::<RANDOM_LEN>(client_random).ok_or(
            LoginError::Malformed("client_random is not 32 lowercase hex digits"),
        )?;
        let client_share = encoding::unhex::<X25519_LEN>(client_share).ok_or(
            LoginError::Malformed("client_x25519 is not 64 lowercase hex digits"),
        )?;
        Ok(OpenedLogin {
            tk,
            request_hash,
            timestamp_ns,
            username: username.to_owned(),
            password: Zeroizing::new(password.to_owned()),
            client_random,
            client_share,
        })
    }

    /// The username the request claims (not yet authenticated by its password). It
    /// may break the username rule; show it in a log only through [`names::shown`].
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The request's timestamp, Unix nanoseconds.
    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }

    /// The SHA-256 of the request's payload (the replay cache's key).
    pub fn request_hash(&self) -> &[u8; HASH_LEN] {
        &self.request_hash
    }

    /// Checks that the timestamp is within `window` of `now_ns` either way and not
    /// before `replay` began ([`ReplayCache::starting_at`]), then records the
    /// request's hash in `replay`, refusing one already there.
    ///
    /// The hash is recorded now, before the password check, so a copy of the request
    /// is refused even while the original is still being checked, and even if the
    /// original failed its password check.
    pub fn check_fresh(
        self,
        now_ns: u64,
        window: Duration,
        replay: &mut ReplayCache,
    ) -> Result<CheckPassword, LoginError> {
        let w = window_ns(window);
        if self.timestamp_ns < now_ns.saturating_sub(w) {
            return Err(LoginError::Stale);
        }
        if self.timestamp_ns > now_ns.saturating_add(w) {
            return Err(LoginError::Future);
        }
        if self.timestamp_ns < replay.not_before_ns {
            return Err(LoginError::BeforeStart);
        }
        replay.insert(self.request_hash, now_ns, window)?;
        Ok(CheckPassword(self))
    }
}

/// A fresh, recorded login request whose password the caller must now check (in
/// constant time, with the same work for an unknown user). [`CheckPassword::accept`]
/// completes the login; dropping the value rejects it (the caller closes the
/// connection without a reply). The password is wiped on drop.
pub struct CheckPassword(OpenedLogin);

impl fmt::Debug for CheckPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CheckPassword({}, <redacted>)",
            names::shown(&self.0.username)
        )
    }
}

impl CheckPassword {
    /// The username to look up. It may break the username rule (no account has such
    /// a name, and the check must cost the same as for an unknown one); show it in a
    /// log only through [`names::shown`].
    pub fn username(&self) -> &str {
        &self.0.username
    }

    /// The password to check. Never log it.
    pub fn password(&self) -> &str {
        &self.0.password
    }

    /// The password was right for user `uid`: makes `server_random` and an X25519 key
    /// pair, builds login_res (sealed with `tk`, nonce(1, server-to-client)), derives the
    /// traffic keys and forgets `tk` and the X25519 secret. Returns the frame to send.
    pub fn accept(self, uid: u64) -> Result<(Vec<u8>, Established), LoginError> {
        if uid == 0 {
            return Err(LoginError::InvalidInput("uid 0 is not a user"));
        }
        let o = self.0;
        let server_random = crypto::random_array::<RANDOM_LEN>()?;
        let (secret, share) = X25519Secret::generate()?;
        let shared = secret.agree(&o.client_share)?;
        let payload = format!(
            "{}\n{}\n{}\n{}",
            encoding::hex(&o.request_hash),
            encoding::hex(&server_random),
            encoding::hex(&share),
            encoding::id_hex(uid)
        );
        debug_assert_eq!(payload.len(), LOGIN_RES_PAYLOAD_LEN);
        let frame = mtp::seal_frame(
            &o.tk,
            Direction::ServerToClient,
            MsgType::LOGIN_RES,
            1,
            0,
            0,
            payload.as_bytes(),
            0,
        )?;
        let (k_c2s, k_s2c) =
            crypto::traffic_keys(&o.request_hash, &o.client_random, &server_random, &shared);
        Ok((frame, Established::new(uid, k_c2s, k_s2c, Side::Server)))
    }
}

/// Hashes of recent login requests, so that each request is accepted at most once.
///
/// An entry is kept while it is at most twice the window old (by the server's clock
/// at arrival). That is enough: a request accepted at `now` has a timestamp within a
/// window of `now`, so any later copy passing the timestamp check arrives within two
/// windows of `now`. Entries sit in a queue in arrival order (expiry is O(1)
/// amortised, from the front) beside a set (lookup O(1)). If the clock steps back,
/// entries live longer, never shorter.
///
/// The cache lives in memory, so a new server process starts with an empty one,
/// blind to what the previous process accepted. A cache made by
/// [`ReplayCache::starting_at`] therefore refuses requests stamped before it began
/// ([`LoginError::BeforeStart`]): whatever the old process saw was stamped before
/// the new one started, if the sender's clock was not ahead of the server's (see
/// DECISIONS in mpchat-protocol(7) for what a clock ahead leaves open).
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    order: VecDeque<(u64, [u8; HASH_LEN])>,
    seen: HashSet<[u8; HASH_LEN]>,
    /// Requests stamped before this (Unix nanoseconds) are refused.
    not_before_ns: u64,
}

impl ReplayCache {
    /// An empty cache that holds at most `capacity` hashes (see
    /// [`REPLAY_CACHE_CAPACITY`]) and takes requests of any age within the window.
    /// Memory grows with use, not up front.
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache::starting_at(capacity, 0)
    }

    /// An empty cache that begins at `now_ns` (the server process's start): it
    /// refuses requests stamped before then, which it cannot tell from copies of
    /// requests an earlier process accepted.
    pub fn starting_at(capacity: usize, now_ns: u64) -> ReplayCache {
        ReplayCache {
            capacity,
            order: VecDeque::new(),
            seen: HashSet::new(),
            not_before_ns: now_ns,
        }
    }

    /// When the cache began: requests stamped earlier are refused.
    pub fn not_before_ns(&self) -> u64 {
        self.not_before_ns
    }

    /// The most hashes this cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Hashes remembered now (expired ones are dropped only by [`ReplayCache::insert`]).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no hash is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Whether `hash` is remembered.
    pub fn contains(&self, hash: &[u8; HASH_LEN]) -> bool {
        self.seen.contains(hash)
    }

    /// Records `hash` as arrived at `now_ns`, after forgetting entries more than twice
    /// `window` old. Refuses a hash already present ([`LoginError::Replayed`]) and, when
    /// the cache is full of unexpired entries, any new one
    /// ([`LoginError::ReplayCacheFull`]) rather than evicting one.
    pub fn insert(
        &mut self,
        hash: [u8; HASH_LEN],
        now_ns: u64,
        window: Duration,
    ) -> Result<(), LoginError> {
        let keep = window_ns(window).saturating_mul(2);
        while let Some((at, old)) = self.order.front() {
            if now_ns.saturating_sub(*at) <= keep {
                break;
            }
            self.seen.remove(old);
            self.order.pop_front();
        }
        if self.seen.contains(&hash) {
            return Err(LoginError::Replayed);
        }
        if self.order.len() >= self.capacity {
            return Err(LoginError::ReplayCacheFull);
        }
        self.seen.insert(hash);
        self.order.push_back((now_ns, hash));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(30);
    const W_NS: u64 = 30_000_000_000;

    fn valid_payload() -> String {
        format!(
            "1764000000000000000\nalice\ncorrect horse\n{}\n{}",
            "0f".repeat(16),
            "a1".repeat(32)
        )
    }

    fn parse(payload: &str) -> Result<OpenedLogin, LoginError> {
        OpenedLogin::parse(AeadKey::new([5; 32]), payload.as_bytes())
    }

    #[test]
    fn a_request_for_either_accepted_key_opens_and_one_for_neither_fails_the_same_way() {
        let (a, b, c) = (
            RsaPrivate::generate(2048).unwrap(),
            RsaPrivate::generate(2048).unwrap(),
            RsaPrivate::generate(2048).unwrap(),
        );
        let request = |key: &RsaPrivate| {
            ClientLogin::start(&key.public(), "alice", "pw", 1_764_000_000_000_000_000)
                .unwrap()
                .0
        };
        for key in [&a, &b] {
            let opened = ExpectLoginReq::open_any(&[&a, &b], &request(key)).unwrap();
            assert_eq!(opened.username(), "alice");
        }
        let for_c = request(&c);
        assert_eq!(
            ExpectLoginReq::open_any(&[&a, &b], &for_c).unwrap_err(),
            LoginError::Decrypt
        );
        assert_eq!(
            ExpectLoginReq::open(&a, &for_c).unwrap_err(),
            LoginError::Decrypt
        );
        // A body altered after the etk: the mac fails, under one key or two.
        let mut altered = request(&b);
        altered[HEADER_LEN] ^= 1;
        let one = ExpectLoginReq::open(&b, &altered).unwrap_err();
        let two = ExpectLoginReq::open_any(&[&a, &b], &altered).unwrap_err();
        assert_eq!(one, two);
        assert!(matches!(two, LoginError::BadFrame(_)), "{two:?}");
    }

    #[test]
    fn parses_a_valid_login_payload_into_its_fields() {
        let o = parse(&valid_payload()).unwrap();
        assert_eq!(o.timestamp_ns(), 1_764_000_000_000_000_000);
        assert_eq!(o.username(), "alice");
        assert_eq!(&*o.password, "correct horse");
        assert_eq!(o.client_random, [0x0f; 16]);
        assert_eq!(o.client_share, [0xa1; 32]);
        assert_eq!(o.request_hash, crypto::sha256(valid_payload().as_bytes()));
    }

    #[test]
    fn rejects_login_payloads_with_any_field_out_of_form() {
        let good = valid_payload();
        let bad = [
            good.replacen("1764", "01764", 1),
            good.replacen("1764", "+1764", 1),
            good.replacen("1764", " 1764", 1),
            good.replacen("correct horse", "", 1),
            good.replacen("correct horse", &"p".repeat(MAX_PASSWORD_LEN + 1), 1),
            good.replacen("0f0f", "0F0f", 1),
            good.replacen("0f0f", "0f0", 1),
            good.replacen("a1a1", "a1a", 1),
            good.replacen("a1a1", "g1a1", 1),
            format!("{good}\n"),
            format!("{good}\nextra"),
            good.replacen("\nalice", "", 1),
            good.replacen('\n', "\r\n", 1),
        ];
        for payload in &bad {
            assert!(
                matches!(parse(payload), Err(LoginError::Malformed(_))),
                "accepted {payload:?}"
            );
        }
        assert!(matches!(
            OpenedLogin::parse(AeadKey::new([5; 32]), b"1\nalice\n\xff\n00\n00"),
            Err(LoginError::Malformed(_))
        ));
        // The longest valid payload still fits the stated bound.
        let longest = format!(
            "{}\n{}\n{}\n{}\n{}",
            u64::MAX,
            "a".repeat(MAX_USERNAME_LEN),
            "p".repeat(MAX_PASSWORD_LEN),
            "00".repeat(16),
            "00".repeat(32)
        );
        assert_eq!(longest.len(), MAX_LOGIN_REQ_PAYLOAD_LEN);
        assert!(parse(&longest).is_ok());
    }

    #[test]
    fn passes_a_username_that_breaks_the_rule_on_to_the_password_check() {
        // DECISIONS 4: such a name is handled like an unknown one, by the password
        // check and with its work, not refused early and cheaply here.
        let good = valid_payload();
        for name in [
            "Alice",
            "",
            "a b",
            "\u{1b}[2J",
            &"a".repeat(MAX_USERNAME_LEN + 1),
        ] {
            let payload = good.replacen("alice", name, 1);
            let opened = parse(&payload).unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert_eq!(opened.username(), name);
            assert!(!names::valid_username(opened.username()));
            let mut cache = ReplayCache::new(4);
            let check = opened
                .check_fresh(1_764_000_000_000_000_000, W, &mut cache)
                .unwrap();
            assert_eq!(check.username(), name);
            assert!(
                !format!("{check:?}").contains('\u{1b}'),
                "Debug escapes the name"
            );
        }
    }

    #[test]
    fn splits_into_exactly_the_asked_number_of_fields() {
        assert_eq!(fields::<3>("a\nb\nc"), Some(["a", "b", "c"]));
        assert_eq!(fields::<3>("a\n\nc"), Some(["a", "", "c"]));
        assert_eq!(fields::<3>("a\nb"), None);
        assert_eq!(fields::<3>("a\nb\nc\n"), None);
    }

    #[test]
    fn freshness_window_is_inclusive_at_both_edges() {
        let now = 1_764_000_000_000_000_000u64;
        let cases = [
            (now - W_NS - 1, Err(LoginError::Stale)),
            (now - W_NS, Ok(())),
            (now + W_NS, Ok(())),
            (now + W_NS + 1, Err(LoginError::Future)),
        ];
        for (ts, want) in cases {
            let payload = valid_payload().replacen("1764000000000000000", &ts.to_string(), 1);
            let mut cache = ReplayCache::new(4);
            let got = parse(&payload).unwrap().check_fresh(now, W, &mut cache);
            assert_eq!(got.map(|_| ()), want, "timestamp {ts}");
            assert_eq!(
                cache.len(),
                usize::from(want.is_ok()),
                "recorded only if fresh"
            );
        }
    }

    #[test]
    fn replay_cache_keeps_entries_two_windows_then_forgets_them() {
        let mut c = ReplayCache::new(10);
        let t = 100 * W_NS;
        c.insert([1; 32], t, W).unwrap();
        assert_eq!(c.insert([1; 32], t + W_NS, W), Err(LoginError::Replayed));
        assert_eq!(
            c.insert([1; 32], t + 2 * W_NS, W),
            Err(LoginError::Replayed)
        );
        c.insert([1; 32], t + 2 * W_NS + 1, W).unwrap();
        assert_eq!(c.len(), 1, "the old entry was dropped, the new one kept");
    }

    #[test]
    fn replay_cache_refuses_when_full_instead_of_evicting() {
        let mut c = ReplayCache::new(2);
        c.insert([1; 32], W_NS, W).unwrap();
        c.insert([2; 32], W_NS, W).unwrap();
        assert_eq!(
            c.insert([3; 32], 3 * W_NS, W),
            Err(LoginError::ReplayCacheFull)
        );
        assert_eq!(c.insert([1; 32], 3 * W_NS, W), Err(LoginError::Replayed));
        assert!(c.contains(&[1; 32]) && c.contains(&[2; 32]));
        c.insert([3; 32], 3 * W_NS + 1, W).unwrap();
        assert!(!c.contains(&[1; 32]));
    }

    #[test]
    fn a_cache_started_after_a_request_was_stamped_refuses_it() {
        let start = 100 * W_NS;
        for (ts, want) in [
            (start - 1, Err(LoginError::BeforeStart)),
            (start - W_NS / 2, Err(LoginError::BeforeStart)),
            (start, Ok(())),
            (start + 1, Ok(())),
        ] {
            let payload = valid_payload().replacen("1764000000000000000", &ts.to_string(), 1);
            let mut cache = ReplayCache::starting_at(4, start);
            let got = parse(&payload)
                .unwrap()
                .check_fresh(start + 1_000, W, &mut cache);
            assert_eq!(got.map(|_| ()), want, "timestamp {ts}");
            assert_eq!(cache.len(), usize::from(want.is_ok()));
        }
        assert_eq!(ReplayCache::new(4).not_before_ns(), 0);
    }

    #[test]
    fn replay_cache_never_expires_early_when_the_clock_steps_back() {
        let mut c = ReplayCache::new(10);
        c.insert([1; 32], 10 * W_NS, W).unwrap();
        c.insert([2; 32], W_NS, W).unwrap();
        assert_eq!(c.insert([1; 32], W_NS, W), Err(LoginError::Replayed));
        assert_eq!(c.len(), 2);
    }
}
