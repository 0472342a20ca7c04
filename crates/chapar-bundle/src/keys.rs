//! age X25519 keys: identity files exactly as `age-keygen` writes them, and
//! `age1…` recipients. Secret keys are zeroized when dropped (the `age`
//! crate wipes its `StaticSecret`; every buffer we hold them in is
//! `Zeroizing`).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519::{Identity, Recipient};
use zeroize::Zeroizing;

use crate::error::BundleError;

/// Identity files larger than this are refused (a real one is ~190 bytes a key).
const MAX_IDENTITY_FILE: u64 = 64 * 1024;

/// Creates a new identity file at `path` (mode 0600, never overwriting)
/// and returns its recipient.
pub fn generate_identity_file(path: &Path) -> Result<Recipient, BundleError> {
    let identity = Identity::generate();
    let recipient = identity.to_public();
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let secret = identity.to_string();
    let contents = Zeroizing::new(format!(
        "# created: {created}\n# public key: {recipient}\n{}\n",
        secret.expose_secret()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => BundleError::KeyExists { path: path.into() },
            _ => BundleError::Io {
                path: path.into(),
                source: e,
            },
        })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(BundleError::io(path))?;
    Ok(recipient)
}

/// Reads every X25519 secret key in an identity file (age-keygen format:
/// `#` comments, blank lines and `AGE-SECRET-KEY-1…` lines).
pub fn load_identities(path: &Path) -> Result<Vec<Identity>, BundleError> {
    let file = std::fs::File::open(path).map_err(BundleError::io(path))?;
    if let Ok(meta) = file.metadata() {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "identity file is readable by other users; chmod 600 it");
        }
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_IDENTITY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| BundleError::BadIdentity {
            path: path.into(),
            line: 0,
            reason: format!("not a text file: {e}"),
        })?;
    if text.len() as u64 > MAX_IDENTITY_FILE {
        return Err(BundleError::BadIdentity {
            path: path.into(),
            line: 0,
            reason: format!("larger than {MAX_IDENTITY_FILE} bytes"),
        });
    }
    let mut identities = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| BundleError::BadIdentity {
            path: path.into(),
            line: n + 1,
            reason: reason.into(),
        };
        if !line.starts_with("AGE-SECRET-KEY-1") {
            return Err(bad(
                "not an age X25519 secret key (plugin, SSH and passphrase identities are not supported)",
            ));
        }
        identities.push(Identity::from_str(line).map_err(|_| bad("malformed age secret key"))?);
    }
    if identities.is_empty() {
        return Err(BundleError::NoIdentities { path: path.into() });
    }
    Ok(identities)
}

/// Parses an `age1…` recipient.
pub fn parse_recipient(value: &str) -> Result<Recipient, BundleError> {
    Recipient::from_str(value.trim()).map_err(|e| BundleError::BadRecipient {
        value: value.into(),
        reason: e.to_string(),
    })
}

/// Reads a recipients file: one `age1…` per line, `#` comments and blank
/// lines allowed (the format `age -R` reads).
pub fn load_recipients_file(path: &Path) -> Result<Vec<Recipient>, BundleError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_IDENTITY_FILE + 1).read_to_string(&mut text))
        .map_err(BundleError::io(path))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(parse_recipient)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_file_is_private_round_trips_and_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.txt");
        let recipient = generate_identity_file(&path).expect("generate");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let ids = load_identities(&path).expect("load");
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].to_public().to_string(), recipient.to_string());
        let before = std::fs::read(&path).expect("read");
        assert!(matches!(
            generate_identity_file(&path),
            Err(BundleError::KeyExists { .. })
        ));
        assert_eq!(std::fs::read(&path).expect("read"), before);
    }

    #[test]
    fn rejects_non_x25519_lines_with_line_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.txt");
        std::fs::write(&path, "# comment\n\nAGE-PLUGIN-YUBIKEY-1XYZ\n").expect("write");
        match load_identities(&path) {
            Err(BundleError::BadIdentity { line, .. }) => assert_eq!(line, 3),
            Err(other) => panic!("expected BadIdentity, got {other:?}"),
            Ok(_) => panic!("expected BadIdentity, got identities"),
        }
        std::fs::write(&path, "# only comments\n").expect("write");
        assert!(matches!(
            load_identities(&path),
            Err(BundleError::NoIdentities { .. })
        ));
    }

    #[test]
    fn rejects_bad_recipients() {
        assert!(parse_recipient("age1notakey").is_err());
        assert!(parse_recipient("ssh-ed25519 AAAA").is_err());
        let id = Identity::generate();
        let text = id.to_public().to_string();
        assert_eq!(parse_recipient(&text).expect("valid").to_string(), text);
    }
}
