//! Email digests (PROTOCOL.md §13.6) to a real SMTP server on loopback (`smtp_sink.py`,
//! aiosmtpd): one digest for a user offline past the quiet period, none for one who came
//! back, turned them off or never confirmed the address, and the confirmation and
//! unsubscribe links work.
use std::process::Stdio;
use std::time::Duration;

use natter_protocol::pb;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

use super::common::*;
use super::go_offline;

/// The SMTP server, and the mail it took, one JSON line each.
struct Sink {
    _child: tokio::process::Child,
    lines: Lines<BufReader<tokio::process::ChildStdout>>,
    port: u16,
}

impl Sink {
    async fn start() -> Sink {
        let py = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py/bin/python");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/push/smtp_sink.py");
        let mut child = tokio::process::Command::new(py)
            .arg(script)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the SMTP server starts (scripts/test.sh puts aiosmtpd in target/py)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let port = first.strip_prefix("port ").unwrap().parse().unwrap();
        Sink {
            _child: child,
            lines,
            port,
        }
    }

    /// The next message the server took.
    async fn next(&mut self) -> serde_json::Value {
        let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("a digest before the deadline")
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

/// `name`, with an email address (and digests on unless `off`), offline; the address
/// confirmed through the link mailed to it if `confirm`.
async fn offline_with_email(s: &natter_server::RunningServer, sink: &mut Sink, name: &str, off: bool, confirm: bool) {
    let d = user(s, name).await;
    let mut settings = d.client.notify_settings().await.unwrap();
    settings.email = format!("{name}@example.com");
    settings.no_email_digest = off;
    let saved = d.client.set_notify_settings(settings).await.unwrap();
    assert!(!saved.email_verified, "a new address waits for its confirmation");
    // The confirmation mail.
    let m = sink.next().await;
    assert_eq!(m["to"][0], format!("{name}@example.com"));
    assert_eq!(m["subject"], "Confirm your address for natter digests");
    assert!(m["headers"]["List-Unsubscribe"].is_null(), "not a digest");
    let body = m["body"].as_str().unwrap();
    let link = body
        .split_whitespace()
        .find(|w| w.starts_with("https://chat.natter.test/verify-email?"))
        .expect("a confirmation link");
    let path = link.strip_prefix("https://chat.natter.test/").unwrap();
    let web = s.web_addr.expect("the web endpoint");
    let http = reqwest::Client::new();
    // A scanner's GET confirms nothing; a forged token is refused.
    let page = http.get(format!("http://{web}/{path}")).send().await.unwrap();
    assert!(page.text().await.unwrap().contains("<form method=post"));
    let forged = http
        .post(format!("http://{web}/{}", path.replace("t=", "t=00")))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(!d.client.notify_settings().await.unwrap().email_verified);
    if confirm {
        let res = http.post(format!("http://{web}/{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(d.client.notify_settings().await.unwrap().email_verified);
        // Saving the same address again keeps it confirmed.
        let again = d.client.notify_settings().await.unwrap();
        assert!(d.client.set_notify_settings(again).await.unwrap().email_verified);
    }
    let mut r = Raw::hello(s.addr, &s.fingerprint).await;
    r.login(name).await;
    drop(d);
    go_offline(s, r).await;
}

#[tokio::test]
async fn a_user_offline_past_the_quiet_period_gets_one_digest_and_one_who_came_back_none() {
    let mut sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.email = Some(natter_server::config::EmailConfig {
        smtp_url: format!("smtp://127.0.0.1:{}", sink.port),
        from: "natter <noreply@natter.test>".into(),
        web_url: "https://chat.natter.test/".into(),
        quiet_secs: 2,
    });
    let s = natter_server::start(&cfg).await.unwrap();
    let bob = user(&s, "bob").await;
    // Frank never confirms his address.
    for (name, off, confirm) in [
        ("alice", false, true),
        ("carol", false, true),
        ("erin", true, true),
        ("frank", false, false),
        ("dave", false, true),
    ] {
        offline_with_email(&s, &mut sink, name, off, confirm).await;
    }
    // Bad addresses are refused.
    let mut bad = bob.client.notify_settings().await.unwrap();
    bad.email = "bob@example.com\r\nBcc: x@evil".into();
    let e = bob.client.set_notify_settings(bad).await.unwrap_err();
    assert_eq!(e.code(), Some(pb::ErrorCode::BadRequest), "{e:?}");

    let mut dms = std::collections::HashMap::new();
    for name in ["alice", "carol", "erin", "frank", "dave"] {
        dms.insert(
            name,
            natter_sdk::ConversationId(bob.client.direct(name).await.unwrap().conversation_id),
        );
    }
    for text in ["are you there?", "lunch at 1?"] {
        bob.client.send(dms["alice"], text).await.unwrap();
    }
    bob.client.send(dms["carol"], "hi carol").await.unwrap();
    bob.client.send(dms["erin"], "hi erin").await.unwrap();
    bob.client.send(dms["frank"], "hi frank").await.unwrap();
    // Carol comes back within the quiet period.
    let carol = device(s.addr, &s.fingerprint, "carol", false).await;
    // Dave's digest comes last: when it is here, every earlier one was decided.
    tokio::time::sleep(Duration::from_millis(300)).await; // his message a beat later
    bob.client.send(dms["dave"], "hi dave").await.unwrap();

    let mut got = Vec::new();
    loop {
        let m = sink.next().await;
        let to = m["to"][0].as_str().unwrap().to_owned();
        got.push(m);
        if to == "dave@example.com" {
            break;
        }
    }
    let to: Vec<&str> = got.iter().map(|m| m["to"][0].as_str().unwrap()).collect();
    assert_eq!(
        to,
        ["alice@example.com", "dave@example.com"],
        "one each, none for carol (back), erin (off) or frank (unconfirmed)"
    );
    let alice = &got[0];
    assert_eq!(alice["subject"], "You have 2 unread messages on natter");
    let body = alice["body"].as_str().unwrap();
    assert!(
        body.contains("bob: are you there?") && body.contains("bob: lunch at 1?"),
        "{body}"
    );
    assert!(body.contains("https://chat.natter.test/"), "a link back: {body}");
    let unsubscribe = alice["headers"]["List-Unsubscribe"].as_str().unwrap();
    assert_eq!(alice["headers"]["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");
    let url = unsubscribe.trim_matches(['<', '>']);
    assert!(body.contains(url), "the body has the unsubscribe link");

    // The link, one-click, against this server's web endpoint: alice's digests stop.
    let path = url.strip_prefix("https://chat.natter.test/").unwrap();
    let web = s.web_addr.expect("the web endpoint");
    let http = reqwest::Client::new();
    let forged = http
        .post(format!("http://{web}/{}", path.replace("t=", "t=00")))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403, "a forged token does nothing");
    // Opened in a browser (or fetched by a mail scanner) it only asks.
    let page = http.get(format!("http://{web}/{path}")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<form method=post"));
    let res = http.post(format!("http://{web}/{path}")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    bob.client.send(dms["alice"], "still there?").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.client.send(dms["dave"], "and you?").await.unwrap();
    let next = sink.next().await;
    assert_eq!(next["to"][0], "dave@example.com", "nothing more for alice");
    drop(carol);
}
