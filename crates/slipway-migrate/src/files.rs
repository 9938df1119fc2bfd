//! The migration directory: `V{n}__{description}.sql` applies version `n`,
//! `U{n}__{description}.sql` undoes it. Other files are ignored.
//!
//! The checksum is the sha256 of the V file's bytes exactly as stored (no line-ending
//! normalization: what was applied is what is compared).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One script file.
#[derive(Debug, Clone, Serialize)]
pub struct Script {
    pub path: PathBuf,
    #[serde(skip)]
    pub sql: String,
    /// sha256 of the file bytes, lowercase hex.
    pub checksum: String,
}

/// One version: its apply script and, if reversible, its undo script.
#[derive(Debug, Clone, Serialize)]
pub struct Migration {
    pub version: i64,
    pub description: String,
    pub apply: Script,
    pub undo: Option<Script>,
}

impl Migration {
    /// A migration without a `U` script can only roll forward.
    pub fn reversible(&self) -> bool {
        self.undo.is_some()
    }
}

/// All migrations of a directory, ordered by version.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationSet {
    pub dir: PathBuf,
    pub migrations: Vec<Migration>,
}

impl MigrationSet {
    /// Read and validate a directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadMigrations {
            dir: dir.to_owned(),
            reason,
        };
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
            what: "read migration directory".into(),
            path: dir.to_owned(),
            source,
        })?;
        let mut applies: BTreeMap<i64, (String, Script)> = BTreeMap::new();
        let mut undos: BTreeMap<i64, Script> = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                what: "read migration directory".into(),
                path: dir.to_owned(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(parsed) = parse_name(&name) else {
                continue;
            };
            let (kind, version, description) = parsed.map_err(bad)?;
            let path = entry.path();
            let bytes = std::fs::read(&path).map_err(|source| Error::Io {
                what: "read migration".into(),
                path: path.clone(),
                source,
            })?;
            let checksum = hex::encode(Sha256::digest(&bytes));
            let sql =
                String::from_utf8(bytes).map_err(|_| bad(format!("`{name}` is not UTF-8 text")))?;
            let script = Script {
                path,
                sql,
                checksum,
            };
            let duplicate = match kind {
                'V' => applies.insert(version, (description, script)).is_some(),
                _ => undos.insert(version, script).is_some(),
            };
            if duplicate {
                return Err(bad(format!(
                    "two {kind}{version}__*.sql files; keep one per version"
                )));
            }
        }
        if let Some((v, s)) = undos.iter().find(|(v, _)| !applies.contains_key(v)) {
            return Err(bad(format!(
                "`{}` undoes V{v} but there is no V{v}__*.sql",
                s.path.display()
            )));
        }
        let migrations = applies
            .into_iter()
            .map(|(version, (description, apply))| Migration {
                version,
                description,
                apply,
                undo: undos.remove(&version),
            })
            .collect();
        Ok(Self {
            dir: dir.to_owned(),
            migrations,
        })
    }

    /// The migration with this version.
    pub fn get(&self, version: i64) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.version == version)
    }

    /// `sha256:<hex>` naming exactly these files: every version with the checksums of its
    /// apply and undo scripts, in version order. A dry run recorded under this digest
    /// proves nothing about a set where any script changed, was added or removed.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for m in &self.migrations {
            let undo = m.undo.as_ref().map_or("-", |u| u.checksum.as_str());
            h.update(format!("V{} {} U {}\n", m.version, m.apply.checksum, undo));
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// Versions without an undo script (roll-forward-only).
    pub fn irreversible(&self) -> Vec<i64> {
        self.migrations
            .iter()
            .filter(|m| !m.reversible())
            .map(|m| m.version)
            .collect()
    }
}

/// `Some(Ok((kind, version, description)))` for a migration file name, `None` for files that
/// are not migrations, `Some(Err)` for names that look like migrations but are malformed.
fn parse_name(name: &str) -> Option<Result<(char, i64, String), String>> {
    let stem = name.strip_suffix(".sql")?;
    let kind = stem.chars().next().filter(|c| *c == 'V' || *c == 'U')?;
    let rest = &stem[1..];
    if !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let Some((num, description)) = rest.split_once("__") else {
        return Some(Err(format!(
            "`{name}`: expected {kind}{{n}}__{{description}}.sql (two underscores)"
        )));
    };
    let version = match num.parse::<i64>() {
        Ok(v) if v > 0 => v,
        _ => {
            return Some(Err(format!(
                "`{name}`: the version `{num}` must be a positive integer"
            )));
        }
    };
    Some(Ok((kind, version, description.replace('_', " "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse_name("V12__add_orders.sql"),
            Some(Ok(('V', 12, "add orders".to_owned())))
        );
        assert!(parse_name("README.md").is_none());
        assert!(parse_name("Vacuum.sql").is_none());
        assert!(matches!(parse_name("V1_add.sql"), Some(Err(_))));
        assert!(matches!(parse_name("U0__x.sql"), Some(Err(_))));
    }

    #[test]
    fn digest_changes_with_any_script() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("V1__a.sql"), "CREATE TABLE a (x INT);").unwrap();
        let d1 = MigrationSet::load(dir.path()).unwrap().digest();
        std::fs::write(dir.path().join("U1__a.sql"), "DROP TABLE a;").unwrap();
        let d2 = MigrationSet::load(dir.path()).unwrap().digest();
        std::fs::write(dir.path().join("U1__a.sql"), "DROP TABLE a ;").unwrap();
        let d3 = MigrationSet::load(dir.path()).unwrap().digest();
        std::fs::write(dir.path().join("notes.txt"), "not a migration").unwrap();
        let d4 = MigrationSet::load(dir.path()).unwrap().digest();
        assert!(d1.starts_with("sha256:") && d1.len() == 71, "{d1}");
        assert_ne!(d1, d2);
        assert_ne!(d2, d3);
        assert_eq!(d3, d4, "other files do not count");
    }
}
