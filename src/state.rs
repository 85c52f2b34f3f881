//! The state directory (`state_dir`): what must outlive a restart (a remote JWKS's last
//! good set, an etcd source's last-known-good backends), written so that a reader sees the
//! old file or the new one, never a part.

use std::path::Path;

use sha2::{Digest, Sha256};

/// `KIND-NAME-HASH.json`: what keeps it (`jwks`, `etcd`), the owner's name (for people;
/// only its safe characters) and a hash of where the content comes from (a URL, endpoints
/// and a prefix), so another source never reads this one's file.
pub fn file_name(kind: &str, name: &str, source: &str) -> String {
    let safe: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(64)
        .collect();
    let hash = hex::encode(&Sha256::digest(source.as_bytes())[..8]);
    format!("{kind}-{safe}-{hash}.json")
}

/// Write `bytes` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file beside it, flushed, then renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_is_named_by_kind_owner_and_source() {
        let a = file_name("jwks", "../idp/x", "https://a/keys");
        assert!(a.starts_with("jwks-idpx-") && a.ends_with(".json"), "{a}");
        assert_ne!(a, file_name("jwks", "../idp/x", "https://b/keys"));
    }

    #[test]
    fn a_written_file_is_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("k.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
    }
}
