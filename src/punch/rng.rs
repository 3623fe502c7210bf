//! The session's deterministic random generator: SHA-256 in counter mode over a 32-byte
//! seed supplied by the caller.
//!
//! Determinism makes the simulation tests reproducible; cryptographic quality matters
//! because the punch token authenticates datagrams. With a seed from the operating
//! system's CSPRNG (what the actor passes), the outputs are unpredictable; with a fixed
//! seed (tests) they are reproducible.

use ring::digest;

/// A SHA-256 counter-mode generator (see the module docs).
#[derive(Clone)]
pub(crate) struct SessionRng {
    seed: [u8; 32],
    counter: u64,
}

impl std::fmt::Debug for SessionRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the seed: it determines the session token.
        f.debug_struct("SessionRng").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl SessionRng {
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Self { seed, counter: 0 }
    }

    /// 32 fresh bytes.
    pub(crate) fn block(&mut self) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"kizuna-punch-rng-v1");
        ctx.update(&self.seed);
        ctx.update(&self.counter.to_be_bytes());
        self.counter = self.counter.wrapping_add(1);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let b = self.block();
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    pub(crate) fn token(&mut self) -> [u8; 16] {
        let b = self.block();
        let mut t = [0u8; 16];
        t.copy_from_slice(&b[..16]);
        t
    }
}
