//! Push registrations from a page (PROTOCOL.md §13): `registerPush(subscription)` takes a
//! browser `PushSubscription` (or its `toJSON()`), `listPush()` and `removePush(id)`. Each
//! resolves to `{ registrations, vapidPublicKey }`, the key as base64url — what
//! `pushManager.subscribe({ applicationServerKey })` takes. The browser decrypts Web Push
//! itself and hands the service worker the payload (JSON, §13.3).
use js_sys::{Object, Promise, Reflect};
use natter_protocol::client::model::{NotifySettings, PushRegistrations};
use natter_protocol::client::ops;
use natter_protocol::pb;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::client::{js_error, to_js, NatterClient};
use crate::view::{b64, unb64, JsError};

fn field(obj: &JsValue, path: &[&str]) -> Option<String> {
    let mut v = obj.clone();
    for p in path {
        v = Reflect::get(&v, &(*p).into()).ok()?;
    }
    v.as_string()
}

fn registrations(r: pb::PushRegistrations) -> JsValue {
    let r = PushRegistrations::from(r);
    let o = Object::new();
    let _ = Reflect::set(&o, &"registrations".into(), &to_js(&r.registrations));
    let _ = Reflect::set(&o, &"vapidPublicKey".into(), &b64(&r.vapid_public_key).into());
    o.into()
}

/// A `PushSubscription` (or its JSON) as a Web Push target.
fn target(subscription: &JsValue) -> Result<pb::PushTarget, JsError> {
    // A live PushSubscription gives its keys through toJSON().
    let json = match Reflect::get(subscription, &"toJSON".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
    {
        Some(f) => f.call0(subscription).unwrap_or_else(|_| subscription.clone()),
        None => subscription.clone(),
    };
    let bad = |what: &str| JsError::local("INVALID_INPUT", format!("registerPush: {what}"));
    let endpoint = field(&json, &["endpoint"]).ok_or_else(|| bad("no endpoint"))?;
    let p256dh = field(&json, &["keys", "p256dh"])
        .and_then(|s| unb64(&s))
        .ok_or_else(|| bad("no keys.p256dh"))?;
    let auth = field(&json, &["keys", "auth"])
        .and_then(|s| unb64(&s))
        .ok_or_else(|| bad("no keys.auth"))?;
    Ok(pb::PushTarget {
        provider: pb::PushProvider::WebPush as i32,
        endpoint,
        p256dh,
        auth,
        ..Default::default()
    })
}

#[wasm_bindgen(typescript_custom_section)]
const TS_PUSH: &'static str = r#"
/** One push target of this device (PROTOCOL.md §13.1). */
export interface PushRegistration {
  registrationId: string; deviceId: number;
  provider: "webpush" | "unifiedpush" | "apns" | "fcm"; endpoint: string; createdMs: number;
}
/** What registerPush/listPush/removePush resolve to; `vapidPublicKey` is base64url, the
 * `applicationServerKey` for `pushManager.subscribe`. */
export interface PushRegistrations { registrations: PushRegistration[]; vapidPublicKey: string }
/** Which messages notify (PROTOCOL.md §13.2); a conversation's "unspecified" is the user's. */
export type NotifyLevel = "unspecified" | "all" | "mentions" | "none";
/** A user's notification rules: getNotifySettings() / setNotifySettings(settings). */
export interface NotifySettings {
  level: NotifyLevel; muteUntilMs: number; timeZone: string;
  dndStartMinute: number; dndEndMinute: number;
  conversations: { conversationId: number; level: NotifyLevel; muteUntilMs: number }[];
  /** Where email digests of unread messages go ("" = none). */
  email: string;
  /** Email digests turned off. */
  noEmailDigest: boolean;
  /** Set by the server once the address is confirmed through the link mailed to it
   *  (digests go only to a confirmed address); ignored when set. */
  emailVerified: boolean;
}
/** What the service worker gets in a Web Push (`event.data.json()`, PROTOCOL.md §13.3). */
export interface PushNotification {
  conversationId: number; seq: number; senderUserId: number; senderName: string;
  conversationTitle: string; badge: number; mention: boolean; preview: string;
  fetch: boolean; collapseId: string;
  /** Read on another device: close the notification tagged `collapseId`, show nothing. */
  withdraw: boolean;
}
"#;

#[wasm_bindgen]
impl NatterClient {
    /// Register this browser's push subscription for this device (replacing its earlier
    /// one). Rejects with `PUSH_TARGET_REJECTED` for an endpoint the server will not call.
    #[wasm_bindgen(js_name = registerPush)]
    pub fn register_push(&self, subscription: JsValue) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            let t = target(&subscription).map_err(|e| js_error(&e))?;
            let r = inner.call(ops::register_push(t)).await.map_err(|e| js_error(&e))?;
            Ok(registrations(r))
        })
    }

    /// This device's push registrations and the server's VAPID key (base64url).
    #[wasm_bindgen(js_name = listPush)]
    pub fn list_push(&self) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            let r = inner.call(ops::list_push()).await.map_err(|e| js_error(&e))?;
            Ok(registrations(r))
        })
    }

    /// The user's notification rules (PROTOCOL.md §13.2), a `NotifySettings`.
    #[wasm_bindgen(js_name = getNotifySettings)]
    pub fn get_notify_settings(&self) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            let s = inner.call(ops::notify_settings()).await.map_err(|e| js_error(&e))?;
            Ok(to_js(&NotifySettings::from(s)))
        })
    }

    /// Replace the user's notification rules with `settings` (a `NotifySettings`);
    /// rejects with `BAD_REQUEST` for an unknown time zone or level.
    #[wasm_bindgen(js_name = setNotifySettings)]
    pub fn set_notify_settings(&self, settings: JsValue) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            let s: NotifySettings = serde_wasm_bindgen::from_value(settings)
                .map_err(|e| js_error(&JsError::local("INVALID_INPUT", format!("setNotifySettings: {e}"))))?;
            let s = inner
                .call(ops::set_notify_settings(s.into()))
                .await
                .map_err(|e| js_error(&e))?;
            Ok(to_js(&NotifySettings::from(s)))
        })
    }

    /// Remove one of this device's push registrations.
    #[wasm_bindgen(js_name = removePush)]
    pub fn remove_push(&self, registration_id: String) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            let r = inner
                .call(ops::remove_push(&registration_id))
                .await
                .map_err(|e| js_error(&e))?;
            Ok(registrations(r))
        })
    }
}
