//! The input line of the interactive client: the keys a person types (bytes from a
//! terminal in raw mode) in, an edited line and what to do out, and the bytes that
//! draw the line with its prompt. Emacs-style keys, as readline has them: arrows,
//! Home/End, Backspace/Delete, Ctrl-A/E/B/F, Ctrl-U/K/W, up/down (and Ctrl-P/N) for
//! the history, Enter to submit, Ctrl-C to clear the line, Ctrl-D to quit on an empty
//! line, Ctrl-L to redraw.
//!
//! The history is kept in memory only, for the life of the process: it holds the
//! messages typed, and writing them to a file would keep in clear on disk what the
//! end-to-end encryption keeps off the server.
//!
//! No I/O: the shell reads the keys and writes what [`Editor::draw`] returns. Only
//! characters that need no escaping enter the line, so drawing it can never send the
//! terminal a control sequence the user pasted.

use super::state::escape;

/// Lines kept in the history.
pub const HISTORY_LEN: usize = 500;

/// What a key asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The line changed or the cursor moved: draw it again.
    Redraw,
    /// Enter: the line, now cleared (and added to the history).
    Submit(String),
    /// Ctrl-D on an empty line: quit.
    Quit,
}

/// The state of a partly read key sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seq {
    /// Nothing pending.
    None,
    /// After ESC.
    Esc,
    /// After `ESC [` (CSI), with the parameter so far.
    Csi(u16),
    /// After `ESC O` (SS3).
    Ss3,
}

/// The line being edited, its history and the keys not yet complete.
#[derive(Debug, Clone)]
pub struct Editor {
    line: Vec<char>,
    cursor: usize,
    history: Vec<String>,
    /// Index into the history while browsing it; `history.len()` for the new line.
    browsing: usize,
    /// The new line, kept while browsing the history.
    draft: Vec<char>,
    seq: Seq,
    /// Bytes of an incomplete UTF-8 character.
    utf8: Vec<u8>,
    /// The last byte was `\r`: a `\n` right after it is the same Enter.
    after_cr: bool,
}

impl Default for Editor {
    fn default() -> Self {
        Editor::new()
    }
}

impl Editor {
    /// An empty line and history.
    pub fn new() -> Editor {
        Editor {
            line: Vec::new(),
            cursor: 0,
            history: Vec::new(),
            browsing: 0,
            draft: Vec::new(),
            seq: Seq::None,
            utf8: Vec::new(),
            after_cr: false,
        }
    }

    /// The line as it stands.
    pub fn line(&self) -> String {
        self.line.iter().collect()
    }

    /// The cursor's position, in characters from the start of the line.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Takes keys as the terminal sent them (any split: a sequence or a character may
    /// span calls) and returns what to do, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        for &b in bytes {
            if let Some(a) = self.byte(b) {
                // Consecutive redraws are one.
                if !(a == Action::Redraw && actions.last() == Some(&Action::Redraw)) {
                    actions.push(a);
                }
            }
        }
        actions
    }

    fn byte(&mut self, b: u8) -> Option<Action> {
        let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
        match self.seq {
            Seq::Esc => {
                self.seq = match b {
                    b'[' => Seq::Csi(0),
                    b'O' => Seq::Ss3,
                    _ => Seq::None,
                };
                return None;
            }
            Seq::Csi(n) => {
                return match b {
                    b'0'..=b'9' => {
                        self.seq =
                            Seq::Csi(n.saturating_mul(10).saturating_add(u16::from(b - b'0')));
                        None
                    }
                    // Parameters after a `;` (modifiers) are read and ignored.
                    b';' => {
                        self.seq = Seq::Csi(n);
                        None
                    }
                    0x40..=0x7e => {
                        self.seq = Seq::None;
                        self.csi(n, b)
                    }
                    _ => {
                        self.seq = Seq::None;
                        None
                    }
                };
            }
            Seq::Ss3 => {
                self.seq = Seq::None;
                return self.csi(0, b);
            }
            Seq::None => {}
        }
        if !self.utf8.is_empty() || b >= 0x80 {
            return self.utf8_byte(b);
        }
        match b {
            0x1b => {
                self.seq = Seq::Esc;
                None
            }
            b'\n' if after_cr => None,
            b'\r' | b'\n' => Some(self.submit()),
            0x01 => self.go(0),
            0x05 => self.go(self.line.len()),
            0x02 => self.go(self.cursor.saturating_sub(1)),
            0x06 => self.go((self.cursor + 1).min(self.line.len())),
            0x7f | 0x08 => self.backspace(),
            0x04 if self.line.is_empty() => Some(Action::Quit),
            0x04 => self.delete(),
            // Ctrl-C: clear the line.
            0x03 => {
                self.line.clear();
                self.cursor = 0;
                self.browsing = self.history.len();
                Some(Action::Redraw)
            }
            0x15 => {
                self.line.drain(..self.cursor);
                self.cursor = 0;
                Some(Action::Redraw)
            }
            0x0b => {
                self.line.truncate(self.cursor);
                Some(Action::Redraw)
            }
            0x17 => self.delete_word(),
            0x0c => Some(Action::Redraw),
            0x10 => self.history_back(),
            0x0e => self.history_forward(),
            b if b < 0x20 => None,
            b => self.insert(char::from(b)),
        }
    }

    fn utf8_byte(&mut self, b: u8) -> Option<Action> {
        self.utf8.push(b);
        match std::str::from_utf8(&self.utf8) {
            Ok(s) => {
                let c = s.chars().next();
                self.utf8.clear();
                c.and_then(|c| self.insert(c))
            }
            Err(e) if e.error_len().is_none() && self.utf8.len() < 4 => None,
            Err(_) => {
                // Not UTF-8: dropped.
                self.utf8.clear();
                None
            }
        }
    }

    fn csi(&mut self, n: u16, fin: u8) -> Option<Action> {
        match (fin, n) {
            (b'A', _) => self.history_back(),
            (b'B', _) => self.history_forward(),
            (b'C', _) => self.go((self.cursor + 1).min(self.line.len())),
            (b'D', _) => self.go(self.cursor.saturating_sub(1)),
            (b'H', _) | (b'~', 1) | (b'~', 7) => self.go(0),
            (b'F', _) | (b'~', 4) | (b'~', 8) => self.go(self.line.len()),
            (b'~', 3) => self.delete(),
            _ => None,
        }
    }

    fn go(&mut self, to: usize) -> Option<Action> {
        self.cursor = to;
        Some(Action::Redraw)
    }

    fn insert(&mut self, c: char) -> Option<Action> {
        // Only what shows as itself: no control, bidirectional or line-breaking
        // character enters the line (a backslash is fine).
        if c != '\\' && escape(c.encode_utf8(&mut [0; 4])).chars().count() != 1 {
            return None;
        }
        self.line.insert(self.cursor, c);
        self.cursor += 1;
        Some(Action::Redraw)
    }

    fn backspace(&mut self) -> Option<Action> {
        if self.cursor == 0 {
            return None;
        }
        self.cursor -= 1;
        self.line.remove(self.cursor);
        Some(Action::Redraw)
    }

    fn delete(&mut self) -> Option<Action> {
        if self.cursor >= self.line.len() {
            return None;
        }
        self.line.remove(self.cursor);
        Some(Action::Redraw)
    }

    fn delete_word(&mut self) -> Option<Action> {
        let mut start = self.cursor;
        while start > 0 && self.line[start - 1] == ' ' {
            start -= 1;
        }
        while start > 0 && self.line[start - 1] != ' ' {
            start -= 1;
        }
        self.line.drain(start..self.cursor);
        self.cursor = start;
        Some(Action::Redraw)
    }

    fn submit(&mut self) -> Action {
        let text: String = self.line.drain(..).collect();
        self.cursor = 0;
        self.draft.clear();
        if !text.trim().is_empty() && self.history.last() != Some(&text) {
            if self.history.len() == HISTORY_LEN {
                self.history.remove(0);
            }
            self.history.push(text.clone());
        }
        self.browsing = self.history.len();
        Action::Submit(text)
    }

    fn history_back(&mut self) -> Option<Action> {
        if self.browsing == 0 {
            return None;
        }
        if self.browsing == self.history.len() {
            self.draft = self.line.clone();
        }
        self.browsing -= 1;
        self.show(self.history[self.browsing].chars().collect())
    }

    fn history_forward(&mut self) -> Option<Action> {
        if self.browsing >= self.history.len() {
            return None;
        }
        self.browsing += 1;
        let line = match self.history.get(self.browsing) {
            Some(h) => h.chars().collect(),
            None => std::mem::take(&mut self.draft),
        };
        self.show(line)
    }

    fn show(&mut self, line: Vec<char>) -> Option<Action> {
        self.line = line;
        self.cursor = self.line.len();
        Some(Action::Redraw)
    }

    /// The bytes that draw the line on the terminal's current row: back to its
    /// start, the prompt, as much of the line as fits `width` columns around the
    /// cursor, the rest of the row cleared, and the cursor put in its place.
    /// `prompt_width` is the prompt's width in columns (it may hold colour
    /// sequences).
    pub fn draw(&self, prompt: &str, prompt_width: usize, width: usize) -> String {
        let room = width.saturating_sub(prompt_width + 1).max(1);
        let widths: Vec<usize> = self.line.iter().map(|&c| char_width(c)).collect();
        // Scroll so the cursor is visible: start at the first character such that
        // the text up to the cursor fits.
        let mut start = 0;
        while widths[start..self.cursor].iter().sum::<usize>() >= room {
            start += 1;
        }
        let mut end = start;
        let mut used = 0;
        while end < self.line.len() && used + widths[end] <= room {
            used += widths[end];
            end += 1;
        }
        let shown: String = self.line[start..end].iter().collect();
        let column = prompt_width + widths[start..self.cursor].iter().sum::<usize>();
        let mut out = format!("\r{prompt}{shown}\x1b[K\r");
        if column > 0 {
            out.push_str(&format!("\x1b[{column}C"));
        }
        out
    }
}

/// Columns a character takes on a terminal: 0 for combining marks, 2 for the wide
/// East Asian and emoji ranges, else 1. An approximation of wcwidth(3) good enough to
/// keep the cursor in its place for the common scripts.
pub fn char_width(c: char) -> usize {
    let u = c as u32;
    match u {
        0x0300..=0x036f | 0x200b..=0x200f | 0xfe00..=0xfe0f => 0,
        0x1100..=0x115f
        | 0x2e80..=0x303e
        | 0x3041..=0x33ff
        | 0x3400..=0x4dbf
        | 0x4e00..=0x9fff
        | 0xa000..=0xa4cf
        | 0xac00..=0xd7a3
        | 0xf900..=0xfaff
        | 0xfe30..=0xfe4f
        | 0xff00..=0xff60
        | 0xffe0..=0xffe6
        | 0x1f300..=0x1f64f
        | 0x1f900..=0x1f9ff
        | 0x20000..=0x3fffd => 2,
        _ => 1,
    }
}

/// Columns `text` takes (see [`char_width`]); `text` holds no control sequence.
pub fn text_width(text: &str) -> usize {
    text.chars().map(char_width).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(e: &mut Editor, keys: &[u8]) -> Vec<Action> {
        e.feed(keys)
    }

    fn submit(e: &mut Editor) -> String {
        match e.feed(b"\r").pop() {
            Some(Action::Submit(s)) => s,
            other => panic!("no submit: {other:?}"),
        }
    }

    #[test]
    fn typing_and_enter_submit_the_line() {
        let mut e = Editor::new();
        assert_eq!(typed(&mut e, b"hello"), [Action::Redraw]);
        assert_eq!(e.line(), "hello");
        assert_eq!(
            typed(&mut e, b"\r\n"),
            [Action::Submit("hello".into())],
            "CR LF is one Enter"
        );
        assert_eq!(e.line(), "");
        assert_eq!(typed(&mut e, b"a\nb\n").len(), 4);
    }

    #[test]
    fn arrows_home_end_and_deletion_edit_in_place() {
        let mut e = Editor::new();
        e.feed(b"helo");
        e.feed(b"\x1b[D"); // left
        e.feed(b"l");
        assert_eq!(e.line(), "hello");
        e.feed(b"\x1b[H!"); // Home
        e.feed(b"\x1b[F?"); // End
        assert_eq!(e.line(), "!hello?");
        e.feed(b"\x01\x1b[3~"); // Ctrl-A, Delete
        e.feed(b"\x05\x7f"); // Ctrl-E, Backspace
        assert_eq!(e.line(), "hello");
        e.feed(b"\x1bOH\x1b[C\x1b[C\x0b"); // Home (SS3), right, right, Ctrl-K
        assert_eq!(e.line(), "he");
        e.feed(b" there  you\x17");
        assert_eq!(e.line(), "he there  ");
        e.feed(b"\x17");
        assert_eq!(e.line(), "he ");
        e.feed(b"\x02\x02\x15"); // Ctrl-B twice, Ctrl-U
        assert_eq!((e.line().as_str(), e.cursor()), ("e ", 0));
        e.feed(b"\x1b[1;5C"); // Ctrl-Right: a modifier, read as right
        assert_eq!(e.cursor(), 1);
    }

    #[test]
    fn ctrl_c_clears_the_line_and_ctrl_d_quits_only_when_it_is_empty() {
        let mut e = Editor::new();
        e.feed(b"draft");
        assert_eq!(e.feed(b"\x03"), [Action::Redraw]);
        assert_eq!(e.line(), "");
        e.feed(b"ab\x01");
        assert_eq!(
            e.feed(b"\x04"),
            [Action::Redraw],
            "deletes under the cursor"
        );
        assert_eq!(e.line(), "b");
        e.feed(b"\x05\x15");
        assert_eq!(e.feed(b"\x04"), [Action::Quit]);
    }

    #[test]
    fn up_and_down_walk_the_history_and_keep_the_draft() {
        let mut e = Editor::new();
        for line in ["/status", "hello", "hello", "", "bye"] {
            e.feed(line.as_bytes());
            submit(&mut e);
        }
        e.feed(b"dra");
        e.feed(b"\x1b[A");
        assert_eq!(e.line(), "bye");
        e.feed(b"\x1b[A\x1b[A");
        assert_eq!(
            e.line(),
            "/status",
            "a repeated line is kept once, an empty one not"
        );
        assert!(e.feed(b"\x1b[A").is_empty(), "nothing before the first");
        e.feed(b"\x0e");
        assert_eq!(e.line(), "hello");
        e.feed(b"\x1b[B\x1b[B");
        assert_eq!(e.line(), "dra");
        e.feed(b"\x1b[A\x1b[A");
        assert_eq!(submit(&mut e), "hello");
        e.feed(b"\x1b[A");
        assert_eq!(e.line(), "hello");
    }

    #[test]
    fn the_history_is_bounded() {
        let mut e = Editor::new();
        for i in 0..HISTORY_LEN + 10 {
            e.feed(format!("line {i}").as_bytes());
            submit(&mut e);
        }
        for _ in 0..HISTORY_LEN + 10 {
            e.feed(b"\x1b[A");
        }
        assert_eq!(e.line(), "line 10");
    }

    #[test]
    fn utf8_split_across_reads_is_one_character_and_controls_never_enter() {
        let mut e = Editor::new();
        let bytes = "caf\u{e9} \u{4e16}".as_bytes();
        for b in bytes {
            e.feed(&[*b]);
        }
        assert_eq!(e.line(), "caf\u{e9} \u{4e16}");
        e.feed("\u{202e}\u{85}x\\".as_bytes());
        e.feed(b"\xff\x07");
        assert_eq!(e.line(), "caf\u{e9} \u{4e16}x\\");
    }

    #[test]
    fn drawing_scrolls_to_keep_the_cursor_visible() {
        let mut e = Editor::new();
        e.feed(b"hello");
        assert_eq!(e.draw("> ", 2, 80), "\r> hello\x1b[K\r\x1b[7C");
        e.feed(b"\x01");
        assert_eq!(e.draw("> ", 2, 80), "\r> hello\x1b[K\r\x1b[2C");
        let mut long = Editor::new();
        long.feed("x".repeat(30).as_bytes());
        // 10 columns, 2 for the prompt: 7 characters shown, the last ones.
        let drawn = long.draw("> ", 2, 10);
        assert_eq!(drawn, format!("\r> {}\x1b[K\r\x1b[8C", "x".repeat(6)));
        assert_eq!(text_width("a\u{4e16}\u{301}"), 3);
    }
}
