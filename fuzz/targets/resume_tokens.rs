//! Authenticate with arbitrary access tokens, resume tokens and cursors (including a real
//! access token paired with forged, foreign or replayed resume tokens). The access token
//! alone decides who you are: an unknown one is refused (UNAUTHENTICATED or
//! TOKEN_REVOKED), a valid one authenticates as its own user, and a session is `resumed`
//! only with that same device's current resume token.
#[path = "../common/server.rs"]
mod server;

use natter_protocol::pb::{self, request::Op, response::Result as Res, ErrorCode};

/// One input (libFuzzer's, or the smoke run's in `server/tests/fuzz_smoke.rs`).
pub fn run(data: &[u8]) {
    let f = server::fixture();
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(3, '\u{0}');
    let fuzz_access = parts.next().unwrap_or("").to_string();
    let fuzz_resume = parts.next().unwrap_or("").to_string();
    let cursors: Vec<pb::Cursor> = parts
        .next()
        .unwrap_or("")
        .bytes()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| pb::Cursor {
            conversation_id: u64::from(c[0]),
            seq: u64::from(*c.get(1).unwrap_or(&0)),
        })
        .collect();
    f.rt.block_on(async {
        let user = usize::from(mode % 3);
        // A real resume token of another user's live session, to try as a foreign one.
        let (_other, other_ok) = server::authenticated(f, (user + 1) % 3).await;
        let other_resume = other_ok.resume_token;
        let (access, resume, expect_user) = match mode / 3 % 4 {
            0 => (fuzz_access, fuzz_resume, None),
            1 => (f.users[user].1.clone(), fuzz_resume, Some(user)),
            2 => (f.users[user].1.clone(), other_resume, Some(user)),
            _ => (fuzz_access, other_resume, None),
        };
        let mut c = server::hello(&f.server).await;
        let auth = Op::Authenticate(pb::Authenticate {
            access_token: access.clone(),
            resume_token: resume,
            cursors,
            product_token: String::new(),
        });
        match server::request(&mut c, 1, auth).await {
            Some(Res::Auth(ok)) => {
                let i = f
                    .users
                    .iter()
                    .position(|(_, t)| *t == access)
                    .expect("only a real token authenticates");
                assert_eq!(expect_user.unwrap_or(i), i);
                assert_eq!(ok.username, f.users[i].0, "the access token decides who you are");
                assert!(!ok.resumed, "no foreign or forged resume token resumes a session");
            }
            Some(Res::Error(e)) => {
                // A valid access token is never refused because of its resume token or
                // cursors (at most for too many cursors or connections, which keeps the login).
                assert!(
                    expect_user.is_none()
                        || e.code == ErrorCode::BadRequest as i32
                        || e.code == ErrorCode::LimitExceeded as i32,
                    "valid token refused: {e:?}"
                );
                let code = e.code;
                assert!(
                    [
                        ErrorCode::Unauthenticated,
                        ErrorCode::TokenRevoked,
                        ErrorCode::BadRequest,
                        ErrorCode::LimitExceeded
                    ]
                    .iter()
                    .any(|c| *c as i32 == code),
                    "typed refusal, got {e:?}"
                );
            }
            None => {} // closed: fine for garbage
            Some(other) => panic!("unexpected response {other:?}"),
        }
    });
}
