//! Files written whole or not at all: the bytes go to a temporary file beside the target,
//! reach the disk, and are renamed over it, so a reader (or a crash) sees the old file or the
//! new one, never half of either.

use std::io::Write as _;
use std::path::Path;

/// Replaces `path` with `bytes`; `private`: only its owner may read it (0600 on Unix).
pub fn replace(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "a file name is needed")
    })?;
    // A dot file: folder watchers (the rules') pass over it.
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_a_private_one_is_the_owners() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kept.json");
        replace(&path, b"first", true).unwrap();
        replace(&path, b"second", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }
}
