//! TLS 1.3 over TCP (filled in by the TCP work).
