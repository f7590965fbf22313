//! mpchat: a self-hosted end-to-end-encrypted group chat.
//!
//! Layers, bottom up:
//! - [`encoding`], [`fsutil`], [`codec`]: hex/base64/decimal text forms; durable file
//!   replacement; the one bounds-checked byte reader for every binary format.
//! - [`crypto`]: the only module that names `ring`, `rsa` and `pbkdf2`.
//! - [`mtp`]: the Message Transfer Protocol: the 24-byte header, frame sealing and
//!   opening with per-direction sequence numbers and the rekey after `0xFFFF`.
//! - [`login`]: the login handshake as client and server state machines, with no
//!   sockets and no clock (`now` is an argument).
//! - [`names`]: the username rule, shared by the protocol, the client and the server.
//! - [`proto`]: every payload after the login as a typed request or reply, with its
//!   `encode` and `decode`; the payload text lives there only.
//! - [`accounts`]: the server's `users` file (PHC lines), password checking, the PBKDF2
//!   gate and the administration commands.
//! - [`e2e`]: the end-to-end layer, no I/O: the `MPE1` envelope the client uses today
//!   ([`e2e::v1`]) and the v2 pieces (envelopes, membership statement, sender-key
//!   ratchet, session state bytes) the client integration will switch to.
//! - [`client`]: `mpchat`: [`client::state`] is the client as a state machine (a line
//!   or a frame in, events to show, requests to send and files to persist out, in
//!   order; no I/O), [`client::event`] what it tells the user and the script-mode line
//!   of each, [`client::store`] its files, and `client` itself the shell of threads,
//!   connection and stdin/stdout around it. A new client command is parsed and
//!   handled in [`client::state`]; a new kind of event is added in [`client::event`]
//!   (its script line) and [`client::render`] (how a person sees it). The interactive
//!   mode's pieces: [`client::names`] (session references and names, pure),
//!   [`client::editor`] (the input line, pure), [`client::screen`] (the terminal).
//! - [`terminal`]: terminal modes through `stty` with a guardian process that restores
//!   them however the process ends; the password prompt of both binaries.
//! - [`bindings`]: one end-to-end key per account, bound by the server at first use;
//!   the key replacement proof. Its records live with the sessions ([`session`],
//!   [`store`]); [`upgrade`] migrates a state of the format before them.
//! - [`control`]: the control socket's wire form and client (`mpchatd who`, `stats`,
//!   `backup`, `rotate-key`, `retire-key`, `reset-key`); the server's side and the
//!   offline fallbacks are in [`server`].
//!
//! The server (`mpchatd`) runs a thread per connection on `std::net`; the client
//! (`mpchat`) is netcat-style. `bin/mpchatd.rs` and `bin/mpchat.rs` hold only
//! argument parsing, logging set-up and exit codes; `bin/mpchat-bench/` is the
//! benchmark, a binary with its own modules that uses only this crate's public API.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod bindings;
pub mod cli;
pub mod client;
pub mod codec;
pub mod control;
pub mod crypto;
pub mod e2e;
pub mod encoding;
pub mod fsutil;
pub mod login;
pub mod mtp;
pub mod names;
pub mod outbox;
pub mod pins;
pub mod proto;
pub mod registry;
pub mod server;
pub mod session;
pub mod store;
pub mod terminal;
pub mod threads;
pub mod upgrade;
