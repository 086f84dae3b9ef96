//! A real natter server for the server-side fuzz targets: started once per fuzzing
//! process (sled in a temporary directory, on /dev/shm when there is one so fsync is cheap),
//! with rate limits opened wide so the model is not second-guessed by them, and three
//! users with access tokens. Inputs talk to it over in-process connections
//! (`natter_server::transport::mem`), which run the same connection driver as QUIC.
use std::sync::OnceLock;

use natter_protocol::pb::{self, frame::Kind, request::Op, response::Result as Res};
use natter_server::transport::mem::{MemClient, MemEvent};
use natter_server::RunningServer;

pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub server: RunningServer,
    /// (username, access token) of the prepared users.
    pub users: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

pub const PASSWORD: &str = "fuzzing password";

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let mut config = natter_server::Config {
            log: "off".into(),
            ..natter_server::Config::loopback(dir.path())
        };
        let wide = u32::MAX / 4;
        config.rates.login_per_minute_per_user = wide;
        config.rates.login_per_minute_per_ip = wide;
        config.rates.register_per_minute_per_ip = wide;
        config.rates.sends_per_second_per_user = wide;
        config.rates.send_burst_per_user = wide;
        config.rates.typing_per_second_per_user = wide;
        let server = rt.block_on(natter_server::start(&config)).unwrap();
        let users = rt.block_on(async {
            let mut users = Vec::new();
            for name in ["ann", "ben", "cat"] {
                let mut c = hello(&server).await;
                let reg = Op::Register(pb::Register {
                    username: name.into(),
                    password: PASSWORD.into(),
                });
                assert!(matches!(request(&mut c, 1, reg).await, Some(Res::Register(_))));
                let login = Op::Login(pb::Login {
                    username: name.into(),
                    password: PASSWORD.into(),
                    device_name: "fuzz".into(),
                });
                let Some(Res::Login(ok)) = request(&mut c, 2, login).await else {
                    panic!("login")
                };
                users.push((name.to_string(), ok.access_token));
            }
            users
        });
        Fixture {
            rt,
            server,
            users,
            _dir: dir,
        }
    })
}

/// An in-process connection past the handshake.
pub async fn hello(server: &RunningServer) -> MemClient {
    let mut c = server.connect_in_process();
    c.send(Kind::Hello(pb::Hello {
        versions: vec![1],
        client: "fuzz".into(),
    }))
    .await
    .unwrap();
    loop {
        match c.next().await.expect("well-formed frames") {
            Some(MemEvent::Control(pb::Frame {
                kind: Some(Kind::Welcome(_)),
            })) => return c,
            Some(_) => {}
            None => panic!("closed during the handshake"),
        }
    }
}

/// Send a request and wait for its response (other frames are skipped); `None` if the
/// connection closed first.
pub async fn request(c: &mut MemClient, id: u64, op: Op) -> Option<Res> {
    c.send(Kind::Request(pb::Request { id, op: Some(op) })).await.ok()?;
    loop {
        match c.next().await.expect("well-formed frames")? {
            MemEvent::Control(pb::Frame {
                kind: Some(Kind::Response(r)),
            }) if r.id == id => return r.result,
            MemEvent::Closed(_) => return None,
            _ => {}
        }
    }
}

/// An authenticated in-process connection for prepared user `i`, and its AuthOk.
pub async fn authenticated(f: &Fixture, i: usize) -> (MemClient, pb::AuthOk) {
    let mut c = hello(&f.server).await;
    let auth = Op::Authenticate(pb::Authenticate {
        access_token: f.users[i].1.clone(),
        ..Default::default()
    });
    match request(&mut c, 1, auth).await {
        Some(Res::Auth(ok)) => (c, ok),
        other => panic!("a prepared user authenticates: {other:?}"),
    }
}
