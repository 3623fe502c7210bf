//! Kizuna's actor runtime on actix (filled in by the actor-runtime work).
