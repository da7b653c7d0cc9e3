//! Verified bytes from a Debian mirror: apt sources, transport, InRelease signatures, the download cache and the repository client.

pub mod apt_sources;
pub mod cache;
pub mod repository;
pub mod signature;
pub mod sources;
pub mod transport;
