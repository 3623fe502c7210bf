//! QUIC via quinn (filled in by the QUIC work).
