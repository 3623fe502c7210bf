//! Per-peer connection pool.
