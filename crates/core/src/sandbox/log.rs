//! The message log: every accepted message appended to a file as one JSON line.
//!
//! Handlers format their line themselves (outside any lock) and hand it to a
//! writer thread over a channel, so the hot path never touches the file. The
//! thread writes through a buffer and flushes whenever the queue runs dry,
//! which keeps a busy server to a few large writes while a test reading the
//! file mid-run sees each line within a moment of its answer. Lines of
//! concurrent requests may land out of `seq` order; `seq` is the order.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

enum Job {
    Line(String),
    /// Flush, then acknowledge: lets shutdown wait until every line is on disk.
    Flush(mpsc::SyncSender<()>),
}

pub struct LogWriter {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
}

impl LogWriter {
    /// Opens (creating, appending) the file and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        let context = |err: std::io::Error, what: &str| {
            std::io::Error::new(
                err.kind(),
                format!("cannot {what} sandbox log {}: {err}", path.display()),
            )
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|err| context(err, "open"))?;
        let (jobs, queue) = mpsc::channel();
        let owned = path.to_path_buf();
        thread::Builder::new()
            .name("sandbox-log".into())
            .spawn(move || write_loop(BufWriter::with_capacity(64 * 1024, file), &owned, queue))
            .map_err(|err| context(err, "start the writer for"))?;
        Ok(LogWriter {
            path: path.to_path_buf(),
            jobs,
        })
    }

    /// Queues one line (without its newline). Never blocks.
    pub fn append(&self, line: String) {
        if self.jobs.send(Job::Line(line)).is_err() {
            tracing::warn!(
                "sandbox log {} is closed; a message was not logged",
                self.path.display()
            );
        }
    }

    /// Blocks until every line queued so far is written and flushed.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.jobs.send(Job::Flush(ack)).is_ok() {
            // An Err means the writer thread is gone; there is nothing to wait for.
            let _ = done.recv();
        }
    }
}

/// Runs until every sender is gone (the sandbox's state was dropped).
fn write_loop(mut out: BufWriter<std::fs::File>, path: &Path, queue: mpsc::Receiver<Job>) {
    let mut failed = false;
    let mut report = |err: std::io::Error| {
        // One warning, not one per message: a full disk would flood stderr.
        if !failed {
            tracing::warn!("cannot write sandbox log {}: {err}", path.display());
            failed = true;
        }
    };
    while let Ok(first) = queue.recv() {
        let mut acks = Vec::new();
        let mut job = Some(first);
        // Drain everything already queued before the flush: one write per burst.
        while let Some(next) = job {
            match next {
                Job::Line(line) => {
                    if let Err(err) = out
                        .write_all(line.as_bytes())
                        .and_then(|()| out.write_all(b"\n"))
                    {
                        report(err);
                    }
                }
                Job::Flush(ack) => acks.push(ack),
            }
            job = queue.try_recv().ok();
        }
        if let Err(err) = out.flush() {
            report(err);
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
    if let Err(err) = out.flush() {
        report(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_without_an_explicit_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.jsonl");
        let log = LogWriter::open(&path).unwrap();
        log.append("{\"seq\":1}".into());
        log.append("{\"seq\":2}".into());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text == "{\"seq\":1}\n{\"seq\":2}\n" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "got {text:?}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        log.flush();
    }

    #[test]
    fn open_error_names_the_path() {
        let err = LogWriter::open(Path::new("/nonexistent-dir/x.jsonl"))
            .err()
            .expect("opening under a missing directory fails");
        assert!(
            err.to_string().contains("/nonexistent-dir/x.jsonl"),
            "{err}"
        );
    }
}
