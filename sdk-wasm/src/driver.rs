//! The I/O loop around [`ClientSession`] in the browser: connect (WebTransport first when
//! allowed, else WebSocket), pump link inputs, timers and wake-ups into the session,
//! write what it transmits. Which promise a response resolves and when to reconnect are
//! the client core's ([`natter_protocol::client::Router`], [`natter_protocol::client::Reconnect`]),
//! shared with natter-sdk; nothing here interprets frames.
use std::rc::Rc;

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use gloo_timers::future::TimeoutFuture;
use natter_protocol::client::Routed;
use natter_protocol::SessionEvent;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::client::{Inner, Wake};
use crate::link::{Input, Link};
use crate::view::{Discovery, Transport, TransportEvent};

enum Exit {
    Reconnect(String),
    Close,
}

/// How long WebTransport may take before `auto` falls back to WebSocket.
const WT_CONNECT_MS: u32 = 4_000;

async fn fetch_discovery(server: &str) -> Result<Discovery, String> {
    let url = format!("{}/natter.json", server.trim_end_matches('/'));
    let global = js_sys::global();
    let fetch = js_sys::Reflect::get(&global, &"fetch".into()).map_err(|_| "no fetch()".to_string())?;
    let fetch: js_sys::Function = fetch.dyn_into().map_err(|_| "no fetch()".to_string())?;
    let promise: js_sys::Promise = fetch
        .call1(&global, &url.clone().into())
        .map_err(|e| format!("{e:?}"))?
        .dyn_into()
        .map_err(|_| "fetch() did not return a promise".to_string())?;
    let response: web_sys::Response = JsFuture::from(promise)
        .await
        .map_err(|e| format!("fetching {url}: {e:?}"))?
        .dyn_into()
        .map_err(|_| "not a Response".to_string())?;
    if !response.ok() {
        return Err(format!("fetching {url}: HTTP {}", response.status()));
    }
    let json = JsFuture::from(response.json().map_err(|e| format!("{e:?}"))?)
        .await
        .map_err(|e| format!("reading {url}: {e:?}"))?;
    serde_wasm_bindgen::from_value(json).map_err(|e| format!("{url}: {e}"))
}

fn browser_has_webtransport() -> bool {
    js_sys::Reflect::has(&js_sys::global(), &"WebTransport".into()).unwrap_or(false)
}

async fn connect(inner: &Inner, tx: mpsc::UnboundedSender<Input>, wt_failed: &mut bool) -> Result<Link, String> {
    let discovery = fetch_discovery(&inner.config.server).await?;
    let plan = inner
        .config
        .choice
        .plan(browser_has_webtransport(), &discovery, *wt_failed);
    let mut last = String::from("no transport available");
    for transport in plan {
        let attempt = match transport {
            Transport::WebTransport => match &discovery.webtransport {
                Some(info) => {
                    futures::select! {
                        r = Link::webtransport(info, tx.clone()).fuse() => r,
                        _ = TimeoutFuture::new(WT_CONNECT_MS).fuse() => Err("WebTransport connect timed out".into()),
                    }
                }
                None => Err("the server offers no WebTransport".into()),
            },
            Transport::WebSocket => Link::websocket(&discovery.websocket.url, tx.clone()).await,
        };
        match attempt {
            Ok(link) => return Ok(link),
            Err(e) => {
                if transport == Transport::WebTransport {
                    *wt_failed = true;
                }
                last = e;
            }
        }
    }
    Err(last)
}

/// Run until the client is closed.
pub(crate) async fn run(inner: Rc<Inner>, mut wake: mpsc::UnboundedReceiver<Wake>) {
    let mut wt_failed = false;
    loop {
        let (tx, mut rx) = mpsc::unbounded();
        let exit = match connect(&inner, tx, &mut wt_failed).await {
            Ok(link) => {
                inner.transport.set(Some(link.transport()));
                inner.emit(&TransportEvent {
                    name: link.transport().name(),
                });
                {
                    let now = inner.now();
                    let mut s = inner.session.borrow_mut();
                    s.handle_connected(now);
                    s.set_datagrams_supported(true);
                }
                let exit = pump(&inner, &link, &mut rx, &mut wake).await;
                link.close();
                // Reports of the streams this connection carried are gone with it.
                for (reports, _) in inner.uploads.borrow().values() {
                    let _ = reports.unbounded_send(None);
                }
                exit
            }
            Err(e) => Exit::Reconnect(e),
        };
        inner.transport.set(None);
        let reason = match &exit {
            Exit::Reconnect(r) => r.clone(),
            Exit::Close => "closed".into(),
        };
        let now = inner.now();
        inner.session.borrow_mut().handle_disconnected(now, &reason);
        dispatch(&inner);
        if let Exit::Close = exit {
            inner.finish();
            return;
        }
        let delay = inner.reconnect.borrow_mut().next_delay();
        let mut timer = TimeoutFuture::new(delay.min(u32::MAX.into()) as u32).fuse();
        loop {
            futures::select! {
                _ = timer => break,
                w = wake.next() => match w {
                    Some(Wake::Flush) => {}
                    Some(Wake::ProductToken(t)) => inner.take_token(t),
                    Some(Wake::UploadStream(_, _, _, done)) => { let _ = done.send(Err("not connected".into())); }
                    Some(Wake::Reconnect) => break,
                    Some(Wake::Close) | None => { inner.finish(); return; }
                },
            }
        }
    }
}

async fn pump(
    inner: &Inner,
    link: &Link,
    inputs: &mut mpsc::UnboundedReceiver<Input>,
    wake: &mut mpsc::UnboundedReceiver<Wake>,
) -> Exit {
    loop {
        {
            let mut s = inner.session.borrow_mut();
            while let Some(bytes) = s.poll_transmit() {
                link.send_control(&bytes);
            }
            while let Some(d) = s.poll_datagram() {
                link.send_datagram(&d);
            }
        }
        if let Some(exit) = dispatch(inner) {
            return exit;
        }
        let now = inner.now();
        let wait = inner
            .session
            .borrow()
            .poll_timeout()
            .map_or(60_000, |t| t.0.saturating_sub(now.0).min(60_000));
        let mut timer = TimeoutFuture::new(wait as u32).fuse();
        futures::select! {
            w = wake.next() => match w {
                Some(Wake::Flush) => {}
                Some(Wake::ProductToken(t)) => inner.take_token(t),
                Some(Wake::UploadStream(header, body, signal, done)) => link.upload(header, body, signal, done),
                Some(Wake::Reconnect) => return Exit::Reconnect("reconnect requested".into()),
                Some(Wake::Close) | None => return Exit::Close,
            },
            input = inputs.next() => {
                let now = inner.now();
                let mut s = inner.session.borrow_mut();
                let result = match input {
                    Some(Input::Control(b)) => s.handle_control_data(now, &b),
                    Some(Input::Stream(k, b)) => s.handle_stream_data(now, k, &b),
                    Some(Input::StreamEnd(k)) => s.handle_stream_finished(k),
                    Some(Input::Datagram(d)) => { s.handle_datagram(now, &d); Ok(()) }
                    Some(Input::Closed(reason)) => return Exit::Reconnect(reason),
                    None => return Exit::Reconnect("transport gone".into()),
                };
                if let Err(e) = result {
                    return Exit::Reconnect(format!("protocol error: {e}"));
                }
            },
            _ = timer => { let now = inner.now(); inner.session.borrow_mut().handle_timeout(now); },
        }
    }
}

/// Route session events through the core's router (it resolves promises and keeps the
/// reconnect policy) and hand the rest to the app (through the encryption when there is
/// one). Events are taken out of the session
/// first, and no borrow is held while the app's callback runs: it may call back into the
/// client.
fn dispatch(inner: &Inner) -> Option<Exit> {
    let (events, state): (Vec<SessionEvent>, _) = {
        let mut s = inner.session.borrow_mut();
        (std::iter::from_fn(|| s.poll_event()).collect(), s.state())
    };
    let mut exit = None;
    for ev in events {
        let routed = {
            let mut reconnect = inner.reconnect.borrow_mut();
            inner.pending.borrow_mut().route(ev, state, &mut reconnect)
        };
        let ev = match routed {
            Routed::Handled => continue,
            Routed::App(ev) => ev,
            Routed::AppAndReconnect(ev, why) => {
                exit = Some(Exit::Reconnect(why));
                ev
            }
        };
        if let SessionEvent::TokenNeeded { .. } = &ev {
            inner.ask_for_token();
        }
        if let SessionEvent::UploadProgress(p) = &ev {
            if let Some((reports, _)) = inner.uploads.borrow().get(&p.upload_id) {
                let _ = reports.unbounded_send(Some(p.clone()));
            }
        }
        inner.deliver(ev);
    }
    exit
}
