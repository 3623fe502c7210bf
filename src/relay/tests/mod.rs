//! Tests of the relay: message snapshots and properties, authentication, the server and
//! client machines with a synthetic clock.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test
