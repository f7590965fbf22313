//! The server's side of the control socket ([`crate::control`]): one thread that
//! answers `who`, `stats`, `backup`, `rotate-key`, `retire-key` and `reset-key`, one
//! request at a time, and the table of who is online for `who`.
//!
//! It exists so that an operator can see and steer the running server without
//! stopping it or grepping its log. It must never let anyone but the server's own
//! user connect (the socket is made mode 0600 in a private directory and renamed into
//! place, so no other mode is ever visible; std has no way to read the peer's
//! credentials without unsafe code, so the file system is what keeps others out),
//! never hold the registry lock while it does I/O or cryptography, never block on a
//! client without a timeout, and never print a password, a private key or a
//! message's contents.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{backup, keys, lock, Shared};
use crate::control::{self, Command, CONTROL_SOCKET};
use crate::store;

/// How long the control thread waits for a client's request line or for it to take
/// the reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The private directory the socket is made in before it is renamed into place.
const BIND_DIR: &str = ".control.new";

/// Who is online, for `who`: each logged-in connection's user, address and login
/// time, by connection id.
#[derive(Default)]
pub(super) struct WhoTable {
    table: Mutex<HashMap<u64, WhoEntry>>,
}

struct WhoEntry {
    uid: u64,
    name: String,
    peer: SocketAddr,
    since: SystemTime,
}

impl WhoTable {
    /// Records connection `id` of `uid` as logged in now.
    pub(super) fn enter(&self, id: u64, uid: u64, name: &str, peer: SocketAddr) {
        lock(&self.table).insert(
            id,
            WhoEntry {
                uid,
                name: name.to_string(),
                peer,
                since: SystemTime::now(),
            },
        );
    }

    /// Forgets connection `id`.
    pub(super) fn leave(&self, id: u64) {
        lock(&self.table).remove(&id);
    }
}

/// Binds the control socket in `state_dir`, replacing a leftover one (the caller
/// holds the state directory's lock, so no other server uses it). The socket is made
/// in a fresh mode 0700 directory, set to mode 0600, and only then renamed to its
/// place, so it is never reachable with another mode.
pub(super) fn bind(state_dir: &Path) -> io::Result<UnixListener> {
    let dir = state_dir.join(BIND_DIR);
    let _ = fs::remove_dir_all(&dir);
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let result = (|| {
        let tmp = dir.join("s");
        let listener = UnixListener::bind(&tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&tmp, state_dir.join(CONTROL_SOCKET))?;
        Ok(listener)
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}

/// The control thread: answers one request at a time until the listener fails.
pub(super) fn run(shared: &Arc<Shared>, listener: UnixListener) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => serve(shared, s),
            Err(e) => {
                log::warn!("control socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve(shared: &Arc<Shared>, stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let line = match control::read_request(&mut BufReader::new(&stream)) {
        Ok(l) => l,
        Err(e) => {
            log::info!("control socket: unreadable request: {e}");
            return;
        }
    };
    let reply = Command::decode(&line).and_then(|cmd| {
        log::info!("control socket: {}", line);
        answer(shared, &cmd)
    });
    if let Err(text) = &reply {
        log::info!("control socket: refused: {text}");
    }
    let _ = (&stream).write_all(control::encode_reply(&reply).as_bytes());
}

fn answer(shared: &Arc<Shared>, cmd: &Command) -> Result<Vec<String>, String> {
    match cmd {
        Command::Who => Ok(who(shared)),
        Command::Stats => Ok(stats(shared)),
        Command::Backup => backup::snapshot_for_backup(shared).map_err(|e| e.to_string()),
        Command::RotateKey => {
            let now = shared.keys();
            let next = keys::rotate(&shared.config.state_dir, &now).map_err(|e| e.to_string())?;
            let lines = keys::rotated_lines(&next);
            log::info!(
                "rotated the server key: now accepting {} and the old {}",
                next.current.public().fingerprint(),
                now.current.public().fingerprint()
            );
            shared.set_keys(next);
            Ok(lines)
        }
        Command::RetireKey => {
            let now = shared.keys();
            let next = keys::retire(&shared.config.state_dir, &now).map_err(|e| e.to_string())?;
            let line = keys::retired_line(&now, &next);
            log::info!("{line}");
            shared.set_keys(next);
            Ok(vec![line])
        }
        Command::ResetKey(name) => super::bindings::reset_key(shared, name),
    }
}

/// `who`: a line per online user, `NAME ADDRESS SINCE`, by name.
fn who(shared: &Shared) -> Vec<String> {
    let entries: Vec<(u64, u64, String, SocketAddr, SystemTime)> = lock(&shared.who.table)
        .iter()
        .map(|(id, e)| (*id, e.uid, e.name.clone(), e.peer, e.since))
        .collect();
    // A connection replaced by a second login lingers in the table until its
    // threads end: only the registry's current connection of each user counts.
    let current: Vec<bool> = shared.with_registry(|reg| {
        entries
            .iter()
            .map(|(id, uid, ..)| reg.online_conn(*uid) == Some(*id))
            .collect()
    });
    let mut lines: Vec<(String, String)> = entries
        .into_iter()
        .zip(current)
        .filter(|(_, cur)| *cur)
        .map(|((_, _, name, peer, since), _)| {
            let line = format!("{name} {peer} {}", control::utc_time(since));
            (name, line)
        })
        .collect();
    lines.sort();
    lines.into_iter().map(|(_, l)| l).collect()
}

/// `stats`: `NAME VALUE` lines.
fn stats(shared: &Shared) -> Vec<String> {
    let r = shared.with_registry(|reg| reg.stats());
    let size = |file: &str| fs::metadata(shared.config.state_dir.join(file)).map_or(0, |m| m.len());
    let keys = shared.keys();
    vec![
        format!("connections {}", shared.total.load(Ordering::Acquire)),
        format!("logins_in_progress {}", shared.prelogin.len()),
        format!("users_online {}", r.online),
        format!("sessions_live {}", r.live),
        format!("sessions_pending {}", r.pending),
        format!("sessions_closed {}", r.closed),
        format!("backlog_messages {}", r.backlog_messages),
        format!("backlog_bytes {}", r.backlog_bytes),
        format!("keys_bound {}", r.bound_keys),
        format!("journal_bytes {}", size(store::JOURNAL_FILE)),
        format!("snapshot_bytes {}", size(store::SNAPSHOT_FILE)),
        format!("server_keys {}", keys.all().len()),
    ]
}
