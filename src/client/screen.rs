//! The interactive client's screen: the terminal in raw mode, an input line at the
//! bottom with a prompt naming the current session, and every event printed above it,
//! so incoming messages never overwrite what is being typed.
//!
//! Printing an event clears the input line, writes the event's lines
//! ([`render::render`]) and draws the input line again ([`Editor::draw`]). The
//! terminal's settings come back on every way out ([`terminal::Mode`]).
//!
//! This module never interprets a command or a frame (the core does), and writes
//! nothing from outside unescaped (the renderer escapes).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::editor::{text_width, Action, Editor};
use super::event::Event;
use super::render::{self, View};
use super::state::{escape, Core};
use crate::encoding::id_hex;
use crate::terminal;

/// How often the offset from UTC is read again (a daylight saving change).
const OFFSET_EVERY: Duration = Duration::from_secs(600);

/// Columns assumed when the terminal does not say.
const DEFAULT_WIDTH: usize = 80;

/// The interactive screen. See the module documentation.
pub struct Screen {
    tty: File,
    out: io::Stdout,
    mode: Option<terminal::Mode>,
    editor: Editor,
    colour: bool,
    width: usize,
    utc_offset_s: i64,
    offset_read: Instant,
    login_ms: u64,
    offline: bool,
    waiting: usize,
}

/// Whether to use colour: not when `NO_COLOR` is set to anything but the empty
/// string (no-color.org), nor when `TERM` is unset or `dumb`.
pub fn wants_colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let term = std::env::var("TERM").unwrap_or_default();
    !no_color && !term.is_empty() && term != "dumb"
}

/// The local time's offset from UTC in seconds, from `date +%z`; 0 (UTC) if `date`
/// cannot say.
pub fn utc_offset() -> i64 {
    Command::new("date")
        .arg("+%z")
        .output()
        .ok()
        .and_then(|o| render::parse_utc_offset(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Screen {
    /// Puts the terminal on standard input in raw mode.
    pub fn open() -> io::Result<Screen> {
        let tty = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        let mode = terminal::Mode::set(&tty, terminal::RAW)?;
        let width = terminal::size(&tty).map_or(DEFAULT_WIDTH, |(_, c)| usize::from(c));
        Ok(Screen {
            tty,
            out: io::stdout(),
            mode: Some(mode),
            editor: Editor::new(),
            colour: wants_colour(),
            width,
            utc_offset_s: utc_offset(),
            offset_read: Instant::now(),
            login_ms: now_ms(),
            offline: false,
            waiting: 0,
        })
    }

    /// Keys typed: what the editor makes of them. After Enter the terminal's width
    /// is read again (it may have been resized).
    pub fn keys(&mut self, bytes: &[u8]) -> Vec<Action> {
        let actions = self.editor.feed(bytes);
        if actions.iter().any(|a| matches!(a, Action::Submit(_))) {
            if let Some((_, cols)) = terminal::size(&self.tty) {
                self.width = usize::from(cols);
            }
        }
        actions
    }

    /// A login succeeded (messages arriving soon after may have waited on the server).
    pub fn logged_in(&mut self) {
        self.login_ms = now_ms();
        self.offline = false;
    }

    /// The connection is gone (`true`) or back; `waiting` lines typed meanwhile.
    pub fn set_offline(&mut self, offline: bool, waiting: usize) {
        self.offline = offline;
        self.waiting = waiting;
    }

    /// Prints `event` above the input line (which [`Screen::redraw`] puts back).
    pub fn show(&mut self, event: &Event, core: &Core) {
        if self.offset_read.elapsed() >= OFFSET_EVERY {
            self.utc_offset_s = utc_offset();
            self.offset_read = Instant::now();
        }
        let label = |sid: u64| core.label(sid);
        let view = View {
            me: core.user(),
            current: core.current(),
            label: &label,
            colour: self.colour,
            now_ms: now_ms(),
            utc_offset_s: self.utc_offset_s,
            login_ms: self.login_ms,
        };
        let lines = render::render(event, &view);
        if lines.is_empty() {
            return;
        }
        let mut text = String::from("\r\x1b[K");
        for line in lines {
            text.push_str(&line);
            text.push_str("\r\n");
        }
        let _ = self.out.write_all(text.as_bytes());
    }

    /// Draws the input line: the prompt (the current session, `(offline)` while the
    /// connection is away) and the line being typed.
    pub fn redraw(&mut self, core: &Core) {
        let mut plain = String::new();
        if self.offline {
            plain.push_str("(offline");
            if self.waiting > 0 {
                plain.push_str(&format!(", {} waiting", self.waiting));
            }
            plain.push_str(") ");
        }
        let session = core.current().map(|sid| {
            core.label(sid)
                .unwrap_or_else(|| id_hex(sid)[..8].to_string())
        });
        let name = session.as_deref().map(escape).unwrap_or_default();
        let width = text_width(&plain) + text_width(&name) + 2;
        let prompt = if self.colour && !name.is_empty() {
            format!("{plain}\x1b[1m{name}\x1b[0m> ")
        } else {
            format!("{plain}{name}> ")
        };
        let drawn = self.editor.draw(&prompt, width, self.width);
        let _ = self.out.write_all(drawn.as_bytes());
        let _ = self.out.flush();
    }

    /// Clears the input line and gives the terminal its settings back.
    pub fn close(&mut self) {
        let _ = self.out.write_all(b"\r\x1b[K");
        let _ = self.out.flush();
        if let Some(mode) = self.mode.take() {
            mode.restore();
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.close();
    }
}
