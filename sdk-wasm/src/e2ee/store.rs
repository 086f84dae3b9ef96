//! Where a browser device keeps its encryption state (PROTOCOL.md §12.7): one IndexedDB
//! database per state, an object store `log` of byte records in key order — the whole
//! state first, then one record per change — the same log natter-sdk keeps in a file.
//! A change is written in a `strict`-durability transaction and counts as written only
//! once that transaction completes; writing the whole state clears the log in the same
//! transaction. The bytes are the client core's, already sealed with the app's store key.
//!
//! One client at a time may use a state: two tabs advancing the same Olm sessions would
//! each break the other's. A client takes the Web Lock `natter-e2ee:<database>` before it
//! loads the state and holds it until it closes; another tab finds it taken.
use wasm_bindgen::prelude::*;

#[wasm_bindgen(inline_js = r#"
function request(r) {
  return new Promise((ok, fail) => { r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
}
function finished(tx) {
  return new Promise((ok, fail) => {
    tx.oncomplete = () => ok();
    tx.onerror = () => fail(tx.error);
    tx.onabort = () => fail(tx.error || new Error("IndexedDB transaction aborted"));
  });
}
export function natterStateOpen(name) {
  if (typeof indexedDB === "undefined") return Promise.reject(new Error("IndexedDB is not available here"));
  const r = indexedDB.open(name, 1);
  r.onupgradeneeded = () => r.result.createObjectStore("log", { autoIncrement: true });
  return request(r);
}
export async function natterStateLoad(db) {
  const records = await request(db.transaction("log", "readonly").objectStore("log").getAll());
  if (records.length === 0) return null;
  const out = new Uint8Array(records.reduce((n, r) => n + r.byteLength, 0));
  let at = 0;
  for (const r of records) { out.set(new Uint8Array(r), at); at += r.byteLength; }
  return out;
}
export function natterStateWrite(db, bytes, whole) {
  const tx = db.transaction("log", "readwrite", { durability: "strict" });
  const log = tx.objectStore("log");
  if (whole) log.clear();
  log.add(bytes);
  return finished(tx);
}
const held = new Map();
export function natterStateLock(name) {
  if (held.has(name)) return Promise.resolve(true);
  if (!globalThis.navigator?.locks) return Promise.resolve(true);
  return new Promise((ok) => {
    navigator.locks.request("natter-e2ee:" + name, { ifAvailable: true }, (lock) => {
      if (!lock) { ok(false); return undefined; }
      ok(true);
      return new Promise((release) => held.set(name, release));
    }).catch(() => ok(false));
  });
}
export function natterStateUnlock(name) {
  const release = held.get(name);
  held.delete(name);
  if (release) release();
}
export function natterStateDelete(name) {
  if (typeof indexedDB === "undefined") return Promise.resolve();
  return request(indexedDB.deleteDatabase(name));
}
"#)]
extern "C" {
    #[wasm_bindgen(catch, js_name = natterStateOpen)]
    async fn open(name: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = natterStateLoad)]
    async fn load_log(db: &JsValue) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = natterStateWrite)]
    async fn write(db: &JsValue, bytes: &[u8], whole: bool) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = natterStateDelete)]
    async fn delete(name: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = natterStateLock)]
    async fn lock(name: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(js_name = natterStateUnlock)]
    fn unlock(name: &str);
}

fn message(e: JsValue) -> String {
    js_sys::Reflect::get(&e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// One device's state log in IndexedDB.
pub(crate) struct StateDb {
    name: String,
    db: std::cell::RefCell<Option<JsValue>>,
}

impl StateDb {
    pub(crate) fn new(name: String) -> Self {
        StateDb {
            name,
            db: Default::default(),
        }
    }

    async fn db(&self) -> Result<JsValue, String> {
        if let Some(db) = self.db.borrow().clone() {
            return Ok(db);
        }
        let db = open(&self.name).await.map_err(message)?;
        *self.db.borrow_mut() = Some(db.clone());
        Ok(db)
    }

    /// The whole log, or `None` when there is no state yet.
    pub(crate) async fn load(&self) -> Result<Option<Vec<u8>>, String> {
        let db = self.db().await?;
        let bytes = load_log(&db).await.map_err(message)?;
        Ok((!bytes.is_null()).then(|| js_sys::Uint8Array::new(&bytes).to_vec()))
    }

    /// Take this state for this client (a Web Lock, held until [`Self::close`]); false
    /// when another tab or window holds it.
    pub(crate) async fn take(&self) -> bool {
        lock(&self.name).await.is_ok_and(|v| v.as_bool() == Some(true))
    }

    /// Close the database and let the state go (another tab may take it then).
    pub(crate) fn close(&self) {
        unlock(&self.name);
        if let Some(db) = self.db.borrow_mut().take() {
            let close = js_sys::Reflect::get(&db, &"close".into()).ok();
            if let Some(f) = close.and_then(|f| f.dyn_into::<js_sys::Function>().ok()) {
                let _ = f.call0(&db);
            }
        }
    }

    /// Append one record, or (`whole`) replace the log with the whole state; durable
    /// when this returns `Ok`.
    pub(crate) async fn write(&self, bytes: &[u8], whole: bool) -> Result<(), String> {
        let db = self.db().await?;
        write(&db, bytes, whole).await.map(drop).map_err(message)
    }
}

/// Forget a state (after a logout: the device is gone).
pub(crate) async fn forget(name: &str) -> Result<(), String> {
    delete(name).await.map(drop).map_err(message)
}
