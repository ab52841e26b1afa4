//! Small helpers every part uses, each written once: the clock, RFC 3339
//! times, hex, and an error with its chain of causes.

/// Now, in Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Unix seconds as RFC 3339 UTC, to the second: `2026-11-29T17:12:10Z`.
pub fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Upper-case hex of bytes, as certificate fingerprints are written.
pub fn hex_upper(bytes: &[u8]) -> String {
    hex(bytes).to_ascii_uppercase()
}

/// An error with its sources, as one line: `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Wrappers that print their cause themselves would say it twice.
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// Makes what this process creates from now on readable by its own user
/// only (umask 077), whatever umask it was started with: queued bodies,
/// the database and its WAL, keys.
pub fn private_files() {
    // SAFETY: umask only swaps the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Large allocations (an argon2 check takes 19 MiB) go straight back to the
/// system when freed. glibc otherwise raises its mmap threshold after the
/// first such free and keeps later ones in the heap of the thread that
/// made them, so the memory of every thread that once checked a password
/// stays taken.
pub fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; a fixed threshold
    // also turns off the dynamic one.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Gives the heap's free memory back to the system (glibc keeps what
/// was freed in each thread's arena for reuse; after a one-off burst that
/// only makes the resident size look like a leak).
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own
    // heaps; it touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Creates `dir` if needed and makes it and what lies directly in it (and
/// one level below) private to this user: 0700 for folders, 0600 for
/// files. Files left readable by an earlier version are closed this way.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    close(dir, 2)
}

fn close(path: &std::path::Path, depth: u8) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        if depth > 0 {
            for entry in std::fs::read_dir(path)? {
                match close(&entry?.path(), depth - 1) {
                    // A running gateway makes and removes files (journals,
                    // spool temporaries) while a command walks its folder:
                    // one that is gone needs no closing.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    r => r?,
                }
            }
        }
    } else if meta.is_file() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_vanish_during_the_walk_are_not_an_error() {
        // A running gateway removes its journal files while `sealgate
        // account add` closes the folder; that must not stop the command.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let churn = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    let f = dir.join(format!("j{}", i % 8));
                    let _ = std::fs::write(&f, b"x");
                    let _ = std::fs::remove_file(&f);
                }
            })
        };
        while !churn.is_finished() {
            private_dir(&dir).unwrap();
        }
        churn.join().unwrap();
    }

    #[test]
    fn a_private_dir_is_closed_to_others() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("sealgate.db");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_dir(&dir).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn helpers() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(hex_upper(&[0xab]), "AB");
        let io = std::io::Error::other("disk full");
        assert_eq!(error_chain(&io), "disk full");
    }

    /// A wrapper that prints its cause and also gives it as its source
    /// (tokio-postgres, deadpool) is said once.
    #[test]
    fn a_cause_the_wrapper_already_printed_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("handshake: {0}")]
        struct Says(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("connect")]
        struct Wraps(#[source] Says);
        let e = Wraps(Says(std::io::Error::other("unknown issuer")));
        assert_eq!(error_chain(&e), "connect: handshake: unknown issuer");
    }
}
