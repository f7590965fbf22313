//! The end-to-end work of a v2 client, done the way `mpchat` does it, with the
//! library's `e2e` pieces: an [`Author`] signs the membership statement (`MPS2`, the
//! creator), makes its sender key, distributes it (`MPK2`, once per recipient per key,
//! again at every rotation) and seals messages (`MPM2`); a [`Reader`] checks and takes
//! each envelope into its session state and persists that state as the client does
//! (atomic write, fsync, mode 0600).
//!
//! Why it exists: the relay figures use envelopes built here before timing, and the
//! client-side figures time exactly this work, so what is measured is what a client
//! pays. This module is the only one in the bench that names the v2 library types, so
//! a change of the library's API is adapted here. It must never print a key or a text.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use mpchat::crypto::{RsaPrivate, RsaPublic};
use mpchat::e2e::envelope::{self, Kind};
use mpchat::e2e::members::Statement;
use mpchat::e2e::sender_key::OwnSenderKey;
use mpchat::e2e::state::SessionState;
use mpchat::e2e::Error as E2eError;
use mpchat::fsutil;

use crate::error::{fail, BenchError, Ctx};

/// Unix time in milliseconds (the envelopes' clock fields).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Writes `state` as the client does: one atomic replacement (temporary file, fsync,
/// rename, fsync of the directory), mode 0600.
pub fn persist(state: &SessionState, path: &Path) -> Result<(), BenchError> {
    fsutil::atomic_write(path, &state.encode(), 0o600)
        .ctx(|| format!("write the session state {}", path.display()))
}

/// What sealing one message produced: the `MPK2` that must go first when the sender
/// key was (re)made for it, then the `MPM2`.
#[derive(Debug)]
pub struct Sealed {
    /// A new sender key's distribution to every current recipient, sent before the
    /// message.
    pub distribution: Option<Vec<u8>>,
    /// The message.
    pub message: Vec<u8>,
}

/// A participant that sends in one session: its session state (its own sender key,
/// and the statement if it created the session) and the recipients' identity keys.
pub struct Author<'k> {
    /// The session state as the client persists it.
    pub state: SessionState,
    uid: u64,
    key: &'k RsaPrivate,
    recipients: Vec<(u64, &'k RsaPublic)>,
    recipient_set: BTreeSet<u64>,
}

fn e2e(what: &'static str) -> impl Fn(E2eError) -> BenchError {
    move |e| fail(format!("{what}: {e}"))
}

impl<'k> Author<'k> {
    /// The author `uid` (identity key `key`) of session `sid`, sending to
    /// `recipients`, with a fresh sender key made at `now_ms` (not distributed yet).
    pub fn new(
        sid: u64,
        uid: u64,
        key: &'k RsaPrivate,
        recipients: Vec<(u64, &'k RsaPublic)>,
        now_ms: i64,
    ) -> Result<Author<'k>, BenchError> {
        let mut state = SessionState::new(sid);
        state.own = Some(OwnSenderKey::generate(now_ms, None).map_err(e2e("make a sender key"))?);
        let recipient_set = recipients.iter().map(|&(u, _)| u).collect();
        Ok(Author {
            state,
            uid,
            key,
            recipients,
            recipient_set,
        })
    }

    /// The creator's membership statement naming `invitees`, signed and held (the
    /// session's first envelope).
    pub fn sign_statement(
        &mut self,
        creator_name: &str,
        invitees: &[&str],
        created_ms: u64,
    ) -> Result<Vec<u8>, BenchError> {
        let st = Statement::sign(
            self.state.sid(),
            self.uid,
            creator_name,
            invitees,
            created_ms,
            self.key,
        )
        .map_err(e2e("sign the member list"))?;
        let bytes = st.bytes().to_vec();
        self.state.statement = Some(st);
        Ok(bytes)
    }

    fn own(&mut self) -> Result<&mut OwnSenderKey, BenchError> {
        self.state
            .own
            .as_mut()
            .ok_or_else(|| fail("the author has no sender key"))
    }

    /// The `MPK2` of the current sender key for every recipient who does not hold it
    /// yet (all of them for a new key), recorded as held.
    pub fn distribute(&mut self) -> Result<Vec<u8>, BenchError> {
        let (sid, uid, key) = (self.state.sid(), self.uid, self.key);
        let recipient_set = self.recipient_set.clone();
        let recipients = self.recipients.clone();
        let own = self.own()?;
        let missing = own.recipients_without_key(&recipient_set);
        let to: Vec<(u64, &RsaPublic)> = recipients
            .into_iter()
            .filter(|(u, _)| missing.contains(u))
            .collect();
        let env = own
            .distribution(sid, uid, key, &to)
            .map_err(e2e("build a sender-key distribution"))?;
        own.mark_holders(&missing)
            .map_err(e2e("record the key's holders"))?;
        Ok(env)
    }

    /// Seals `text` at `now_ms` as the client does: first, if the sender key is due
    /// for rotation (1,000 messages, 24 hours), a new key and its distribution; then
    /// the message, the chain advanced. The caller persists [`Author::state`] before
    /// the envelope leaves.
    pub fn seal(&mut self, text: &str, now_ms: i64) -> Result<Sealed, BenchError> {
        let due = self
            .state
            .own
            .as_ref()
            .ok_or_else(|| fail("the author has no sender key"))?
            .rotation_reason(now_ms, &self.recipient_set, &BTreeSet::new())
            .is_some();
        let distribution = if due {
            let previous = self.own()?.key_id();
            self.state.own = Some(
                OwnSenderKey::generate(now_ms, Some(previous)).map_err(e2e("make a sender key"))?,
            );
            Some(self.distribute()?)
        } else {
            None
        };
        let (sid, uid) = (self.state.sid(), self.uid);
        let message = self
            .own()?
            .seal(sid, uid, now_ms, text)
            .map_err(e2e("seal a message"))?;
        Ok(Sealed {
            distribution,
            message,
        })
    }
}

/// Who created a session, as its status gives it (a statement must name them).
#[derive(Clone, Copy)]
pub struct Creator<'k> {
    /// Uid.
    pub uid: u64,
    /// Name.
    pub name: &'k str,
    /// Pinned identity key.
    pub key: &'k RsaPublic,
}

/// What [`Reader::take`] did with an envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// A membership statement, verified (and stored if new).
    Statement,
    /// A sender-key distribution, verified (and stored if it had an entry for us).
    Key,
    /// A message, verified and opened.
    Text(String),
}

/// A participant that reads one session: its state (statement, the peers' sender
/// keys and chains) and its identity key.
pub struct Reader<'k> {
    /// The session state as the client persists it.
    pub state: SessionState,
    uid: u64,
    key: &'k RsaPrivate,
}

impl<'k> Reader<'k> {
    /// Participant `uid` (identity key `key`) of session `sid`, holding nothing yet.
    pub fn new(sid: u64, uid: u64, key: &'k RsaPrivate) -> Reader<'k> {
        Reader {
            state: SessionState::new(sid),
            uid,
            key,
        }
    }

    /// Participant `uid` resuming from its persisted state, as a client does at start.
    pub fn resume(path: &Path, uid: u64, key: &'k RsaPrivate) -> Result<Reader<'k>, BenchError> {
        let bytes = std::fs::read(path).ctx(|| format!("read {}", path.display()))?;
        let state = SessionState::decode(&bytes).ctx(|| format!("decode {}", path.display()))?;
        Ok(Reader { state, uid, key })
    }

    /// Checks `envelope` by `author_uid` (whose pinned key is `author_key`) and takes
    /// it into the state, as the client does: a statement against the session's
    /// creator, a distribution with its signature and commitment, a message with its
    /// signature, ratchet position and tag. Every refusal is an error (the bench's
    /// envelopes are all valid).
    pub fn take(
        &mut self,
        envelope: &[u8],
        author_uid: u64,
        author_key: &RsaPublic,
        creator: Creator<'_>,
    ) -> Result<Taken, BenchError> {
        match envelope::kind(envelope).ctx(|| "an envelope".to_string())? {
            Kind::Statement => {
                self.state
                    .receive_statement(envelope, creator.uid, creator.name, creator.key)
                    .map_err(e2e("a member list"))?;
                Ok(Taken::Statement)
            }
            Kind::SenderKey => {
                self.state
                    .receive_distribution(envelope, author_uid, author_key, self.uid, self.key)
                    .map_err(e2e("a sender-key distribution"))?;
                Ok(Taken::Key)
            }
            Kind::Message => {
                let opened = self
                    .state
                    .open_message(envelope, author_uid)
                    .map_err(e2e("a message"))?;
                Ok(Taken::Text(opened.text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_takes_what_an_author_sends_and_its_state_persists() {
        let (a, r) = (
            RsaPrivate::generate(2048).unwrap(),
            RsaPrivate::generate(2048).unwrap(),
        );
        let (a_pub, r_pub) = (a.public(), r.public());
        let (sid, au, ru) = (0x5eed, 11, 22);
        let mut author = Author::new(sid, au, &a, vec![(ru, &r_pub)], 1_000).unwrap();
        let statement = author.sign_statement("alice", &["bob"], 1_000).unwrap();
        let dist = author.distribute().unwrap();
        let creator = Creator {
            uid: au,
            name: "alice",
            key: &a_pub,
        };
        let mut reader = Reader::new(sid, ru, &r);
        assert_eq!(
            reader.take(&statement, au, &a_pub, creator).unwrap(),
            Taken::Statement
        );
        assert_eq!(reader.take(&dist, au, &a_pub, creator).unwrap(), Taken::Key);
        let sealed = author.seal("hello", 1_001).unwrap();
        assert!(sealed.distribution.is_none(), "the key was distributed");
        assert_eq!(sealed.message.len(), 5 + envelope::MESSAGE_OVERHEAD);
        assert_eq!(
            reader.take(&sealed.message, au, &a_pub, creator).unwrap(),
            Taken::Text("hello".into())
        );
        assert!(
            reader.take(&sealed.message, au, &a_pub, creator).is_err(),
            "a replay is refused"
        );
        let dir = crate::process::TempDir::new("client-test").unwrap();
        let path = dir.path().join("state");
        persist(&reader.state, &path).unwrap();
        let back = SessionState::decode(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back.peer(au).map(|p| p.keys().count()), Some(1));
    }

    #[test]
    fn an_author_rotates_its_key_after_1000_messages_and_distributes_the_new_one() {
        let (a, r) = (
            RsaPrivate::generate(2048).unwrap(),
            RsaPrivate::generate(2048).unwrap(),
        );
        let (a_pub, r_pub) = (a.public(), r.public());
        let mut author = Author::new(7, 1, &a, vec![(2, &r_pub)], 0).unwrap();
        let creator = Creator {
            uid: 1,
            name: "alice",
            key: &a_pub,
        };
        let mut reader = Reader::new(7, 2, &r);
        let st = author.sign_statement("alice", &["bob"], 0).unwrap();
        reader.take(&st, 1, &a_pub, creator).unwrap();
        reader
            .take(&author.distribute().unwrap(), 1, &a_pub, creator)
            .unwrap();
        let mut distributions = 0;
        for i in 0..1_001 {
            let s = author.seal("x", i).unwrap();
            if let Some(d) = s.distribution {
                distributions += 1;
                assert_eq!(reader.take(&d, 1, &a_pub, creator).unwrap(), Taken::Key);
            }
            assert_eq!(
                reader.take(&s.message, 1, &a_pub, creator).unwrap(),
                Taken::Text("x".into())
            );
        }
        assert_eq!(distributions, 1, "one rotation after 1,000 messages");
    }
}
