//! Allocation bounds of the wire decoders under hostile input.
//!
//! A counting global allocator records the peak of live heap bytes while each decoder
//! runs; this binary holds a single test so nothing else allocates concurrently.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use bytes::BytesMut;
use kizuna::wire::{read_frame, Control, FrameDecoder, Hello};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Peak heap growth (bytes) while `f` runs.
fn peak_during(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - base
}

/// Far below the ~1 MiB serde would pre-allocate for even one lying length.
const BOUND: usize = 256 * 1024;

#[test]
fn hostile_declared_lengths_do_not_allocate() {
    // 1000 nested arrays each declaring 2^32 - 1 elements: 5 KB of input.
    let nested_arrays = [0xdd, 0xff, 0xff, 0xff, 0xff].repeat(1000);
    let nested_maps = [0xdf, 0xff, 0xff, 0xff, 0xff].repeat(1000);
    // A control map whose "type" is fine but whose extra field lies about its length.
    let lying_field =
        [&b"\x82\xa4type\xa4ping\xa1x"[..], &[0xdd, 0xff, 0xff, 0xff, 0xff].repeat(1000)].concat();
    for payload in [&nested_arrays, &nested_maps, &lying_field] {
        let peak = peak_during(|| assert!(Control::decode(payload).is_err()));
        assert!(peak < BOUND, "control decode peaked at {peak} bytes");
        let hello = [&b"KZ\x00\x01"[..], payload].concat();
        let peak = peak_during(|| assert!(Hello::decode(&hello).is_err()));
        assert!(peak < BOUND, "hello decode peaked at {peak} bytes");
    }
    // A hello whose listen_addrs declares 2^32 - 1 entries.
    let lying_hello =
        [&b"KZ\x00\x01\x81\xaclisten_addrs"[..], &[0xdd, 0xff, 0xff, 0xff, 0xff, 0xa0]].concat();
    let peak = peak_during(|| assert!(Hello::decode(&lying_hello).is_err()));
    assert!(peak < BOUND, "hello decode peaked at {peak} bytes");

    // A header announcing a maximal message, then only a few bytes.
    let mut input = (kizuna::wire::MAX_MESSAGE_LEN as u32).to_be_bytes().to_vec();
    input.extend_from_slice(&[0x02, 1, 2, 3]);
    let peak = peak_during(|| {
        let mut buf = BytesMut::from(&input[..]);
        assert!(matches!(FrameDecoder::default().decode(&mut buf), Ok(None)));
    });
    assert!(peak < BOUND, "FrameDecoder::decode peaked at {peak} bytes");
    let peak = peak_during(|| {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();

        let r = rt.block_on(read_frame(&mut &input[..], &FrameDecoder::default()));
        assert!(r.is_err());
    });
    assert!(peak < BOUND + 64 * 1024, "read_frame peaked at {peak} bytes");
}
