//! Key bindings: the one end-to-end public key the server holds for each account.
//!
//! The server records an account's public key (its SubjectPublicKeyInfo DER) the
//! first time the account presents one, in init_req or in an accepting invite_res,
//! and from then refuses a key that another account owns (`error: key belongs to
//! another user`: a user cannot squat on someone else's key and so make other
//! clients distrust its owner) and a different key from the same account (`error: key
//! differs from the one bound to your account`), unless the account replaces its key
//! explicitly with a request signed by the bound key ([`replacement_proof`]). An
//! administrator clears a binding for a user who lost their key (`mpchatd
//! reset-key`).
//!
//! Bindings are session state like any other: every change is a
//! [`Record`](crate::session::Record) (`Bind`, `Unbind`, `Rekey`) applied by
//! [`Sessions::apply`](crate::session::Sessions::apply), stored in the journal with
//! group commit and in snapshots, and replayed at recovery. This module holds the
//! map, the rules the server checks under its registry lock, and the replacement
//! proof (built by clients, verified by the server outside its lock).
//!
//! It must never do I/O, never decide anything from a key's text (keys are compared
//! as canonical DER, which [`RsaPublic`] guarantees), and never let a check succeed
//! for a key another existing account owns.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::crypto::{CryptoError, RsaPrivate, RsaPublic};
use crate::encoding;
use crate::proto::Reason;
use crate::session::Session;

/// The context string a key replacement proof signs, before the uid and the new key.
pub const REPLACEMENT_CONTEXT: &[u8] = b"mpchat v2 key replacement";

/// Every account's bound key, both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    by_uid: HashMap<u64, Arc<[u8]>>,
    by_key: HashMap<Arc<[u8]>, u64>,
}

impl Bindings {
    /// An empty map.
    pub fn new() -> Bindings {
        Bindings::default()
    }

    /// The key (SPKI DER) bound to `uid`.
    pub fn get(&self, uid: u64) -> Option<&Arc<[u8]>> {
        self.by_uid.get(&uid)
    }

    /// The account `der` is bound to.
    pub fn owner(&self, der: &[u8]) -> Option<u64> {
        self.by_key.get(der).copied()
    }

    /// Accounts with a bound key.
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    /// Whether no key is bound.
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// Every binding, in no particular order (cheap: keys are shared).
    pub fn iter(&self) -> impl Iterator<Item = (u64, Arc<[u8]>)> + '_ {
        self.by_uid.iter().map(|(u, k)| (*u, k.clone()))
    }

    /// Every binding, by uid (snapshots write them in this order).
    pub fn sorted(&self) -> Vec<(u64, Arc<[u8]>)> {
        let sorted: BTreeMap<u64, Arc<[u8]>> =
            self.by_uid.iter().map(|(u, k)| (*u, k.clone())).collect();
        sorted.into_iter().collect()
    }

    /// Checks the key `der` that account `uid` presents (in init_req or invite_res).
    /// `Ok(None)`: it is the account's bound key. `Ok(Some(key))`: the account has
    /// none and the key is free; bind it (a `Bind` record) before the request takes
    /// effect. `exists` says whether an account still exists: a key bound to a
    /// deleted account is free again.
    pub fn check(
        &self,
        uid: u64,
        der: &[u8],
        exists: &dyn Fn(u64) -> bool,
    ) -> Result<Option<Arc<[u8]>>, Reason> {
        match self.owner(der) {
            Some(owner) if owner == uid => return Ok(None),
            Some(owner) if exists(owner) => return Err(Reason::KeyOfAnotherUser),
            _ => {}
        }
        if self.by_uid.contains_key(&uid) {
            return Err(Reason::KeyDiffers);
        }
        Ok(Some(Arc::from(der)))
    }

    /// Checks the new key of an explicit replacement by `uid` (its proof is checked
    /// by the caller): refused only if another existing account owns it.
    pub fn check_replacement(
        &self,
        uid: u64,
        der: &[u8],
        exists: &dyn Fn(u64) -> bool,
    ) -> Result<(), Reason> {
        match self.owner(der) {
            Some(owner) if owner != uid && exists(owner) => Err(Reason::KeyOfAnotherUser),
            _ => Ok(()),
        }
    }

    /// Applies `Bind`: `uid` had no key; a stale claim on `key` (a deleted
    /// account's) goes. `false` if `uid` already has a key (the record cannot have
    /// been planned from this state).
    pub(crate) fn bind(&mut self, uid: u64, key: &Arc<[u8]>) -> bool {
        if self.by_uid.contains_key(&uid) {
            return false;
        }
        self.set(uid, key);
        true
    }

    /// Applies `Rekey`: `uid`'s key becomes `key` whether it had one or not.
    pub(crate) fn rebind(&mut self, uid: u64, key: &Arc<[u8]>) {
        self.set(uid, key);
    }

    /// Applies `Unbind`. `false` if `uid` had no key.
    pub(crate) fn unbind(&mut self, uid: u64) -> bool {
        match self.by_uid.remove(&uid) {
            Some(old) => {
                self.by_key.remove(&old);
                true
            }
            None => false,
        }
    }

    fn set(&mut self, uid: u64, key: &Arc<[u8]>) {
        if let Some(old) = self.by_uid.insert(uid, key.clone()) {
            self.by_key.remove(&old);
        }
        if let Some(other) = self.by_key.insert(key.clone(), uid) {
            if other != uid {
                self.by_uid.remove(&other);
            }
        }
    }
}

/// The bytes a key replacement proof signs:
/// `"mpchat v2 key replacement" || uid (8 bytes, big-endian) || SPKI DER of the new key`.
pub fn replacement_message(uid: u64, new_spki_der: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(REPLACEMENT_CONTEXT.len() + 8 + new_spki_der.len());
    m.extend_from_slice(REPLACEMENT_CONTEXT);
    m.extend_from_slice(&uid.to_be_bytes());
    m.extend_from_slice(new_spki_der);
    m
}

/// The proof a client sends to replace its key (for `mpchat keygen --replace`): the
/// standard padded base64 of an RSA-PSS signature by the `old` (bound) key over
/// [`replacement_message`] of the user's `uid` and the `new` key. The request is then
/// init_req, sid 0, payload `<new key> <proof>\n`
/// ([`KeyReplaceReq`](crate::proto::KeyReplaceReq)).
pub fn replacement_proof(
    old: &RsaPrivate,
    uid: u64,
    new: &RsaPublic,
) -> Result<String, CryptoError> {
    let sig = old.pss_sign(&replacement_message(uid, new.spki_der()))?;
    Ok(encoding::b64(&sig))
}

/// Whether `proof` is `bound`'s signature over the replacement of `uid`'s key by
/// `new_spki_der`.
pub fn verify_replacement(bound: &RsaPublic, uid: u64, new_spki_der: &[u8], proof: &str) -> bool {
    let Some(sig) = encoding::unb64(proof) else {
        return false;
    };
    bound
        .pss_verify(&replacement_message(uid, new_spki_der), &sig)
        .is_ok()
}

/// Bindings to make: `(uid, SPKI DER)`.
pub type Seed = Vec<(u64, Arc<[u8]>)>;

/// Bindings for a state of the format before bindings existed, from the keys its
/// sessions hold: an account is bound to its key when every session it accepted
/// holds the same key for it and no other account's. Returns the bindings (skipping
/// accounts already in `existing` and keys already owned there) and the uids left
/// unbound because their keys were ambiguous (several keys, or a key shared with
/// another account); their next key binds.
pub fn seed_from_sessions<'a>(
    sessions: impl Iterator<Item = &'a Session>,
    existing: &Bindings,
) -> (Seed, Vec<u64>) {
    let mut keys_of: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut users_of: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    for s in sessions {
        for p in s.accepted() {
            let Some(der) = p
                .key
                .as_deref()
                .and_then(|k| RsaPublic::from_base64(k).ok())
                .map(|k| k.spki_der().to_vec())
            else {
                continue;
            };
            let keys = keys_of.entry(p.uid).or_default();
            if !keys.contains(&der) {
                keys.push(der.clone());
            }
            let users = users_of.entry(der).or_default();
            if !users.contains(&p.uid) {
                users.push(p.uid);
            }
        }
    }
    let mut bound = Vec::new();
    let mut ambiguous = Vec::new();
    for (uid, keys) in keys_of {
        if existing.get(uid).is_some() {
            continue;
        }
        match &keys[..] {
            [key] if users_of[key].len() == 1 && existing.owner(key).is_none() => {
                bound.push((uid, Arc::from(key.as_slice())));
            }
            _ => ambiguous.push(uid),
        }
    }
    (bound, ambiguous)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 0xa;
    const B: u64 = 0xb;

    fn key(b: u8) -> Arc<[u8]> {
        Arc::from(vec![b; 4])
    }

    fn everyone(_: u64) -> bool {
        true
    }

    #[test]
    fn the_first_key_binds_and_then_only_it_is_accepted() {
        let mut b = Bindings::new();
        assert_eq!(b.check(A, &key(1), &everyone), Ok(Some(key(1))));
        assert!(b.bind(A, &key(1)));
        assert_eq!(b.check(A, &key(1), &everyone), Ok(None));
        assert_eq!(b.check(A, &key(2), &everyone), Err(Reason::KeyDiffers));
        assert_eq!(
            b.check(B, &key(1), &everyone),
            Err(Reason::KeyOfAnotherUser)
        );
        assert!(!b.bind(A, &key(2)), "a bound account is not bound again");
    }

    #[test]
    fn a_deleted_accounts_key_is_free_again() {
        let mut b = Bindings::new();
        assert!(b.bind(A, &key(1)));
        let only_b = |u| u == B;
        assert_eq!(b.check(B, &key(1), &only_b), Ok(Some(key(1))));
        assert!(b.bind(B, &key(1)));
        assert_eq!(b.owner(&key(1)), Some(B));
        assert_eq!(b.get(A), None, "the stale claim went");
    }

    #[test]
    fn a_replacement_rebinds_and_an_unbind_frees_the_account() {
        let mut b = Bindings::new();
        assert!(b.bind(A, &key(1)));
        assert!(b.bind(B, &key(2)));
        assert_eq!(
            b.check_replacement(A, &key(2), &everyone),
            Err(Reason::KeyOfAnotherUser)
        );
        assert_eq!(b.check_replacement(A, &key(3), &everyone), Ok(()));
        b.rebind(A, &key(3));
        assert_eq!(b.owner(&key(1)), None);
        assert_eq!(b.get(A), Some(&key(3)));
        assert!(b.unbind(A));
        assert!(!b.unbind(A));
        assert_eq!(b.check(A, &key(4), &everyone), Ok(Some(key(4))));
        assert_eq!(b.sorted(), vec![(B, key(2))]);
    }

    #[test]
    fn a_replacement_proof_verifies_only_for_its_uid_and_key() {
        let old = RsaPrivate::generate(2048).unwrap();
        let new = RsaPrivate::generate(2048).unwrap().public();
        let other = RsaPrivate::generate(2048).unwrap().public();
        let proof = replacement_proof(&old, A, &new).unwrap();
        assert!(verify_replacement(&old.public(), A, new.spki_der(), &proof));
        assert!(!verify_replacement(
            &old.public(),
            B,
            new.spki_der(),
            &proof
        ));
        assert!(!verify_replacement(
            &old.public(),
            A,
            other.spki_der(),
            &proof
        ));
        assert!(!verify_replacement(&new, A, new.spki_der(), &proof));
        assert!(!verify_replacement(
            &old.public(),
            A,
            new.spki_der(),
            "not base64!"
        ));
        let m = replacement_message(A, b"DER");
        assert_eq!(&m[..25], b"mpchat v2 key replacement");
        assert_eq!(&m[25..33], &A.to_be_bytes());
        assert_eq!(&m[33..], b"DER");
    }
}
