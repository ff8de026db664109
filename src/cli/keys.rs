//! Single keys from a terminal, and putting the terminal back as it was.
//!
//! crossterm puts the terminal in raw mode and decodes keys, so Ctrl-C arrives as a key (the
//! member treats it like `q`; a second one exits at once) instead of a signal racing the clean
//! quit. Raw mode also turns off output processing, which would make every `\n` of a log line
//! or of the progress bar move down without returning to the left margin; output processing is
//! switched back on (through rustix's termios, no `unsafe`), so the screen looks as it does in
//! a cooked terminal.

use std::sync::atomic::{AtomicBool, Ordering};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// A key the programs act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `q` or `Q`.
    Quit,
    /// Ctrl-C.
    Interrupt,
}

/// Whether [`KeyReader::start`] changed the terminal and nothing has put it back yet.
static RAW: AtomicBool = AtomicBool::new(false);

/// Reads keys while alive; the terminal is put back when it is dropped.
pub struct KeyReader {
    _private: (),
}

impl KeyReader {
    /// Starts reading keys from the terminal; `on_key` runs in a background thread for each
    /// key the programs act on. `None` when stdin is not a terminal that can be switched.
    pub fn start(on_key: impl Fn(Key) + Send + 'static) -> Option<KeyReader> {
        crossterm::terminal::enable_raw_mode().ok()?;
        RAW.store(true, Ordering::SeqCst);
        keep_output_processing();
        let reader = KeyReader { _private: () };
        std::thread::Builder::new()
            .name("keys".into())
            .spawn(move || {
                // Ends with the process: a blocking read of the terminal cannot be interrupted.
                while let Ok(event) = event::read() {
                    if let Some(key) = key_of(&event) {
                        on_key(key);
                    }
                }
            })
            .ok()?;
        Some(reader)
    }
}

impl Drop for KeyReader {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn key_of(event: &Event) -> Option<Key> {
    let Event::Key(KeyEvent {
        code,
        modifiers,
        kind: KeyEventKind::Press,
        ..
    }) = event
    else {
        return None;
    };
    match code {
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Some(Key::Interrupt),
        KeyCode::Char('q' | 'Q') if !modifiers.contains(KeyModifiers::CONTROL) => Some(Key::Quit),
        _ => None,
    }
}

/// Turns output processing (`\n` to `\r\n`) back on after raw mode switched it off. Best
/// effort: without it the screen is only less tidy.
fn keep_output_processing() {
    use rustix::termios::{tcgetattr, tcsetattr, OptionalActions, OutputModes};
    let stdout = std::io::stdout();
    if let Ok(mut termios) = tcgetattr(&stdout) {
        termios.output_modes |= OutputModes::OPOST | OutputModes::ONLCR;
        let _ = tcsetattr(&stdout, OptionalActions::Now, &termios);
    }
}

/// Puts back the terminal settings that [`KeyReader::start`] changed, if it did, and shows the
/// cursor. Safe to call more than once and from any thread (a second Ctrl-C uses it).
pub fn restore_terminal() {
    if RAW.swap(false, Ordering::SeqCst) {
        let _ = crossterm::terminal::disable_raw_mode();
        let _ = crossterm::execute!(std::io::stdout(), crossterm::cursor::Show);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode, modifiers: KeyModifiers) -> Event {
        Event::Key(KeyEvent::new(code, modifiers))
    }

    #[test]
    fn keys_the_programs_act_on() {
        let none = KeyModifiers::NONE;
        assert_eq!(key_of(&press(KeyCode::Char('q'), none)), Some(Key::Quit));
        assert_eq!(
            key_of(&press(KeyCode::Char('Q'), KeyModifiers::SHIFT)),
            Some(Key::Quit)
        );
        assert_eq!(
            key_of(&press(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Key::Interrupt)
        );
        assert_eq!(key_of(&press(KeyCode::Char('c'), none)), None);
        assert_eq!(key_of(&press(KeyCode::Char('x'), none)), None);
        assert_eq!(key_of(&Event::FocusGained), None);
    }
}
