//! The running server's part of key bindings ([`crate::bindings`]) that needs more
//! than one registry call: the explicit key replacement (its proof is verified
//! between two calls, outside the lock) and `mpchatd reset-key` through the control
//! socket (answered once its record is stored).
//!
//! It exists so that the RSA work of a replacement never runs under the registry
//! lock and the reader thread stays a dispatcher. It must never accept a replacement
//! whose proof was checked against a binding that changed before the change was
//! applied (the registry re-checks it), never answer `reset-key` before its record
//! is on disk, and never log a key.

use std::sync::Arc;

use super::journal::Inflight;
use super::Shared;
use crate::bindings;
use crate::crypto::RsaPublic;
use crate::mtp::MsgType;
use crate::proto::{KeyReplaceReq, Reason};
use crate::registry::Requester;

/// init_req `<new key> <proof>\n`: replaces `me`'s key if the proof verifies with
/// the key bound to the account (or if none is bound).
pub(super) fn replace_key(
    shared: &Shared,
    inflight: &Arc<Inflight>,
    me: Requester,
    name: &str,
    req: &KeyReplaceReq,
) {
    let refuse = |reason: Reason| {
        log::info!("refused a key replacement by {name}: {reason}");
        shared.with_registry_as(Some(inflight), |reg| {
            reg.refuse(me, MsgType::InitRes, 0, &reason)
        });
    };
    let Ok(new) = RsaPublic::from_base64(&req.key) else {
        return refuse(Reason::InvalidKey);
    };
    let bound = shared.with_registry(|reg| reg.binding(me.uid));
    // A retry after a lost reply names the key already bound, with a proof by the old
    // key: the replacement is done, so it gets `OK` again rather than a refusal.
    let already = bound.as_deref() == Some(new.spki_der());
    if let (Some(bound_der), false) = (&bound, already) {
        let verified = RsaPublic::from_spki_der(bound_der)
            .is_ok_and(|k| bindings::verify_replacement(&k, me.uid, new.spki_der(), &req.proof));
        if !verified {
            return refuse(Reason::ReplacementNotSigned);
        }
    }
    let accounts = shared.users.current();
    let exists = |uid| accounts.name_of(uid).is_some();
    shared.with_registry_as(Some(inflight), |reg| {
        reg.replace_key(me, bound, new.spki_der(), &exists)
    });
    log::info!("{name} asked to replace their end-to-end key");
}

/// `reset-key NAME` on the control socket: clears the binding of account `name`;
/// answers once the change is stored.
pub(super) fn reset_key(shared: &Shared, name: &str) -> Result<Vec<String>, String> {
    let accounts = shared.users.current();
    let uid = accounts
        .lookup(name)
        .map(|a| a.uid)
        .ok_or_else(|| format!("no user {name}; mpchatd users lists them"))?;
    let stored = Arc::new(Inflight::default());
    let (cleared, epoch) =
        shared.with_registry_as(Some(&stored), |reg| (reg.reset_binding(uid), reg.epoch()));
    stored.wait_below(1);
    if !cleared {
        return Ok(vec![format!("{name} has no key bound; nothing changed")]);
    }
    if shared.with_registry(|reg| reg.epoch()) != epoch {
        return Err("the server could not store the change; nothing changed; try again".into());
    }
    log::info!("cleared the key bound to {name}");
    Ok(vec![format!(
        "cleared the key bound to {name}; the next key the account presents is bound"
    )])
}
