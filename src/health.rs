//! Keep-alive and RTT estimation (filled in by the health work).
