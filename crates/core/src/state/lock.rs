//! The run lock and the state file's identity: at most one process sends from
//! a state file at a time, and a run notices when its file is taken away.
//!
//! The lock is an OS file lock (`flock`) on the state file itself, not on a
//! file named after it. So it belongs to the file, not to a spelling of its
//! path: a symlink, a relative path, `./x/../state.db` and a hard link all
//! reach the same lock; deleting some other file cannot release it; and the
//! kernel releases it when the holder dies, however it dies. `flock` and
//! SQLite's own POSIX (`fcntl`) locks do not interact on local file systems.
//! One rule follows from POSIX locks, though: closing *any* descriptor of a
//! file drops every POSIX lock the process holds on it, SQLite's included.
//! So the lock's descriptor must be closed only after the database connection
//! (`StateDb` keeps its lock in a field dropped after the connection), and
//! nothing here ever opens the file a second time while SQLite has it.
//!
//! Who holds the lock is written inside the state (see `StateDb::record_holder`),
//! so a second run names the holder whatever path it came by.
//!
//! Taking the lock also checks the path: it must be a regular file (or name
//! none yet, and then it is created owner-only); a 0-byte file is refused
//! rather than taken for a new state (it may be someone's empty file that a
//! symlink points at); SQLite's companion files (`-wal`, `-shm`, `-journal`)
//! must not be symlinks or anything but regular files, since SQLite would
//! write through them; and a new state is never created beside leftover
//! companions of a state that was deleted, whose write-ahead log SQLite
//! would otherwise apply to the new file. Nothing here writes to or truncates
//! a file it did not create.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// SQLite's files beside a database, by suffix.
pub const COMPANION_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Held for as long as a run uses the state; released on drop or process exit.
#[derive(Debug)]
pub struct RunLock {
    /// Holds the `flock`; never read or written.
    _file: File,
    path: PathBuf,
    identity: FileIdentity,
}

/// Which file a path named when the lock was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileIdentity {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            // Without inode numbers, a replaced file is noticed by its size only.
            let _ = meta;
            FileIdentity { dev: 0, ino: 0 }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another run is already sending this campaign ({holder}; state {path}): try later")]
    Held { path: String, holder: String },
    #[error(
        "the state path {path} is {what}, not a state file: give --state the path of a file (it is created if missing)"
    )]
    NotAFile { path: String, what: &'static str },
    #[error(
        "the state file {path} is empty (0 bytes): it is not a state this tool wrote. If it is yours and holds nothing, delete it and run again; otherwise choose another --state"
    )]
    Empty { path: String },
    #[error(
        "{path} is {what}: SQLite would write through it. Remove it (only a regular file may sit beside the state) and run again"
    )]
    Companion { path: String, what: &'static str },
    #[error(
        "{path} is left over from a state file that is no longer at {state}: a new state beside it would inherit its write-ahead log. If that state was deleted on purpose, delete {path} too; if it was moved, move it back"
    )]
    Leftover { path: String, state: String },
    #[error(
        "the state file {path} has {links} names (hard links): SQLite keeps its latest changes in a log named after one of them, so another name can miss them. Use one name and remove the others"
    )]
    HardLinked { path: String, links: u64 },
    #[error(
        "{log} holds changes not yet in any state file here: it belongs to {base}, which is gone. If {state} was moved or renamed from {base} (after a crash, say), move it back and run there; if that state was deleted on purpose, delete {log} too"
    )]
    StrayLog {
        log: String,
        base: String,
        state: String,
    },
    #[error("cannot lock the state file {path}: {reason}")]
    Io { path: String, reason: String },
}

impl LockError {
    /// Another run holds the lock: "try later", not an error in the input.
    pub fn is_held(&self) -> bool {
        matches!(self, LockError::Held { .. })
    }
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl RunLock {
    /// Takes the lock without waiting, creating the state file (owner-only)
    /// if none exists. Returns the lock and whether the file was created.
    /// `holder` is asked who holds the lock when it is taken.
    pub fn acquire(
        state_path: &Path,
        holder: impl FnOnce(&Path) -> Option<String>,
    ) -> Result<(RunLock, bool), LockError> {
        let display = state_path.display().to_string();
        let io_err = |e: std::io::Error| LockError::Io {
            path: display.clone(),
            reason: e.to_string(),
        };
        let (file, created) = open_or_create(state_path).map_err(|e| match e {
            OpenError::Lock(e) => e,
            OpenError::Io(e) => io_err(e),
        })?;
        match try_lock(&file, created) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // The state names its holder; reached by a hard link (whose
                // name SQLite cannot pair with the state's log), the kernel's
                // lock table still does.
                let holder = holder(state_path)
                    .or_else(|| {
                        let identity = FileIdentity::of(&file.metadata().ok()?);
                        flock_holder(identity).map(|pid| format!("pid {pid}"))
                    })
                    .unwrap_or_else(|| "holder unknown".to_owned());
                return Err(LockError::Held {
                    path: display.clone(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let meta = file.metadata().map_err(io_err)?;
        let identity = FileIdentity::of(&meta);
        let lock = RunLock {
            _file: file,
            path: state_path.to_path_buf(),
            identity,
        };
        let refuse = |error: LockError, lock: RunLock| {
            if created {
                lock.remove_created_file();
            }
            Err(error)
        };
        if !created && meta.len() == 0 {
            return refuse(LockError::Empty { path: display }, lock);
        }
        if let Err(e) = check_names(state_path, &meta) {
            return refuse(e, lock);
        }
        if created && let Some(leftover) = existing_companion(state_path) {
            return refuse(
                LockError::Leftover {
                    path: leftover.display().to_string(),
                    state: display,
                },
                lock,
            );
        }
        // The path may have been pointed elsewhere between opening and locking.
        if let Err(e) = lock.check_identity() {
            return refuse(
                LockError::Io {
                    path: display,
                    reason: format!("{e} while it was being locked"),
                },
                lock,
            );
        }
        Ok((lock, created))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity(&self) -> FileIdentity {
        self.identity
    }

    /// Whether the path still names the locked file: `Err` says what became of it.
    pub fn check_identity(&self) -> Result<u64, FileGone> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if FileIdentity::of(&meta) == self.identity => Ok(meta.len()),
            Ok(_) => Err(FileGone::Replaced),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(FileGone::Missing),
            Err(e) => Err(FileGone::Unreadable(e.to_string())),
        }
    }

    /// Undoes a creation that turned out to be refused, so the refusal leaves
    /// nothing behind (and a later run does not meet an empty file).
    fn remove_created_file(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && FileIdentity::of(&meta) == self.identity
            && meta.len() == 0
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Takes the lock without waiting — except on a file this process has just
/// created: a run starting at the same moment may have opened it in between
/// and be about to refuse it as empty (it cannot tell it from someone else's
/// empty file) and let go. Without the short wait both would give up and
/// leave the empty file behind to block every later run.
fn try_lock(file: &File, created: bool) -> Result<(), TryLockError> {
    let mut tries = if created { 50 } else { 1 };
    loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) if tries > 1 => {
                tries -= 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// The pid holding an exclusive `flock` on the file, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 5654 fe:00:8601603 0 EOF`).
#[cfg(target_os = "linux")]
fn flock_holder(identity: FileIdentity) -> Option<u32> {
    // glibc's major()/minor() encoding of st_dev.
    let major = ((identity.dev >> 8) & 0xfff) | ((identity.dev >> 32) & !0xfff);
    let minor = (identity.dev & 0xff) | ((identity.dev >> 12) & !0xff);
    let wanted = format!("{major:02x}:{minor:02x}:{}", identity.ino);
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, "WRITE", pid, file, ..] if *file == wanted => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(not(target_os = "linux"))]
fn flock_holder(_identity: FileIdentity) -> Option<u32> {
    None
}

/// What happened to a state file a run had locked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileGone {
    #[error("was deleted or moved")]
    Missing,
    #[error("was replaced by another file")]
    Replaced,
    #[error("was truncated")]
    Truncated,
    #[error("cannot be checked ({0})")]
    Unreadable(String),
}

enum OpenError {
    Lock(LockError),
    Io(std::io::Error),
}

impl From<std::io::Error> for OpenError {
    fn from(e: std::io::Error) -> Self {
        OpenError::Io(e)
    }
}

/// Opens the state file for locking (following a symlink to it), or creates
/// it owner-only when nothing is at the path. Never truncates or writes.
fn open_or_create(path: &Path) -> Result<(File, bool), OpenError> {
    let display = || path.display().to_string();
    loop {
        match std::fs::metadata(path) {
            Ok(meta) => {
                if !meta.is_file() {
                    return Err(OpenError::Lock(LockError::NotAFile {
                        path: display(),
                        what: kind_of(&meta),
                    }));
                }
                check_companions(path)?;
                let file = File::open(path)?;
                // The path may have been swapped for something else in between.
                if !file.metadata()?.is_file() {
                    return Err(OpenError::Lock(LockError::NotAFile {
                        path: display(),
                        what: "not a regular file",
                    }));
                }
                return Ok((file, false));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok() {
                    return Err(OpenError::Lock(LockError::NotAFile {
                        path: display(),
                        what: "a symbolic link to a file that does not exist",
                    }));
                }
                if let Some(parent) = path.parent()
                    && !parent.as_os_str().is_empty()
                    && !parent.is_dir()
                {
                    return Err(OpenError::Io(std::io::Error::new(
                        ErrorKind::NotFound,
                        format!("the folder {} does not exist", parent.display()),
                    )));
                }
                check_companions(path)?;
                let mut options = OpenOptions::new();
                // `create_new` (O_EXCL) never follows a symlink: a link planted
                // at the path after the check above makes this fail, not write.
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                match options.open(path) {
                    Ok(file) => return Ok((file, true)),
                    // Another run created it first: open theirs like any existing file.
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Refuses a state SQLite could read without its latest changes: one with
/// several names (hard links), or one beside a non-empty write-ahead log
/// whose own database is gone — most likely this very state under its old
/// name (moved or renamed after a crash). SQLite pairs the log with the name,
/// so under the new name it would see an older state and plan everyone again.
pub fn check_names(state: &Path, meta: &std::fs::Metadata) -> Result<(), LockError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.nlink() > 1 {
            return Err(LockError::HardLinked {
                path: state.display().to_string(),
                links: meta.nlink(),
            });
        }
    }
    let _ = meta;
    let Ok(real) = std::fs::canonicalize(state) else {
        return Ok(());
    };
    let (Some(dir), Some(own)) = (real.parent(), real.file_name()) else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(base) = name.to_str().and_then(|n| n.strip_suffix("-wal")) else {
            continue;
        };
        if std::ffi::OsStr::new(base) == own {
            continue;
        }
        let holds_changes = entry.metadata().is_ok_and(|m| m.is_file() && m.len() > 0);
        if holds_changes && std::fs::symlink_metadata(dir.join(base)).is_err() {
            return Err(LockError::StrayLog {
                log: entry.path().display().to_string(),
                base: dir.join(base).display().to_string(),
                state: state.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Refuses companions SQLite would write through: symlinks, folders, FIFOs.
fn check_companions(state: &Path) -> Result<(), OpenError> {
    for base in companion_bases(state) {
        for suffix in COMPANION_SUFFIXES {
            let companion = with_suffix(&base, suffix);
            match std::fs::symlink_metadata(&companion) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(OpenError::Lock(LockError::Companion {
                        path: companion.display().to_string(),
                        what: "a symbolic link",
                    }));
                }
                Ok(meta) if !meta.is_file() => {
                    return Err(OpenError::Lock(LockError::Companion {
                        path: companion.display().to_string(),
                        what: kind_of(&meta),
                    }));
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// The first companion file beside `state`, if any.
fn existing_companion(state: &Path) -> Option<PathBuf> {
    companion_bases(state).into_iter().find_map(|base| {
        COMPANION_SUFFIXES
            .iter()
            .map(|suffix| with_suffix(&base, suffix))
            .find(|c| std::fs::symlink_metadata(c).is_ok())
    })
}

/// Where SQLite puts a database's companions: beside the path as given, and
/// beside the file it resolves to (SQLite follows symlinks to the real file).
fn companion_bases(state: &Path) -> Vec<PathBuf> {
    let mut bases = vec![state.to_path_buf()];
    if let Ok(real) = std::fs::canonicalize(state)
        && real != state
    {
        bases.push(real);
    }
    bases
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a folder";
    }
    if t.is_symlink() {
        return "a symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a named pipe";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    "not a regular file"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(_: &Path) -> Option<String> {
        Some("pid 42 since then".into())
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_names_the_holder_when_the_state_cannot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("c.state.db");
        let (_lock, _) = RunLock::acquire(&state, holder).expect("lock");
        std::fs::write(&state, b"x").expect("write");
        let err = RunLock::acquire(&state, |_| None).expect_err("held");
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_second_lock_names_the_holder_and_is_free_after_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("c.state.db");
        let (first, created) = RunLock::acquire(&state, holder).expect("first lock");
        assert!(created);
        std::fs::write(&state, b"not empty").expect("write");
        let err = RunLock::acquire(&state, holder).expect_err("second lock must fail");
        assert!(err.is_held(), "{err}");
        assert!(err.to_string().contains("pid 42"), "{err}");
        assert!(err.to_string().contains("try later"), "{err}");
        drop(first);
        let (_again, created) = RunLock::acquire(&state, holder).expect("free after drop");
        assert!(!created);
    }

    #[cfg(unix)]
    #[test]
    fn every_spelling_of_the_path_reaches_the_same_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("c.state.db");
        let (_lock, _) = RunLock::acquire(&state, holder).expect("lock");
        std::fs::write(&state, b"x").expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let symlink = dir.path().join("link.db");
        std::os::unix::fs::symlink(&state, &symlink).expect("symlink");
        let hard = dir.path().join("hard.db");
        std::fs::hard_link(&state, &hard).expect("hard link");
        let dotted = dir.path().join("sub/../c.state.db");
        for path in [symlink, hard, dotted] {
            let err = RunLock::acquire(&path, holder).expect_err("must be held");
            assert!(err.is_held(), "{}: {err}", path.display());
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_companions_and_odd_files_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim.conf");
        std::fs::write(&victim, b"precious").expect("write");
        let state = dir.path().join("c.state.db");
        std::os::unix::fs::symlink(&victim, with_suffix(&state, "-wal")).expect("symlink");
        let err = RunLock::acquire(&state, holder).expect_err("refused");
        assert!(
            matches!(err, LockError::Companion { .. }),
            "{err}: a symlinked -wal must be refused"
        );
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        assert!(!state.exists(), "nothing was created");

        let err = RunLock::acquire(dir.path(), holder).expect_err("a folder");
        assert!(err.to_string().contains("a folder"), "{err}");
    }

    #[test]
    fn an_empty_file_is_refused_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("c.state.db");
        std::fs::write(&state, b"").expect("write");
        let err = RunLock::acquire(&state, holder).expect_err("refused");
        assert!(matches!(err, LockError::Empty { .. }), "{err}");
        assert!(state.exists(), "someone else's empty file is left alone");
    }

    #[test]
    fn a_new_state_is_not_created_beside_a_leftover_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("c.state.db");
        std::fs::write(with_suffix(&state, "-wal"), b"old log").expect("write");
        let err = RunLock::acquire(&state, holder).expect_err("refused");
        assert!(matches!(err, LockError::Leftover { .. }), "{err}");
        assert!(!state.exists(), "the file it created is removed again");
    }

    #[test]
    fn identity_notices_deletion_and_replacement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("c.state.db");
        let (lock, _) = RunLock::acquire(&state, holder).expect("lock");
        assert!(lock.check_identity().is_ok());
        let moved = dir.path().join("moved.db");
        std::fs::rename(&state, &moved).expect("move");
        assert_eq!(lock.check_identity(), Err(FileGone::Missing));
        std::fs::write(&state, b"another").expect("write");
        assert_eq!(lock.check_identity(), Err(FileGone::Replaced));
    }
}
