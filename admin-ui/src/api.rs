//! Calls to the gateway's REST API with the signed-in admin's bearer token, and the problem
//! documents (`application/problem+json`, 422 field errors) it answers with.

use serde::de::DeserializeOwned;
use serde_json::Value;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, Request, RequestInit, Response};

/// Where the bearer token lives between reloads (the tab's session storage, gone with the tab).
pub const TOKEN_KEY: &str = "csps.token";

/// A failed call: the HTTP status (0: no answer), the problem's detail, and its field errors.
#[derive(Clone, Debug, Default)]
pub struct ApiError {
    /// HTTP status, 0 when the request did not get an answer.
    pub status: u16,
    /// One line for the user.
    pub message: String,
    /// `errors:[{path,message}]` of a 422.
    pub fields: Vec<(String, String)>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for (path, message) in &self.fields {
            write!(f, "; {path}: {message}")?;
        }
        Ok(())
    }
}

impl ApiError {
    fn js(what: &str, e: JsValue) -> Self {
        ApiError {
            status: 0,
            message: format!(
                "{what}: {}",
                e.as_string().unwrap_or_else(|| format!("{e:?}"))
            ),
            fields: Vec::new(),
        }
    }

    /// The error of a non-2xx answer whose body is `text` (a problem document or anything).
    fn from_answer(status: u16, text: &str) -> Self {
        let problem: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let title = problem.get("title").and_then(Value::as_str);
        let detail = problem.get("detail").and_then(Value::as_str);
        let message = match (title, detail) {
            (_, Some(d)) => d.to_owned(),
            (Some(t), None) => t.to_owned(),
            _ if text.trim().is_empty() => format!("the gateway answered {status}"),
            _ => format!("the gateway answered {status}: {}", text.trim()),
        };
        let fields = problem
            .get("errors")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|e| {
                        let s = |k| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                        (s("path"), s("message"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        ApiError {
            status,
            message,
            fields,
        }
    }
}

/// The stored bearer token, if any.
pub fn stored_token() -> Option<String> {
    let storage = web_sys::window()?.session_storage().ok()??;
    storage.get_item(TOKEN_KEY).ok()?.filter(|t| !t.is_empty())
}

/// Keeps (or, with `None`, forgets) the bearer token.
pub fn store_token(token: Option<&str>) {
    let Some(storage) = web_sys::window().and_then(|w| w.session_storage().ok().flatten()) else {
        return;
    };
    let _ = match token {
        Some(t) => storage.set_item(TOKEN_KEY, t),
        None => storage.remove_item(TOKEN_KEY),
    };
}

/// Sends `method path` (JSON `body` if any) with the bearer token; the answer's status and body.
pub async fn send(
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), ApiError> {
    send_body(method, path, body.map(json_body), stored_token()).await
}

/// A JSON request body and its content type.
fn json_body(body: &Value) -> (JsValue, &'static str) {
    (JsValue::from_str(&body.to_string()), "application/json")
}

/// Sends `method path` with `body` (a string, `Blob` or buffer, and its content type) and
/// `token` as the bearer token; the answer's status and body.
pub async fn send_body(
    method: &str,
    path: &str,
    body: Option<(JsValue, &str)>,
    token: Option<String>,
) -> Result<(u16, String), ApiError> {
    let window = web_sys::window().ok_or_else(|| ApiError::js("no window", JsValue::NULL))?;
    let init = RequestInit::new();
    init.set_method(method);
    let headers = Headers::new().map_err(|e| ApiError::js("headers", e))?;
    if let Some(token) = token {
        let _ = headers.set("Authorization", &format!("Bearer {token}"));
    }
    if let Some((body, content_type)) = body {
        let _ = headers.set("Content-Type", content_type);
        init.set_body(&body);
    }
    init.set_headers(&headers);
    let request =
        Request::new_with_str_and_init(path, &init).map_err(|e| ApiError::js("request", e))?;
    let answer = JsFuture::from(window.fetch_with_request(&request))
        .await
        .map_err(|e| ApiError::js("the gateway did not answer", e))?;
    let response: Response = answer
        .dyn_into()
        .map_err(|e| ApiError::js("not a response", e))?;
    let text = match response.text() {
        Ok(p) => JsFuture::from(p).await.ok().and_then(|v| v.as_string()),
        Err(_) => None,
    }
    .unwrap_or_default();
    Ok((response.status(), text))
}

/// `method path` expecting a 2xx; its JSON body (`null` when empty).
pub async fn call(method: &str, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
    json_answer(send(method, path, body).await?)
}

/// `method path` (JSON `body` if any) with `token` (not the console's) as the bearer token,
/// expecting a 2xx; its JSON body.
pub async fn call_as(
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<String>,
) -> Result<Value, ApiError> {
    json_answer(send_body(method, path, body.map(json_body), token).await?)
}

/// `PUT path` with a file (a `Blob`) as the body, expecting a 2xx; its JSON body.
pub async fn upload(
    path: &str,
    file: &web_sys::Blob,
    content_type: &str,
) -> Result<Value, ApiError> {
    let body = Some((JsValue::from(file.clone()), content_type));
    json_answer(send_body("PUT", path, body, stored_token()).await?)
}

/// The JSON body of a 2xx answer (`null` when empty), or the problem of any other.
pub fn json_answer((status, text): (u16, String)) -> Result<Value, ApiError> {
    if !(200..300).contains(&status) {
        return Err(ApiError::from_answer(status, &text));
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| ApiError {
        status,
        message: format!("the answer is not JSON: {e}"),
        fields: Vec::new(),
    })
}

/// `GET path` into `T`.
pub async fn get<T: DeserializeOwned>(path: &str) -> Result<T, ApiError> {
    let value = call("GET", path, None).await?;
    serde_json::from_value(value).map_err(|e| ApiError {
        status: 200,
        message: format!("unexpected answer from {path}: {e}"),
        fields: Vec::new(),
    })
}

/// Percent-encodes one query or path component.
pub fn encode(s: &str) -> String {
    String::from(js_sys::encode_uri_component(s))
}
