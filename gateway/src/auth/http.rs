//! The small HTTPS client auth uses for Entra ID (discovery document, JWKS, client-credentials
//! token) and Microsoft Graph (group membership): JSON in, JSON out, bounded in time and size.
//!
//! Why hyper-util + hyper-rustls rather than reqwest: the gateway already links hyper (through
//! axum) and rustls on ring; hyper-rustls adds a connector and nothing else, while reqwest would
//! bring `url`/`idna`, tower-http and its own TLS feature matrix for the four request shapes used
//! here. The TLS configuration is built explicitly on ring with the webpki (Mozilla) roots, so
//! there is one crypto provider in the process and no dependency on the system's OpenSSL or
//! certificate store. Plain `http://` is accepted as well (the Teams emulator in tests on
//! loopback); production authorities are `https://`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Whole-request time limit (connect, send, read the answer).
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer body read (a JWKS or a Graph answer is a few KiB).
const MAX_BODY: usize = 1 << 20;

/// Why a request gave no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The URL cannot be requested.
    #[error("bad URL `{0}`")]
    Url(String),
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Transport(String),
    /// No answer within the time limit.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The body is not JSON (or too large).
    #[error("the answer is not JSON: {0}")]
    Body(String),
}

/// An HTTP answer with a JSON body (`Null` when the body was empty).
#[derive(Debug)]
pub struct JsonAnswer {
    /// The status.
    pub status: StatusCode,
    /// The body.
    pub body: Value,
    /// `Retry-After` in seconds (a 429 or 503 from Graph), when the answer had one.
    pub retry_after: Option<Duration>,
}

/// A shared client (connection pool) for Entra ID and Graph.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client trusting the webpki roots, TLS on ring, HTTP/1.1.
    pub fn new() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring's default provider supports the safe default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// `GET url`, expecting JSON.
    pub async fn get_json(&self, url: &str) -> Result<JsonAnswer, FetchError> {
        self.send(Method::GET, url, None, None).await
    }

    /// `GET url` with a bearer token, expecting JSON.
    pub async fn get_json_bearer(&self, url: &str, bearer: &str) -> Result<JsonAnswer, FetchError> {
        let auth = HeaderValue::try_from(format!("Bearer {bearer}"))
            .map_err(|_| FetchError::Transport("the access token is not a header value".into()))?;
        self.send(Method::GET, url, None, Some(auth)).await
    }

    /// `POST url` with an `application/x-www-form-urlencoded` body.
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<JsonAnswer, FetchError> {
        let body = serde_urlencoded::to_string(form)
            .map_err(|e| FetchError::Body(format!("cannot encode the form: {e}")))?;
        let ct = HeaderValue::from_static("application/x-www-form-urlencoded");
        self.send(Method::POST, url, Some((ct, body.into())), None)
            .await
    }

    /// `POST url` with a JSON body and a bearer token.
    pub async fn post_json(
        &self,
        url: &str,
        bearer: &str,
        body: &Value,
    ) -> Result<JsonAnswer, FetchError> {
        let ct = HeaderValue::from_static("application/json");
        let auth = HeaderValue::try_from(format!("Bearer {bearer}"))
            .map_err(|_| FetchError::Transport("the access token is not a header value".into()))?;
        self.send(
            Method::POST,
            url,
            Some((ct, body.to_string().into())),
            Some(auth),
        )
        .await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<(HeaderValue, Bytes)>,
        auth: Option<HeaderValue>,
    ) -> Result<JsonAnswer, FetchError> {
        let uri: Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = match body {
            Some((ct, b)) => req.header(header::CONTENT_TYPE, ct).body(Full::new(b)),
            None => req.body(Full::new(Bytes::new())),
        }
        .map_err(|e| FetchError::Url(format!("{url}: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| FetchError::Transport(transport_error(&e)))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_secs);
            let bytes = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, FetchError>((status, retry_after, bytes))
        };
        let (status, retry_after, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| FetchError::Timeout(TIMEOUT))??;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| FetchError::Body(e.to_string()))?
        };
        Ok(JsonAnswer {
            status,
            body,
            retry_after,
        })
    }
}

/// The error with its causes (hyper-util's top-level message alone says little).
fn transport_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
