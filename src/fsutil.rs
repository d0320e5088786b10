//! Atomic file output: every file nnzip writes goes to a temp file in the target's folder, is
//! flushed to disk, then renamed over the target, so a killed run never leaves a half-written
//! output (at worst a hidden `.nnzip-*` temp file).

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written; becomes visible at its target only on [`AtomicFile::commit`].
pub struct AtomicFile {
    target: PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl AtomicFile {
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut b = tempfile::Builder::new();
        b.prefix(".nnzip-").suffix(".tmp");
        // Outputs get the permissions any new file gets (0666 less the umask), not the
        // temp file's private 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            b.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let tmp = b.tempfile_in(dir)?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            tmp,
        })
    }

    pub fn file(&mut self) -> &mut std::fs::File {
        self.tmp.as_file_mut()
    }

    /// A second handle on the temp file (for buffered writers that must own one).
    pub fn file_try_clone(&self) -> io::Result<std::fs::File> {
        self.tmp.as_file().try_clone()
    }

    /// Flushes to disk and renames over the target.
    pub fn commit(self) -> io::Result<()> {
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(&self.target).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Writes `target` atomically with the bytes `fill` produces.
pub fn write_atomic(
    target: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut f = AtomicFile::create(target)?;
    {
        let mut w = BufWriter::new(f.file());
        fill(&mut w)?;
        w.flush()?;
    }
    f.commit()
}

/// Checks, before any work, that `target` can be written: not a directory, in a folder that
/// exists and takes new files (probed with a temp file that is removed again).
pub fn check_writable(target: &Path) -> io::Result<()> {
    if target.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory",
        ));
    }
    AtomicFile::create(target).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        let r = write_atomic(&target, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("killed"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        // the temp file is removed when the write fails
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic(&target, |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[cfg(unix)]
    #[test]
    fn outputs_get_the_usual_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        write_atomic(&target, |w| w.write_all(b"x")).unwrap();
        // What a plain create gives under this process's umask.
        let plain = dir.path().join("plain.bin");
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&target), mode(&plain));
        assert_ne!(mode(&target), 0o600, "umask would have to be 0177 for this");
    }

    #[test]
    fn unwritable_targets_are_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(dir.path()).is_err());
        assert!(check_writable(&dir.path().join("missing/out.nnc")).is_err());
        check_writable(&dir.path().join("out.nnc")).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the probe is removed"
        );
    }
}
