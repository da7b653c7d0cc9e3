//! The `Release` file of a suite (the text inside a verified `InRelease`):
//! identity (suite, codename, date) and the size and SHA256 of every index
//! file, which is what makes the indexes and so the packages trustworthy.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::deb822::{self, Deb822Error};

/// Why a Release text was not accepted; each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The text is not valid deb822.
    #[error("{file}: {source}")]
    Syntax {
        /// The Release or InRelease file (path or URL).
        file: String,
        /// The parser's complaint (with line number).
        #[source]
        source: Deb822Error,
    },
    /// A Release file is a single stanza.
    #[error("{file}: expected one stanza, found {found}")]
    StanzaCount {
        /// The Release or InRelease file (path or URL).
        file: String,
        /// How many stanzas there were.
        found: usize,
    },
    /// A field without which the file is useless is absent.
    #[error("{file}: no {field} field")]
    MissingField {
        /// The Release or InRelease file (path or URL).
        file: String,
        /// The field name.
        field: &'static str,
    },
    /// A field's value does not have the expected form.
    #[error("{file}: bad {field} value {value:?}")]
    BadValue {
        /// The Release or InRelease file (path or URL).
        file: String,
        /// The field name.
        field: &'static str,
        /// The offending text (a whole line for checksum lists).
        value: String,
    },
}

/// Size and SHA256 of one file listed in a Release file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    /// Size in bytes.
    pub size: u64,
    /// SHA256, lowercase hex.
    pub sha256: String,
}

/// The parts of a Release file applbuild uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `Codename` (e.g. `bookworm`), if given.
    pub codename: Option<String>,
    /// `Suite` (e.g. `stable`), if given.
    pub suite: Option<String>,
    /// `Date` as written, for the build manifest.
    pub date: String,
    /// `Valid-Until`: after this moment the file must not be trusted (it
    /// could be a replayed old one hiding security updates).
    pub valid_until: Option<SystemTime>,
    /// `Acquire-By-Hash: yes`: indexes are also at `by-hash/SHA256/<hex>`,
    /// which cannot change while being downloaded.
    pub acquire_by_hash: bool,
    /// `Components`, in file order.
    pub components: Vec<String>,
    /// `Architectures`, in file order.
    pub architectures: Vec<String>,
    /// The `SHA256` list: path relative to `dists/<suite>/` to size and hash.
    pub sha256: BTreeMap<String, IndexFile>,
}

impl Release {
    /// Parses the Release text; `file` (path or URL) names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ReleaseError> {
        let stanzas = deb822::parse_stanzas(text).map_err(|source| ReleaseError::Syntax {
            file: file.to_string(),
            source,
        })?;
        let [stanza] = stanzas.as_slice() else {
            return Err(ReleaseError::StanzaCount {
                file: file.to_string(),
                found: stanzas.len(),
            });
        };
        let bad = |field, value: &str| ReleaseError::BadValue {
            file: file.to_string(),
            field,
            value: value.to_string(),
        };
        let missing = |field| ReleaseError::MissingField {
            file: file.to_string(),
            field,
        };
        let words = |field| -> Vec<String> {
            stanza
                .get(field)
                .map(|value| value.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };

        let date = stanza
            .get("Date")
            .ok_or_else(|| missing("Date"))?
            .to_string();
        parse_date(&date).ok_or_else(|| bad("Date", &date))?;
        let valid_until = stanza
            .get("Valid-Until")
            .map(|value| parse_date(value).ok_or_else(|| bad("Valid-Until", value)))
            .transpose()?;
        let acquire_by_hash = match stanza.get("Acquire-By-Hash") {
            None => false,
            Some(value) if value.eq_ignore_ascii_case("yes") => true,
            Some(value) if value.eq_ignore_ascii_case("no") => false,
            Some(value) => return Err(bad("Acquire-By-Hash", value)),
        };

        let list = stanza.get("SHA256").ok_or_else(|| missing("SHA256"))?;
        let mut sha256 = BTreeMap::new();
        for line in list.lines().filter(|line| !line.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            let (Some(hash), Some(size), Some(path), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("SHA256", line));
            };
            let valid_hash = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            let size = size
                .parse::<u64>()
                .ok()
                .filter(|_| valid_hash)
                .ok_or_else(|| bad("SHA256", line))?;
            sha256.insert(
                path.to_string(),
                IndexFile {
                    size,
                    sha256: hash.to_ascii_lowercase(),
                },
            );
        }

        Ok(Self {
            codename: stanza.get("Codename").map(str::to_string),
            suite: stanza.get("Suite").map(str::to_string),
            date,
            valid_until,
            acquire_by_hash,
            components: words("Components"),
            architectures: words("Architectures"),
            sha256,
        })
    }

    /// Whether this Release describes `name`, given as either suite or
    /// codename. apt refuses a mismatch: a mirror could otherwise serve
    /// another suite's correctly signed file.
    pub fn is_for(&self, name: &str) -> bool {
        self.suite.as_deref() == Some(name) || self.codename.as_deref() == Some(name)
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// Parses a Release date, `[Www, ]DD Mmm YYYY HH:MM:SS ZONE` with `ZONE`
/// `UTC`, `GMT`, `Z` or `±hhmm` (RFC 2822, as apt accepts).
pub fn parse_date(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let text = match text.split_once(',') {
        Some((_, rest)) => rest.trim_start(),
        None => text,
    };
    let mut parts = text.split_whitespace();
    let (day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() {
        return None;
    }
    let day: u32 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
    let year: i64 = year.parse().ok().filter(|y| *y >= 1970)?;
    let mut clock = time.split(':');
    let (hour, minute, second) = (clock.next()?, clock.next()?, clock.next()?);
    if clock.next().is_some() {
        return None;
    }
    let hour: i64 = hour.parse().ok().filter(|h| *h < 24)?;
    let minute: i64 = minute.parse().ok().filter(|m| *m < 60)?;
    let second: i64 = second.parse().ok().filter(|s| *s <= 60)?;
    let offset = match zone {
        "UTC" | "GMT" | "Z" | "UT" => 0,
        _ => {
            let (sign, digits) = zone.split_at_checked(1)?;
            let sign = match sign {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hours: i64 = digits[..2].parse().ok()?;
            let minutes: i64 = digits[2..].parse().ok()?;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// Formats a moment as Release files write dates: `Sat, 11 Jul 2026 10:16:37 UTC`.
pub fn format_date(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = seconds.div_euclid(86_400);
    let in_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} UTC",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[month as usize - 1],
        year,
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Origin: Debian\nSuite: oldstable\nCodename: bookworm\n\
Date: Sat, 11 Jul 2026 10:16:37 UTC\nValid-Until: Sat, 18 Jul 2026 10:16:37 UTC\n\
Acquire-By-Hash: yes\nArchitectures: all amd64\nComponents: main contrib\n\
MD5Sum:\n 0ed6d4c8891eb86358b94bb35d9e4da4  1484322 contrib/Contents-all\n\
SHA256:\n 4f2a1c7f0a0e9c5d1b8a3e6f7d2c9b0a1e4f5d6c7b8a9e0f1d2c3b4a5e6f7d8c 8786796 main/binary-amd64/Packages.xz\n \
AB00000000000000000000000000000000000000000000000000000000000001       12 main/i18n/Index\n";

    #[test]
    fn parses_identity_and_checksums() {
        let release = Release::parse(SAMPLE, "InRelease").unwrap();
        assert_eq!(release.codename.as_deref(), Some("bookworm"));
        assert_eq!(release.suite.as_deref(), Some("oldstable"));
        assert_eq!(release.date, "Sat, 11 Jul 2026 10:16:37 UTC");
        assert_eq!(
            release.valid_until,
            parse_date("Sat, 18 Jul 2026 10:16:37 UTC")
        );
        assert!(release.acquire_by_hash);
        assert_eq!(release.components, ["main", "contrib"]);
        assert_eq!(release.architectures, ["all", "amd64"]);
        assert_eq!(release.sha256.len(), 2);
        let xz = &release.sha256["main/binary-amd64/Packages.xz"];
        assert_eq!(xz.size, 8_786_796);
        assert!(xz.sha256.starts_with("4f2a1c7f"));
        let index = &release.sha256["main/i18n/Index"];
        assert_eq!(index.size, 12);
        assert!(index.sha256.starts_with("ab00"), "hashes are lowercased");
        assert!(release.is_for("bookworm") && release.is_for("oldstable"));
        assert!(!release.is_for("trixie"));
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let no_sha = SAMPLE.split("SHA256:").next().unwrap();
        let error = Release::parse(no_sha, "http://mirror.invalid/InRelease").unwrap_err();
        assert_eq!(
            error.to_string(),
            "http://mirror.invalid/InRelease: no SHA256 field"
        );

        let short_hash = SAMPLE.replace("4f2a1c7f0a0e", "4f2a");
        let error = Release::parse(&short_hash, "R").unwrap_err();
        assert!(
            matches!(
                error,
                ReleaseError::BadValue {
                    field: "SHA256",
                    ..
                }
            ),
            "{error}"
        );

        let bad_date = SAMPLE.replace("Sat, 11 Jul 2026", "someday");
        let error = Release::parse(&bad_date, "R").unwrap_err();
        assert!(
            matches!(error, ReleaseError::BadValue { field: "Date", .. }),
            "{error}"
        );

        let two = format!("{SAMPLE}\nOrigin: other\n");
        assert!(matches!(
            Release::parse(&two, "R").unwrap_err(),
            ReleaseError::StanzaCount { found: 2, .. }
        ));
    }

    #[test]
    fn acquire_by_hash_defaults_to_no() {
        let text = SAMPLE.replace("Acquire-By-Hash: yes\n", "");
        assert!(!Release::parse(&text, "R").unwrap().acquire_by_hash);
    }

    #[test]
    fn dates_round_trip() {
        let time = parse_date("Sat, 11 Jul 2026 10:16:37 UTC").unwrap();
        assert_eq!(
            time.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_783_764_997
        );
        assert_eq!(format_date(time), "Sat, 11 Jul 2026 10:16:37 UTC");
        assert_eq!(parse_date("11 Jul 2026 12:16:37 +0200"), Some(time));
        assert_eq!(format_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 UTC");
        assert_eq!(
            format_date(parse_date("Tue, 29 Feb 2028 23:59:59 UTC").unwrap()),
            "Tue, 29 Feb 2028 23:59:59 UTC"
        );
        assert_eq!(parse_date("Sat, 11 Jul 2026 10:16 UTC"), None);
        assert_eq!(parse_date("Sat, 11 Foo 2026 10:16:37 UTC"), None);
        assert_eq!(parse_date("Sat, 11 Jul 2026 10:16:37 CEST"), None);
    }
}
