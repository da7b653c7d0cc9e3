//! Finds the Debian mirror the host already uses, from its apt sources, so a
//! build needs no `--mirror` on a configured Debian machine.
//!
//! Reads the files apt reads, in apt's order: `etc/apt/sources.list`
//! (one-line format), then `etc/apt/sources.list.d/*.list` (one-line) and
//! `*.sources` (deb822) sorted by name. Other names (`.disabled`,
//! `.save`, `.disabled-by-farm`) are ignored, as apt ignores them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use applbuild_deb::deb822::{self, Deb822Error};

/// Why no mirror could be taken from the apt configuration.
#[derive(Debug, thiserror::Error)]
pub enum AptSourcesError {
    /// A sources file or folder exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// A one-line entry is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    Syntax {
        /// The sources file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A `.sources` file is not valid deb822.
    #[error("{}: {source}", path.display())]
    Deb822 {
        /// The sources file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: Deb822Error,
    },
    /// No enabled `deb` entry serves the suite with component `main`.
    #[error(
        "no apt source serves suite {suite:?} with component main over http, https or file (read: {}); pass --mirror URL",
        if files.is_empty() { "no sources files found".to_string() } else { files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ") }
    )]
    NotFound {
        /// The suite asked for.
        suite: String,
        /// Every sources file that was read.
        files: Vec<PathBuf>,
    },
}

/// The mirror chosen and where it was configured, so messages can say why
/// this mirror was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorChoice {
    /// Base URI of the archive, without a trailing slash.
    pub uri: String,
    /// The sources file that names it.
    pub file: PathBuf,
}

/// One `deb`/`deb-src` entry, whatever its file format.
struct Entry {
    types: Vec<String>,
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    enabled: bool,
}

impl Entry {
    /// The first URI of this entry that serves `suite`'s `main` binaries and
    /// that applbuild can fetch (apt-only methods like `cdrom:` or
    /// `mirror+http:` are passed over).
    fn mirror_for(&self, suite: &str) -> Option<String> {
        let serves = self.enabled
            && self.types.iter().any(|t| t == "deb")
            && self.suites.iter().any(|s| s == suite)
            && self.components.iter().any(|c| c == "main");
        if !serves {
            return None;
        }
        self.uris
            .iter()
            .find(|uri| {
                ["http://", "https://", "file:"]
                    .iter()
                    .any(|scheme| uri.starts_with(scheme))
            })
            .map(|uri| uri.trim_end_matches('/').to_string())
    }
}

/// Returns the first enabled `deb` URI under `apt_root` (normally `/`) that
/// serves `suite` with component `main`.
pub fn host_mirror(apt_root: &Path, suite: &str) -> Result<MirrorChoice, AptSourcesError> {
    let mut files_read = Vec::new();
    for (path, format) in source_files(apt_root)? {
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(AptSourcesError::Read { path, source }),
        };
        let entries = match format {
            Format::OneLine => parse_one_line(&text, &path)?,
            Format::Deb822 => parse_deb822(&text, &path)?,
        };
        if let Some(uri) = entries.iter().find_map(|entry| entry.mirror_for(suite)) {
            return Ok(MirrorChoice { uri, file: path });
        }
        files_read.push(path);
    }
    Err(AptSourcesError::NotFound {
        suite: suite.to_string(),
        files: files_read,
    })
}

#[derive(Clone, Copy)]
enum Format {
    OneLine,
    Deb822,
}

/// The sources files apt would read, in its order.
fn source_files(apt_root: &Path) -> Result<Vec<(PathBuf, Format)>, AptSourcesError> {
    let apt_dir = apt_root.join("etc/apt");
    let mut files = vec![(apt_dir.join("sources.list"), Format::OneLine)];
    let parts = apt_dir.join("sources.list.d");
    let read_error = |source| AptSourcesError::Read {
        path: parts.clone(),
        source,
    };
    let listing = match fs::read_dir(&parts) {
        Ok(listing) => listing,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(error) => return Err(read_error(error)),
    };
    let mut names = Vec::new();
    for entry in listing {
        let name = entry.map_err(read_error)?.file_name();
        // apt ignores names with characters outside this set (editor backups etc.).
        let Some(name) = name.to_str().filter(|name| {
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        }) else {
            continue;
        };
        let format = if name.ends_with(".list") {
            Format::OneLine
        } else if name.ends_with(".sources") {
            Format::Deb822
        } else {
            continue;
        };
        names.push((name.to_string(), format));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    files.extend(
        names
            .into_iter()
            .map(|(name, format)| (parts.join(name), format)),
    );
    Ok(files)
}

/// Parses `deb [ options ] uri suite [component...]` lines; `#` starts a comment.
fn parse_one_line(text: &str, path: &Path) -> Result<Vec<Entry>, AptSourcesError> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let syntax = |reason: &str| AptSourcesError::Syntax {
            path: path.to_path_buf(),
            line: index + 1,
            reason: reason.to_string(),
        };
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (kind, rest) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| syntax("expected `deb URI SUITE [COMPONENT...]`"))?;
        let mut rest = rest.trim_start();
        if let Some(options) = rest.strip_prefix('[') {
            let (_, after) = options
                .split_once(']')
                .ok_or_else(|| syntax("unclosed `[` option list"))?;
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            return Err(syntax("expected `deb URI SUITE [COMPONENT...]`"));
        };
        entries.push(Entry {
            types: vec![kind.to_string()],
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            enabled: true,
        });
    }
    Ok(entries)
}

/// Parses deb822 `.sources` stanzas (`Types`, `URIs`, `Suites`,
/// `Components`, `Enabled`).
fn parse_deb822(text: &str, path: &Path) -> Result<Vec<Entry>, AptSourcesError> {
    let stanzas = deb822::parse_stanzas(text).map_err(|source| AptSourcesError::Deb822 {
        path: path.to_path_buf(),
        source,
    })?;
    let words = |value: Option<&str>| -> Vec<String> {
        value
            .map(|value| value.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    Ok(stanzas
        .iter()
        .map(|stanza| Entry {
            types: words(stanza.get("Types")),
            uris: words(stanza.get("URIs")),
            suites: words(stanza.get("Suites")),
            components: words(stanza.get("Components")),
            enabled: !stanza
                .get("Enabled")
                .is_some_and(|value| value.eq_ignore_ascii_case("no")),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = root.path().join("etc/apt").join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn one_line_sources_list_with_options_and_comments() {
        let root = root_with(&[(
            "sources.list",
            "# deb http://mirror.invalid/old bookworm main\n\
             deb-src http://mirror.invalid/src bookworm main\n\
             deb http://mirror.invalid/contrib-only bookworm contrib\n\
             deb [ arch=amd64 signed-by=/usr/share/keyrings/x.gpg ] http://mirror.invalid/debian/ bookworm main contrib # trailing\n",
        )]);
        let choice = host_mirror(root.path(), "bookworm").unwrap();
        assert_eq!(choice.uri, "http://mirror.invalid/debian");
        assert_eq!(choice.file, root.path().join("etc/apt/sources.list"));
    }

    #[test]
    fn deb822_sources_with_several_uris_and_suites() {
        let root = root_with(&[(
            "sources.list.d/debian.sources",
            "Types: deb\n# comment\nURIs: http://disabled.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n\
             Types: deb-src deb\nURIs: cdrom:[Debian]/ https://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n",
        )]);
        let choice = host_mirror(root.path(), "bookworm-updates").unwrap();
        assert_eq!(choice.uri, "https://mirror.invalid/debian");
        assert!(choice.file.ends_with("sources.list.d/debian.sources"));
    }

    #[test]
    fn sources_list_comes_first_then_parts_by_name() {
        let root = root_with(&[
            (
                "sources.list",
                "deb http://first.invalid/debian trixie main\n",
            ),
            (
                "sources.list.d/b.list",
                "deb http://b.invalid/debian bookworm main\n",
            ),
            (
                "sources.list.d/a.sources",
                "Types: deb\nURIs: http://a.invalid/debian\nSuites: bookworm\nComponents: main\n",
            ),
        ]);
        assert_eq!(
            host_mirror(root.path(), "bookworm").unwrap().uri,
            "http://a.invalid/debian"
        );
        assert_eq!(
            host_mirror(root.path(), "trixie").unwrap().uri,
            "http://first.invalid/debian"
        );
    }

    #[test]
    fn files_with_other_endings_are_ignored() {
        let root = root_with(&[
            (
                "sources.list.d/farm.list.disabled-by-farm",
                "deb http://farm.invalid/debian bookworm main\n",
            ),
            (
                "sources.list.d/old.sources.save",
                "Types: deb\nURIs: http://old.invalid/\nSuites: bookworm\nComponents: main\n",
            ),
            (
                "sources.list.d/local.list",
                "deb file:///srv/mirror/debian bookworm main\n",
            ),
        ]);
        let choice = host_mirror(root.path(), "bookworm").unwrap();
        assert_eq!(choice.uri, "file:///srv/mirror/debian");
    }

    #[test]
    fn nothing_found_lists_files_and_suggests_the_flag() {
        let root = root_with(&[
            (
                "sources.list.d/other.list",
                "deb http://mirror.invalid/debian trixie main\n",
            ),
            (
                "sources.list.d/x.list.disabled-by-farm",
                "deb http://mirror.invalid/debian bookworm main\n",
            ),
        ]);
        let error = host_mirror(root.path(), "bookworm").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("other.list"), "{message}");
        assert!(!message.contains("disabled-by-farm"), "{message}");
        assert!(message.contains("--mirror URL"), "{message}");

        let empty = tempfile::tempdir().unwrap();
        let message = host_mirror(empty.path(), "bookworm")
            .unwrap_err()
            .to_string();
        assert!(message.contains("no sources files found"), "{message}");
    }

    #[test]
    fn malformed_lines_are_reported_with_file_and_line() {
        let root = root_with(&[(
            "sources.list",
            "deb http://mirror.invalid/debian bookworm main\ndeb [arch=amd64 http://x\n",
        )]);
        let error = host_mirror(root.path(), "trixie").unwrap_err();
        assert!(
            error.to_string().contains("sources.list:2: unclosed"),
            "{error}"
        );
    }
}
