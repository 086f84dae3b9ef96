//! Media helpers shared by the media test binaries: deterministic file bytes, the raw
//! protocol's download (response, then the download stream among the delivery streams),
//! and the first attachment in a list of events.
use bytes::BytesMut;
use natter_protocol::codec::decode_frame;
use natter_protocol::pb::{self, frame::Kind, request::Op, response::Result as Res};

use super::{Raw, DEADLINE};

/// Deterministic bytes that compress to nothing useful.
pub fn file(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Download a range over the raw protocol; `Err` with the refusal. The download stream is
/// the server-opened stream whose header names a download (delivery streams name
/// conversations); it must carry exactly what `DownloadOk` announced.
pub async fn download(
    r: &mut Raw,
    media: &str,
    variant: pb::MediaVariant,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, pb::Error> {
    let res = r
        .request(Op::Download(pb::Download {
            media_id: media.into(),
            variant: variant as i32,
            offset,
            length,
        }))
        .await;
    let ok = match res {
        Res::Download(d) => d,
        Res::Error(e) => return Err(e),
        other => panic!("unexpected {other:?}"),
    };
    loop {
        let mut s = tokio::time::timeout(DEADLINE, r.conn.accept_uni())
            .await
            .unwrap()
            .unwrap();
        let mut buf = BytesMut::new();
        let header = loop {
            if let Some(f) = decode_frame(&mut buf, usize::MAX).unwrap() {
                break f;
            }
            let c = s.read_chunk(65536, true).await.unwrap().expect("a header");
            buf.extend_from_slice(&c.bytes);
        };
        let Some(Kind::StreamHeader(h)) = header.kind else {
            panic!("no header: {header:?}")
        };
        if h.download_request_id == 0 {
            continue; // a delivery stream
        }
        let mut out = buf.to_vec();
        out.extend(s.read_to_end(1 << 30).await.unwrap());
        assert_eq!(
            out.len() as u64,
            ok.length,
            "the stream carries what DownloadOk announced"
        );
        return Ok(out);
    }
}

/// The first attachment of the first message among `events` that has one.
pub fn first_attachment(events: &[pb::ConversationEvent]) -> Option<pb::Attachment> {
    events.iter().find_map(|e| match &e.body {
        Some(pb::conversation_event::Body::Message(m)) => m.body.as_ref().and_then(|b| b.attachments.first().cloned()),
        _ => None,
    })
}
