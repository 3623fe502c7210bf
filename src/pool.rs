//! Per-peer connection pool (filled in by the pool work).
