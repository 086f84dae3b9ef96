//! Every wire message decoded from arbitrary bytes: a typed error or a value, never a panic;
//! decoded values re-encode and decode to themselves.
use natter_protocol::pb;
use prost::Message;

fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(m) = M::decode(data) {
        let again = M::decode(&m.encode_to_vec()[..]).expect("re-encoded message decodes");
        assert_eq!(again, m);
    }
}

/// One input (libFuzzer's, or the smoke run's in `server/tests/fuzz_smoke.rs`).
pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 12 {
        0 => roundtrip::<pb::Frame>(rest),
        1 => roundtrip::<pb::Request>(rest),
        2 => roundtrip::<pb::Response>(rest),
        3 => roundtrip::<pb::ConversationEvent>(rest),
        4 => roundtrip::<pb::Hello>(rest),
        5 => roundtrip::<pb::Welcome>(rest),
        6 => roundtrip::<pb::AuthOk>(rest),
        7 => roundtrip::<pb::HistoryPage>(rest),
        8 => roundtrip::<pb::Signal>(rest),
        9 => roundtrip::<pb::ConversationSummary>(rest),
        10 => roundtrip::<pb::Authenticate>(rest),
        _ => {
            // The full path: body decoding with decompression.
            let _ = natter_protocol::codec::decode_body(bytes::Bytes::copy_from_slice(rest));
        }
    }
}
