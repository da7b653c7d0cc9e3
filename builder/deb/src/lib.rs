//! Debian archive formats without I/O: deb822, versions, relations, package indexes, Release files and the resolver.

pub mod deb822;
pub mod installed_set;
pub mod package_index;
pub mod relation;
pub mod release;
pub mod resolver;
pub mod version;
