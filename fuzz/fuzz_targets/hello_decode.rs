//! Arbitrary bytes through `Hello::decode` and `Control::decode`, both raw and behind a
//! valid magic + version prefix. Decoded values must re-encode and decode to themselves.
#![no_main]

use kizuna::wire::{Control, Hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let prefixed = [&b"KZ\x00\x01"[..], data].concat();
    for input in [data, &prefixed[..]] {
        if let Ok(h) = Hello::decode(input) {
            let again = h.encode().expect("a decoded hello re-encodes");
            assert_eq!(Hello::decode(&again).expect("re-encoding decodes"), h);
        }
    }
    if let Ok(c) = Control::decode(data) {
        let again = c.encode().expect("a decoded control message re-encodes");
        assert_eq!(Control::decode(&again).expect("re-encoding decodes"), c);
    }
});
