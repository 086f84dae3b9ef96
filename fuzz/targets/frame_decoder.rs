//! The frame decoder fed arbitrary bytes in arbitrary pieces: never panics, never buffers
//! past one frame's limit, and every frame it yields re-encodes to a decodable frame.
use natter_protocol::codec::{encode_frame, FrameDecoder};

const MAX: usize = 64 * 1024;

/// One input (libFuzzer's, or the smoke run's in `server/tests/fuzz_smoke.rs`).
pub fn run(data: &[u8]) {
    // First byte: piece size, so splits across reads are explored too.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);
    let mut dec = FrameDecoder::new(MAX);
    for chunk in rest.chunks(piece) {
        dec.push(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    let again = encode_frame(&frame);
                    let mut d2 = FrameDecoder::new(usize::MAX);
                    d2.push(&again);
                    assert_eq!(d2.next_frame().unwrap(), Some(frame));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Bounded buffering: at most one frame (limit + 10-byte prefix) plus one piece.
        assert!(dec.buffered() <= MAX + 10 + piece);
    }
}
