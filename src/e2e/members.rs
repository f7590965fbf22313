//! The membership statement (`MPS2`): the creator's signed list of the invitees it
//! asked for, so that a server's status alone can never add a recipient (the "ghost
//! member" attack of issue 11).
//!
//! The creator signs with its identity key (RSA-PSS) over
//! `"mpchat v2 members" || sid || every byte before the signature length`; the sid is
//! not in the envelope (the receiver takes it from the delivery) but the signature
//! binds it, so a statement moved to another session fails. Any member may forward
//! the exact bytes: the creator's signature is what counts.
//!
//! This module makes and checks statements; it never decides whom to trust (the
//! caller passes the creator's pinned key and the status's creator uid and name).

use std::collections::BTreeSet;

use super::envelope::{self, EnvelopeError, StatementFields, MAX_RECIPIENTS};
use super::Error;
use crate::crypto::{RsaPrivate, RsaPublic};
use crate::names;

/// Signature context of the statement.
pub const MEMBERS_CONTEXT: &[u8] = b"mpchat v2 members";

/// A membership statement whose signature verified (or which this client signed), with
/// its exact bytes for storing and forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    bytes: Vec<u8>,
    creator_uid: u64,
    created_ms: u64,
    creator_name: String,
    invitees: Vec<String>,
}

/// What to do with a valid statement given the one held (see [`Statement::arrival`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementArrival {
    /// None was held: store this one.
    New,
    /// The same bytes as the one held: ignore silently.
    Identical,
    /// Another valid statement for the same session: print one line, keep the first.
    Conflicting,
}

fn signed_data(sid: u64, signed: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(MEMBERS_CONTEXT.len() + 8 + signed.len());
    data.extend_from_slice(MEMBERS_CONTEXT);
    data.extend_from_slice(&sid.to_be_bytes());
    data.extend_from_slice(signed);
    data
}

impl Statement {
    /// Signs the statement of session `sid`: `invitees` in any order (they are
    /// sorted); refuses a sid or uid of 0, an invalid name, a duplicate, the creator
    /// among the invitees, none or more than 99, or a key outside 2048..=4096 bits.
    pub fn sign(
        sid: u64,
        creator_uid: u64,
        creator_name: &str,
        invitees: &[&str],
        created_ms: u64,
        creator_key: &RsaPrivate,
    ) -> Result<Statement, Error> {
        if sid == 0 || creator_uid == 0 {
            return Err(Error::InvalidId);
        }
        if invitees.is_empty() || invitees.len() > MAX_RECIPIENTS {
            return Err(Error::RecipientCount);
        }
        if !names::valid_username(creator_name)
            || !invitees.iter().all(|n| names::valid_username(n))
        {
            return Err(Error::InvalidName);
        }
        let mut sorted = invitees.to_vec();
        sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::DuplicateRecipient);
        }
        if sorted.contains(&creator_name) {
            return Err(Error::InvalidName);
        }
        let fields = StatementFields {
            creator_uid,
            created_ms,
            creator_name,
            invitees: sorted,
        };
        let signed = envelope::statement_signed_part(&fields)?;
        let signature = creator_key.pss_sign(&signed_data(sid, &signed))?;
        let bytes = envelope::append_rsa_signature(signed, &signature)?;
        Statement::from_trusted_bytes(bytes).map_err(Error::Envelope)
    }

    /// Checks a received statement for session `sid`: its layout, then that it names
    /// the creator the session's status gives (`creator_uid`, `creator_name`), then the
    /// signature under the creator's pinned key.
    pub fn verify(
        bytes: &[u8],
        sid: u64,
        creator_uid: u64,
        creator_name: &str,
        creator_key: &RsaPublic,
    ) -> Result<Statement, Error> {
        let view = envelope::parse_statement(bytes)?;
        if view.fields.creator_uid != creator_uid || view.fields.creator_name != creator_name {
            return Err(Error::WrongCreator);
        }
        creator_key
            .pss_verify(&signed_data(sid, view.signed), view.signature)
            .map_err(|_| Error::BadSignature)?;
        Statement::from_trusted_bytes(bytes.to_vec()).map_err(Error::Envelope)
    }

    /// A statement read back from this client's own state file: its signature was
    /// verified when it was stored, so only the layout is checked again.
    pub fn from_trusted_bytes(bytes: Vec<u8>) -> Result<Statement, EnvelopeError> {
        let view = envelope::parse_statement(&bytes)?;
        let f = &view.fields;
        let (creator_uid, created_ms) = (f.creator_uid, f.created_ms);
        let creator_name = f.creator_name.to_owned();
        let invitees = f.invitees.iter().map(|n| (*n).to_owned()).collect();
        Ok(Statement {
            bytes,
            creator_uid,
            created_ms,
            creator_name,
            invitees,
        })
    }

    /// The exact envelope bytes (stored, and forwarded unchanged).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The creator's uid.
    pub fn creator_uid(&self) -> u64 {
        self.creator_uid
    }

    /// The creator's clock when it signed, Unix milliseconds.
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    /// The creator's name.
    pub fn creator_name(&self) -> &str {
        &self.creator_name
    }

    /// The invitees, sorted bytewise.
    pub fn invitees(&self) -> &[String] {
        &self.invitees
    }

    /// Whether `name` is the creator or an invitee: the only people a client may
    /// encrypt to or accept envelopes from in this session.
    pub fn is_member(&self, name: &str) -> bool {
        name == self.creator_name
            || self
                .invitees
                .binary_search_by(|n| n.as_bytes().cmp(name.as_bytes()))
                .is_ok()
    }

    /// Whether the invitees are exactly `names`, compared as sets (the creator matches
    /// a pending `/init` against the server's list this way).
    pub fn invitees_equal<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> bool {
        let set: BTreeSet<&str> = names.into_iter().collect();
        set.len() == self.invitees.len() && self.invitees.iter().all(|n| set.contains(n.as_str()))
    }

    /// How this (valid) statement relates to the one held for the session.
    pub fn arrival(&self, held: Option<&Statement>) -> StatementArrival {
        match held {
            None => StatementArrival::New,
            Some(h) if h.bytes == self.bytes => StatementArrival::Identical,
            Some(_) => StatementArrival::Conflicting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto;
    use std::sync::OnceLock;

    fn key() -> &'static RsaPrivate {
        static KEY: OnceLock<RsaPrivate> = OnceLock::new();
        KEY.get_or_init(|| {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/vectors/server_test_key.pem"
            );
            crypto::read_private_key(std::path::Path::new(path)).unwrap()
        })
    }

    #[test]
    fn a_signed_statement_verifies_for_its_sid_and_creator_only() {
        let k = key();
        let s = Statement::sign(5, 7, "alice", &["carol", "bob"], 1000, k).unwrap();
        assert_eq!(s.invitees(), ["bob", "carol"]);
        let pk = k.public();
        let v = Statement::verify(s.bytes(), 5, 7, "alice", &pk).unwrap();
        assert_eq!(v, s);
        assert!(v.is_member("alice") && v.is_member("bob") && v.is_member("carol"));
        assert!(!v.is_member("mallory"));
        assert!(v.invitees_equal(["carol", "bob"]));
        assert!(!v.invitees_equal(["carol"]));
        assert!(!v.invitees_equal(["carol", "bob", "dave"]));
        assert_eq!(
            Statement::verify(s.bytes(), 6, 7, "alice", &pk),
            Err(Error::BadSignature),
            "moved to another session"
        );
        assert_eq!(
            Statement::verify(s.bytes(), 5, 8, "alice", &pk),
            Err(Error::WrongCreator)
        );
        assert_eq!(
            Statement::verify(s.bytes(), 5, 7, "alicia", &pk),
            Err(Error::WrongCreator)
        );
        let mut altered = s.bytes().to_vec();
        altered[15] ^= 1; // created_ms
        assert_eq!(
            Statement::verify(&altered, 5, 7, "alice", &pk),
            Err(Error::BadSignature)
        );
        assert_eq!(s.arrival(None), StatementArrival::New);
        assert_eq!(s.arrival(Some(&v)), StatementArrival::Identical);
        let other = Statement::sign(5, 7, "alice", &["bob"], 1000, k).unwrap();
        assert_eq!(other.arrival(Some(&s)), StatementArrival::Conflicting);
    }

    #[test]
    fn signing_refuses_bad_member_lists() {
        let k = key();
        let sign = |names: &[&str]| Statement::sign(5, 7, "alice", names, 0, k).unwrap_err();
        assert_eq!(sign(&["bob", "bob"]), Error::DuplicateRecipient);
        assert_eq!(sign(&["alice"]), Error::InvalidName);
        assert_eq!(sign(&["Bob"]), Error::InvalidName);
        assert_eq!(sign(&[]), Error::RecipientCount);
        assert_eq!(
            Statement::sign(0, 7, "alice", &["bob"], 0, k).unwrap_err(),
            Error::InvalidId
        );
    }
}
