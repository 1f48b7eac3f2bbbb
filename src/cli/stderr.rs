//! The one writer of stderr: a background thread fed through a bounded
//! queue, so a stderr that stalls — a terminal paused with Ctrl-S, a pipe
//! whose reader stopped reading, a slow network disk — never stalls a send.
//!
//! Every byte the command line puts on stderr comes through here: its own
//! lines, `RUST_LOG` output ([`MakeQueueWriter`]) and the progress bar
//! ([`QueueTerm`]), so their order is kept. When the queue is full, lines are
//! dropped (and counted) rather than waited for; a failed write is dropped
//! too. What matters is recorded in the state, not on the terminal. Before
//! the process exits, [`flush`] gives the thread a bounded time to catch up.

use std::io::Write;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Chunks waiting to be written; beyond this, new ones are dropped.
const QUEUE_CHUNKS: usize = 4096;

struct Queue {
    tx: SyncSender<Vec<u8>>,
    /// Chunks queued and not yet written, to wait on at exit.
    pending: Arc<(Mutex<usize>, Condvar)>,
}

static QUEUE: OnceLock<Option<Queue>> = OnceLock::new();

fn queue() -> Option<&'static Queue> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_CHUNKS);
            let pending = Arc::new((Mutex::new(0usize), Condvar::new()));
            let done = pending.clone();
            std::thread::Builder::new()
                .name("stderr".into())
                .spawn(move || {
                    let mut err = std::io::stderr();
                    for chunk in rx {
                        let _ = err.write_all(&chunk);
                        let _ = err.flush();
                        let (count, wake) = &*done;
                        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
                        *n = n.saturating_sub(1);
                        wake.notify_all();
                    }
                })
                .ok()?;
            Some(Queue { tx, pending })
        })
        .as_ref()
}

/// Queues bytes for stderr without waiting; dropped when the queue is full.
pub fn write(bytes: Vec<u8>) {
    let Some(q) = queue() else {
        // No thread could be started: write in place (still never panicking).
        let _ = std::io::stderr().write_all(&bytes);
        return;
    };
    {
        let mut n = q.pending.0.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
    }
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = q.tx.try_send(bytes) {
        let mut n = q.pending.0.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
    }
}

/// Queues one line (a newline is added).
pub fn line(text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    write(bytes);
}

/// Waits until everything queued is written, for at most `max`: the last
/// lines of a command should reach a working stderr, but a stalled one must
/// not keep the process from exiting.
pub fn flush(max: Duration) {
    let Some(q) = queue() else { return };
    let deadline = Instant::now() + max;
    let (count, wake) = &*q.pending;
    let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
    while *n > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        n = match wake.wait_timeout(n, left) {
            Ok((guard, _)) => guard,
            Err(p) => p.into_inner().0,
        };
    }
}

/// `RUST_LOG` output through the queue: tracing-subscriber formats an event
/// into one of these and the whole line is queued when it is dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeQueueWriter;

/// One event's bytes, queued on drop.
#[derive(Debug, Default)]
pub struct QueueWriter(Vec<u8>);

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for QueueWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            write(std::mem::take(&mut self.0));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeQueueWriter {
    type Writer = QueueWriter;
    fn make_writer(&'a self) -> QueueWriter {
        QueueWriter::default()
    }
}

/// The progress bar's terminal: indicatif draws into the queue (cursor
/// movements as ANSI sequences), so a stalled terminal stalls nobody.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueTerm;

impl indicatif::TermLike for QueueTerm {
    fn width(&self) -> u16 {
        terminal_size::terminal_size_of(std::io::stderr()).map_or(80, |(w, _)| w.0)
    }
    fn height(&self) -> u16 {
        terminal_size::terminal_size_of(std::io::stderr()).map_or(24, |(_, h)| h.0)
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        escape(n, 'A')
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        escape(n, 'B')
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        escape(n, 'C')
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        escape(n, 'D')
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        line(s);
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        write(s.as_bytes().to_vec());
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        write(b"\r\x1b[2K".to_vec());
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn escape(n: usize, code: char) -> std::io::Result<()> {
    if n > 0 {
        write(format!("\x1b[{n}{code}").into_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        // Far more than the queue holds, from one thread, returns at once
        // whatever stderr does (the test harness captures it).
        let started = Instant::now();
        for i in 0..(QUEUE_CHUNKS * 3) {
            line(&format!("line {i}"));
        }
        assert!(started.elapsed() < Duration::from_secs(60));
        flush(Duration::from_secs(5));
    }
}
