//! The receive directory, used only through a handle on it: every file operation is an
//! `*at` system call on a plain name of that directory that never follows a symbolic link
//! and never opens anything but a regular file.
//!
//! A peer's upload must land inside `--recv-dir` whatever else is in it. A path-based
//! `open("<dir>/<name>.part")` follows a symlink planted under that name, so an upload
//! would write — and a `file_stat` would describe — a file outside the directory.
//! [`RecvDir`] instead:
//!
//! * opens `<name>.part` with `openat(O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)`
//!   relative to the directory handle (a symlink fails with `ELOOP`; a FIFO cannot block
//!   the open), then `fstat`s what it opened and refuses anything but a regular file with
//!   a single link (a hard link would write through to another name, maybe elsewhere);
//! * creates a missing `<name>.part` only with `O_CREAT | O_EXCL`, which never follows a
//!   link, dangling or not;
//! * takes any entry at the final name, a dangling symlink included, as "already exists"
//!   (`fstatat(AT_SYMLINK_NOFOLLOW)`), and moves the verified file there with
//!   `renameat2(RENAME_NOREPLACE)`, which never replaces an entry either;
//! * removes with `unlinkat`, which removes the entry itself, never a link's target.
//!
//! Errors ([`RecvDirError`]) name files relative to the directory, so what a peer is told
//! never reveals local paths; the directory's own path is only logged locally.
//!
//! The calls block like any file-system call: the async methods run them on tokio's
//! blocking pool, as `tokio::fs` does.

use std::{
    ffi::{CStr, CString},
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    names::{check_file_name, NameError, PART_SUFFIX},
    ServiceError,
};

/// Mode of a newly created partial file, before the process umask: what `File::create`
/// uses, so received files get the permissions the node's user expects of new files.
const NEW_FILE_MODE: libc::c_uint = 0o666;

/// Rounds of "open the existing file, else create it exclusively" before giving up. Each
/// round fails only if a local process creates or removes the entry between the two calls;
/// three absorb such a race without looping on one that keeps going.
const OPEN_ATTEMPTS: usize = 3;

/// A file name a peer asked for, checked by [`check_file_name`], with its partial form.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    name: String,
    part: String,
    c_name: CString,
    c_part: CString,
}

impl Target {
    /// Checks `name` and derives `<name>.part`.
    pub(crate) fn parse(name: &str) -> Result<Self, NameError> {
        let name = check_file_name(name)?;
        let part = format!("{name}{PART_SUFFIX}");
        // check_file_name refuses control characters, NUL among them.
        let c = |s: &str| CString::new(s).map_err(|_| NameError::Control(name.into()));
        Ok(Self { c_name: c(name)?, c_part: c(&part)?, name: name.into(), part })
    }

    /// The final name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The partial file's name, `<name>.part`.
    pub(crate) fn part(&self) -> &str {
        &self.part
    }
}

/// Why a receive-directory operation failed. Names are relative to the directory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecvDirError {
    /// An entry of that name exists (whatever it is, a dangling symlink included).
    #[error("{0} already exists on the receiving node")]
    Exists(String),
    /// The entry is a symbolic link, which is never followed.
    #[error("{0} on the receiving node is a symbolic link, which is never followed")]
    Symlink(String),
    /// The entry is a directory, FIFO, socket or device.
    #[error("{0} on the receiving node is not a regular file")]
    NotRegular(String),
    /// The entry is a regular file with other hard links.
    #[error("{0} on the receiving node has other hard links")]
    HardLinked(String),
    /// The system call failed.
    #[error("{name}: {source}")]
    Io {
        /// The entry.
        name: String,
        /// The error (an OS error, which carries no path).
        #[source]
        source: io::Error,
    },
    /// The blocking task running the call failed (it panicked or the runtime shut down).
    #[error("receive directory task failed: {0}")]
    Task(String),
}

impl From<RecvDirError> for ServiceError {
    fn from(e: RecvDirError) -> Self {
        match e {
            RecvDirError::Io { name, source } => ServiceError::File { path: name, source },
            other => ServiceError::Refused(other.to_string()),
        }
    }
}

/// The receive directory: an open handle on it, and its path for local logs.
#[derive(Debug)]
pub(crate) struct RecvDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn io_err(name: &str) -> impl FnOnce(io::Error) -> RecvDirError + '_ {
    move |source| RecvDirError::Io { name: name.into(), source }
}

impl RecvDir {
    /// Opens the directory at `path` (which the node's operator chose: a symlink to a
    /// directory is followed here, and only here).
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(path)?;
        Ok(Self { fd: dir.into(), path: path.to_path_buf() })
    }

    /// The directory's path, for local logs only (never tell a peer).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses with [`RecvDirError::Exists`] if the final name of `t` exists.
    pub(crate) async fn check_absent(self: &Arc<Self>, t: &Target) -> Result<(), RecvDirError> {
        let t = t.clone();
        self.blocking(move |d| d.check_absent_blocking(&t)).await
    }

    /// Opens `<name>.part` for reading if it exists.
    pub(crate) async fn open_part(
        self: &Arc<Self>,
        t: &Target,
    ) -> Result<Option<tokio::fs::File>, RecvDirError> {
        let t = t.clone();
        let f = self.blocking(move |d| d.open_part_blocking(&t)).await?;
        Ok(f.map(tokio::fs::File::from_std))
    }

    /// Opens `<name>.part` for reading and writing, creating it if missing.
    pub(crate) async fn open_or_create_part(
        self: &Arc<Self>,
        t: &Target,
    ) -> Result<tokio::fs::File, RecvDirError> {
        let t = t.clone();
        let f = self.blocking(move |d| d.open_or_create_part_blocking(&t)).await?;
        Ok(tokio::fs::File::from_std(f))
    }

    /// Moves `<name>.part` to `<name>`, refusing with [`RecvDirError::Exists`] if that
    /// exists by now.
    pub(crate) async fn finish(self: &Arc<Self>, t: &Target) -> Result<(), RecvDirError> {
        let t = t.clone();
        self.blocking(move |d| d.finish_blocking(&t)).await
    }

    /// Removes `<name>.part` (the entry itself, whatever it is but a directory).
    pub(crate) async fn remove_part(self: &Arc<Self>, t: &Target) -> Result<(), RecvDirError> {
        let t = t.clone();
        self.blocking(move |d| d.unlink(&t.c_part).map_err(io_err(&t.part))).await
    }

    /// Runs `op` on tokio's blocking pool, logging I/O failures with the full path.
    async fn blocking<T, F>(self: &Arc<Self>, op: F) -> Result<T, RecvDirError>
    where
        F: FnOnce(&RecvDir) -> Result<T, RecvDirError> + Send + 'static,
        T: Send + 'static,
    {
        let dir = self.clone();
        let r = tokio::task::spawn_blocking(move || op(&dir))
            .await
            .map_err(|e| RecvDirError::Task(e.to_string()))?;
        if let Err(RecvDirError::Io { name, source }) = &r {
            tracing::warn!(path = %self.path.join(name).display(), error = %source, "receive directory");
        }
        r
    }

    fn check_absent_blocking(&self, t: &Target) -> Result<(), RecvDirError> {
        if self.exists(&t.c_name).map_err(io_err(&t.name))? {
            Err(RecvDirError::Exists(t.name.clone()))
        } else {
            Ok(())
        }
    }

    fn open_part_blocking(&self, t: &Target) -> Result<Option<File>, RecvDirError> {
        match self.open_regular(&t.c_part, &t.part, libc::O_RDONLY) {
            Err(RecvDirError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
            r => r.map(Some),
        }
    }

    fn open_or_create_part_blocking(&self, t: &Target) -> Result<File, RecvDirError> {
        for _ in 0..OPEN_ATTEMPTS {
            match self.open_regular(&t.c_part, &t.part, libc::O_RDWR) {
                Err(RecvDirError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                r => return r,
            }
            // O_EXCL: fails on any existing entry, a dangling symlink included, so nothing is
            // ever created through a link.
            let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
            match self.open_at(&t.c_part, flags) {
                Ok(fd) => return Ok(File::from(fd)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&t.part)(e)),
            }
        }
        Err(io_err(&t.part)(io::Error::other("the entry keeps changing while being opened")))
    }

    fn finish_blocking(&self, t: &Target) -> Result<(), RecvDirError> {
        self.rename_noreplace(&t.c_part, &t.c_name).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                RecvDirError::Exists(t.name.clone())
            } else {
                io_err(&t.name)(e)
            }
        })
    }

    /// Whether an entry `name` exists, without following it.
    fn exists(&self, name: &CStr) -> io::Result<bool> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `name` is NUL-terminated, `st` is a buffer of the right type that the call
        // fills (it is never read: only the return value matters).
        let r = unsafe {
            libc::fstatat(self.fd.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW)
        };
        match cvt(r) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `openat` relative to the directory, never following a symlink, never blocking on a
    /// FIFO, never acquiring a controlling terminal.
    fn open_at(&self, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
        let flags = flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: `name` is NUL-terminated; the mode argument is read only with O_CREAT.
        let fd = cvt(unsafe { libc::openat(self.fd.as_raw_fd(), name.as_ptr(), flags, NEW_FILE_MODE) })?;
        // SAFETY: a successful openat returns a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Back to blocking mode for the file's reads and writes (O_NONBLOCK was only for
        // the open; regular files ignore it anyway).
        // SAFETY: fcntl on a descriptor we own.
        let fl = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) })?;
        Ok(fd)
    }

    /// Opens an existing regular file with a single link, refusing anything else.
    fn open_regular(&self, c: &CStr, name: &str, flags: libc::c_int) -> Result<File, RecvDirError> {
        let f = match self.open_at(c, flags) {
            Ok(fd) => File::from(fd),
            // O_NOFOLLOW on a symlink.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(RecvDirError::Symlink(name.into()))
            }
            // A directory opened for writing; a socket, or a FIFO without a reader.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR | libc::ENXIO)) => {
                return Err(RecvDirError::NotRegular(name.into()));
            }
            Err(e) => return Err(io_err(name)(e)),
        };
        let meta = f.metadata().map_err(io_err(name))?;
        if !meta.file_type().is_file() {
            return Err(RecvDirError::NotRegular(name.into()));
        }
        if meta.nlink() != 1 {
            return Err(RecvDirError::HardLinked(name.into()));
        }
        Ok(f)
    }

    /// Renames `from` to `to` within the directory, failing with `AlreadyExists` if `to`
    /// exists.
    fn rename_noreplace(&self, from: &CStr, to: &CStr) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let d = self.fd.as_raw_fd();
            // SAFETY: both names are NUL-terminated.
            let r = unsafe { libc::renameat2(d, from.as_ptr(), d, to.as_ptr(), libc::RENAME_NOREPLACE) };
            match cvt(r) {
                Ok(_) => return Ok(()),
                // The file system does not support the flag: link and unlink instead.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {}
                Err(e) => return Err(e),
            }
        }
        self.link_then_unlink(from, to)
    }

    /// `linkat` (which never replaces an entry) then `unlinkat` of the old name.
    fn link_then_unlink(&self, from: &CStr, to: &CStr) -> io::Result<()> {
        let d = self.fd.as_raw_fd();
        // SAFETY: both names are NUL-terminated; flags 0 does not follow a symlink `from`.
        cvt(unsafe { libc::linkat(d, from.as_ptr(), d, to.as_ptr(), 0) })?;
        self.unlink(from)
    }

    fn unlink(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use std::{io::Write, os::unix::fs::symlink};

    use super::*;
    use crate::services::names::NAME_MAX;

    fn setup() -> (tempfile::TempDir, PathBuf, RecvDir) {
        let root = tempfile::tempdir().unwrap();
        let inbox = root.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        let dir = RecvDir::open(&inbox).unwrap();
        (root, inbox, dir)
    }

    fn t(name: &str) -> Target {
        Target::parse(name).unwrap()
    }

    fn mkfifo(p: &Path) {
        let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn creates_resumes_finishes_and_removes() {
        let (_root, inbox, dir) = setup();
        let a = t("a.bin");
        assert_eq!((a.name(), a.part()), ("a.bin", "a.bin.part"));
        assert!(dir.open_part_blocking(&a).unwrap().is_none());
        dir.open_or_create_part_blocking(&a).unwrap().write_all(b"abc").unwrap();
        // Opened again, not recreated.
        let f = dir.open_or_create_part_blocking(&a).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 3);
        assert_eq!(dir.open_part_blocking(&a).unwrap().unwrap().metadata().unwrap().len(), 3);
        dir.check_absent_blocking(&a).unwrap();
        dir.finish_blocking(&a).unwrap();
        assert_eq!(std::fs::read(inbox.join("a.bin")).unwrap(), b"abc");
        assert!(matches!(dir.check_absent_blocking(&a), Err(RecvDirError::Exists(n)) if n == "a.bin"));
        dir.open_or_create_part_blocking(&a).unwrap();
        assert!(matches!(dir.finish_blocking(&a), Err(RecvDirError::Exists(_))));
        assert_eq!(std::fs::read(inbox.join("a.bin")).unwrap(), b"abc", "never replaced");
        dir.unlink(&a.c_part).unwrap();
        assert!(!inbox.join("a.bin.part").exists());
    }

    #[test]
    fn symlinks_are_never_followed() {
        let (root, inbox, dir) = setup();
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        let a = t("a");
        symlink(&outside, inbox.join("a.part")).unwrap();
        assert!(matches!(dir.open_part_blocking(&a), Err(RecvDirError::Symlink(n)) if n == "a.part"));
        assert!(matches!(dir.open_or_create_part_blocking(&a), Err(RecvDirError::Symlink(_))));
        // Removing the link removes the link only.
        dir.unlink(&a.c_part).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");

        // A dangling link: nothing is created through it.
        let b = t("b");
        let target = root.path().join("created");
        symlink(&target, inbox.join("b.part")).unwrap();
        assert!(matches!(dir.open_or_create_part_blocking(&b), Err(RecvDirError::Symlink(_))));
        assert!(!target.exists());

        // A final name planted as a link, dangling or not, already exists.
        for (name, to) in [("c", outside.clone()), ("d", root.path().join("nowhere"))] {
            symlink(&to, inbox.join(name)).unwrap();
            let c = t(name);
            assert!(matches!(dir.check_absent_blocking(&c), Err(RecvDirError::Exists(_))));
            dir.open_or_create_part_blocking(&c).unwrap();
            assert!(matches!(dir.finish_blocking(&c), Err(RecvDirError::Exists(_))));
        }
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
        assert!(!root.path().join("nowhere").exists());
    }

    #[test]
    fn fifos_directories_and_hard_links_are_refused() {
        let (root, inbox, dir) = setup();
        mkfifo(&inbox.join("f.part"));
        let f = t("f");
        assert!(matches!(dir.open_part_blocking(&f), Err(RecvDirError::NotRegular(_))));
        assert!(matches!(dir.open_or_create_part_blocking(&f), Err(RecvDirError::NotRegular(_))));
        std::fs::create_dir(inbox.join("d.part")).unwrap();
        let d = t("d");
        assert!(matches!(dir.open_part_blocking(&d), Err(RecvDirError::NotRegular(_))));
        assert!(matches!(dir.open_or_create_part_blocking(&d), Err(RecvDirError::NotRegular(_))));
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        std::fs::hard_link(&outside, inbox.join("h.part")).unwrap();
        let h = t("h");
        assert!(matches!(dir.open_part_blocking(&h), Err(RecvDirError::HardLinked(_))));
        assert!(matches!(dir.open_or_create_part_blocking(&h), Err(RecvDirError::HardLinked(_))));
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
    }

    #[test]
    fn errors_name_entries_relative_to_the_directory() {
        let (_root, inbox, dir) = setup();
        symlink("/nowhere", inbox.join("x.part")).unwrap();
        let e = dir.open_or_create_part_blocking(&t("x")).unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("x.part "), "{shown}");
        assert!(!shown.contains(inbox.to_str().unwrap()), "{shown}");
        assert!(matches!(Target::parse(&"n".repeat(NAME_MAX)), Err(NameError::NoRoomForPart(_))));
    }

    #[tokio::test]
    async fn async_wrappers_run_the_same_calls() {
        let (_root, inbox, dir) = setup();
        let dir = Arc::new(dir);
        let a = t("a");
        assert!(dir.open_part(&a).await.unwrap().is_none());
        let mut f = dir.open_or_create_part(&a).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut f, b"xy").await.unwrap();
        tokio::io::AsyncWriteExt::flush(&mut f).await.unwrap();
        drop(f);
        dir.check_absent(&a).await.unwrap();
        dir.finish(&a).await.unwrap();
        assert_eq!(std::fs::read(inbox.join("a")).unwrap(), b"xy");
        dir.open_or_create_part(&a).await.unwrap();
        dir.remove_part(&a).await.unwrap();
        assert!(!inbox.join("a.part").exists());
        assert_eq!(dir.path(), inbox);
    }
}
