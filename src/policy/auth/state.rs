//! The files kept in the state directory (`state_dir`): named so that another source never
//! reads a file meant for one, and written whole (a reader sees the old file or the new one).

use std::path::Path;

use sha2::{Digest, Sha256};

/// `jwks-NAME-HASH.json`: the provider's name (for people; only its safe characters) and
/// the URL's hash, so another URL never reads this one's keys.
pub fn state_file_name(provider: &str, url: &str) -> String {
    let safe: String = provider
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(64)
        .collect();
    let hash = hex::encode(&Sha256::digest(url.as_bytes())[..8]);
    format!("jwks-{safe}-{hash}.json")
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
    fn the_state_file_is_named_by_provider_and_url() {
        let a = state_file_name("../idp/x", "https://a/keys");
        assert!(a.starts_with("jwks-idpx-") && a.ends_with(".json"), "{a}");
        assert_ne!(a, state_file_name("../idp/x", "https://b/keys"));
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
