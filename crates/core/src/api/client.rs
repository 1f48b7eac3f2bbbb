//! The HTTP client for the Convers8 API: one typed call per documented
//! endpoint over one pooled connection set, bearer auth, timeouts.
//!
//! It turns every answer into either the documented success type or an
//! [`ApiError`]; deciding what to do about an error is the caller's business.
//! The key lives in a sensitive header value and in [`ApiKey`], whose `Debug`
//! is redacted, so no formatting of the client or its errors can leak it.
//! Two guards hold whatever the server or the configuration: no answer is
//! read past [`MAX_RESPONSE_BYTES`], so a broken or hostile server cannot
//! exhaust memory; and the key is not sent over plain `http://` to anything
//! but this machine unless the caller explicitly allows it.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::error::{ApiError, excerpt, parse_retry_after};
use super::model::{
    Contact, ContactData, ContactsPage, Envelope, InteractiveContent, LocationContent,
    MediaContent, MessageContent, MessageKind, NewContact, OutboundMessage, SendResponse,
    TemplateContent, TextContent,
};

/// The documented production server.
pub const DEFAULT_BASE_URL: &str = "https://waba-v1.convers8.africa";
/// The environment variable the key is read from.
pub const API_KEY_ENV: &str = "CONVERS8_API_KEY";
/// The environment variable that overrides the base URL.
pub const BASE_URL_ENV: &str = "CONVERS8_BASE_URL";
/// The most of an answer's body the client reads. Every documented answer is
/// small (a send's is under 200 bytes; a page of 100 contacts a few tens of
/// KB); anything larger is a broken or hostile server, and reading it whole
/// would let one answer take as much memory as the server cares to send.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The cap for a page of the contacts list, which is the one answer that
/// grows with the data (names have no documented length): 16 times the
/// per-message cap, still a bound on what one answer can cost.
pub const MAX_CONTACTS_PAGE_BYTES: usize = 16 * MAX_RESPONSE_BYTES;

/// Whether `base_url` is the production server ([`DEFAULT_BASE_URL`]), up to
/// the case of its host, a trailing dot or slash and an explicit default port.
/// Anything unparseable is not production.
pub fn is_production(base_url: &str) -> bool {
    fn key(url: &Url) -> Option<(String, String, u16, String)> {
        let host = url.host_str()?;
        Some((
            url.scheme().to_owned(),
            host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase(),
            url.port_or_known_default()?,
            url.path().trim_end_matches('/').to_owned(),
        ))
    }
    let (Ok(given), Ok(production)) = (Url::parse(base_url), Url::parse(DEFAULT_BASE_URL)) else {
        return false;
    };
    given.query().is_none() && key(&given).is_some_and(|k| Some(k) == key(&production))
}

/// An API key. Never printed: `Debug` shows `ApiKey(<redacted>)` and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Why a key could not be used. The messages describe the key, never quote it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no API key: set {API_KEY_ENV} or pass --api-key-file FILE")]
    Missing,
    #[error("the API key from {source_name} is empty")]
    Empty { source_name: String },
    #[error(
        "the API key from {source_name} contains spaces or control characters: it must be a single token"
    )]
    Malformed { source_name: String },
    #[error("cannot read the API key file {path}: {reason}")]
    File { path: String, reason: String },
}

impl ApiKey {
    /// Checks a key's shape. `source_name` says where it came from, for errors.
    pub fn new(key: impl Into<String>, source_name: &str) -> Result<ApiKey, KeyError> {
        let key = key.into();
        let key = key.trim();
        if key.is_empty() {
            return Err(KeyError::Empty {
                source_name: source_name.to_owned(),
            });
        }
        if key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return Err(KeyError::Malformed {
                source_name: source_name.to_owned(),
            });
        }
        Ok(ApiKey(key.to_owned()))
    }

    /// Reads the key from [`API_KEY_ENV`]; `Ok(None)` when it is unset.
    pub fn from_env() -> Result<Option<ApiKey>, KeyError> {
        match std::env::var(API_KEY_ENV) {
            Ok(v) => ApiKey::new(v, API_KEY_ENV).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::Malformed {
                source_name: API_KEY_ENV.to_owned(),
            }),
        }
    }

    /// Reads the key from a file holding it on its first line.
    pub fn from_file(path: &Path) -> Result<ApiKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let first = text.lines().next().unwrap_or("");
        ApiKey::new(first, &path.display().to_string())
    }

    fn header_value(&self) -> HeaderValue {
        // ApiKey::new admits visible ASCII only, which is always a valid header value.
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
        value.set_sensitive(true);
        value
    }
}

/// How to reach the API.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub base_url: String,
    pub api_key: ApiKey,
    /// The whole request, from connect to the last byte of the answer.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Send the key over plain `http://` to a host other than this machine.
    /// Off by default: anyone on the path could read the bearer key.
    pub allow_insecure_http: bool,
}

impl ClientConfig {
    pub fn new(base_url: impl Into<String>, api_key: ApiKey) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            api_key,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            allow_insecure_http: false,
        }
    }

    /// The checks [`Client::new`] makes on the base URL, for a caller that
    /// wants a refusal before doing any work (planning, taking a lock).
    pub fn check(&self) -> Result<(), ClientError> {
        self.checked_base_url().map(drop)
    }

    /// The parsed base URL, if it is well formed and plain http goes only to
    /// this machine (or is explicitly allowed).
    fn checked_base_url(&self) -> Result<Url, ClientError> {
        let base = parse_base_url(&self.base_url)?;
        if base.scheme() == "http" && !is_loopback(&base) && !self.allow_insecure_http {
            return Err(ClientError::InsecureHttp {
                url: base.to_string(),
            });
        }
        Ok(base)
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid base URL '{url}': {reason} (expected e.g. {DEFAULT_BASE_URL})")]
    BaseUrl { url: String, reason: String },
    #[error(
        "refusing to send the API key to {url} over plain http: the bearer key would travel unencrypted; use an https:// URL, or pass --allow-insecure-http if the network to that host is trusted"
    )]
    InsecureHttp { url: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// A Convers8 API client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    auth: HeaderValue,
    /// The five send endpoints, built once: a campaign sends to one of them
    /// hundreds of thousands of times.
    send_urls: [Url; 5],
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base.as_str())
            .field("auth", &"<redacted>")
            .finish()
    }
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let base = config.checked_base_url()?;
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                env!("CARGO_PKG_NAME"),
                "/",
                env!("CARGO_PKG_VERSION")
            ))
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            // The API never redirects; following one would resend a POST body
            // (and the key) somewhere unexpected.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let send_urls = MessageKind::ALL.map(|kind| join(&base, kind.path()));
        Ok(Client {
            http,
            base,
            auth: config.api_key.header_value(),
            send_urls,
        })
    }

    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The URL of an endpoint path such as `/contacts`.
    pub fn endpoint(&self, path: &str) -> Url {
        join(&self.base, path)
    }

    pub async fn send_text(
        &self,
        to: &str,
        name: Option<&str>,
        content: TextContent,
    ) -> Result<SendResponse, ApiError> {
        self.send_content(to, name, MessageContent::Text(content))
            .await
    }

    pub async fn send_media(
        &self,
        to: &str,
        name: Option<&str>,
        content: MediaContent,
    ) -> Result<SendResponse, ApiError> {
        self.send_content(to, name, MessageContent::Media(content))
            .await
    }

    pub async fn send_interactive(
        &self,
        to: &str,
        name: Option<&str>,
        content: InteractiveContent,
    ) -> Result<SendResponse, ApiError> {
        self.send_content(to, name, MessageContent::Interactive(content))
            .await
    }

    pub async fn send_template(
        &self,
        to: &str,
        name: Option<&str>,
        content: TemplateContent,
    ) -> Result<SendResponse, ApiError> {
        self.send_content(to, name, MessageContent::Template(content))
            .await
    }

    /// Sends a location; `contact` is the API's name for the recipient's display name here.
    pub async fn send_location(
        &self,
        to: &str,
        contact: Option<&str>,
        content: LocationContent,
    ) -> Result<SendResponse, ApiError> {
        self.send_content(to, contact, MessageContent::Location(content))
            .await
    }

    async fn send_content(
        &self,
        to: &str,
        name: Option<&str>,
        content: MessageContent,
    ) -> Result<SendResponse, ApiError> {
        let message = OutboundMessage {
            to: to.to_owned(),
            name: name.map(str::to_owned),
            content,
        };
        self.send(&message).await
    }

    /// Sends any message to its kind's endpoint.
    pub async fn send(&self, message: &OutboundMessage) -> Result<SendResponse, ApiError> {
        let body = message.to_body().to_string();
        self.send_raw(message.content.kind(), body).await
    }

    /// Sends a body that is already JSON text (the engine plans bodies ahead
    /// and sends exactly what it stored).
    pub async fn send_raw(
        &self,
        kind: MessageKind,
        body: String,
    ) -> Result<SendResponse, ApiError> {
        let index = MessageKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        let url = self.send_urls[index].clone();
        self.call(Method::POST, url, Some(body)).await
    }

    /// One page of `GET /contacts`. Accepts the guide's envelope and the
    /// reference's bare array (which carries no pagination).
    pub async fn list_contacts_page(
        &self,
        page: u64,
        per_page: u64,
    ) -> Result<ContactsPage, ApiError> {
        let mut url = self.endpoint("/contacts");
        url.query_pairs_mut()
            .append_pair("page", &page.to_string())
            .append_pair("per_page", &per_page.to_string());
        let value: serde_json::Value = self
            .call_capped(Method::GET, url, None, MAX_CONTACTS_PAGE_BYTES)
            .await?;
        parse_contacts_page(value)
    }

    /// Every contact, following pages until the last.
    pub async fn list_contacts(&self) -> Result<Vec<Contact>, ApiError> {
        const PER_PAGE: u64 = 100;
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let batch = self.list_contacts_page(page, PER_PAGE).await?;
            let got = batch.contacts.len();
            all.extend(batch.contacts);
            match batch.pagination {
                // Stop on the last page, and also on an empty page so a server
                // that miscounts its pages cannot keep us looping.
                Some(p) if page < p.total_pages && got > 0 => page += 1,
                _ => return Ok(all),
            }
        }
    }

    /// `GET /contacts/{id}`.
    pub async fn get_contact(&self, id: &str) -> Result<Contact, ApiError> {
        let mut url = self.endpoint("/contacts");
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(id);
        }
        let envelope: Envelope<ContactData> = self.call(Method::GET, url, None).await?;
        Ok(envelope.data.contact)
    }

    /// `POST /contacts`.
    pub async fn create_contact(&self, contact: &NewContact) -> Result<Contact, ApiError> {
        let url = self.endpoint("/contacts");
        let body = serde_json::to_string(contact).map_err(|e| ApiError::Unexpected {
            status: 0,
            excerpt: format!("cannot encode the contact: {e}"),
        })?;
        let envelope: Envelope<ContactData> = self.call(Method::POST, url, Some(body)).await?;
        Ok(envelope.data.contact)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<String>,
    ) -> Result<T, ApiError> {
        self.call_capped(method, url, body, MAX_RESPONSE_BYTES)
            .await
    }

    /// One request; its answer's body is read up to `limit` bytes.
    async fn call_capped<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<String>,
        limit: usize,
    ) -> Result<T, ApiError> {
        let url_text = url.to_string();
        let mut request = self
            .http
            .request(method, url)
            .header(header::AUTHORIZATION, self.auth.clone());
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::from_transport(&url_text, &e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // The status line arrived, so the request was processed: a failure while
        // reading the rest loses only the answer's body. A failure status still
        // means what it says; a success whose body is lost may have delivered.
        let bytes = match read_capped(response, limit).await {
            Ok(bytes) => bytes,
            // Not read, so its status cannot be trusted to mean what it says.
            Err(BodyError::TooLarge) => {
                return Err(ApiError::Oversized {
                    url: url_text,
                    status: status.as_u16(),
                    limit,
                });
            }
            Err(BodyError::Transport(_)) if !status.is_success() => {
                return Err(ApiError::from_response(status, retry_after, b""));
            }
            Err(BodyError::Transport(e)) => return Err(ApiError::from_transport(&url_text, &e)),
        };
        if !status.is_success() {
            return Err(ApiError::from_response(status, retry_after, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Unexpected {
            status: status.as_u16(),
            excerpt: format!("{e}; body: {}", excerpt(&bytes)),
        })
    }
}

/// Why an answer's body was not read.
enum BodyError {
    /// Larger than the limit, by its `Content-Length` or by what arrived.
    TooLarge,
    Transport(reqwest::Error),
}

/// The whole body, if it is at most `limit` bytes. A declared length over the
/// limit is refused before reading; otherwise chunks are read only until they
/// pass it, so a server streaming without end costs at most `limit` plus one
/// chunk. Dropping the response then closes the connection.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = response.content_length();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    // Within the limit, so the declared length is safe to reserve.
    let mut body = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether `url` names this machine, so plain http carries the key no further
/// than the loopback interface: `localhost`, 127.0.0.0/8, `::1` and
/// `::ffff:127.x.x.x`. (`*.localhost` is reserved for loopback by RFC 6761,
/// but the system resolver does not enforce it: a DNS answer could send the
/// key elsewhere in clear text.)
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        });
    }
    // The URL parser has already turned every IPv4 spelling (`127.1`,
    // `0x7f.0.0.1`) into dotted decimal.
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return v4.is_loopback();
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    name == "localhost"
}

/// `base` with `path` appended to its own path (a base may carry a prefix).
fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

fn parse_contacts_page(value: serde_json::Value) -> Result<ContactsPage, ApiError> {
    let shape_error = |e: serde_json::Error, value: &serde_json::Value| ApiError::Unexpected {
        status: StatusCode::OK.as_u16(),
        excerpt: format!(
            "contacts list in neither documented shape ({e}): {}",
            excerpt(value.to_string().as_bytes())
        ),
    };
    if value.is_array() {
        let contacts: Vec<Contact> =
            serde_json::from_value(value.clone()).map_err(|e| shape_error(e, &value))?;
        return Ok(ContactsPage {
            contacts,
            pagination: None,
        });
    }
    let envelope: Envelope<ContactsPage> =
        serde_json::from_value(value.clone()).map_err(|e| shape_error(e, &value))?;
    Ok(envelope.data)
}

fn parse_base_url(raw: &str) -> Result<Url, ClientError> {
    let err = |reason: &str| ClientError::BaseUrl {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(raw).map_err(|e| err(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(err("the scheme must be http or https"));
    }
    if url.host_str().is_none() {
        return Err(err("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(
            "credentials in the URL are not supported: the key goes in CONVERS8_API_KEY",
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_never_formatted() {
        let key = ApiKey::new("sk_live_SECRET123", "test").expect("valid key");
        let client = Client::new(ClientConfig::new("http://127.0.0.1:9", key.clone()))
            .expect("client builds");
        for text in [format!("{key:?}"), format!("{client:?}")] {
            assert!(!text.contains("SECRET123"), "{text}");
        }
    }

    #[test]
    fn key_shape_is_checked_without_quoting_it() {
        let err = ApiKey::new("two words", "CONVERS8_API_KEY").unwrap_err();
        assert!(err.to_string().contains("CONVERS8_API_KEY"));
        assert!(!err.to_string().contains("two words"));
        assert!(matches!(
            ApiKey::new("  ", "x"),
            Err(KeyError::Empty { .. })
        ));
        assert!(ApiKey::new(" padded\n", "x").is_ok());
    }

    #[test]
    fn endpoints_keep_a_base_path() {
        let key = ApiKey::new("k", "t").expect("key");
        let client =
            Client::new(ClientConfig::new("http://127.0.0.1:1/api/v1/", key)).expect("client");
        assert_eq!(
            client.endpoint("/contacts").as_str(),
            "http://127.0.0.1:1/api/v1/contacts"
        );
    }

    #[test]
    fn bad_base_urls_are_explained() {
        for bad in ["waba.example", "ftp://x", "http://user:pw@host"] {
            let key = ApiKey::new("k", "t").expect("key");
            let err = Client::new(ClientConfig::new(bad, key)).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    fn config(base_url: &str) -> ClientConfig {
        ClientConfig::new(
            base_url,
            ApiKey::new("sk_live_SECRET123", "t").expect("key"),
        )
    }

    #[test]
    fn plain_http_to_this_machine_is_allowed() {
        for local in [
            "http://localhost:8080",
            "http://LocalHost:8080/api",
            "http://localhost.:8080",
            "http://127.0.0.1:9",
            "http://127.255.3.4",
            "http://127.1",
            "http://[::1]:8080",
            "http://[::ffff:127.0.0.1]:8080",
            "http://[::ffff:127.9.9.9]",
            "https://example.com",
            "https://10.0.0.5:8443",
        ] {
            assert!(config(local).check().is_ok(), "{local}");
            assert!(Client::new(config(local)).is_ok(), "{local}");
        }
    }

    #[test]
    fn plain_http_elsewhere_is_refused_naming_the_url_and_the_flag() {
        for remote in [
            "http://waba-v1.convers8.africa",
            "http://example.com:8080/api",
            "http://10.0.0.5",
            "http://192.168.1.20:8080",
            "http://0.0.0.0:8080",
            "http://128.0.0.1",
            "http://[::2]",
            "http://[::ffff:10.0.0.1]",
            "http://[::127.0.0.1]",
            "http://localhost.example.com",
            "http://sandbox.localhost",
            "http://mylocalhost",
            "http://127.0.0.1.nip.io",
        ] {
            assert!(config(remote).check().is_err(), "{remote}");
            let err = Client::new(config(remote)).expect_err(remote);
            assert!(
                matches!(err, ClientError::InsecureHttp { .. }),
                "{remote}: {err:?}"
            );
            let shown = err.to_string();
            let host = Url::parse(remote)
                .expect("url")
                .host_str()
                .expect("host")
                .to_owned();
            assert!(shown.contains(&host), "{shown}");
            assert!(shown.contains("--allow-insecure-http"), "{shown}");
            assert!(shown.contains("https://"), "{shown}");
            assert!(shown.contains("unencrypted"), "{shown}");
            assert!(
                !shown.contains('\n') && !shown.contains("SECRET123"),
                "{shown}"
            );

            let allowed = ClientConfig {
                allow_insecure_http: true,
                ..config(remote)
            };
            assert!(allowed.check().is_ok(), "{remote} with the flag");
            assert!(Client::new(allowed).is_ok(), "{remote} with the flag");
        }
    }

    #[test]
    fn production_is_recognised_however_it_is_written() {
        for same in [
            DEFAULT_BASE_URL,
            "https://waba-v1.convers8.africa/",
            "https://WABA-v1.Convers8.Africa",
            "https://waba-v1.convers8.africa.",
            "https://waba-v1.convers8.africa:443/",
            " https://waba-v1.convers8.africa ",
        ] {
            assert!(is_production(same), "{same}");
        }
        for other in [
            "http://waba-v1.convers8.africa",
            "https://waba-v1.convers8.africa:8443",
            "https://waba-v1.convers8.africa/v2",
            "https://waba-v1.convers8.africa/?x=1",
            "https://waba-v2.convers8.africa",
            "https://waba-v1.convers8.africa.evil.example",
            "http://127.0.0.1:8080",
            "waba-v1.convers8.africa",
            "",
        ] {
            assert!(!is_production(other), "{other}");
        }
    }

    #[test]
    fn both_contact_list_shapes_parse() {
        let bare = serde_json::json!([{"id": "c1", "name": "A", "phone_number": "+1"}]);
        let page = parse_contacts_page(bare).expect("bare array");
        assert_eq!(page.contacts.len(), 1);
        assert!(page.pagination.is_none());
        let wrapped = serde_json::json!({"success": true, "data": {"contacts": [], "pagination": {"total": 0, "page": 1, "per_page": 10, "total_pages": 0}}});
        let page = parse_contacts_page(wrapped).expect("envelope");
        assert_eq!(page.pagination.map(|p| p.per_page), Some(10));
        assert!(parse_contacts_page(serde_json::json!({"weird": 1})).is_err());
    }
}
