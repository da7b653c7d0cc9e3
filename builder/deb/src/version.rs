//! Debian package versions (`[epoch:]upstream[-revision]`) and their ordering
//! as defined by Debian policy 5.6.12 and implemented by dpkg.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Why a version string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The string was empty.
    #[error("version is empty")]
    Empty,
    /// The part before the first `:` is not a non-negative number that fits in 32 bits.
    #[error("version {version:?}: epoch {epoch:?} is not a number")]
    InvalidEpoch {
        /// The whole version string.
        version: String,
        /// The rejected epoch.
        epoch: String,
    },
    /// Nothing between the epoch and the revision.
    #[error("version {version:?}: upstream version is empty")]
    EmptyUpstream {
        /// The whole version string.
        version: String,
    },
    /// A trailing `-` with no revision after it.
    #[error("version {version:?}: revision after the last '-' is empty")]
    EmptyRevision {
        /// The whole version string.
        version: String,
    },
    /// A character policy does not allow in that part of the version.
    #[error("version {version:?}: character {character:?} is not allowed in the {part}")]
    InvalidCharacter {
        /// The whole version string.
        version: String,
        /// The rejected character.
        character: char,
        /// `upstream version` or `revision`.
        part: &'static str,
    },
}

/// A parsed Debian version.
///
/// Equality follows the ordering, not the spelling: `1.0`, `0:1.0`, `1.0-0`
/// and `1.00` are all equal, as dpkg considers them. `Display` reproduces the
/// spelling that was parsed.
#[derive(Debug, Clone)]
pub struct DebVersion {
    /// Kept as written so `0:1.0` prints back as `0:1.0`.
    epoch: Option<u32>,
    upstream: String,
    revision: Option<String>,
}

impl DebVersion {
    /// The epoch; a missing epoch is 0.
    pub fn epoch(&self) -> u32 {
        self.epoch.unwrap_or(0)
    }

    /// The upstream part, between the epoch and the last `-`.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The Debian revision after the last `-`, if any (absent compares like `0`).
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }
}

impl FromStr for DebVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(VersionError::Empty);
        }
        let (epoch, rest) = match s.split_once(':') {
            Some((epoch, rest)) => {
                let parsed = epoch
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| epoch.parse::<u32>().ok())
                    .flatten()
                    .ok_or_else(|| VersionError::InvalidEpoch {
                        version: s.to_owned(),
                        epoch: epoch.to_owned(),
                    })?;
                (Some(parsed), rest)
            }
            None => (None, s),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((upstream, revision)) => (upstream, Some(revision)),
            None => (rest, None),
        };
        if revision.is_some_and(str::is_empty) {
            return Err(VersionError::EmptyRevision {
                version: s.to_owned(),
            });
        }
        if upstream.is_empty() {
            return Err(VersionError::EmptyUpstream {
                version: s.to_owned(),
            });
        }
        check_chars(s, upstream, "upstream version", |c| {
            matches!(c, '.' | '+' | '~' | '-')
        })?;
        if let Some(revision) = revision {
            check_chars(s, revision, "revision", |c| matches!(c, '.' | '+' | '~'))?;
        }
        Ok(DebVersion {
            epoch,
            upstream: upstream.to_owned(),
            revision: revision.map(str::to_owned),
        })
    }
}

/// Policy allows only ASCII alphanumerics plus a few punctuation marks per part;
/// anything else (spaces, `_`, a second `:`) is a malformed version.
fn check_chars(
    version: &str,
    part: &str,
    part_name: &'static str,
    punctuation: impl Fn(char) -> bool,
) -> Result<(), VersionError> {
    match part
        .chars()
        .find(|&c| !c.is_ascii_alphanumeric() && !punctuation(c))
    {
        Some(character) => Err(VersionError::InvalidCharacter {
            version: version.to_owned(),
            character,
            part: part_name,
        }),
        None => Ok(()),
    }
}

impl fmt::Display for DebVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(epoch) = self.epoch {
            write!(f, "{epoch}:")?;
        }
        f.write_str(&self.upstream)?;
        if let Some(revision) = &self.revision {
            write!(f, "-{revision}")?;
        }
        Ok(())
    }
}

impl Ord for DebVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch()
            .cmp(&other.epoch())
            .then_with(|| compare_part(&self.upstream, &other.upstream))
            .then_with(|| {
                compare_part(
                    self.revision.as_deref().unwrap_or(""),
                    other.revision.as_deref().unwrap_or(""),
                )
            })
    }
}

impl PartialOrd for DebVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for DebVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for DebVersion {}

impl serde::Serialize for DebVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DebVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Sort weight of one character in a non-digit run (dpkg's `order()`): `~`
/// below the end of the string, the end below letters, letters below all
/// other characters. Digits never reach here except as the end of a run.
fn order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
        None => 0,
    }
}

/// dpkg's `verrevcmp`: alternating non-digit runs (compared by `order`) and
/// digit runs (compared numerically, without overflow for long runs).
fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> DebVersion {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn assert_order(a: &str, b: &str, expected: Ordering) {
        assert_eq!(v(a).cmp(&v(b)), expected, "{a} vs {b}");
        assert_eq!(v(b).cmp(&v(a)), expected.reverse(), "{b} vs {a}");
    }

    #[test]
    fn parses_parts() {
        let x = v("1:2.30-4+b1");
        assert_eq!(
            (x.epoch(), x.upstream(), x.revision()),
            (1, "2.30", Some("4+b1"))
        );
        let x = v("2.30");
        assert_eq!((x.epoch(), x.upstream(), x.revision()), (0, "2.30", None));
        // The revision starts after the last hyphen; earlier ones belong upstream.
        let x = v("1.2-beta-3");
        assert_eq!((x.upstream(), x.revision()), ("1.2-beta", Some("3")));
    }

    #[test]
    fn display_round_trips_the_spelling() {
        for s in ["1:2.3-4", "0:1.0", "1.0-0", "1.2~rc1+dfsg-3+deb12u1", "7"] {
            assert_eq!(v(s).to_string(), s);
        }
    }

    #[test]
    fn policy_and_dpkg_orderings() {
        use Ordering::*;
        let cases = [
            // dpkg t-version: equality.
            ("0:0-0", "0:0-0", Equal),
            ("0:0.0-0", "0:0.0-0", Equal),
            ("1.0", "0:1.0", Equal),
            ("1.0", "1.0-0", Equal),
            ("1.0", "1.00", Equal),
            ("1.001", "1.1", Equal),
            // Epoch beats everything.
            ("0:0-0", "1:0-0", Less),
            ("1:0.1", "2.0", Greater),
            ("2:1.0", "1:9.9", Greater),
            // Upstream and revision differences.
            ("1:0-0", "1:1-0", Less),
            ("0:0-0", "0:0-1", Less),
            ("1.0-1", "1.0-1+b1", Less),
            ("1.0-1", "1.0-2", Less),
            ("1.0-9", "1.0-10", Less),
            ("1.9", "1.10", Less),
            ("1.2.3", "1.2.3a", Less),
            ("7.6", "7.6p2", Less),
            // Tilde sorts before everything, even the end of the string.
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~~a", Less),
            ("1.0~~a", "1.0~", Less),
            ("1.0~", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0-1~bpo12+1", "1.0-1", Less),
            // Letters sort before non-letters.
            ("1.0a", "1.0+", Less),
            ("1.0a", "1.0.", Less),
            ("1.0+dfsg", "1.0.1", Less),
            ("1.0+dfsg", "1.0", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0Z", "1.0a", Less),
            // A non-digit run is longer than an empty one; digits still compare numerically.
            ("a", "1", Greater),
            ("2.30-7+deb12u1", "2.30-7", Greater),
            ("252.38-1~deb12u1", "252.39-1~deb12u1", Less),
            // Numeric runs longer than any integer type.
            (
                "123456789012345678901234567890",
                "123456789012345678901234567891",
                Less,
            ),
        ];
        for (a, b, expected) in cases {
            assert_order(a, b, expected);
        }
    }

    #[test]
    fn tilde_chain_on_raw_parts() {
        // Policy's own example, which includes the empty string that no whole
        // version can spell.
        let chain = ["~~", "~~a", "~", "", "a"];
        for pair in chain.windows(2) {
            assert_eq!(compare_part(pair[0], pair[1]), Ordering::Less, "{pair:?}");
        }
    }

    #[test]
    fn sorting_is_total_and_consistent() {
        let mut versions: Vec<_> = ["1.0", "1.0~rc1", "1:0.1", "1.0-1", "1.0+b1", "0.9"]
            .into_iter()
            .map(v)
            .collect();
        versions.sort();
        let sorted: Vec<_> = versions.iter().map(ToString::to_string).collect();
        assert_eq!(
            sorted,
            ["0.9", "1.0~rc1", "1.0", "1.0-1", "1.0+b1", "1:0.1"]
        );
    }

    #[test]
    fn invalid_versions_are_errors() {
        let cases = [
            ("", VersionError::Empty),
            (
                ":1.0",
                VersionError::InvalidEpoch {
                    version: ":1.0".into(),
                    epoch: String::new(),
                },
            ),
            (
                "a:1.0",
                VersionError::InvalidEpoch {
                    version: "a:1.0".into(),
                    epoch: "a".into(),
                },
            ),
            (
                "-1:1.0",
                VersionError::InvalidEpoch {
                    version: "-1:1.0".into(),
                    epoch: "-1".into(),
                },
            ),
            (
                "99999999999:1",
                VersionError::InvalidEpoch {
                    version: "99999999999:1".into(),
                    epoch: "99999999999".into(),
                },
            ),
            (
                "1:",
                VersionError::EmptyUpstream {
                    version: "1:".into(),
                },
            ),
            (
                "-1",
                VersionError::EmptyUpstream {
                    version: "-1".into(),
                },
            ),
            (
                "1.0-",
                VersionError::EmptyRevision {
                    version: "1.0-".into(),
                },
            ),
            (
                "1.0 beta",
                VersionError::InvalidCharacter {
                    version: "1.0 beta".into(),
                    character: ' ',
                    part: "upstream version",
                },
            ),
            (
                "1:1:1.0",
                VersionError::InvalidCharacter {
                    version: "1:1:1.0".into(),
                    character: ':',
                    part: "upstream version",
                },
            ),
            (
                "1.0-1_2",
                VersionError::InvalidCharacter {
                    version: "1.0-1_2".into(),
                    character: '_',
                    part: "revision",
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                input.parse::<DebVersion>().unwrap_err(),
                expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn serde_uses_the_version_string() {
        let json = serde_json::to_string(&v("1:2.3-4")).unwrap();
        assert_eq!(json, "\"1:2.3-4\"");
        let back: DebVersion = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_string(), "1:2.3-4");
        assert!(serde_json::from_str::<DebVersion>("\"1.0-\"").is_err());
    }
}
