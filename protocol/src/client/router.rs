//! Who waits for what: the reply side of requests and sends, and the routing of session
//! events between waiting callers, the reconnect policy and the app. The same rules for
//! every SDK: natter-sdk's replies are tokio oneshots, natter-wasm's are Promise resolvers.
use std::collections::HashMap;

use bytes::Bytes;

use super::Reconnect;
use crate::ids::{ClientMsgId, ConversationId, RequestId, Seq};
use crate::pb::{self, request::Op, response::Result as Res};
use crate::session::{ClientSession, Millis, RequestError, SessionEvent, State};

/// A send that is durable on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendAck {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Its seq.
    pub seq: Seq,
    /// Commit time (ms since the epoch).
    pub server_time_ms: u64,
    /// It had been committed before (a retry).
    pub duplicate: bool,
    /// The idempotency key used.
    pub client_msg_id: ClientMsgId,
}

/// Resolves one caller's wait (a oneshot sender, a Promise's resolver). A caller that
/// stopped waiting is no error: the value is dropped.
pub trait Reply<T> {
    /// Hand the outcome to the caller.
    fn reply(self, value: T);
}

/// What became of one session event.
#[derive(Debug)]
pub enum Routed {
    /// It resolved a waiting caller (or needed nobody): nothing for the app.
    Handled,
    /// For the app.
    App(SessionEvent),
    /// For the app, and the connection is over: reconnect (the server said go, or closed
    /// the connection with an error), after the pause the policy now holds.
    AppAndReconnect(SessionEvent, String),
}

/// Where a download's bytes go as they arrive (PROTOCOL.md §11.4), and how it ends.
pub trait DownloadSink {
    /// The next bytes, in order.
    fn data(&mut self, bytes: Bytes);
    /// The end: every byte `DownloadOk` announced arrived, or why not.
    fn finish(self, result: Result<pb::DownloadOk, DownloadError>);
}

/// Why a download did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The request failed (refused, connection lost before the answer, timed out).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The download stream ended short: the connection dropped meanwhile. `received`
    /// bytes arrived; ask again from there.
    #[error("download cut off after {received} of {expected} bytes")]
    Cut {
        /// Bytes that arrived.
        received: u64,
        /// Bytes announced.
        expected: u64,
    },
}

/// The sink of an SDK that makes no downloads.
#[derive(Debug)]
pub enum NoDownloads {}

impl DownloadSink for NoDownloads {
    fn data(&mut self, _: Bytes) {
        match *self {}
    }
    fn finish(self, _: Result<pb::DownloadOk, DownloadError>) {
        match self {}
    }
}

#[derive(Debug)]
struct Downloading<D> {
    sink: D,
    ok: Option<pb::DownloadOk>,
    received: u64,
    stream_done: bool,
}

/// Requests and sends waiting for their outcome, keyed as the session reports them.
#[derive(Debug)]
pub struct Router<R, S, D = NoDownloads> {
    requests: HashMap<RequestId, R>,
    sends: HashMap<ClientMsgId, S>,
    downloads: HashMap<RequestId, Downloading<D>>,
}

impl<R, S, D> Default for Router<R, S, D> {
    fn default() -> Self {
        Router {
            requests: HashMap::new(),
            sends: HashMap::new(),
            downloads: HashMap::new(),
        }
    }
}

impl<R, S, D> Router<R, S, D>
where
    R: Reply<Result<Res, RequestError>>,
    S: Reply<Result<SendAck, RequestError>>,
    D: DownloadSink,
{
    /// Ask for a byte range of a file; its bytes go to `sink` as the download stream
    /// brings them, whichever of the stream and the response arrives first.
    pub fn download(&mut self, session: &mut ClientSession, now: Millis, d: pb::Download, sink: D) {
        match session.request(now, Op::Download(d)) {
            Ok(id) => {
                let st = Downloading {
                    sink,
                    ok: None,
                    received: 0,
                    stream_done: false,
                };
                self.downloads.insert(id, st);
            }
            Err(e) => sink.finish(Err(RequestError::Invalid(e).into())),
        }
    }

    /// A download whose response and stream are both in: complete or cut.
    fn settle(&mut self, id: RequestId) {
        let done = self.downloads.get(&id).is_some_and(|d| d.ok.is_some() && d.stream_done);
        if !done {
            return;
        }
        let d = self.downloads.remove(&id).expect("present");
        let ok = d.ok.expect("checked");
        if d.received == ok.length {
            d.sink.finish(Ok(ok));
        } else {
            d.sink.finish(Err(DownloadError::Cut {
                received: d.received,
                expected: ok.length,
            }));
        }
    }

    fn on_download_event(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Response { id, result } => {
                let Some(d) = self.downloads.get_mut(&id) else { return };
                match result {
                    Ok(Res::Download(ok)) => {
                        d.ok = Some(ok);
                        self.settle(id);
                    }
                    Ok(_) => {
                        let d = self.downloads.remove(&id).expect("present");
                        let e = crate::ServerError::new(pb::ErrorCode::Internal, "unexpected answer to Download");
                        d.sink.finish(Err(RequestError::Server(e).into()));
                    }
                    Err(e) => {
                        let d = self.downloads.remove(&id).expect("present");
                        d.sink.finish(Err(e.into()));
                    }
                }
            }
            SessionEvent::DownloadData { request_id, data } => {
                if let Some(d) = self.downloads.get_mut(&request_id) {
                    d.received += data.len() as u64;
                    d.sink.data(data);
                }
            }
            SessionEvent::DownloadFinished { request_id } => {
                if let Some(d) = self.downloads.get_mut(&request_id) {
                    d.stream_done = true;
                    self.settle(request_id);
                }
            }
            _ => {}
        }
    }

    /// The connection is gone: downloads whose stream had not ended are cut (their
    /// requests, if unanswered, fail through the session as `ConnectionLost`).
    fn cut_downloads(&mut self) {
        let open: Vec<RequestId> = self
            .downloads
            .iter()
            .filter(|(_, d)| d.ok.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in open {
            let d = self.downloads.remove(&id).expect("present");
            let expected = d.ok.map_or(0, |o| o.length);
            d.sink.finish(Err(DownloadError::Cut {
                received: d.received,
                expected,
            }));
        }
    }

    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue a request on the session; `reply` gets its response (or, at once, why it was
    /// refused before sending).
    pub fn request(&mut self, session: &mut ClientSession, now: Millis, op: Op, reply: R) {
        match session.request(now, op) {
            Ok(id) => {
                self.requests.insert(id, reply);
            }
            Err(e) => reply.reply(Err(RequestError::Invalid(e))),
        }
    }

    /// Queue a send on the session's outbox; `reply` gets its durable ack.
    pub fn send(
        &mut self,
        session: &mut ClientSession,
        now: Millis,
        conv: ConversationId,
        id: ClientMsgId,
        body: pb::MessageBody,
        reply: S,
    ) {
        match session.send_message(now, conv, id.clone(), body) {
            Ok(()) => {
                self.sends.insert(id, reply);
            }
            Err(e) => reply.reply(Err(RequestError::Invalid(e))),
        }
    }

    /// Route one event from [`ClientSession::poll_event`]. `state` is the session's state
    /// as the event was taken (a `Welcomed` while unauthenticated establishes a session
    /// with nothing to authenticate). Responses and acks resolve their callers; a failed
    /// send resolves its caller if one waits, else the app hears of it; `GoAway` and
    /// connection errors set the policy's pause and end the connection.
    pub fn route(&mut self, ev: SessionEvent, state: State, policy: &mut Reconnect) -> Routed {
        match ev {
            SessionEvent::Response { id, .. } if self.downloads.contains_key(&id) => {
                self.on_download_event(ev);
                Routed::Handled
            }
            SessionEvent::DownloadData { .. } | SessionEvent::DownloadFinished { .. } => {
                self.on_download_event(ev);
                Routed::Handled
            }
            SessionEvent::Disconnected { .. } => {
                self.cut_downloads();
                Routed::App(ev)
            }
            SessionEvent::Response { id, result } => {
                if let Some(reply) = self.requests.remove(&id) {
                    reply.reply(result);
                }
                Routed::Handled
            }
            SessionEvent::SendAcked {
                client_msg_id,
                conversation_id,
                seq,
                server_time_ms,
                duplicate,
            } => {
                if let Some(reply) = self.sends.remove(&client_msg_id) {
                    reply.reply(Ok(SendAck {
                        conversation_id,
                        seq,
                        server_time_ms,
                        duplicate,
                        client_msg_id,
                    }));
                }
                Routed::Handled
            }
            SessionEvent::SendFailed {
                ref client_msg_id,
                ref error,
                ..
            } => match self.sends.remove(client_msg_id) {
                Some(reply) => {
                    reply.reply(Err(RequestError::Server(error.clone())));
                    Routed::Handled
                }
                None => Routed::App(ev),
            },
            SessionEvent::GoAway {
                ref reason,
                reconnect_after_ms,
            } => {
                policy.pause(reconnect_after_ms.into());
                let why = format!("server going away: {reason}");
                Routed::AppAndReconnect(ev, why)
            }
            SessionEvent::ConnectionError(ref e) => {
                if e.retry_after_ms > 0 {
                    policy.pause(e.retry_after_ms.into());
                }
                let why = format!("server closed the connection: {e}");
                Routed::AppAndReconnect(ev, why)
            }
            SessionEvent::Connected { .. } => {
                policy.established();
                Routed::App(ev)
            }
            SessionEvent::Welcomed { .. } if state == State::Unauthenticated => {
                // Nothing to authenticate: the connection itself is the success.
                policy.established();
                Routed::App(ev)
            }
            ev => Routed::App(ev),
        }
    }

    /// Requests waiting for a response (for tests and diagnostics).
    pub fn waiting(&self) -> (usize, usize) {
        (self.requests.len(), self.sends.len())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::error::ServerError;
    use crate::session::SessionConfig;

    /// A reply that records what it got.
    #[derive(Clone)]
    struct Slot<T>(Rc<RefCell<Option<T>>>);

    impl<T> Default for Slot<T> {
        fn default() -> Self {
            Slot(Rc::new(RefCell::new(None)))
        }
    }

    impl<T> Reply<T> for Slot<T> {
        fn reply(self, value: T) {
            *self.0.borrow_mut() = Some(value);
        }
    }

    type TestRouter = Router<Slot<Result<Res, RequestError>>, Slot<Result<SendAck, RequestError>>>;

    fn session() -> ClientSession {
        ClientSession::new(SessionConfig::default(), None)
    }

    #[test]
    fn a_response_resolves_its_caller_and_not_the_app() {
        let mut s = session();
        let mut router = TestRouter::new();
        let slot = Slot::default();
        router.request(&mut s, Millis(0), Op::Ping(pb::Ping { nonce: 1 }), slot.clone());
        assert_eq!(router.waiting(), (1, 0));
        let id = RequestId(1);
        let ev = SessionEvent::Response {
            id,
            result: Ok(Res::Done(pb::Done {})),
        };
        let mut policy = Reconnect::new(100, 1000);
        assert!(matches!(router.route(ev, State::Ready, &mut policy), Routed::Handled));
        assert!(matches!(*slot.0.borrow(), Some(Ok(Res::Done(_)))));
        assert_eq!(router.waiting(), (0, 0));
    }

    #[test]
    fn a_refused_request_is_answered_at_once() {
        let mut s = session();
        let mut router = TestRouter::new();
        let slot = Slot::default();
        let op = Op::Register(pb::Register {
            username: "x".into(),
            password: "p".into(),
        });
        router.request(&mut s, Millis(0), op, slot.clone());
        assert!(matches!(*slot.0.borrow(), Some(Err(RequestError::Invalid(_)))));
        assert_eq!(router.waiting(), (0, 0));
    }

    #[test]
    fn a_failed_send_goes_to_its_caller_if_one_waits_else_to_the_app() {
        let mut s = session();
        let mut router = TestRouter::new();
        let slot = Slot::default();
        let id = ClientMsgId::from_random([7; 16]);
        let body = pb::MessageBody {
            text: "hi".into(),
            ..Default::default()
        };
        router.send(&mut s, Millis(0), ConversationId(5), id.clone(), body, slot.clone());
        let failed = |id: &ClientMsgId| SessionEvent::SendFailed {
            client_msg_id: id.clone(),
            conversation_id: ConversationId(5),
            error: ServerError::new(pb::ErrorCode::Forbidden, "no"),
        };
        let mut policy = Reconnect::new(100, 1000);
        assert!(matches!(
            router.route(failed(&id), State::Ready, &mut policy),
            Routed::Handled
        ));
        assert!(matches!(*slot.0.borrow(), Some(Err(RequestError::Server(_)))));
        let other = ClientMsgId::from_random([8; 16]);
        assert!(matches!(
            router.route(failed(&other), State::Ready, &mut policy),
            Routed::App(_)
        ));
    }

    #[test]
    fn go_away_pauses_the_policy_and_ends_the_connection() {
        let mut router = TestRouter::new();
        let mut policy = Reconnect::new(100, 1000);
        let ev = SessionEvent::GoAway {
            reason: "drain".into(),
            reconnect_after_ms: 7,
        };
        assert!(matches!(
            router.route(ev, State::Ready, &mut policy),
            Routed::AppAndReconnect(_, _)
        ));
        assert_eq!(policy.next_delay(), 7);
        let mut e = ServerError::new(pb::ErrorCode::LimitExceeded, "busy");
        e.retry_after_ms = 900;
        let ev = SessionEvent::ConnectionError(e);
        assert!(matches!(
            router.route(ev, State::Ready, &mut policy),
            Routed::AppAndReconnect(_, _)
        ));
        assert_eq!(policy.next_delay(), 900);
    }

    #[test]
    fn an_established_session_resets_the_backoff_but_a_bare_welcome_while_authenticating_does_not() {
        let mut router = TestRouter::new();
        let mut policy = Reconnect::new(100, 10_000);
        policy.next_delay();
        policy.next_delay();
        let welcomed = || SessionEvent::Welcomed {
            version: 1,
            limits: pb::Limits::default(),
        };
        router.route(welcomed(), State::Authenticating, &mut policy);
        assert_eq!(policy.next_delay(), 400, "still backing off");
        router.route(welcomed(), State::Unauthenticated, &mut policy);
        assert_eq!(policy.next_delay(), 100);
    }
}
