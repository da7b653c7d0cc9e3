//! Helpers shared by the integration tests.
//!
//! Every test file compiles its own copy of this module and uses only part
//! of it, so unused-item warnings here would be noise.
#![allow(dead_code)]

pub mod local_repo;
