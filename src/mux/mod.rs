//! Stream multiplexer over one secure byte stream (filled in by the mux work).
