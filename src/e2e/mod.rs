//! The end-to-end layer: what clients put in msg_req payloads so that a hostile
//! server can neither read, forge, alter, equivocate on, reorder unnoticed nor add
//! recipients to a conversation. The server never parses any of it.
//!
//! Version 2 (issue 11, `man/mpchat-protocol.7` END-TO-END ENVELOPE), in small pieces
//! that do no I/O, read no clock (`now` is an argument) and never log:
//! - [`envelope`]: the byte layouts of `MPS2`, `MPK2` and `MPM2`, parse and build;
//! - [`members`]: the creator-signed membership statement (`MPS2`);
//! - [`ratchet`]: the sender-key hash chain, message keys, the receiving chain with its
//!   skipped keys and bounds;
//! - [`sender_key`]: one's own sender key (rotation rules, distribution, sealing) and
//!   the peers' keys (opening distributions and messages, equivocation checks);
//! - [`state`]: a session's persisted e2e state as bytes (`MPCS2`).
//!
//! Nothing in this layer releases plaintext before every check has passed.
//!
//! [`v1`] is the previous `MPE1` envelope, still used by the client until the v2
//! integration replaces it; its items are re-exported here under their old paths.

pub mod envelope;
pub mod members;
pub mod ratchet;
pub mod sender_key;
pub mod state;
pub mod v1;

mod error;

pub use error::Error;
pub use v1::{open, parse, seal, E2eError, Opened, ReplayGuard, MAX_RECIPIENTS, MSG_ID_LEN};
