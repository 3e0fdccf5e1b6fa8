//! The upgrade from the old local-file format, where `csps.toml` held every setting: beside
//! `mongodb_uri`, `server_name` and `secret_key`, one TOML table per cSPS group with the leaves
//! as keys (`[Data.System] MinRtpPort = 20000`, `[Data.SipConfig] TrustedIps = ["10.0.0.0/8"]`).
//!
//! At start, before anything else is written, [`parse`] checks every old value against the leaf
//! table (an unknown key or a bad value is an error naming the key; nothing is written). Then
//! [`apply`] copies the values into the store where the entry does not exist yet: the global entry
//! `*` (when absent, it is made from the defaults and the old values, so servers added later
//! inherit them) and this server's entry (when absent: the global entry with the old values over
//! it). An entry that exists is left alone. Last, the original file is kept as a backup that
//! never overwrites another one (`csps.toml.bak`, else `csps.toml.bak.<UTC time>[-n]`) and the
//! file is rewritten with the three keys only. Running again finds nothing to do; a start that
//! died between the store and the file rewrite repeats only the rewrite.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::local::{LocalError, LocalFile};
use super::model::{self, GROUPS, Leaf};
use super::{GLOBAL, set_leaf};
use crate::store::{AuditEntry, ConfigEntry, Store};

/// The validated old values: each leaf with its normalised value.
pub type OldValues = Vec<(&'static Leaf, Value)>;

/// Checks the `[Data.*]` tables of an old-format file. `None` when the file has none.
pub fn parse(file: &LocalFile) -> Result<Option<OldValues>, String> {
    let Some(data) = &file.legacy_data else {
        return Ok(None);
    };
    let groups = data
        .as_table()
        .ok_or("Data: must be a table of groups ([Data.System], [Data.SipConfig], …)")?;
    let mut out = Vec::new();
    for (group, keys) in groups {
        if !GROUPS.contains(&group.as_str()) {
            return Err(format!(
                "Data.{group}: not a configuration group (expected one of {})",
                GROUPS.join(", ")
            ));
        }
        let keys = keys
            .as_table()
            .ok_or_else(|| format!("Data.{group}: must be a table of leaves"))?;
        for (key, value) in keys {
            let path = format!("Data.{group}.{key}");
            let leaf = model::find(&path)
                .ok_or_else(|| format!("{path}: not a configuration leaf (see the README)"))?;
            let json = serde_json::to_value(value).map_err(|e| format!("{path}: {e}"))?;
            let checked = leaf.check(&json).map_err(|e| format!("{path}: {e}"))?;
            out.push((leaf, checked));
        }
    }
    let mut entry = model::defaults();
    for (l, v) in &out {
        set_leaf(&mut entry, l.path, v.clone());
    }
    if let Some(e) = model::cross_field(&entry).first() {
        return Err(format!("{} / {}: {}", e.lower, e.upper, e.message));
    }
    Ok(Some(out))
}

/// What [`apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upgraded {
    /// Entries created from the old values (`*`, the server's name).
    pub created: Vec<String>,
    /// Where the original file was kept.
    pub backup: PathBuf,
}

/// Copies `old` into the store where the entries do not exist yet, keeps a backup of the file at
/// `path` and rewrites it with `file`'s three keys.
pub async fn apply(
    store: &dyn Store,
    server: &str,
    old: &OldValues,
    path: &Path,
    file: &LocalFile,
) -> Result<Upgraded, String> {
    let store_err = |e| format!("upgrading {}: the store: {e}", path.display());
    let with_old = |base: &ConfigEntry| {
        let mut e = if base.is_object() {
            base.clone()
        } else {
            model::defaults()
        };
        for (l, v) in old {
            set_leaf(&mut e, l.path, v.clone());
        }
        e
    };
    let mut created = Vec::new();
    let global = match store.get_config(GLOBAL).await.map_err(store_err)? {
        Some(g) => g,
        None => {
            let g = with_old(&model::defaults());
            store.put_config(GLOBAL, &g).await.map_err(store_err)?;
            created.push(GLOBAL.to_owned());
            g
        }
    };
    if store.get_config(server).await.map_err(store_err)?.is_none() {
        let e = with_old(&global);
        if let Some(x) = model::cross_field(&model::effective(&e)).first() {
            return Err(format!(
                "upgrading {}: the old values over the global entry break a rule: {}",
                path.display(),
                x.message
            ));
        }
        store.put_config(server, &e).await.map_err(store_err)?;
        created.push(server.to_owned());
    }
    for name in &created {
        let entry = AuditEntry {
            at: chrono::Utc::now(),
            actor: "upgrade".into(),
            action: "config.upgrade".into(),
            target: name.clone(),
            old: None,
            new: Some(Value::from(format!(
                "{} leaves from {}",
                old.len(),
                path.display()
            ))),
        };
        if let Err(e) = store.append_audit(&entry).await {
            tracing::warn!("the audit log lost the upgrade entry: {e}");
        }
    }
    let original = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let backup = keep_backup(path, &original).map_err(|e| e.to_string())?;
    file.save(path).map_err(|e| e.to_string())?;
    tracing::info!(
        file = %path.display(),
        backup = %backup.display(),
        leaves = old.len(),
        created = ?created,
        "upgraded the old-format local file: settings moved into the store, the file keeps only \
         mongodb_uri, server_name and secret_key"
    );
    Ok(Upgraded { created, backup })
}

/// Writes `bytes` to the first free backup name beside `path` (mode 0600: it holds secrets);
/// never replaces an existing file.
fn keep_backup(path: &Path, bytes: &[u8]) -> Result<PathBuf, LocalError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "csps.toml".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let candidates = std::iter::once(format!("{name}.bak"))
        .chain(std::iter::once(format!("{name}.bak.{stamp}")))
        .chain((1..1000).map(|n| format!("{name}.bak.{stamp}-{n}")));
    for candidate in candidates {
        let to = path.with_file_name(candidate);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(&to) {
            Ok(mut f) => {
                let io = |source| LocalError::Io {
                    path: to.clone(),
                    source,
                };
                f.write_all(bytes).map_err(io)?;
                f.sync_all().map_err(io)?;
                return Ok(to);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(LocalError::Io { path: to, source }),
        }
    }
    Err(LocalError::Invalid {
        path: path.to_owned(),
        message: "no free backup name".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> LocalFile {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn old_values_are_checked_and_named() {
        let ok = file(
            "server_name = \"a\"\n[Data.System]\nMinRtpPort = 21000\n\
             [Data.SipConfig]\nTrustedIps = [\"10.0.0.1/8\"]\nSrtp = \"Required\"\n",
        );
        let v = parse(&ok).expect("valid").expect("old format");
        assert_eq!(v.len(), 3);
        assert!(v.iter().any(|(l, v)| l.path == "Data.SipConfig.TrustedIps"
            && v == &serde_json::json!(["10.0.0.0/8"])));
        assert!(matches!(parse(&file("server_name = \"a\"\n")), Ok(None)));
        for (text, key) in [
            ("[Data.System]\nMinRtpPort = 80\n", "Data.System.MinRtpPort"),
            (
                "[Data.SipConfig]\nSrtp = \"Sometimes\"\n",
                "Data.SipConfig.Srtp",
            ),
            (
                "[Data.SipConfig]\nTrustedIps = [\"nope\"]\n",
                "Data.SipConfig.TrustedIps",
            ),
            ("[Data.SipConfig]\nBogus = 1\n", "Data.SipConfig.Bogus"),
            ("[Data.Nope]\nX = 1\n", "Data.Nope"),
            (
                "[Data.System]\nMinRtpPort = 30000\nMaxRtpPort = 25000\n",
                "Data.System.MinRtpPort",
            ),
        ] {
            let err = parse(&file(text)).expect_err(text);
            assert!(err.contains(key), "{err} should name {key}");
        }
        assert!(toml::from_str::<LocalFile>("Other = 1\n").is_err());
    }

    #[test]
    fn a_backup_never_replaces_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("csps.toml");
        let first = keep_backup(&path, b"one").expect("first");
        let second = keep_backup(&path, b"two").expect("second");
        let third = keep_backup(&path, b"three").expect("third");
        assert_eq!(first, dir.path().join("csps.toml.bak"));
        assert_ne!(second, first);
        assert_ne!(third, second);
        assert_eq!(std::fs::read(&first).expect("read"), b"one");
        assert_eq!(std::fs::read(&second).expect("read"), b"two");
        assert_eq!(std::fs::read(&third).expect("read"), b"three");
    }
}
