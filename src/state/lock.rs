//! The run lock: at most one process sends from a state file at a time.
//!
//! An OS file lock (`flock`) on `<state>.lock` beside the state file, so the
//! kernel releases it when the holder dies, however it dies: no stale locks to
//! clean after a crash. The file also records who holds it, so a second run
//! can name the holder. The lock is deliberately not on the database file
//! itself: SQLite's own POSIX locks are dropped when any descriptor of that
//! file is closed, and a second descriptor would do exactly that.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Held for as long as a run sends; released on drop or process exit.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another run is already sending this campaign ({holder}; lock {path}): try later")]
    Held { path: String, holder: String },
    #[error("cannot open the lock file {path}: {reason}")]
    Io { path: String, reason: String },
}

/// The lock file that guards a state file.
pub fn lock_path(state_path: &Path) -> PathBuf {
    let mut name = state_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl RunLock {
    /// Takes the lock without waiting; a held lock is an error naming its holder.
    pub fn acquire(state_path: &Path) -> Result<RunLock, LockError> {
        let path = lock_path(state_path);
        let io_err = |e: std::io::Error| LockError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    path: path.display().to_string(),
                    holder: if holder.is_empty() {
                        "holder unknown".to_owned()
                    } else {
                        holder.to_owned()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let holder = format!(
            "pid {} since {}",
            std::process::id(),
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
        file.set_len(0).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        file.write_all(holder.as_bytes()).map_err(io_err)?;
        Ok(RunLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("c.state.db");
        let first = RunLock::acquire(&state).expect("first lock");
        let err = RunLock::acquire(&state).expect_err("second lock must fail");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("try later"), "{text}");
        drop(first);
        RunLock::acquire(&state).expect("lock is free again after drop");
    }
}
