//! Arbitrary bytes through `FrameDecoder::decode`, fed in chunks whose sizes come from the
//! input itself. Checks: no panic, never more than one frame + header left buffered, and
//! every decoded frame re-encodes to something that decodes to the same frame.
#![no_main]

use bytes::BytesMut;
use kizuna::wire::{encode_frame, FrameDecoder, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: chunk size selector; second: decoder limit selector.
    let (Some(&chunk), Some(&limit)) = (data.first(), data.get(1)) else { return };
    let input = &data[2..];
    let decoder =
        if limit & 1 == 0 { FrameDecoder::default() } else { FrameDecoder::new(usize::from(limit) * 16) };
    let bound = HEADER_LEN + decoder.max_frame_len();
    let chunk = usize::from(chunk).max(1);
    let mut buf = BytesMut::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let mut again = BytesMut::new();
                    encode_frame(&frame, &mut again).expect("a decoded frame re-encodes");
                    let back = FrameDecoder::default().decode(&mut again).expect("re-encoding decodes");
                    assert_eq!(back.as_ref(), Some(&frame));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() < bound);
    }
});
