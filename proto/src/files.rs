//! Writing files that hold secrets (key files, TLS private keys) without trusting what already
//! sits in the directory: never follow a symbolic link planted at the temporary or the final
//! path, never reuse an existing file (whose mode or hard links an attacker may have chosen),
//! and end with mode 0600 whatever the umask.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Open a new file at `path` for writing: fails if *anything* exists there (a file, a
/// directory, a dangling or live symbolic link), never follows a link, and sets `mode` with
/// `fchmod` after creation so the umask cannot change it.
fn create_new(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        let f = opts.open(path)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        Ok(f)
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        opts.open(path)
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Create `path` holding `data` with mode `0600` (secret) or `0644`, fsynced; refuses when
/// anything already exists at `path` (symbolic links included, never followed).
///
/// # Errors
/// `AlreadyExists` when the path is taken; other I/O errors.
pub fn create_file(path: &Path, data: &[u8], secret: bool) -> std::io::Result<()> {
    let mut f = create_new(path, if secret { 0o600 } else { 0o644 })?;
    f.write_all(data)?;
    f.sync_all()?;
    sync_dir(path)
}

/// Replace `path` atomically with a private (0600) file holding `data`: a new temporary file
/// with an unpredictable name (created exclusively, links not followed), fsync, rename over
/// `path` (which replaces a link there instead of following it), fsync the directory.
///
/// # Errors
/// I/O errors; the temporary file is removed on failure.
pub fn write_private_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("secret");
    let mut random = [0u8; 8];
    getrandom(&mut random);
    let tmp: PathBuf = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let written = (|| {
        let mut f = create_new(&tmp, 0o600)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_dir(path)
}

fn getrandom(out: &mut [u8]) {
    use rand::RngCore;
    rand::rng().fill_bytes(out);
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn atomic_write_replaces_links_and_loose_files_with_a_private_file() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        std::fs::write(&target, b"untouched").unwrap();
        let path = d.path().join("keys.json");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_private_atomic(&path, b"secret").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(mode(&path), 0o600);
        // A world-readable file already there ends private too.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_atomic(&path, b"secret 2").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"secret 2");
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn create_refuses_anything_in_the_way() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        let link = d.path().join("tls.key");
        std::os::unix::fs::symlink(&target, &link).unwrap(); // dangling
        let e = create_file(&link, b"k", true).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(!target.exists(), "the link was followed");
        let fresh = d.path().join("new.key");
        create_file(&fresh, b"k", true).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        assert_eq!(
            create_file(&fresh, b"k", true).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
    }
}
