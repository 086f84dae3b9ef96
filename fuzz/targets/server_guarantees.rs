//! Structured: arbitrary sequences of valid operations by three users (create groups and
//! direct conversations, add and remove members, leave, send, retry a send with the same
//! client message id) against the real server, checked against a model and the
//! guarantees: authorization (only members send; only the owner changes membership),
//! idempotency (a retry returns the first seq), order (each conversation's seqs are
//! consecutive, history is gap-free, and every member receives its events in seq order
//! without duplicates, all members seeing the same event at the same seq).
#[path = "../common/server.rs"]
mod server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use arbitrary::Arbitrary;
use natter_protocol::pb::{self, frame::Kind, request::Op, response::Result as Res, ErrorCode};
use natter_server::transport::mem::{MemClient, MemEvent};

#[derive(Arbitrary, Debug)]
enum Action {
    Direct { a: u8, b: u8 },
    Group { owner: u8, members: u8 },
    Add { by: u8, conv: u8, who: u8 },
    Remove { by: u8, conv: u8, who: u8 },
    Leave { user: u8, conv: u8 },
    Send { user: u8, conv: u8 },
    Retry { user: u8 },
}

struct Conv {
    id: u64,
    owner: Option<usize>,
    members: HashSet<usize>,
    last_seq: u64,
}

/// Distinguishes client message ids across inputs (the server outlives them).
static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn check_conv_seq(conv: &mut Conv, seq: u64, what: &str) {
    assert_eq!(seq, conv.last_seq + 1, "{what}: seqs are consecutive per conversation");
    conv.last_seq = seq;
}

/// One input (libFuzzer's, or the smoke run's in `server/tests/fuzz_smoke.rs`), read as
/// `Vec<Action>` the way libFuzzer's typed targets do.
pub fn run(data: &[u8]) {
    let Ok(actions) = <Vec<Action> as arbitrary::Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(data))
    else {
        return;
    };
    let f = server::fixture();
    f.rt.block_on(async {
        let mut clients: Vec<MemClient> = Vec::new();
        let mut ids: Vec<u64> = Vec::new();
        for i in 0..3 {
            let (c, ok) = server::authenticated(f, i).await;
            ids.push(ok.user_id);
            clients.push(c);
        }
        let names: Vec<String> = f.users.iter().map(|(n, _)| n.clone()).collect();
        let mut convs: Vec<Conv> = Vec::new();
        let mut last_send: Option<(usize, u64, String, u64)> = None;
        let mut n_msg = 0u64;
        for (rid, action) in (101u64..).zip(actions.iter().take(40)) {
            match *action {
                Action::Direct { a, b } => {
                    let (a, b) = (usize::from(a % 3), usize::from(b % 3));
                    let op = Op::CreateDirect(pb::CreateDirect {
                        username: names[b].clone(),
                        encrypted: false,
                    });
                    match server::request(&mut clients[a], rid, op).await {
                        Some(Res::Conversation(s)) if a != b => {
                            // Direct conversations are one per pair: created once, then found.
                            if !convs.iter().any(|c| c.id == s.conversation_id) {
                                convs.push(Conv {
                                    id: s.conversation_id,
                                    owner: None,
                                    members: [a, b].into(),
                                    last_seq: s.last_seq,
                                });
                            }
                        }
                        Some(Res::Error(_)) if a == b => {}
                        other => panic!("direct {a}->{b}: {other:?}"),
                    }
                }
                Action::Group { owner, members } => {
                    let owner = usize::from(owner % 3);
                    let others: Vec<usize> = (0..3).filter(|i| *i != owner && members & (1 << i) != 0).collect();
                    let op = Op::CreateGroup(pb::CreateGroup {
                        name: format!("g{rid}"),
                        usernames: others.iter().map(|i| names[*i].clone()).collect(),
                    });
                    let Some(Res::Conversation(s)) = server::request(&mut clients[owner], rid, op).await else {
                        panic!("group creation")
                    };
                    let mut c = Conv {
                        id: s.conversation_id,
                        owner: Some(owner),
                        members: others.iter().copied().chain([owner]).collect(),
                        last_seq: 0,
                    };
                    check_conv_seq(&mut c, s.last_seq, "creation");
                    convs.push(c);
                }
                Action::Add { by, conv, who } | Action::Remove { by, conv, who } => {
                    let n = convs.len().max(1);
                    let Some(c) = convs.get_mut(usize::from(conv) % n) else {
                        continue;
                    };
                    let (by, who) = (usize::from(by % 3), usize::from(who % 3));
                    let add = matches!(action, Action::Add { .. });
                    let op = if add {
                        Op::AddMembers(pb::AddMembers {
                            conversation_id: c.id,
                            usernames: vec![names[who].clone()],
                        })
                    } else {
                        Op::RemoveMember(pb::RemoveMember {
                            conversation_id: c.id,
                            user_id: ids[who],
                        })
                    };
                    let res = server::request(&mut clients[by], rid, op).await;
                    let allowed = c.owner == Some(by)
                        && if add {
                            !c.members.contains(&who)
                        } else {
                            c.members.contains(&who) && who != by
                        };
                    match res {
                        Some(Res::Done(_)) => {
                            assert!(
                                allowed || (add && c.members.contains(&who) && c.owner == Some(by)),
                                "{action:?} allowed"
                            );
                            if allowed {
                                if add {
                                    c.members.insert(who);
                                } else {
                                    c.members.remove(&who);
                                }
                                c.last_seq += 1;
                            }
                        }
                        Some(Res::Error(e)) => assert!(!allowed, "{action:?} refused: {e:?}"),
                        other => panic!("{action:?}: {other:?}"),
                    }
                }
                Action::Leave { user, conv } => {
                    let n = convs.len().max(1);
                    let Some(c) = convs.get_mut(usize::from(conv) % n) else {
                        continue;
                    };
                    let user = usize::from(user % 3);
                    let op = Op::Leave(pb::LeaveConversation { conversation_id: c.id });
                    // PROTOCOL.md §5.4: any member of a group but an owner with others left
                    // (a sole owner may leave; direct conversations have no membership changes).
                    let allowed = c.owner.is_some()
                        && c.members.contains(&user)
                        && (c.owner != Some(user) || c.members.len() == 1);
                    match server::request(&mut clients[user], rid, op).await {
                        Some(Res::Done(_)) => {
                            assert!(allowed, "{action:?} allowed");
                            c.members.remove(&user);
                            if c.owner == Some(user) {
                                // The sole owner left: nobody is left to manage it.
                                c.owner = None;
                            }
                            c.last_seq += 1;
                        }
                        Some(Res::Error(_)) => assert!(!allowed, "{action:?} refused"),
                        other => panic!("{action:?}: {other:?}"),
                    }
                }
                Action::Send { user, conv } => {
                    let n = convs.len().max(1);
                    let Some(c) = convs.get_mut(usize::from(conv) % n) else {
                        continue;
                    };
                    let user = usize::from(user % 3);
                    // Unique for the whole fuzzing process: the server remembers every id.
                    n_msg += 1;
                    let cmid = format!("fz-{}-{n_msg}", RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                    let op = Op::Send(pb::SendMessage {
                        conversation_id: c.id,
                        client_msg_id: cmid.clone(),
                        body: Some(pb::MessageBody {
                            text: format!("t{rid}"),
                            ..Default::default()
                        }),
                    });
                    match server::request(&mut clients[user], rid, op).await {
                        Some(Res::Sent(s)) => {
                            assert!(c.members.contains(&user), "only members send");
                            assert!(!s.duplicate);
                            check_conv_seq(c, s.seq, "send");
                            last_send = Some((user, c.id, cmid, s.seq));
                        }
                        Some(Res::Error(e)) => {
                            assert!(!c.members.contains(&user), "a member's send refused: {e:?}");
                            assert!(
                                e.code == ErrorCode::NotMember as i32 || e.code == ErrorCode::Forbidden as i32,
                                "{e:?}"
                            );
                        }
                        other => panic!("send: {other:?}"),
                    }
                }
                Action::Retry { user } => {
                    let Some((sender, conv, cmid, seq)) = last_send.clone() else {
                        continue;
                    };
                    let user = usize::from(user % 3);
                    let op = Op::Send(pb::SendMessage {
                        conversation_id: conv,
                        client_msg_id: cmid,
                        body: Some(pb::MessageBody {
                            text: "retry".into(),
                            ..Default::default()
                        }),
                    });
                    let res = server::request(&mut clients[user], rid, op).await;
                    if user == sender {
                        match res {
                            Some(Res::Sent(s)) => {
                                assert_eq!(s.seq, seq, "a retry returns the first seq");
                                assert!(s.duplicate);
                            }
                            // The sender may have been removed since: then it is refused.
                            Some(Res::Error(_)) => {}
                            other => panic!("retry: {other:?}"),
                        }
                    }
                    // Another user's send with the same id is their own message (ids are per
                    // sender), or refused; either way the model learns it below from history.
                    if let Some(Res::Sent(s)) = res {
                        if s.seq != seq || user != sender {
                            let c = convs.iter_mut().find(|c| c.id == conv).unwrap();
                            if !s.duplicate {
                                check_conv_seq(c, s.seq, "another sender's same id");
                            }
                        }
                    }
                }
            }
        }

        // Order and exactly-once on every member's delivery streams, and agreement.
        let mut seen: BTreeMap<(u64, u64), (u64, Vec<u8>)> = BTreeMap::new();
        for (i, c) in clients.iter_mut().enumerate() {
            // A ping round trip: everything committed before it has been fanned out.
            let _ = server::request(c, 1_000_000, Op::Ping(pb::Ping { nonce: 1 })).await;
            let _ = c.finish().await;
            let mut last: HashMap<u64, u64> = HashMap::new();
            let mut stream_conv: HashMap<u64, u64> = HashMap::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(ev) = c.next().await.expect("well-formed frames") {
                    let MemEvent::Delivery(stream, frame) = ev else {
                        continue;
                    };
                    match frame.kind {
                        Some(Kind::StreamHeader(h)) => {
                            stream_conv.insert(stream, h.conversation_id);
                        }
                        Some(Kind::Event(e)) => {
                            // A stream whose header arrived while `server::request` waited
                            // for a response was skipped there; one seen here binds its stream
                            // to one conversation.
                            if let Some(conv) = stream_conv.get(&stream) {
                                assert_eq!(*conv, e.conversation_id, "one conversation per stream");
                            }
                            if let Some(prev) = last.insert(e.conversation_id, e.seq) {
                                assert!(e.seq > prev, "user {i}: seq {} after {prev}", e.seq);
                            }
                            let bytes = prost::Message::encode_to_vec(&e);
                            if let Some((_, other)) = seen.get(&(e.conversation_id, e.seq)) {
                                assert_eq!(other, &bytes, "members see the same event at a seq");
                            }
                            seen.insert((e.conversation_id, e.seq), (i as u64, bytes));
                        }
                        _ => {}
                    }
                }
            })
            .await;
        }
        // History is gap-free up to the model's last seq for a current member.
        for c in &convs {
            let Some(&m) = c.members.iter().next() else { continue };
            let (mut client, _) = server::authenticated(f, m).await;
            let op = Op::History(pb::GetHistory {
                conversation_id: c.id,
                anchor: Some(pb::get_history::Anchor::After(0)),
                limit: 200,
            });
            let Some(Res::History(h)) = server::request(&mut client, 2, op).await else {
                panic!("history")
            };
            let seqs: Vec<u64> = h.events.iter().map(|e| e.seq).collect();
            let want: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, want, "history is gap-free");
            assert_eq!(h.last_seq, c.last_seq, "model and server agree on the last seq");
        }
    });
}
