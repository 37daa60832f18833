//! The real terminal: entering and leaving the dashboard (alternate screen, raw mode, mouse
//! capture), restoring the terminal on every exit path, and reading input as [`Event`]s.
//!
//! Restoring happens exactly once per [`Dashboard`], whichever comes first: its `Drop` (normal
//! return, `?`, an unwinding panic) or the panic hook, which runs before the panic message is
//! printed so that the message lands on the normal screen, readable.
use std::{
    future::poll_fn,
    io::{self, Stdout},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Once,
    },
};

use crossterm::{
    event::{
        DisableMouseCapture, EnableMouseCapture, Event as TermEvent, EventStream, KeyCode,
        KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind,
    },
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use futures_core::Stream;
use ratatui::{backend::CrosstermBackend, Terminal};

use super::app::{App, Event, Key};

/// Whether the terminal is currently in dashboard mode and must be restored.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// Put the terminal back as it was, if the dashboard had changed it. Safe to call any number
/// of times, from any thread, panicking or not.
fn restore_terminal() -> io::Result<()> {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return Ok(());
    }
    // Every step is attempted even if one fails: a half-restored terminal is the worst case.
    let raw = terminal::disable_raw_mode();
    let screen = execute!(
        io::stdout(),
        DisableMouseCapture,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    raw.and(screen)
}

/// Chain a hook in front of the current panic hook, once per process: restore the terminal,
/// then report the panic as usual.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = restore_terminal();
            previous(info);
        }));
    });
}

/// The dashboard's terminal: a guard that restores the terminal when dropped, the ratatui
/// terminal to draw on, and the input stream.
pub struct Dashboard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    input: EventStream,
}

impl Dashboard {
    /// Switch the terminal to the dashboard: raw mode, alternate screen, mouse capture, and a
    /// panic hook that undoes them. Fails (with the terminal restored) when stdout is not a
    /// terminal that supports this.
    pub fn enter() -> io::Result<Dashboard> {
        install_panic_hook();
        ACTIVE.store(true, Ordering::SeqCst);
        let entered = (|| {
            terminal::enable_raw_mode()?;
            execute!(io::stdout(), EnterAlternateScreen, EnableMouseCapture)?;
            let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
            terminal.clear()?;
            Ok(Dashboard {
                terminal,
                input: EventStream::new(),
            })
        })();
        if entered.is_err() {
            let _ = restore_terminal();
        }
        entered
    }

    /// The terminal's size, to send to the App once at start:
    /// `app.handle(dashboard.size_event()?)`.
    pub fn size_event(&self) -> io::Result<Event> {
        let size = self.terminal.size()?;
        Ok(Event::Resize {
            width: size.width,
            height: size.height,
        })
    }

    /// Draw the app (only what changed reaches the terminal).
    pub fn draw(&mut self, app: &App) -> io::Result<()> {
        self.terminal
            .draw(|frame| frame.render_widget(app, frame.area()))?;
        Ok(())
    }

    /// Forget what is on screen and repaint everything at the next draw (for
    /// [`super::Action::Redraw`], or after anything else wrote to the terminal).
    pub fn redraw_all(&mut self) -> io::Result<()> {
        self.terminal.clear()
    }

    /// The next input event. Cancel-safe (nothing is lost when another `select!` branch wins),
    /// so it can sit in the session's `tokio::select!` next to the sample timer and signals.
    /// `None` when the input ended.
    pub async fn next_event(&mut self) -> Option<io::Result<Event>> {
        loop {
            let raw = poll_fn(|cx| Pin::new(&mut self.input).poll_next(cx)).await?;
            match raw {
                Err(err) => return Some(Err(err)),
                Ok(raw) => {
                    if let Some(event) = event_from_terminal(raw) {
                        return Some(Ok(event));
                    }
                }
            }
        }
    }

    /// Leave the dashboard now, reporting a failure to restore (dropping does the same
    /// silently).
    pub fn leave(self) -> io::Result<()> {
        restore_terminal()
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = restore_terminal();
    }
}

/// Run `body` with the terminal in dashboard mode, and restore the terminal however `body`
/// ends (return, error, panic).
pub async fn run_terminal<T>(body: impl AsyncFnOnce(&mut Dashboard) -> T) -> io::Result<T> {
    let mut dashboard = Dashboard::enter()?;
    let result = body(&mut dashboard).await;
    dashboard.leave()?;
    Ok(result)
}

/// A crossterm event as a dashboard event; `None` for what the dashboard ignores (key
/// releases, mouse moves and clicks, focus changes, pastes).
pub fn event_from_terminal(event: TermEvent) -> Option<Event> {
    match event {
        TermEvent::Key(key) => key_from_terminal(key).map(Event::Key),
        TermEvent::Mouse(mouse) => match mouse.kind {
            MouseEventKind::ScrollUp => Some(Event::ScrollUp),
            MouseEventKind::ScrollDown => Some(Event::ScrollDown),
            _ => None,
        },
        TermEvent::Resize(width, height) => Some(Event::Resize { width, height }),
        _ => None,
    }
}

fn key_from_terminal(key: KeyEvent) -> Option<Key> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    Some(match key.code {
        KeyCode::Char(c) if ctrl => Key::Ctrl(c.to_ascii_lowercase()),
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use crossterm::event::{MouseEvent, MouseEventKind};

    use super::*;

    #[test]
    fn terminal_events_map_to_dashboard_events() {
        let press = |code, modifiers| TermEvent::Key(KeyEvent::new(code, modifiers));
        assert_eq!(
            event_from_terminal(press(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Event::Key(Key::Ctrl('c')))
        );
        assert_eq!(
            event_from_terminal(press(KeyCode::Char('S'), KeyModifiers::SHIFT)),
            Some(Event::Key(Key::Char('S')))
        );
        let mut release = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(event_from_terminal(TermEvent::Key(release)), None);
        let wheel = TermEvent::Mouse(MouseEvent {
            kind: MouseEventKind::ScrollDown,
            column: 0,
            row: 0,
            modifiers: KeyModifiers::NONE,
        });
        assert_eq!(event_from_terminal(wheel), Some(Event::ScrollDown));
        assert_eq!(
            event_from_terminal(TermEvent::Resize(100, 30)),
            Some(Event::Resize {
                width: 100,
                height: 30
            })
        );
    }
}
