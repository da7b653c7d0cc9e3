//! Package relationship fields (`Depends`, `Pre-Depends`, `Provides`, ...):
//! comma-separated relations, each a `|`-separated list of alternatives.

use std::fmt;

use crate::version::{DebVersion, VersionError};

/// Why a relationship field could not be parsed. `item` is the alternative
/// being parsed, so the message shows exactly which part of a long field
/// is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelationError {
    /// `a | | b` or a relation that is only `|`.
    #[error("empty alternative in {relation:?}")]
    EmptyAlternative {
        /// The comma-separated relation containing the empty alternative.
        relation: String,
    },
    /// A package name with characters policy does not allow.
    #[error("in {item:?}: invalid package name {name:?}")]
    InvalidName {
        /// The alternative being parsed.
        item: String,
        /// The rejected name.
        name: String,
    },
    /// `name:` with a missing or malformed architecture.
    #[error("in {item:?}: invalid architecture qualifier {arch:?}")]
    InvalidArch {
        /// The alternative being parsed.
        item: String,
        /// The rejected qualifier.
        arch: String,
    },
    /// Something other than `<<`, `<=`, `=`, `>=`, `>>`, `<`, `>`.
    #[error("in {item:?}: unknown version operator {op:?}")]
    InvalidOperator {
        /// The alternative being parsed.
        item: String,
        /// The rejected operator (empty when it is missing).
        op: String,
    },
    /// The version inside the parentheses does not parse.
    #[error("in {item:?}: {source}")]
    InvalidVersion {
        /// The alternative being parsed.
        item: String,
        /// Why the version was rejected.
        source: VersionError,
    },
    /// `(`, `[` or `<` without its closing bracket.
    #[error("in {item:?}: {open:?} is not closed")]
    Unclosed {
        /// The alternative being parsed.
        item: String,
        /// The opening bracket.
        open: char,
    },
    /// Text after the last recognised part.
    #[error("in {item:?}: unexpected {rest:?}")]
    Trailing {
        /// The alternative being parsed.
        item: String,
        /// The unparsed remainder.
        rest: String,
    },
}

/// A version relation operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `<<`: strictly earlier.
    Lt,
    /// `<=` (also the obsolete `<`): earlier or equal.
    Le,
    /// `=`: exactly equal.
    Eq,
    /// `>=` (also the obsolete `>`): later or equal.
    Ge,
    /// `>>`: strictly later.
    Gt,
}

impl Op {
    /// Parses an operator; the obsolete `<` and `>` mean `<=` and `>=` (not
    /// strict), as dpkg still reads them.
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }

    /// Whether `candidate OP required` holds.
    pub fn holds(self, candidate: &DebVersion, required: &DebVersion) -> bool {
        let ordering = candidate.cmp(required);
        match self {
            Op::Lt => ordering.is_lt(),
            Op::Le => ordering.is_le(),
            Op::Eq => ordering.is_eq(),
            Op::Ge => ordering.is_ge(),
            Op::Gt => ordering.is_gt(),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        })
    }
}

/// One alternative of a relation: a package (or virtual) name, an optional
/// architecture qualifier and an optional version constraint. Architecture
/// restriction lists and build profiles are parsed and dropped: they only
/// matter when building from source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// Package or virtual package name.
    pub name: String,
    /// The `:any`, `:native` or `:amd64` qualifier, without the colon.
    pub arch: Option<String>,
    /// The `(op version)` constraint.
    pub constraint: Option<(Op, DebVersion)>,
}

impl Dependency {
    /// Whether a package of this name at `version` meets the constraint.
    pub fn satisfied_by(&self, version: &DebVersion) -> bool {
        self.constraint
            .as_ref()
            .is_none_or(|(op, required)| op.holds(version, required))
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(arch) = &self.arch {
            write!(f, ":{arch}")?;
        }
        if let Some((op, version)) = &self.constraint {
            write!(f, " ({op} {version})")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Dependency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One comma-separated item of a relationship field: satisfied when any
/// alternative is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The `|`-separated alternatives, in the order given (earlier ones are preferred).
    pub alternatives: Vec<Dependency>,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, dependency) in self.alternatives.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{dependency}")?;
        }
        Ok(())
    }
}

/// The inverse of `Serialize`: one relation as Debian writes it, so
/// resolved package records can be cached as JSON.
impl<'de> serde::Deserialize<'de> for Relation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        let mut relations = parse_relations(&text).map_err(serde::de::Error::custom)?;
        if relations.len() != 1 {
            return Err(serde::de::Error::custom(format!(
                "expected one relation, found {}: {text}",
                relations.len()
            )));
        }
        Ok(relations.remove(0))
    }
}

impl serde::Serialize for Relation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Parses a relationship field such as
/// `a (>= 1.0) | b:any, c [amd64] <!nocheck>`. Empty comma-separated items
/// are skipped because source control files often end with a comma; an
/// empty alternative is an error.
pub fn parse_relations(text: &str) -> Result<Vec<Relation>, RelationError> {
    let mut relations = Vec::new();
    for item in text.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let alternatives = item
            .split('|')
            .map(|alternative| parse_dependency(item, alternative))
            .collect::<Result<Vec<_>, _>>()?;
        relations.push(Relation { alternatives });
    }
    Ok(relations)
}

fn parse_dependency(relation: &str, text: &str) -> Result<Dependency, RelationError> {
    let item = text.trim();
    if item.is_empty() {
        return Err(RelationError::EmptyAlternative {
            relation: relation.trim().to_owned(),
        });
    }
    let name_end = item
        .find(|c: char| c.is_whitespace() || matches!(c, ':' | '(' | '[' | '<'))
        .unwrap_or(item.len());
    let name = &item[..name_end];
    if !valid_name(name) {
        return Err(RelationError::InvalidName {
            item: item.to_owned(),
            name: name.to_owned(),
        });
    }
    let (arch, rest) = parse_arch_qualifier(item, &item[name_end..])?;
    let (constraint, mut rest) = parse_constraint(item, rest.trim_start())?;

    // Architecture restrictions and build profiles only select build
    // dependencies; skip their contents after checking they are closed.
    if let Some(after) = rest.strip_prefix('[') {
        rest = split_closing(item, after, '[', ']')?.1;
    }
    while let Some(after) = rest.strip_prefix('<') {
        rest = split_closing(item, after, '<', '>')?.1;
    }
    if !rest.is_empty() {
        return Err(RelationError::Trailing {
            item: item.to_owned(),
            rest: rest.to_owned(),
        });
    }
    Ok(Dependency {
        name: name.to_owned(),
        arch,
        constraint,
    })
}

/// A `:arch` qualifier at the start of `rest`, and what follows it.
fn parse_arch_qualifier<'t>(
    item: &str,
    rest: &'t str,
) -> Result<(Option<String>, &'t str), RelationError> {
    let Some(after) = rest.strip_prefix(':') else {
        return Ok((None, rest));
    };
    let end = after
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        .unwrap_or(after.len());
    if end == 0 {
        return Err(RelationError::InvalidArch {
            item: item.to_owned(),
            arch: after.to_owned(),
        });
    }
    Ok((Some(after[..end].to_owned()), &after[end..]))
}

/// A version constraint: the operator and the version it compares with.
type Constraint = (Op, DebVersion);

/// A `(op version)` constraint at the start of `rest`, and what follows it.
fn parse_constraint<'t>(
    item: &str,
    rest: &'t str,
) -> Result<(Option<Constraint>, &'t str), RelationError> {
    let Some(after) = rest.strip_prefix('(') else {
        return Ok((None, rest));
    };
    let (inner, after) = split_closing(item, after, '(', ')')?;
    let inner = inner.trim();
    let op_len = inner
        .bytes()
        .take_while(|b| matches!(b, b'<' | b'>' | b'='))
        .count();
    let op = Op::parse(&inner[..op_len]).ok_or_else(|| RelationError::InvalidOperator {
        item: item.to_owned(),
        op: inner[..op_len].to_owned(),
    })?;
    let version =
        inner[op_len..]
            .trim()
            .parse()
            .map_err(|source| RelationError::InvalidVersion {
                item: item.to_owned(),
                source,
            })?;
    Ok((Some((op, version)), after))
}

/// Splits `text` at `close` into the bracketed content and what follows
/// (with leading blanks removed).
fn split_closing<'t>(
    item: &str,
    text: &'t str,
    open: char,
    close: char,
) -> Result<(&'t str, &'t str), RelationError> {
    let end = text.find(close).ok_or_else(|| RelationError::Unclosed {
        item: item.to_owned(),
        open,
    })?;
    Ok((&text[..end], text[end + 1..].trim_start()))
}

/// Policy 5.6.1: lowercase letters, digits, `+`, `-`, `.`, starting with an
/// alphanumeric.
fn valid_name(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> DebVersion {
        s.parse().unwrap()
    }

    fn dep(name: &str, arch: Option<&str>, constraint: Option<(Op, &str)>) -> Dependency {
        Dependency {
            name: name.into(),
            arch: arch.map(Into::into),
            constraint: constraint.map(|(op, version)| (op, v(version))),
        }
    }

    #[test]
    fn parses_alternatives_qualifiers_restrictions_and_profiles() {
        let relations = parse_relations(
            "a (>= 1.0) | b:any, c [amd64] <!nocheck>, d:amd64 (<< 2:3~) [!i386] <a> <b c>",
        )
        .unwrap();
        assert_eq!(
            relations,
            [
                Relation {
                    alternatives: vec![
                        dep("a", None, Some((Op::Ge, "1.0"))),
                        dep("b", Some("any"), None)
                    ]
                },
                Relation {
                    alternatives: vec![dep("c", None, None)]
                },
                Relation {
                    alternatives: vec![dep("d", Some("amd64"), Some((Op::Lt, "2:3~")))]
                },
            ]
        );
    }

    #[test]
    fn whitespace_is_optional_and_flexible() {
        let relations = parse_relations("libc6(>=2.34),\n foo ( = 1.0-1 ) ,bar|baz").unwrap();
        let text: Vec<_> = relations.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["libc6 (>= 2.34)", "foo (= 1.0-1)", "bar | baz"]);
    }

    #[test]
    fn all_operators_including_obsolete_ones() {
        let ops: Vec<_> = ["<<", "<=", "<", "=", ">=", ">", ">>"]
            .iter()
            .map(|op| {
                let relations = parse_relations(&format!("x ({op} 1)")).unwrap();
                relations[0].alternatives[0].constraint.as_ref().unwrap().0
            })
            .collect();
        assert_eq!(
            ops,
            [Op::Lt, Op::Le, Op::Le, Op::Eq, Op::Ge, Op::Ge, Op::Gt]
        );
    }

    #[test]
    fn satisfied_by_follows_each_operator() {
        let check = |op: Op, required: &str, candidate: &str| {
            dep("x", None, Some((op, required))).satisfied_by(&v(candidate))
        };
        assert!(check(Op::Lt, "1.0", "1.0~rc1"));
        assert!(!check(Op::Lt, "1.0", "1.0"));
        assert!(check(Op::Le, "1.0", "1.0-0"));
        assert!(!check(Op::Le, "1.0", "1.0-1"));
        assert!(check(Op::Eq, "1.0", "0:1.0"));
        assert!(!check(Op::Eq, "1.0", "1.0+b1"));
        assert!(check(Op::Ge, "2.34", "2.36-9"));
        assert!(!check(Op::Ge, "1:1.0", "9.0"));
        assert!(check(Op::Gt, "1.0", "1.0-1"));
        assert!(!check(Op::Gt, "1.0", "1.0"));
        assert!(dep("x", None, None).satisfied_by(&v("0.1")));
    }

    #[test]
    fn trailing_commas_and_empty_fields_are_tolerated() {
        assert_eq!(parse_relations("a, b,").unwrap().len(), 2);
        assert!(parse_relations("").unwrap().is_empty());
        assert!(parse_relations("  ").unwrap().is_empty());
    }

    /// An input and a check of the error it must produce.
    type ErrorCase = (&'static str, fn(&RelationError) -> bool);

    #[test]
    fn malformed_relations_are_errors() {
        let cases: [ErrorCase; 9] = [
            ("a | | b", |e| {
                matches!(e, RelationError::EmptyAlternative { .. })
            }),
            (
                "Foo",
                |e| matches!(e, RelationError::InvalidName { name, .. } if name == "Foo"),
            ),
            ("a_b", |e| matches!(e, RelationError::InvalidName { .. })),
            ("a:", |e| matches!(e, RelationError::InvalidArch { .. })),
            (
                "a (~ 1)",
                |e| matches!(e, RelationError::InvalidOperator { op, .. } if op.is_empty()),
            ),
            (
                "a (=> 1)",
                |e| matches!(e, RelationError::InvalidOperator { op, .. } if op == "=>"),
            ),
            ("a (>= 1.0-)", |e| {
                matches!(e, RelationError::InvalidVersion { .. })
            }),
            ("a (>= 1.0", |e| {
                matches!(e, RelationError::Unclosed { open: '(', .. })
            }),
            (
                "a (>= 1.0) b",
                |e| matches!(e, RelationError::Trailing { rest, .. } if rest == "b"),
            ),
        ];
        for (input, check) in cases {
            let err = parse_relations(input).unwrap_err();
            assert!(check(&err), "{input:?} gave {err:?}");
        }
        assert!(matches!(
            parse_relations("a [amd64").unwrap_err(),
            RelationError::Unclosed { open: '[', .. }
        ));
        assert!(matches!(
            parse_relations("a <!nocheck").unwrap_err(),
            RelationError::Unclosed { open: '<', .. }
        ));
    }

    #[test]
    fn errors_name_the_offending_alternative() {
        let err = parse_relations("libc6 (>= 2.34), libfoo (>= bad version)").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("libfoo (>= bad version)"), "{message}");
        assert!(!message.contains("libc6"), "{message}");
    }

    #[test]
    fn serializes_as_the_relation_text() {
        let relations = parse_relations("a (>= 1) | b:any").unwrap();
        assert_eq!(
            serde_json::to_string(&relations).unwrap(),
            r#"["a (>= 1) | b:any"]"#
        );
    }
}
