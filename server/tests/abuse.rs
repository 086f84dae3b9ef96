//! Hostile input against the live server (real QUIC on loopback): each abuse gets its typed
//! error, and a well-behaved client on the same server keeps sending and receiving.
mod common;

use common::*;
use natter_protocol::pb::{self, request::Op, response::Result as Res, ErrorCode};
use natter_sdk::{Client, ConversationId};

fn limited_config(dir: &std::path::Path) -> natter_server::Config {
    let mut cfg = config(dir);
    cfg.rates.login_per_minute_per_user = 5;
    cfg.rates.sends_per_second_per_user = 20;
    cfg.rates.send_burst_per_user = 20;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_brute_force_is_rate_limited_while_others_chat() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&limited_config(dir.path())).await.unwrap();
    let _victim = user(&s, "victim").await;
    let alice = user(&s, "alice").await;
    let mut bob = user(&s, "bob").await;
    let dm = ConversationId(alice.client.direct("bob").await.unwrap().conversation_id);

    let (attacker, _events) = Client::connect(client_config(s.addr, &s.fingerprint, None)).unwrap();
    let mut refused = None;
    for i in 0..10 {
        let err = attacker
            .login("victim", &format!("guess-{i:04}"), "x")
            .await
            .unwrap_err();
        match err.code() {
            Some(ErrorCode::InvalidCredentials) => {}
            Some(ErrorCode::RateLimited) => {
                refused = Some(i);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
        alice.client.send(dm, &format!("still here {i}")).await.unwrap();
    }
    // The victim's own login counted as one attempt, so the 5th guess is refused.
    assert_eq!(refused, Some(4), "attempts beyond the per-account quota are refused");
    // Even the right password waits out the limit, and the error says for how long.
    match attacker.login("victim", PASSWORD, "x").await.unwrap_err() {
        natter_sdk::ClientError::Request(natter_sdk::RequestError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert!(e.retry_after_ms > 0);
        }
        other => panic!("{other:?}"),
    }
    let got = messages(&mut bob.events, dm, 4).await;
    assert_eq!(
        got.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
        ["still here 0", "still here 1", "still here 2", "still here 3"]
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_flood_gets_typed_errors_and_the_sdk_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = natter_server::start(&limited_config(dir.path())).await.unwrap();
    let _flooder = user(&s, "flooder").await;
    let alice = user(&s, "alice").await;
    let mut bob = user(&s, "bob").await;
    let dm = ConversationId(alice.client.direct("bob").await.unwrap().conversation_id);
    // Raw: a burst over the quota gets RATE_LIMITED with a retry time.
    let mut raw = Raw::hello(s.addr, &s.fingerprint).await;
    raw.login("flooder").await;
    let conv = match raw
        .request(Op::CreateDirect(pb::CreateDirect { username: "bob".into() }))
        .await
    {
        Res::Conversation(c) => c.conversation_id,
        other => panic!("{other:?}"),
    };
    // Pipelined: all 30 requests are written before any response is read, so the burst
    // reaches the server at once whatever the machine's load.
    for i in 0..30u64 {
        let body = pb::MessageBody {
            text: format!("flood {i}"),
            ..Default::default()
        };
        let op = Op::Send(pb::SendMessage {
            conversation_id: conv,
            client_msg_id: format!("f{i}"),
            body: Some(body),
        });
        raw.frame(pb::frame::Kind::Request(pb::Request {
            id: 1000 + i,
            op: Some(op),
        }))
        .await;
    }
    let (mut answered, mut limited) = (0, 0);
    while answered < 30 {
        match raw.read().await {
            Some(pb::Frame {
                kind: Some(pb::frame::Kind::Response(r)),
            }) if r.id >= 1000 => {
                answered += 1;
                if let Some(Res::Error(e)) = r.result {
                    assert_eq!(e.code, ErrorCode::RateLimited as i32);
                    assert!(e.retry_after_ms > 0);
                    limited += 1;
                }
            }
            Some(_) => {}
            None => panic!("connection ended"),
        }
    }
    assert!(limited >= 5, "a burst of 30 over a quota of 20 is limited ({limited})");
    // The SDK backs off by the retry time and gets every message through exactly once.
    let sends = (0..40).map(|i| {
        let c = alice.client.clone();
        async move { c.send(dm, &format!("m{i}")).await.unwrap().seq }
    });
    let mut seqs: Vec<_> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|s| s.0)
        .collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 40);
    let got = messages(&mut bob.events, dm, 40).await;
    let mut texts: Vec<String> = got.into_iter().map(|m| m.1).collect();
    texts.sort();
    let mut want: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(texts, want);
    s.shutdown().await;
}
