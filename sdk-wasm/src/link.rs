//! Browser transports as one [`Link`]: WebTransport (web-sys, with
//! `serverCertificateHashes` for development certificates) or WebSocket (`natter.v1`,
//! channels per [`natter_protocol::wsmux`]). A link only moves bytes: everything it reads
//! becomes an [`Input`] on the driver's channel, in arrival order per stream.
use futures::channel::{mpsc, oneshot};
use futures::FutureExt;
use js_sys::{Reflect, Uint8Array};
use natter_protocol::wsmux::{self, Channel};
use natter_protocol::StreamKey;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    Blob, ReadableStream, ReadableStreamDefaultReader, WebSocket, WebTransport, WebTransportBidirectionalStream,
    WebTransportCloseInfo, WebTransportHash, WebTransportOptions, WritableStream, WritableStreamDefaultWriter,
};

use crate::view::{Transport, WebTransportInfo};

/// What a link reports.
#[derive(Debug)]
pub(crate) enum Input {
    Control(Vec<u8>),
    Stream(StreamKey, Vec<u8>),
    StreamEnd(StreamKey),
    Datagram(Vec<u8>),
    Closed(String),
}

pub(crate) type InputTx = mpsc::UnboundedSender<Input>;

/// An open connection.
pub(crate) enum Link {
    WebTransport {
        wt: WebTransport,
        control: WritableStreamDefaultWriter,
        datagrams: WritableStreamDefaultWriter,
        tx: InputTx,
    },
    WebSocket {
        ws: WebSocket,
        _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
    },
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.transport().name())
    }
}

fn js_err(e: JsValue) -> String {
    e.as_string()
        .or_else(|| e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())))
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Write without waiting; a failed write ends the link.
fn write(writer: &WritableStreamDefaultWriter, bytes: &[u8], tx: &InputTx) {
    let promise = writer.write_with_chunk(&Uint8Array::from(bytes));
    let tx = tx.clone();
    spawn_local(async move {
        if let Err(e) = JsFuture::from(promise).await {
            let _ = tx.unbounded_send(Input::Closed(format!("write failed: {}", js_err(e))));
        }
    });
}

/// Read a byte stream to its end, handing each chunk to `f` (false stops).
async fn read_all(stream: ReadableStream, mut f: impl FnMut(Vec<u8>) -> bool) -> Result<(), String> {
    let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    loop {
        let result = JsFuture::from(reader.read()).await.map_err(js_err)?;
        if Reflect::get(&result, &"done".into())
            .ok()
            .and_then(|d| d.as_bool())
            .unwrap_or(true)
        {
            return Ok(());
        }
        let value = Reflect::get(&result, &"value".into()).map_err(js_err)?;
        if !f(Uint8Array::new(&value).to_vec()) {
            let _ = reader.cancel();
            return Ok(());
        }
    }
}

impl Link {
    pub(crate) fn transport(&self) -> Transport {
        match self {
            Link::WebTransport { .. } => Transport::WebTransport,
            Link::WebSocket { .. } => Transport::WebSocket,
        }
    }

    /// Bytes for the control stream.
    pub(crate) fn send_control(&self, bytes: &[u8]) {
        match self {
            Link::WebTransport { control, tx, .. } => write(control, bytes, tx),
            Link::WebSocket { ws, .. } => {
                let _ = ws.send_with_u8_array(&wsmux::encode(Channel::Control, bytes));
            }
        }
    }

    /// One datagram (dropped if it cannot go: they are loss-tolerant by design).
    pub(crate) fn send_datagram(&self, bytes: &[u8]) {
        match self {
            Link::WebTransport { datagrams, .. } => {
                let promise = datagrams.write_with_chunk(&Uint8Array::from(bytes));
                spawn_local(async move {
                    let _ = JsFuture::from(promise).await;
                });
            }
            Link::WebSocket { ws, .. } => {
                let _ = ws.send_with_u8_array(&wsmux::encode(Channel::Datagram, bytes));
            }
        }
    }

    /// Open an upload stream (PROTOCOL.md §11.2): `header`, then `body` to its end, then
    /// FIN. `done` hears whether every byte was handed to the stream; what the server
    /// stored it reports on the control stream. Only WebTransport has client-opened
    /// streams: over WebSocket, uploads go by tus (the caller's choice).
    /// `signal` aborts it (a pause or cancel): the stream is reset.
    pub(crate) fn upload(
        &self,
        header: Vec<u8>,
        body: Blob,
        signal: web_sys::AbortSignal,
        done: oneshot::Sender<Result<(), String>>,
    ) {
        let Link::WebTransport { wt, .. } = self else {
            let _ = done.send(Err("upload streams need WebTransport".into()));
            return;
        };
        let opening = wt.create_unidirectional_stream();
        spawn_local(async move {
            let sent = async {
                let stream: WritableStream = JsFuture::from(opening).await.map_err(js_err)?.unchecked_into();
                let writer = stream.get_writer().map_err(js_err)?;
                JsFuture::from(writer.write_with_chunk(&Uint8Array::from(header.as_slice())))
                    .await
                    .map_err(js_err)?;
                writer.release_lock();
                // pipeTo closes the stream (FIN) when the file ends, and aborts it on error.
                let options = web_sys::StreamPipeOptions::new();
                options.set_signal(&signal);
                JsFuture::from(body.stream().pipe_to_with_options(&stream, &options))
                    .await
                    .map_err(js_err)?;
                Ok(())
            };
            let _ = done.send(sent.await);
        });
    }

    /// Close (the server sees the client go away).
    pub(crate) fn close(&self) {
        match self {
            Link::WebTransport { wt, .. } => {
                let info = WebTransportCloseInfo::new();
                info.set_close_code(0);
                info.set_reason("bye");
                wt.close_with_close_info(&info);
            }
            Link::WebSocket { ws, .. } => {
                ws.set_onmessage(None);
                ws.set_onclose(None);
                ws.set_onerror(None);
                let _ = ws.close_with_code_and_reason(1000, "bye");
            }
        }
    }

    /// Connect over WebTransport; resolves once the control stream is open.
    pub(crate) async fn webtransport(info: &WebTransportInfo, tx: InputTx) -> Result<Link, String> {
        let options = WebTransportOptions::new();
        let hashes = info.hash_bytes();
        if !hashes.is_empty() {
            let list: Vec<WebTransportHash> = hashes
                .iter()
                .map(|h| {
                    let hash = WebTransportHash::new();
                    hash.set_algorithm("sha-256");
                    hash.set_value(&Uint8Array::from(h.as_slice()));
                    hash
                })
                .collect();
            options.set_server_certificate_hashes(&list);
        }
        let wt = WebTransport::new_with_options(&info.url, &options).map_err(js_err)?;
        if let Err(e) = JsFuture::from(wt.ready()).await {
            wt.close();
            return Err(format!("WebTransport: {}", js_err(e)));
        }
        let bidi: WebTransportBidirectionalStream = JsFuture::from(wt.create_bidirectional_stream())
            .await
            .map_err(js_err)?
            .unchecked_into();
        let control = bidi.writable().get_writer().map_err(js_err)?;
        let datagrams = wt.datagrams().writable().get_writer().map_err(js_err)?;

        let readable = bidi.readable().unchecked_into::<ReadableStream>();
        let t = tx.clone();
        spawn_local(async move {
            let end = read_all(readable, |b| t.unbounded_send(Input::Control(b)).is_ok()).await;
            let _ = t.unbounded_send(Input::Closed(match end {
                Ok(()) => "control stream closed".into(),
                Err(e) => e,
            }));
        });
        let incoming = wt.incoming_unidirectional_streams();
        let t = tx.clone();
        spawn_local(async move {
            let reader: ReadableStreamDefaultReader = incoming.get_reader().unchecked_into();
            let mut next = 0u64;
            while let Ok(result) = JsFuture::from(reader.read()).await {
                if Reflect::get(&result, &"done".into())
                    .ok()
                    .and_then(|d| d.as_bool())
                    .unwrap_or(true)
                {
                    break;
                }
                let Ok(stream) = Reflect::get(&result, &"value".into()) else {
                    break;
                };
                next += 1;
                let key = StreamKey(next);
                let t = t.clone();
                spawn_local(async move {
                    let end = read_all(stream.unchecked_into(), |b| {
                        t.unbounded_send(Input::Stream(key, b)).is_ok()
                    })
                    .await;
                    if end.is_ok() {
                        let _ = t.unbounded_send(Input::StreamEnd(key));
                    }
                });
            }
        });
        let dgrams = wt.datagrams().readable().unchecked_into::<ReadableStream>();
        let t = tx.clone();
        spawn_local(async move {
            let _ = read_all(dgrams, |b| t.unbounded_send(Input::Datagram(b)).is_ok()).await;
        });
        let closed = wt.closed();
        let t = tx.clone();
        spawn_local(async move {
            let reason = match JsFuture::from(closed).await {
                Ok(info) => {
                    let code = Reflect::get(&info, &"closeCode".into()).ok().and_then(|c| c.as_f64());
                    let reason = Reflect::get(&info, &"reason".into()).ok().and_then(|r| r.as_string());
                    format!(
                        "closed by the server (code {}: {})",
                        code.unwrap_or(0.0),
                        reason.unwrap_or_default()
                    )
                }
                Err(e) => format!("connection lost: {}", js_err(e)),
            };
            let _ = t.unbounded_send(Input::Closed(reason));
        });
        Ok(Link::WebTransport {
            wt,
            control,
            datagrams,
            tx,
        })
    }

    /// Connect over WebSocket; resolves once it is open.
    pub(crate) async fn websocket(url: &str, tx: InputTx) -> Result<Link, String> {
        let ws = WebSocket::new_with_str(url, wsmux::SUBPROTOCOL).map_err(js_err)?;
        ws.set_binary_type(web_sys::BinaryType::Arraybuffer);
        let (open_tx, open_rx) = oneshot::channel::<Result<(), String>>();
        let open_tx = std::rc::Rc::new(std::cell::RefCell::new(Some(open_tx)));

        let o = open_tx.clone();
        let onopen = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if let Some(tx) = o.borrow_mut().take() {
                let _ = tx.send(Ok(()));
            }
        });
        let t = tx.clone();
        let onmessage = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            let Some(ev) = ev.dyn_ref::<web_sys::MessageEvent>() else {
                return;
            };
            let bytes = Uint8Array::new(&ev.data()).to_vec();
            let input = match wsmux::decode(&bytes) {
                Ok((Channel::Control, p)) => Input::Control(p.to_vec()),
                Ok((Channel::Datagram, p)) => Input::Datagram(p.to_vec()),
                Ok((Channel::Stream(n), [])) => Input::StreamEnd(StreamKey(n)),
                Ok((Channel::Stream(n), p)) => Input::Stream(StreamKey(n), p.to_vec()),
                Err(e) => Input::Closed(format!("bad message from server: {e}")),
            };
            let _ = t.unbounded_send(input);
        });
        let t = tx.clone();
        let o = open_tx.clone();
        let onclose = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            let (code, reason) = ev
                .dyn_ref::<web_sys::CloseEvent>()
                .map(|c| (c.code(), c.reason()))
                .unwrap_or((0, String::new()));
            let text = format!("closed by the server (code {code}: {reason})");
            if let Some(tx) = o.borrow_mut().take() {
                let _ = tx.send(Err(text.clone()));
            }
            let _ = t.unbounded_send(Input::Closed(text));
        });
        let o = open_tx;
        let onerror = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if let Some(tx) = o.borrow_mut().take() {
                let _ = tx.send(Err("WebSocket error".into()));
            }
        });
        ws.set_onopen(Some(onopen.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
        ws.set_onclose(Some(onclose.as_ref().unchecked_ref()));
        ws.set_onerror(Some(onerror.as_ref().unchecked_ref()));
        let opened = futures::select! {
            r = open_rx.fuse() => r.unwrap_or_else(|_| Err("WebSocket dropped".into())),
            _ = gloo_timers::future::TimeoutFuture::new(10_000).fuse() => Err("WebSocket connect timed out".into()),
        };
        if let Err(e) = opened {
            ws.set_onclose(None);
            let _ = ws.close();
            return Err(e);
        }
        Ok(Link::WebSocket {
            ws,
            _handlers: vec![onopen, onmessage, onclose, onerror],
        })
    }
}
