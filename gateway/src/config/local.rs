//! The local file `csps.toml`: the only configuration outside the store (DESIGN, "Local file"):
//! `mongodb_uri`, `server_name`, `secret_key`. Also the break-glass `admin-token` beside it. A file
//! in the old format also holds `[Data.*]` tables, which [`super::upgrade`] moves into the store.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The contents of `csps.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFile {
    /// MongoDB connection string; absent = the embedded store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb_uri: Option<String>,
    /// This server's name; absent = the short host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Key that encrypts secrets at rest (base64url, 32 bytes); generated at first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    /// The `[Data.*]` tables of a file in the old (cSPS) format, moved into the store at start by
    /// [`super::upgrade`]; never written back.
    #[serde(default, rename = "Data", skip_serializing)]
    pub legacy_data: Option<toml::Value>,
}

/// Why the local file or a local secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.to_owned(),
        source,
    }
}

impl LocalFile {
    /// Reads the file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<LocalFile, LocalError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| LocalError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LocalFile::default()),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// Writes the file atomically (temp file, then rename), mode 0600 since it holds a secret.
    pub fn save(&self, path: &Path) -> Result<(), LocalError> {
        let text = toml::to_string(self).map_err(|e| LocalError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        write_private(path, text.as_bytes())
    }

    /// The secret key as bytes, generating and saving one when absent.
    pub fn ensure_secret_key(&mut self, path: &Path) -> Result<[u8; 32], LocalError> {
        if let Some(k) = &self.secret_key {
            return decode_secret_key(k).map_err(|message| LocalError::Invalid {
                path: path.to_owned(),
                message,
            });
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        self.secret_key = Some(URL_SAFE_NO_PAD.encode(key));
        self.save(path)?;
        tracing::info!(file = %path.display(), "generated a new secret_key");
        Ok(key)
    }
}

/// The environment variable that gives `secret_key` instead of the local file (servers of a
/// cluster must share the key; a secret store can hand it over this way without a file).
pub const SECRET_KEY_ENV: &str = "CSPS_SECRET_KEY";

/// A `secret_key` value (base64url of 32 bytes, padding and surrounding space allowed) as
/// bytes, or what is wrong with it.
pub fn decode_secret_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .map_err(|e| format!("secret_key is not base64url: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "secret_key must be 32 bytes (43 base64url characters), not {}",
            bytes.len()
        )
    })
}

/// The secret key: from [`SECRET_KEY_ENV`] when it is set (the file is then neither read for
/// it nor written), else from the local file at `path`, generated there at first start.
pub fn secret_key(
    file: &mut LocalFile,
    path: &Path,
    env: Option<&str>,
) -> Result<[u8; 32], LocalError> {
    let Some(value) = env else {
        return file.ensure_secret_key(path);
    };
    let key = decode_secret_key(value).map_err(|message| LocalError::Invalid {
        path: PathBuf::from(format!("${SECRET_KEY_ENV}")),
        message,
    })?;
    if file.secret_key.is_some() {
        tracing::warn!(
            file = %path.display(),
            "{SECRET_KEY_ENV} is set: it overrides secret_key of the local file"
        );
    } else {
        tracing::info!("secret_key from {SECRET_KEY_ENV}");
    }
    Ok(key)
}

/// Writes `bytes` to `path` with mode 0600, atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), LocalError> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Reads `<data-dir>/admin-token`, creating it (random, mode 0600) at first start.
pub fn ensure_admin_token(data_dir: &Path) -> Result<String, LocalError> {
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = URL_SAFE_NO_PAD.encode(raw);
    write_private(&path, format!("{token}\n").as_bytes())?;
    tracing::info!(file = %path.display(), "wrote the break-glass admin token");
    Ok(token)
}

/// Checks a server name: `[a-z0-9-]{1,63}`, not `servers` or `paths` (reserved), not `*`.
pub fn validate_server_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("server name `{name}` must be 1 to 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("server name `{name}` may only hold a-z, 0-9 and -"));
    }
    if name == "servers" || name == "paths" {
        return Err(format!("server name `{name}` is reserved"));
    }
    Ok(())
}

/// The short host name, made into a valid server name (lower-cased, other characters as `-`).
pub fn default_server_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let short = host
        .trim()
        .split('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut name: String = short
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if validate_server_name(&name).is_err() {
        name = "csps".to_owned();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(validate_server_name("a").is_ok());
        assert!(validate_server_name("srv-01").is_ok());
        assert!(validate_server_name("servers").is_err());
        assert!(validate_server_name("paths").is_err());
        assert!(validate_server_name("*").is_err());
        assert!(validate_server_name("Upper").is_err());
        assert!(validate_server_name(&"x".repeat(64)).is_err());
        assert!(validate_server_name(&default_server_name()).is_ok());
    }

    #[test]
    fn local_file_round_trip_and_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("csps.toml");
        let mut f = LocalFile::load(&path).expect("missing file is empty");
        assert_eq!(f, LocalFile::default());
        let key = f.ensure_secret_key(&path).expect("generate");
        let again = LocalFile::load(&path).expect("reload");
        let mut again2 = again.clone();
        assert_eq!(again2.ensure_secret_key(&path).expect("read"), key);
        std::fs::write(&path, "bogus = 1\n").expect("write");
        assert!(matches!(
            LocalFile::load(&path),
            Err(LocalError::Invalid { .. })
        ));
    }

    #[test]
    fn secret_key_from_the_environment_wins_and_is_never_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("csps.toml");
        let env = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let mut f = LocalFile::default();
        assert_eq!(secret_key(&mut f, &path, Some(&env)).expect("env"), [7; 32]);
        assert!(!path.exists(), "nothing generated nor written");
        assert_eq!(f.secret_key, None);
        let from_file = secret_key(&mut f, &path, None).expect("generated");
        assert_ne!(from_file, [7; 32]);
        assert_eq!(
            secret_key(&mut f, &path, Some(&format!(" {env}= "))).expect("padded"),
            [7; 32]
        );
        for bad in ["", "not base64!", &URL_SAFE_NO_PAD.encode([1u8; 16])] {
            let e = secret_key(&mut f, &path, Some(bad)).expect_err(bad);
            assert!(
                e.to_string().starts_with("$CSPS_SECRET_KEY: secret_key"),
                "{e}"
            );
        }
    }
}
