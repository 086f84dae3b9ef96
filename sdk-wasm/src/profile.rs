//! Profiles from a page (PROTOCOL.md §5.15): `setProfile({ displayName?, avatar?, status? })`
//! changes only the fields given, `setAvatar(file)` uploads an image and makes it the
//! avatar, `profiles(userIds)` reads up to 100 users' profiles; changes arrive as
//! `profileChanged` events. An avatar `media:<id>` is shown with `mediaUrl(id, "thumb320")`.
//! The account itself (PROTOCOL.md §5.16): `exportAccount()` resolves to a path on the web
//! endpoint serving a zip of the user's data, `deleteAccount(password)` deletes it.
use js_sys::{Promise, Reflect};
use natter_protocol::client::model::{self, Profile};
use natter_protocol::client::ops;
use natter_protocol::{pb, UserId};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

use crate::client::{get_str, js_error, to_js, NatterClient};
use crate::view::JsError;

#[wasm_bindgen(typescript_custom_section)]
const TS_PROFILE: &'static str = r#"
/** A user's profile: `displayName` "" shows the username; `avatar` is "", an https URL or
 * "media:<id>" (show `mediaUrl(id, "thumb320")`); `updatedMs`: of two versions, the later
 * one holds. */
export interface Profile {
  userId: number; username: string; displayName: string; avatar: string; status: string;
  bot: boolean; updatedMs: number;
}
/** The fields to change; absent ones stay, "" clears one. */
export interface ProfileChange { displayName?: string; avatar?: string; status?: string }
"#;

fn invalid(why: impl Into<String>) -> JsValue {
    js_error(&JsError::local("INVALID", why))
}

#[wasm_bindgen]
impl NatterClient {
    /// Change your profile (a `ProfileChange`); resolves to the new `Profile`. Your
    /// contacts, fellow members and other devices hear `profileChanged`.
    #[wasm_bindgen(js_name = setProfile)]
    pub fn set_profile(&self, change: JsValue) -> Promise {
        if !change.is_object() {
            return Promise::reject(&invalid("setProfile takes { displayName?, avatar?, status? }"));
        }
        let field = |k: &str| -> Result<Option<String>, JsValue> {
            let v = Reflect::get(&change, &k.into()).unwrap_or(JsValue::UNDEFINED);
            if v.is_undefined() || v.is_null() {
                return Ok(None);
            }
            v.as_string()
                .map(Some)
                .ok_or_else(|| invalid(format!("{k} is a string")))
        };
        let wire = match (field("displayName"), field("avatar"), field("status")) {
            (Ok(display_name), Ok(avatar), Ok(status)) => pb::SetProfile {
                display_name,
                avatar,
                status,
            },
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Promise::reject(&e),
        };
        let inner = self.inner().clone();
        future_to_promise(async move {
            let p = inner.call(ops::set_profile(wire)).await.map_err(|e| js_error(&e))?;
            Ok(to_js(&Profile::from(p)))
        })
    }

    /// Upload an image (`File`, `Blob` or bytes; options as `upload`: `name`, `mime`,
    /// `onProgress`) and make it your avatar; resolves to the new `Profile`.
    #[wasm_bindgen(js_name = setAvatar)]
    pub fn set_avatar(&self, file: JsValue, options: JsValue) -> Promise {
        let uploaded = self.upload(0.0, file, options);
        let inner = self.inner().clone();
        future_to_promise(async move {
            let media = JsFuture::from(uploaded).await?;
            let id = get_str(&media, "mediaId").ok_or_else(|| invalid("the upload gave no media id"))?;
            let change = pb::SetProfile {
                avatar: Some(format!("media:{id}")),
                ..Default::default()
            };
            let p = inner.call(ops::set_profile(change)).await.map_err(|e| js_error(&e))?;
            Ok(to_js(&Profile::from(p)))
        })
    }

    /// Delete your own account: a password account confirms with its password, a product
    /// login's with "". Every device is logged out (this one hears `authFailed`).
    #[wasm_bindgen(js_name = deleteAccount)]
    pub fn delete_account(&self, password: String) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            inner
                .call(ops::delete_account(&password))
                .await
                .map_err(|e| js_error(&e))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// A path on this server's web endpoint that serves a zip of your data for 15 minutes:
    /// `{ path, expiresMs }`.
    #[wasm_bindgen(js_name = exportAccount)]
    pub fn export_account(&self) -> Promise {
        let inner = self.inner().clone();
        future_to_promise(async move {
            let r = inner.call(ops::export_account()).await.map_err(|e| js_error(&e))?;
            let out = js_sys::Object::new();
            Reflect::set(&out, &"path".into(), &r.path.into())?;
            Reflect::set(&out, &"expiresMs".into(), &(r.expires_ms as f64).into())?;
            Ok(out.into())
        })
    }

    /// Up to 100 users' profiles (unknown ones are left out): `Profile[]`.
    pub fn profiles(&self, user_ids: Vec<f64>) -> Promise {
        let users: Vec<UserId> = user_ids.into_iter().map(|u| UserId(u as u64)).collect();
        let inner = self.inner().clone();
        future_to_promise(async move {
            let r = inner.call(ops::profiles_of(&users)).await.map_err(|e| js_error(&e))?;
            Ok(to_js(&model::list::<_, Profile>(r)))
        })
    }
}
