//! The licence of each installed package, read from its
//! `usr/share/doc/<package>/copyright` in the root file system tree.
//!
//! A machine-readable (DEP-5) file gives the `License:` short names of its
//! `Files` paragraphs; each is mapped to an SPDX licence id through a small
//! table, or kept as a `LicenseRef-` with its text when the table does not
//! know it. A file that is not DEP-5 gives `NOASSERTION`: the licence is
//! never guessed from free text.

use std::collections::BTreeMap;

use applbuild_deb::deb822::{Stanza, parse_stanzas};
use sha2::{Digest, Sha256};

use crate::deb_archive::EntryKind;
use crate::rootfs::RootfsTree;

/// The `Format:` URL of a machine-readable copyright file (with or without
/// `https`, with or without the trailing slash).
const DEP5_FORMAT: &str = "www.debian.org/doc/packaging-manuals/copyright-format/1.0";

/// DEP-5 short names (matched ignoring case, as DEP-5 says) whose SPDX id
/// differs from the name, and the SPDX 2.0 spellings the SPDX list
/// deprecated for an unambiguous current id. Names absent here
/// are kept when they are already a current SPDX id, and become a
/// `LicenseRef-` otherwise.
const SPDX_IDS: &[(&str, &str)] = &[
    ("GPL-1", "GPL-1.0-only"),
    ("GPL-1+", "GPL-1.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-3", "GPL-3.0-only"),
    ("GPL-3+", "GPL-3.0-or-later"),
    ("GPL-1.0+", "GPL-1.0-or-later"),
    ("GPL-2.0", "GPL-2.0-only"),
    ("GPL-2.0+", "GPL-2.0-or-later"),
    ("GPL-3.0", "GPL-3.0-only"),
    ("GPL-3.0+", "GPL-3.0-or-later"),
    ("LGPL-2.0", "LGPL-2.0-only"),
    ("LGPL-2.0+", "LGPL-2.0-or-later"),
    ("LGPL-3.0", "LGPL-3.0-only"),
    ("LGPL-3.0+", "LGPL-3.0-or-later"),
    ("LGPL-2", "LGPL-2.0-only"),
    ("LGPL-2+", "LGPL-2.0-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-3", "LGPL-3.0-only"),
    ("LGPL-3+", "LGPL-3.0-or-later"),
    ("AGPL-3", "AGPL-3.0-only"),
    ("AGPL-3+", "AGPL-3.0-or-later"),
    ("GFDL-1.2", "GFDL-1.2-only"),
    ("GFDL-1.2+", "GFDL-1.2-or-later"),
    ("GFDL-1.3", "GFDL-1.3-only"),
    ("GFDL-1.3+", "GFDL-1.3-or-later"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("Expat", "MIT"),
    ("zlib", "Zlib"),
    ("CC0", "CC0-1.0"),
    ("MPL-1.1", "MPL-1.1"),
    ("MPL-2.0", "MPL-2.0"),
    ("Apache-2", "Apache-2.0"),
    ("Apache-2.0", "Apache-2.0"),
    ("ISC", "ISC"),
];

/// Short names DEP-5 itself calls ambiguous: never read as the SPDX id of the
/// same spelling.
const AMBIGUOUS: &[&str] = &["MIT", "BSD", "Artistic"];

/// A licence the SPDX list does not name (or not unambiguously): the id the
/// documents use for it and the text the copyright file gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedLicence {
    /// `LicenseRef-<sanitised short name>`.
    pub id: String,
    /// The short name as written in the copyright file.
    pub name: String,
    /// Its text from the copyright file: the stand-alone `License` paragraph
    /// of that name, else the `Files` paragraph's own text, else the whole file.
    pub text: String,
}

/// What a package's copyright file says about its licence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Licence {
    /// A valid SPDX licence expression; the `LicenseRef-` ids in it are
    /// described in `extracted`.
    Declared {
        /// E.g. `GPL-2.0-or-later AND (MIT OR Apache-2.0)`.
        expression: String,
        /// One entry per `LicenseRef-` id in `expression`, sorted by id.
        extracted: Vec<ExtractedLicence>,
    },
    /// No licence can be stated without guessing.
    NoAssertion {
        /// Why, for logs and the documentation.
        reason: String,
    },
}

impl Licence {
    /// The SPDX expression, or `NOASSERTION`.
    pub fn expression(&self) -> &str {
        match self {
            Licence::Declared { expression, .. } => expression,
            Licence::NoAssertion { .. } => "NOASSERTION",
        }
    }
}

/// A package's copyright file as found in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copyright {
    /// The licence it declares.
    pub licence: Licence,
    /// Lowercase hex SHA256 of the file; `None` when the package has none.
    pub sha256: Option<String>,
}

/// Reads `usr/share/doc/<package>/copyright` of the assembled tree. The
/// tree resolves links in the path (a doc folder is often a link to another
/// package's), and a copyright file that is itself a link is followed once.
/// A missing file gives `NOASSERTION` without a hash.
pub fn read_copyright(tree: &RootfsTree, package: &str) -> Copyright {
    let path = format!("usr/share/doc/{package}/copyright");
    let contents = match tree.get(&path).map(|node| &node.kind) {
        Some(EntryKind::File(contents)) => Some(contents),
        Some(EntryKind::Symlink(target)) => {
            match tree.get(&link_target(&path, target)).map(|node| &node.kind) {
                Some(EntryKind::File(contents)) => Some(contents),
                _ => None,
            }
        }
        _ => None,
    };
    match contents {
        Some(bytes) => Copyright {
            licence: parse_licence(&String::from_utf8_lossy(bytes)),
            sha256: Some(hex::encode(Sha256::digest(bytes))),
        },
        None => Copyright {
            licence: Licence::NoAssertion {
                reason: format!("{path} is not in the tree"),
            },
            sha256: None,
        },
    }
}

/// The tree path a symbolic link at `link` points to: absolute targets are
/// taken from the tree's root, relative ones from the link's folder.
fn link_target(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    if target.starts_with('/') {
        parts.clear();
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    parts.join("/")
}

/// The licence a copyright file's text declares; see the module documentation.
pub fn parse_licence(text: &str) -> Licence {
    let no_assertion = |reason: &str| Licence::NoAssertion {
        reason: reason.to_owned(),
    };
    let Ok(stanzas) = parse_stanzas(text) else {
        return no_assertion("not a machine-readable (DEP-5) copyright file");
    };
    let is_dep5 = stanzas
        .first()
        .and_then(|header| header.get("Format"))
        .is_some_and(|format| format.trim().trim_end_matches('/').ends_with(DEP5_FORMAT));
    if !is_dep5 {
        return no_assertion("not a machine-readable (DEP-5) copyright file");
    }
    let texts = standalone_texts(&stanzas);
    let mut terms: Vec<String> = Vec::new();
    let mut extracted = BTreeMap::new();
    for files in stanzas.iter().filter(|s| s.get("Files").is_some()) {
        let Some(licence) = files.get("License") else {
            return no_assertion("a Files paragraph has no License field");
        };
        let (names, body) = licence.split_once('\n').unwrap_or((licence, ""));
        let own_text = |name: &str| {
            texts
                .get(name)
                .copied()
                .filter(|text| !text.trim().is_empty())
                .or_else(|| Some(body).filter(|body| !body.trim().is_empty()))
                .unwrap_or(text)
                .to_owned()
        };
        let term = licence_term(names.trim(), &mut |id, name| {
            extracted
                .entry(id.to_owned())
                .or_insert_with(|| ExtractedLicence {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    text: own_text(name),
                });
        });
        if !terms.contains(&term) {
            terms.push(term);
        }
    }
    if terms.is_empty() {
        return no_assertion("the DEP-5 file has no Files paragraph");
    }
    let expression = if terms.len() == 1 {
        terms
            .remove(0)
            .trim_start_matches('(')
            .trim_end_matches(')')
            .to_owned()
    } else {
        terms.join(" AND ")
    };
    match spdx::Expression::parse(&expression) {
        Ok(_) => Licence::Declared {
            expression,
            extracted: extracted.into_values().collect(),
        },
        Err(error) => Licence::NoAssertion {
            reason: format!("{expression:?} is not a valid SPDX expression: {error}"),
        },
    }
}

/// Texts of stand-alone `License` paragraphs (no `Files`), by short name.
fn standalone_texts<'a>(stanzas: &'a [Stanza<'a>]) -> BTreeMap<&'a str, &'a str> {
    stanzas
        .iter()
        .skip(1)
        .filter(|stanza| stanza.get("Files").is_none())
        .filter_map(|stanza| stanza.get("License"))
        .filter_map(|licence| licence.split_once('\n'))
        .map(|(name, text)| (name.trim(), text))
        .collect()
}

/// One `License:` line as an SPDX term: names joined by `or`/`and` become
/// `OR`/`AND`; a line with anything else (`with` an exception, commas) is
/// one `LicenseRef-` as a whole rather than a guess at its structure.
/// `refer` is told each `LicenseRef-` id with the name it stands for.
fn licence_term(line: &str, refer: &mut dyn FnMut(&str, &str)) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let structured = !line.contains([',', '(', ')'])
        && words.iter().enumerate().all(|(i, word)| {
            let operator = word.eq_ignore_ascii_case("or") || word.eq_ignore_ascii_case("and");
            operator == (i % 2 == 1)
        })
        && words.len() % 2 == 1;
    if !structured {
        return licence_id(line, refer);
    }
    let term = words
        .iter()
        .map(|word| match word.to_ascii_lowercase().as_str() {
            "or" => "OR".to_owned(),
            "and" => "AND".to_owned(),
            _ => licence_id(word, refer),
        })
        .collect::<Vec<_>>()
        .join(" ");
    if words.len() > 1 {
        format!("({term})")
    } else {
        term
    }
}

/// The SPDX id of one DEP-5 short name, or its `LicenseRef-`.
fn licence_id(name: &str, refer: &mut dyn FnMut(&str, &str)) -> String {
    if let Some((_, id)) = SPDX_IDS
        .iter()
        .find(|(short, _)| short.eq_ignore_ascii_case(name))
    {
        return (*id).to_owned();
    }
    let current_id = spdx::license_id(name).is_some_and(|id| !id.is_deprecated());
    if current_id && !AMBIGUOUS.iter().any(|a| a.eq_ignore_ascii_case(name)) {
        return name.to_owned();
    }
    let sanitised: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let id = format!("LicenseRef-{sanitised}");
    refer(&id, name);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
        Upstream-Name: util-linux\nSource: https://www.kernel.org/pub/linux/utils/util-linux/\n\n";

    fn declared(text: &str) -> (String, Vec<ExtractedLicence>) {
        match parse_licence(text) {
            Licence::Declared {
                expression,
                extracted,
            } => (expression, extracted),
            other => panic!("expected a declared licence, got {other:?}"),
        }
    }

    #[test]
    fn single_files_paragraph_maps_to_its_spdx_id() {
        let text = "Format: http://www.debian.org/doc/packaging-manuals/copyright-format/1.0\n\n\
            Files: *\nCopyright: 1995-2022 Jean-loup Gailly and Mark Adler\nLicense: Zlib\n \
            This software is provided 'as-is', without any express or implied warranty.\n";
        assert_eq!(declared(text), ("Zlib".to_owned(), vec![]));
    }

    #[test]
    fn paragraphs_combine_with_and_and_alternatives_with_or() {
        let text = format!(
            "{HEADER}Files: *\nCopyright: 2007 Karel Zak\nLicense: GPL-2+\n\n\
             Files: lib/*\nCopyright: 2010 Davidlohr Bueso\nLicense: LGPL-2.1+\n\n\
             Files: lib/md5.c\nCopyright: none\nLicense: public-domain\n \
             This code is in the public domain; do with it what you wish.\n\n\
             Files: libuuid/*\nCopyright: 1996 Theodore Ts'o\nLicense: BSD-3-clause or Expat\n\n\
             Files: sys-utils/x.c\nCopyright: 2001 Someone\nLicense: GPL-2+\n\n\
             License: GPL-2+\n This program is free software.\n"
        );
        let (expression, extracted) = declared(&text);
        assert_eq!(
            expression,
            "GPL-2.0-or-later AND LGPL-2.1-or-later AND LicenseRef-public-domain AND (BSD-3-Clause OR MIT)"
        );
        assert_eq!(extracted.len(), 1);
        assert_eq!(extracted[0].id, "LicenseRef-public-domain");
        assert_eq!(
            extracted[0].text,
            "This code is in the public domain; do with it what you wish."
        );
    }

    #[test]
    fn unknown_and_ambiguous_names_keep_their_text() {
        let text = format!(
            "{HEADER}Files: *\nCopyright: 1990 X Consortium\nLicense: MIT\n\n\
             Files: src/ssl.c\nCopyright: 2004 Someone\nLicense: GPL-2+ with OpenSSL exception\n\n\
             License: MIT\n Permission is hereby granted, free of charge, to any person.\n"
        );
        let (expression, extracted) = declared(&text);
        assert_eq!(
            expression,
            "LicenseRef-MIT AND LicenseRef-GPL-2--with-OpenSSL-exception"
        );
        assert_eq!(extracted[0].id, "LicenseRef-GPL-2--with-OpenSSL-exception");
        assert_eq!(extracted[0].name, "GPL-2+ with OpenSSL exception");
        assert_eq!(extracted[0].text, text, "no text given: the whole file");
        assert_eq!(
            extracted[1].text,
            "Permission is hereby granted, free of charge, to any person."
        );
    }

    #[test]
    fn short_names_ignore_case_and_take_spdx_2_0_spellings() {
        let text = format!(
            "{HEADER}Files: *\nCopyright: 1991 Someone\nLicense: GPL-2.0+\n\n\
             Files: zlib/*\nCopyright: 1995 Someone\nLicense: ZLIB and gpl-3.0\n"
        );
        assert_eq!(
            parse_licence(&text).expression(),
            "GPL-2.0-or-later AND (Zlib AND GPL-3.0-only)"
        );
    }

    #[test]
    fn free_text_files_are_no_assertion() {
        let glibc = "This is the Debian prepackaged version of the GNU C Library\n\
            version 2.36.\n\nCopyright (C) 1991-2022 Free Software Foundation, Inc.\n";
        assert!(matches!(parse_licence(glibc), Licence::NoAssertion { .. }));
        let bash = "Format: other\n\nFiles: *\nLicense: GPL-3+\n";
        assert_eq!(parse_licence(bash).expression(), "NOASSERTION");
        let no_licence = format!("{HEADER}Files: *\nCopyright: 2020 A\n");
        assert_eq!(parse_licence(&no_licence).expression(), "NOASSERTION");
    }

    #[test]
    fn reads_the_tree_following_links_inside_it() {
        let mut tree = RootfsTree::new();
        let text = format!("{HEADER}Files: *\nCopyright: Meta\nLicense: BSD-3-clause or GPL-2\n");
        tree.add_dir("usr/share/doc/libzstd1", 0o755, 0, 0).unwrap();
        tree.add_file(
            "usr/share/doc/libzstd1/copyright",
            text.as_bytes(),
            0o644,
            0,
            0,
        )
        .unwrap();
        tree.add_symlink("usr/share/doc/zstd", "/usr/share/doc/libzstd1")
            .unwrap();
        tree.add_dir("usr/share/doc/libzstd-dev", 0o755, 0, 0)
            .unwrap();
        tree.add_symlink(
            "usr/share/doc/libzstd-dev/copyright",
            "../libzstd1/copyright",
        )
        .unwrap();

        let direct = read_copyright(&tree, "libzstd1");
        assert_eq!(direct.licence.expression(), "BSD-3-Clause OR GPL-2.0-only");
        assert_eq!(
            direct.sha256.as_deref(),
            Some(hex::encode(Sha256::digest(text.as_bytes())).as_str())
        );
        assert_eq!(read_copyright(&tree, "zstd"), direct);
        assert_eq!(read_copyright(&tree, "libzstd-dev"), direct);
        let missing = read_copyright(&tree, "busybox");
        assert_eq!(
            (missing.licence.expression(), missing.sha256),
            ("NOASSERTION", None)
        );
    }
}
