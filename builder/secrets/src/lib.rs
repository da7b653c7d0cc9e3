//! The secrets store: the values profiles refer to by name (CHAP secrets),
//! kept out of the project in one TOML file per cluster,
//! `$XDG_CONFIG_HOME/applbuild/secrets/<cluster>.toml` (else
//! `$HOME/.config/applbuild/secrets/<cluster>.toml`).
//!
//! The file maps names to values (`iscsi-chap = "..."`). It must be
//! private to its owner (mode 0600): a file that group or others can read
//! is refused. Missing names get random values; the file is written
//! atomically with mode 0600. Nothing here prints a value: [`Store`]'s
//! `Debug` shows the names only.

pub mod password;
pub mod ssh;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;

/// Length of a generated value: 24 letters and digits, about 143 bits, well
/// above the 12 bytes RFC 3720 requires of a CHAP secret and below every
/// limit of tgt and open-iscsi.
pub const GENERATED_LEN: usize = 24;

/// Shortest value accepted (RFC 3720, 8.2.1: CHAP secrets of at least 12 bytes).
pub const MIN_LEN: usize = 12;

/// Longest value accepted (open-iscsi and tgt keep at most 255 bytes).
pub const MAX_LEN: usize = 255;

/// Punctuation a value may hold besides letters and digits: nothing that
/// a configuration file or a shell would read as a separator or a quote.
const PUNCTUATION: &str = "-_.~+/=@%:,";

/// What can go wrong with a secrets file.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set.
    #[error(
        "cannot find the secrets store: neither XDG_CONFIG_HOME nor HOME is set (give --secrets FILE)"
    )]
    NoConfigDir,
    /// The cluster name cannot be a file name.
    #[error(
        "cluster name {0:?}: only letters, digits, `-`, `_` and `.`, not starting with `.` or `-`"
    )]
    BadCluster(String),
    /// The file could not be read or inspected.
    #[error("cannot read secrets file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error(
        "secrets file {path} has mode {mode:04o}: group and others must have no access to it; \
         run `chmod 600 {path}`"
    )]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a regular file.
    #[error("secrets file {0} is not a regular file")]
    NotAFile(PathBuf),
    /// The file is not TOML of names and strings.
    #[error("secrets file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a value).
        message: String,
    },
    /// The file could not be written.
    #[error("cannot write secrets file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The secrets of one cluster, read from (and written to) one file.
pub struct Store {
    path: PathBuf,
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Store {
    /// An empty store that [`Store::save`] writes to `path`.
    pub fn empty(path: &Path) -> Self {
        Store {
            path: path.to_path_buf(),
            values: BTreeMap::new(),
        }
    }

    /// Reads `path`, which must exist and be private to its owner.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let read = |source| SecretsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read)?;
        if !metadata.is_file() {
            return Err(SecretsError::NotAFile(path.to_path_buf()));
        }
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::NotPrivate {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let values = parse(path, &text)?;
        Ok(Store {
            path: path.to_path_buf(),
            values,
        })
    }

    /// Reads `path` like [`Store::load`]; a file that does not exist yet is
    /// an empty store.
    pub fn open(path: &Path) -> Result<Self, SecretsError> {
        match Store::load(path) {
            Err(SecretsError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(Store::empty(path))
            }
            other => other,
        }
    }

    /// The file this store is read from and written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The names the store holds, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Gives each of `names` that the store lacks a random value; existing
    /// values stay. Returns the names added, sorted.
    pub fn add_missing<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut added = Vec::new();
        for name in names {
            if !self.values.contains_key(name) {
                self.values.insert(name.to_string(), generate());
                added.push(name.to_string());
            }
        }
        added.sort();
        added.dedup();
        added
    }

    /// Writes the store atomically (a temporary file in the same folder,
    /// then a rename) with mode 0600, creating its folder with mode 0700.
    pub fn save(&self) -> Result<(), SecretsError> {
        let write = |source| SecretsError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write)?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(write)?;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write)?;
        file.write_all(self.text().as_bytes()).map_err(write)?;
        file.as_file().sync_all().map_err(write)?;
        file.persist(&self.path)
            .map_err(|error| write(error.error))?;
        Ok(())
    }

    /// The file's text: a header, then one `name = "value"` line per secret.
    fn text(&self) -> String {
        let mut text = String::from(
            "# applbuild secrets: values that profiles refer to by name\n\
             # (`secret = { name = \"NAME\" }`). Keep this file private (mode 0600)\n\
             # and out of every repository; see docs/security.md.\n",
        );
        for (name, value) in &self.values {
            text.push_str(&format!(
                "{} = {}\n",
                toml_key(name),
                toml::Value::String(value.clone())
            ));
        }
        text
    }
}

/// The store's default file for `cluster`:
/// `$XDG_CONFIG_HOME/applbuild/secrets/<cluster>.toml`, else
/// `$HOME/.config/applbuild/secrets/<cluster>.toml`.
pub fn default_path(cluster: &str) -> Result<PathBuf, SecretsError> {
    path_from(
        cluster,
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

fn path_from(
    cluster: &str,
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, SecretsError> {
    if !is_valid_name(cluster) {
        return Err(SecretsError::BadCluster(cluster.into()));
    }
    let config = xdg_config_home
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            home.filter(|dir| !dir.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })
        .ok_or(SecretsError::NoConfigDir)?;
    Ok(config
        .join("applbuild")
        .join("secrets")
        .join(format!("{cluster}.toml")))
}

/// Whether `name` can name a secret or a cluster: letters, digits, `-`,
/// `_` and `.`, not starting with `.` or `-`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// What replaces the value of secret `name` wherever it would be shown.
pub fn redacted(name: &str) -> String {
    format!("<secret {name}>")
}

/// A fresh random value: [`GENERATED_LEN`] letters and digits from the
/// operating system's random source.
pub fn generate() -> String {
    Alphanumeric.sample_string(&mut OsRng, GENERATED_LEN)
}

/// Why `value` cannot be a secret's value, if it cannot.
fn value_refusal(value: &str) -> Option<String> {
    if value.len() < MIN_LEN || value.len() > MAX_LEN {
        return Some(format!(
            "is {} bytes long; it must have {MIN_LEN} to {MAX_LEN} (RFC 3720 asks for at least {MIN_LEN})",
            value.len()
        ));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || PUNCTUATION.contains(c))
    {
        return Some(format!(
            "has a character other than letters, digits and `{PUNCTUATION}` \
             (the configuration files it goes into would misread it)"
        ));
    }
    None
}

fn parse(path: &Path, text: &str) -> Result<BTreeMap<String, String>, SecretsError> {
    let invalid = |message: String| SecretsError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    // toml's messages quote the offending line, which may hold a value:
    // only the position is kept.
    let table = toml::from_str::<toml::Table>(text).map_err(|error| {
        let offset = error.span().map_or(0, |span| span.start);
        let line = text[..offset.min(text.len())].matches('\n').count() + 1;
        invalid(format!("line {line}: not valid TOML"))
    })?;
    let mut values = BTreeMap::new();
    for (name, value) in table {
        if !is_valid_name(&name) {
            return Err(invalid(format!(
                "name {name:?}: only letters, digits, `-`, `_` and `.`"
            )));
        }
        let toml::Value::String(value) = value else {
            return Err(invalid(format!("`{name}` must be a string")));
        };
        if let Some(reason) = value_refusal(&value) {
            return Err(invalid(format!("the value of `{name}` {reason}")));
        }
        values.insert(name, value);
    }
    Ok(values)
}

fn toml_key(name: &str) -> String {
    if name.contains('.') {
        toml::Value::String(name.to_string()).to_string()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_store_gets_random_values_and_is_written_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets/default.toml");
        let mut store = Store::open(&path).unwrap();
        assert!(!store.exists());
        let added = store.add_missing(["iscsi-chap", "iscsi-chap-mutual", "iscsi-chap"]);
        assert_eq!(added, ["iscsi-chap", "iscsi-chap-mutual"]);
        store.save().unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);

        let loaded = Store::load(&path).unwrap();
        let one = loaded.get("iscsi-chap").unwrap();
        let two = loaded.get("iscsi-chap-mutual").unwrap();
        assert_eq!(one.len(), GENERATED_LEN);
        assert!(one.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(one, two);
    }

    #[test]
    fn adding_names_keeps_the_existing_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let mut store = Store::open(&path).unwrap();
        store.add_missing(["a"]);
        store.save().unwrap();
        let first = Store::load(&path).unwrap().get("a").unwrap().to_string();

        let mut store = Store::load(&path).unwrap();
        assert_eq!(store.add_missing(["a", "b"]), ["b"]);
        store.save().unwrap();
        let store = Store::load(&path).unwrap();
        assert_eq!(store.get("a"), Some(first.as_str()));
        assert_eq!(store.names().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_the_chmod_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "a = \"abcdefghijklmnop\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Store::load(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("0644"), "{error}");
        assert!(
            error.contains(&format!("chmod 600 {}", path.display())),
            "{error}"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Store::load(&path).unwrap().get("a"),
            Some("abcdefghijklmnop")
        );
    }

    #[test]
    fn bad_values_are_refused_without_showing_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for (text, expect) in [
            ("a = \"short\"\n", "12 to 255"),
            ("a = \"has a space in it\"\n", "other than letters"),
            ("a = 12345678901234\n", "must be a string"),
            ("a = \"unterminated-secret\n", "line 1: not valid TOML"),
        ] {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let error = Store::load(&path).unwrap_err().to_string();
            assert!(error.contains(expect), "{text}: {error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
            for value in ["short", "has a space", "unterminated-secret"] {
                assert!(!error.contains(value), "{error}");
            }
        }
    }

    #[test]
    fn debug_and_redaction_show_names_never_values() {
        let mut store = Store::empty(Path::new("x.toml"));
        store.add_missing(["iscsi-chap"]);
        let value = store.get("iscsi-chap").unwrap().to_string();
        let debug = format!("{store:?}");
        assert!(
            debug.contains("iscsi-chap") && !debug.contains(&value),
            "{debug}"
        );
        assert_eq!(redacted("iscsi-chap"), "<secret iscsi-chap>");
    }

    #[test]
    fn the_default_file_is_under_the_config_folder() {
        let xdg = Some(OsString::from("/x/config"));
        let home = Some(OsString::from("/home/u"));
        assert_eq!(
            path_from("rack7", xdg.clone(), home.clone()).unwrap(),
            Path::new("/x/config/applbuild/secrets/rack7.toml")
        );
        assert_eq!(
            path_from("rack7", None, home).unwrap(),
            Path::new("/home/u/.config/applbuild/secrets/rack7.toml")
        );
        assert!(matches!(
            path_from("rack7", None, None),
            Err(SecretsError::NoConfigDir)
        ));
        assert!(matches!(
            path_from("../etc", xdg, None),
            Err(SecretsError::BadCluster(_))
        ));
    }
}
