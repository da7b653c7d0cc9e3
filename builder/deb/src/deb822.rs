//! Parser for Debian control stanzas (deb822): `Packages` and `Release`
//! indexes and the `control` file of a `.deb`.
//!
//! A stanza borrows its field names and single-line values from the input,
//! so parsing bookworm's whole `Packages` file allocates one small vector per
//! stanza instead of a string per field.

use std::borrow::Cow;

/// Why a control file could not be parsed; every variant carries the 1-based
/// line number so the message points into the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Deb822Error {
    /// A line that is neither a field, a continuation nor a separator.
    #[error("line {line}: expected `Field: value`, found {text:?}")]
    MissingColon {
        /// Line number of the offending line.
        line: usize,
        /// The line as found, for the message.
        text: String,
    },
    /// An indented line with no field above it in the same stanza.
    #[error("line {line}: continuation line does not follow a field")]
    OrphanContinuation {
        /// Line number of the offending line.
        line: usize,
    },
    /// A field name that is empty or contains spaces or control characters.
    #[error("line {line}: invalid field name {name:?}")]
    InvalidFieldName {
        /// Line number of the offending line.
        line: usize,
        /// The rejected name.
        name: String,
    },
    /// Debian forbids a field twice in one stanza; accepting it would make
    /// `get` silently pick one of two conflicting values.
    #[error(
        "line {line}: field {name:?} appears twice in the stanza starting at line {stanza_line}"
    )]
    DuplicateField {
        /// Line number of the second occurrence.
        line: usize,
        /// The repeated field name.
        name: String,
        /// First line of the stanza.
        stanza_line: usize,
    },
}

/// One paragraph of a control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza<'a> {
    line: usize,
    fields: Vec<(&'a str, Cow<'a, str>)>,
}

impl Stanza<'_> {
    /// The value of `field`, whose name is matched ASCII case-insensitively as
    /// Debian policy requires. Multi-line values are joined with `\n`, each
    /// continuation line without its leading space, ` .` lines as empty
    /// lines; an empty first line (as in `SHA256:` of a Release file) is left
    /// out so the value starts with its first entry.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(field))
            .map(|(_, value)| value.as_ref())
    }

    /// The 1-based line where the stanza starts, so callers can point their
    /// own errors (a missing field, a bad value) into the file.
    pub fn line(&self) -> usize {
        self.line
    }

    /// All fields in file order, with the names spelled as in the file.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|(name, value)| (*name, value.as_ref()))
    }
}

/// Parses every stanza of `input`. Stanzas are separated by lines that are
/// empty or hold only blanks; lines starting with `#` are comments (allowed
/// in source control files, skipped everywhere).
pub fn parse_stanzas(input: &str) -> Result<Vec<Stanza<'_>>, Deb822Error> {
    let mut stanzas = Vec::new();
    let mut current: Option<Stanza<'_>> = None;
    // Whether the last field already took a continuation line: decides if the
    // next one needs a `\n` before it even when the value is still empty.
    let mut continued = false;

    for (index, raw) in input.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            if let Some(stanza) = current.take() {
                stanzas.push(stanza);
            }
            continue;
        }
        match line.as_bytes()[0] {
            b'#' => {}
            b' ' | b'\t' => {
                let value = current
                    .as_mut()
                    .and_then(|stanza| stanza.fields.last_mut())
                    .map(|(_, value)| value)
                    .ok_or(Deb822Error::OrphanContinuation { line: line_no })?;
                let text = line[1..].trim_end();
                let text = if text == "." { "" } else { text };
                if !continued && value.is_empty() {
                    *value = Cow::Borrowed(text);
                } else {
                    let owned = value.to_mut();
                    owned.push('\n');
                    owned.push_str(text);
                }
                continued = true;
            }
            _ => {
                let colon = line.find(':').ok_or_else(|| Deb822Error::MissingColon {
                    line: line_no,
                    text: line.to_owned(),
                })?;
                let name = &line[..colon];
                if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(Deb822Error::InvalidFieldName {
                        line: line_no,
                        name: name.to_owned(),
                    });
                }
                let stanza = current.get_or_insert_with(|| Stanza {
                    line: line_no,
                    fields: Vec::with_capacity(16),
                });
                if stanza
                    .fields
                    .iter()
                    .any(|(seen, _)| seen.len() == name.len() && seen.eq_ignore_ascii_case(name))
                {
                    return Err(Deb822Error::DuplicateField {
                        line: line_no,
                        name: name.to_owned(),
                        stanza_line: stanza.line,
                    });
                }
                stanza
                    .fields
                    .push((name, Cow::Borrowed(line[colon + 1..].trim())));
                continued = false;
            }
        }
    }
    stanzas.extend(current);
    Ok(stanzas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_case_insensitive_and_trimmed() {
        let stanzas = parse_stanzas("Package: foo\nVERSION:  1.0 \nDepends:libc6\n").unwrap();
        assert_eq!(stanzas.len(), 1);
        let s = &stanzas[0];
        assert_eq!(s.get("package"), Some("foo"));
        assert_eq!(s.get("Version"), Some("1.0"));
        assert_eq!(s.get("depends"), Some("libc6"));
        assert_eq!(s.get("Size"), None);
        assert_eq!(s.line(), 1);
    }

    #[test]
    fn values_may_contain_colons() {
        let s = &parse_stanzas("Version: 1:2.3-4\n").unwrap()[0];
        assert_eq!(s.get("version"), Some("1:2.3-4"));
    }

    #[test]
    fn stanzas_split_on_blank_and_whitespace_lines() {
        let text = "\n\nA: 1\n\n\nA: 2\n \t\nA: 3";
        let stanzas = parse_stanzas(text).unwrap();
        let values: Vec<_> = stanzas.iter().map(|s| s.get("a").unwrap()).collect();
        assert_eq!(values, ["1", "2", "3"]);
        let lines: Vec<_> = stanzas.iter().map(Stanza::line).collect();
        assert_eq!(lines, [3, 6, 8]);
    }

    #[test]
    fn continuation_lines_join_with_newline_and_dot_is_empty() {
        let text = "Description: short\n long one\n .\n   indented\nNext: x\n";
        let s = &parse_stanzas(text).unwrap()[0];
        assert_eq!(s.get("description"), Some("short\nlong one\n\n  indented"));
        assert_eq!(s.get("next"), Some("x"));
    }

    #[test]
    fn empty_first_line_is_dropped_but_later_empty_lines_are_kept() {
        let text = "SHA256:\n abc 12 main/Packages\n def 34 main/Packages.xz\n";
        let s = &parse_stanzas(text).unwrap()[0];
        assert_eq!(
            s.get("sha256"),
            Some("abc 12 main/Packages\ndef 34 main/Packages.xz")
        );
        let s = &parse_stanzas("X:\n .\n b\n").unwrap()[0];
        assert_eq!(s.get("x"), Some("\nb"));
    }

    #[test]
    fn tab_continuation_and_crlf_are_accepted() {
        let s = &parse_stanzas("Tag: a,\r\n\tb\r\nPackage: p\r\n").unwrap()[0];
        assert_eq!(s.get("tag"), Some("a,\nb"));
        assert_eq!(s.get("package"), Some("p"));
    }

    #[test]
    fn comments_are_skipped() {
        let stanzas = parse_stanzas("# header\nSource: x\n# note\nSection: y\n").unwrap();
        assert_eq!(stanzas.len(), 1);
        assert_eq!(stanzas[0].get("section"), Some("y"));
        assert_eq!(stanzas[0].fields().count(), 2);
    }

    #[test]
    fn fields_keep_file_order_and_spelling() {
        let s = &parse_stanzas("B: 2\nA: 1\n").unwrap()[0];
        let fields: Vec<_> = s.fields().collect();
        assert_eq!(fields, [("B", "2"), ("A", "1")]);
    }

    #[test]
    fn errors_carry_line_numbers() {
        assert_eq!(
            parse_stanzas("A: 1\nno colon here\n").unwrap_err(),
            Deb822Error::MissingColon {
                line: 2,
                text: "no colon here".into()
            }
        );
        assert_eq!(
            parse_stanzas("A: 1\n\n continued\n").unwrap_err(),
            Deb822Error::OrphanContinuation { line: 3 }
        );
        assert_eq!(
            parse_stanzas("A: 1\nbad name: 2\n").unwrap_err(),
            Deb822Error::InvalidFieldName {
                line: 2,
                name: "bad name".into()
            }
        );
        assert_eq!(
            parse_stanzas("A: 1\n: 2\n").unwrap_err(),
            Deb822Error::InvalidFieldName {
                line: 2,
                name: String::new()
            }
        );
        let err = parse_stanzas("\nA: 1\nB: 2\na: 3\n").unwrap_err();
        assert_eq!(
            err,
            Deb822Error::DuplicateField {
                line: 4,
                name: "a".into(),
                stanza_line: 2
            }
        );
        assert!(err.to_string().contains("line 4"), "{err}");
    }

    #[test]
    fn empty_input_has_no_stanzas() {
        assert!(parse_stanzas("").unwrap().is_empty());
        assert!(parse_stanzas("\n\n  \n").unwrap().is_empty());
    }

    #[test]
    fn single_line_values_borrow_from_the_input() {
        let text = String::from("Package: foo\nTag: a,\n b\n");
        let stanzas = parse_stanzas(&text).unwrap();
        let value = stanzas[0].get("package").unwrap();
        let range = text.as_ptr() as usize..text.as_ptr() as usize + text.len();
        assert!(range.contains(&(value.as_ptr() as usize)));
    }
}
