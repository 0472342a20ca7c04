//! What a camouflaged listener keeps in the relay's data directory: the
//! secret its path token is derived from, and (unless the operator gives
//! one) a self-signed certificate that looks like any small site's.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::BASE64URL_NOPAD;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Folder inside the data directory.
pub const HTTPS_DIR: &str = "https";
const SECRET_FILE: &str = "secret";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
/// Context string of the path token's key derivation.
const TOKEN_CONTEXT: &str = "chapar camouflaged https path token v1";
/// Days a generated certificate is valid for (what public CAs allow).
const CERT_DAYS: u64 = 397;

/// Why the listener's keys could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The secret, certificate and key of one camouflaged listener.
pub struct CamouflageKeys {
    secret: Zeroizing<[u8; 32]>,
    /// The certificate chain served, leaf first.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// `None` behind a reverse proxy that holds the key.
    pub(crate) key: Option<PrivateKeyDer<'static>>,
    /// Whether the certificate was made here (so clients must pin it).
    pub self_signed: bool,
}

impl std::fmt::Debug for CamouflageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CamouflageKeys")
            .field("self_signed", &self.self_signed)
            .finish_non_exhaustive()
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// `data_dir/https/` (made if missing) and the secret in it (made the
/// first time).
fn https_dir_and_secret(data_dir: &Path) -> Result<(PathBuf, Zeroizing<[u8; 32]>), KeyError> {
    let dir = data_dir.join(HTTPS_DIR);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let secret = load_or_create_secret(&dir)?;
    Ok((dir, secret))
}

fn load_or_create_secret(dir: &Path) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let path = dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Invalid {
                path: path.clone(),
                why: format!("{} bytes, expected 32", bytes.len()),
            })?;
            Ok(Zeroizing::new(secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = Zeroizing::new(rand::random::<[u8; 32]>());
            write_new(&path, secret.as_slice())?;
            Ok(secret)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

fn ymd(days_from_now: i64) -> (i32, u8, u8) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    civil_from_days(today + days_from_now)
}

/// A certificate for `name` with the fields a small site's has: its own
/// name as subject, a random serial, a year's validity, P-256.
fn generate_certificate(name: &str) -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    params.distinguished_name = dn;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
    let ((y0, m0, d0), (y1, m1, d1)) = (ymd(-1), ymd(CERT_DAYS as i64 - 1));
    params.not_before = rcgen::date_time_ymd(y0, m0, d0);
    params.not_after = rcgen::date_time_ymd(y1, m1, d1);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    let invalid = |why: String| KeyError::Invalid {
        path: path.to_owned(),
        why,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid("no certificate in it".into()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, KeyError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| KeyError::Invalid {
        path: path.to_owned(),
        why: format!("no private key in it ({e})"),
    })
}

impl CamouflageKeys {
    /// The secret and a self-signed certificate for `name` from
    /// `data_dir/https/`, made there (0600) the first time. A certificate
    /// that has expired is made anew (clients then need the new pin).
    pub fn load_or_create(data_dir: &Path, name: &str) -> Result<Self, KeyError> {
        let (dir, secret) = https_dir_and_secret(data_dir)?;
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if !cert_path.exists() || !key_path.exists() || expired(&cert_path) {
            let (cert, key) = generate_certificate(name).map_err(|e| KeyError::Invalid {
                path: cert_path.clone(),
                why: format!("could not make a certificate: {e}"),
            })?;
            for p in [&cert_path, &key_path] {
                let _ = std::fs::remove_file(p);
            }
            write_new(&key_path, key.as_bytes())?;
            write_new(&cert_path, cert.as_bytes())?;
        }
        Ok(Self {
            secret,
            chain: read_chain(&cert_path)?,
            key: Some(read_key(&key_path)?),
            self_signed: true,
        })
    }

    /// The secret from `data_dir/https/` and the operator's certificate
    /// chain and key (PEM files, as certbot writes them).
    pub fn with_certificate(data_dir: &Path, cert: &Path, key: &Path) -> Result<Self, KeyError> {
        Ok(Self {
            secret: https_dir_and_secret(data_dir)?.1,
            chain: read_chain(cert)?,
            key: Some(read_key(key)?),
            self_signed: false,
        })
    }

    /// The secret from `data_dir/https/` and the certificate a reverse
    /// proxy in front presents (no key: the proxy terminates TLS). Clients
    /// are given its pin, as for a self-signed one; a certificate from a
    /// public authority needs no pin (use [`Self::secret_only`]).
    pub fn pinning_certificate(data_dir: &Path, cert: &Path) -> Result<Self, KeyError> {
        Ok(Self {
            secret: https_dir_and_secret(data_dir)?.1,
            chain: read_chain(cert)?,
            key: None,
            self_signed: true,
        })
    }

    /// The secret alone, behind a reverse proxy whose certificate clients
    /// check against the web's authorities.
    pub fn secret_only(data_dir: &Path) -> Result<Self, KeyError> {
        Ok(Self {
            secret: https_dir_and_secret(data_dir)?.1,
            chain: Vec::new(),
            key: None,
            self_signed: false,
        })
    }

    /// The secret path token clients must ask for (22 characters of
    /// base64url; derived, so the stored secret never leaves the disk).
    pub fn token(&self) -> String {
        let derived = blake3::derive_key(TOKEN_CONTEXT, self.secret.as_slice());
        BASE64URL_NOPAD.encode(&derived[..16])
    }

    /// SHA-256 of the leaf certificate: the `pin` of the share string
    /// (`None` without a certificate).
    pub fn pin(&self) -> Option<[u8; 32]> {
        self.chain
            .first()
            .map(|c| Sha256::digest(c.as_ref()).into())
    }
}

/// Whether the PEM certificate at `path` is past its notAfter (unreadable
/// counts as expired, so it is made anew).
fn expired(path: &Path) -> bool {
    // A generated certificate's age is its file's age: it was written the
    // day its validity began.
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age.as_secs() / 86_400 >= CERT_DAYS - 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn keys_persist_and_the_token_is_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = CamouflageKeys::load_or_create(dir.path(), "example.org").expect("create");
        let b = CamouflageKeys::load_or_create(dir.path(), "example.org").expect("load");
        assert_eq!(a.token(), b.token());
        assert_eq!(a.pin(), b.pin());
        assert_eq!(a.token().len(), 22);
        let mode = |f: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.path().join(HTTPS_DIR).join(f))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!((mode(SECRET_FILE), mode(KEY_FILE)), (0o600, 0o600));
        let other = tempfile::tempdir().expect("tempdir");
        let c = CamouflageKeys::load_or_create(other.path(), "example.org").expect("other");
        assert_ne!(a.token(), c.token());
    }

    #[test]
    fn a_truncated_secret_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(HTTPS_DIR)).expect("mkdir");
        std::fs::write(dir.path().join(HTTPS_DIR).join(SECRET_FILE), [1u8; 7]).expect("write");
        let err = CamouflageKeys::load_or_create(dir.path(), "example.org").expect_err("refused");
        assert!(err.to_string().contains("7 bytes"), "{err}");
    }
}
