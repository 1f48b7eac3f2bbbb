//! The sandbox's HTTP surface: [`app`] builds the router, and this file holds
//! the send endpoints (auth → rate limit → validation → faults → answer), the
//! `/_sandbox/*` inspection endpoints, `/openapi.json` and the fallbacks that
//! keep every refusal in the documented envelope. Contacts live in `contacts`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use super::contacts;
use super::faults::Outcome;
use super::reply::{ApiError, DropConnection};
use super::state::{SandboxState, rfc3339};
use crate::api::model::{MessageContent, MessageKind, SendResponse};
use crate::api::rules;

const OPENAPI: &str = include_str!("openapi.json");

/// The whole sandbox as a router, for [`super::Sandbox`] or in-process tests.
pub fn app(state: SandboxState) -> Router {
    let mut router = Router::new();
    for kind in MessageKind::ALL {
        router = router.route(
            kind.path(),
            post(
                move |state: State<SandboxState>,
                      headers: HeaderMap,
                      body: Result<Bytes, BytesRejection>| {
                    send_message(kind, state, headers, body)
                },
            ),
        );
    }
    router
        .route("/contacts", get(contacts::list).post(contacts::create))
        .route("/contacts/{id}", get(contacts::get_one))
        .route("/_sandbox/messages", get(recorded_messages))
        .route("/_sandbox/stats", get(stats))
        .route("/openapi.json", get(openapi))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

/// `POST /whatsapp/message/{kind}`.
async fn send_message(
    kind: MessageKind,
    State(state): State<SandboxState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (raw, value, content) = match admit(kind, &state, &headers, body) {
        Ok(admitted) => admitted,
        Err(error) => {
            state.note_error(&error);
            state.pause_unseeded().await;
            return error.into_response();
        }
    };
    // `admit` checked `to` is a string.
    let to = value.get("to").and_then(Value::as_str).unwrap_or_default();
    let decision = state.decide(kind, to, &raw, &value);
    match decision.outcome {
        Outcome::Fail => {
            let error = ApiError::internal("injected failure (sandbox --fail-rate)");
            state.note_error(&error);
            state.pause(decision.jitter).await;
            error.into_response()
        }
        Outcome::Drop => {
            state.note_dropped();
            state.pause(decision.jitter).await;
            let mut response = ApiError::internal(
                "injected dropped connection (sandbox --drop-rate); served in-process, so answered",
            )
            .into_response();
            response.extensions_mut().insert(DropConnection);
            response
        }
        Outcome::Deliver | Outcome::Slow => {
            let Some(accepted) = decision.accepted else {
                // `decide` records every delivered message; this is unreachable.
                return ApiError::internal("sandbox bug: delivered message not recorded")
                    .into_response();
            };
            if decision.outcome == Outcome::Slow {
                // Recorded already: a client that times out now meets a
                // message that was in fact delivered, as in real life.
                state.note_slow();
                tokio::time::sleep(state.slow_delay()).await;
            }
            state.pause(decision.jitter).await;
            let answer = send_response(&content, accepted.message_id, &accepted.received_at);
            Json(answer).into_response()
        }
    }
}

/// Everything that can refuse a send before its fate is rolled, in the order
/// the documents imply: who you are, how fast you go, what you sent.
fn admit(
    kind: MessageKind,
    state: &SandboxState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Bytes, Value, MessageContent), ApiError> {
    state.authorize(headers)?;
    state.admit_send()?;
    let raw = body.map_err(body_rejection)?;
    let value = parse_json(headers, &raw)?;
    let content = rules::check_send_request(kind, &value).map_err(ApiError::validation)?;
    Ok((raw, value, content))
}

fn send_response(
    content: &MessageContent,
    message_id: String,
    received_at: &chrono::DateTime<chrono::Utc>,
) -> SendResponse {
    let (body, media_url) = match content {
        MessageContent::Text(c) => (Some(c.text.clone()), None),
        MessageContent::Media(c) => (c.caption.clone(), Some(c.url.clone())),
        MessageContent::Interactive(c) => (Some(c.body.text.clone()), None),
        MessageContent::Template(c) => (Some(c.template_name.clone()), None),
        MessageContent::Location(c) => (
            Some(
                c.name
                    .clone()
                    .or_else(|| c.address.clone())
                    .unwrap_or_else(|| format!("{},{}", c.latitude, c.longitude)),
            ),
            None,
        ),
    };
    SendResponse {
        message_id,
        body,
        message_type: Some(content.kind().as_str().to_owned()),
        timestamp: Some(rfc3339(*received_at)),
        metadata: Some(Value::Object(serde_json::Map::new())),
        media_url,
    }
}

/// Runs an endpoint's work and turns its refusal into the envelope, counted
/// and delayed like any answer.
pub async fn with_errors(
    state: &SandboxState,
    work: impl Future<Output = Result<Response, ApiError>>,
) -> Response {
    let result = work.await;
    state.pause_unseeded().await;
    result.unwrap_or_else(|error| {
        state.note_error(&error);
        error.into_response()
    })
}

/// The body of a JSON request, or a `validation_error` saying why not.
pub fn parse_json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let raw = body.map_err(body_rejection)?;
    parse_json(headers, &raw)
}

fn parse_json(headers: &HeaderMap, raw: &[u8]) -> Result<Value, ApiError> {
    // A missing Content-Type is forgiven (curl without -H); a wrong one is a client bug.
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let is_json = content_type.to_str().is_ok_and(|ct| {
            let mime = ct.split(';').next().unwrap_or_default().trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.len() > 5 && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
        });
        if !is_json {
            return Err(ApiError::validation(format!(
                "Content-Type: '{}' is not application/json",
                String::from_utf8_lossy(content_type.as_bytes())
                    .chars()
                    .take(60)
                    .collect::<String>()
            )));
        }
    }
    if raw.is_empty() {
        return Err(ApiError::validation("body: empty; expected a JSON object"));
    }
    serde_json::from_slice(raw)
        .map_err(|err| ApiError::validation(format!("body: malformed JSON: {err}")))
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    ApiError {
        status: rejection.status(),
        ..ApiError::validation(format!("body: {}", rejection.body_text()))
    }
}

#[derive(Deserialize)]
struct MessagesQuery {
    to: Option<String>,
}

/// `GET /_sandbox/messages[?to=+254…]`: what the sandbox accepted.
async fn recorded_messages(
    State(state): State<SandboxState>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Response {
    let to = query.ok().and_then(|Query(q)| q.to).map(|to| {
        // An unencoded `+` in a query string arrives as a space.
        match to.strip_prefix(' ') {
            Some(rest) => format!("+{rest}"),
            None => to,
        }
    });
    Json(state.messages(to.as_deref())).into_response()
}

/// `GET /_sandbox/stats`.
async fn stats(State(state): State<SandboxState>) -> Response {
    Json(state.stats()).into_response()
}

/// `GET /openapi.json`: the API as the sandbox serves it.
async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn unknown_route(State(state): State<SandboxState>, method: Method, uri: Uri) -> Response {
    let error = ApiError::not_found(format!("no endpoint {method} {}", uri.path()));
    state.note_error(&error);
    error.into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    ApiError::method_not_allowed(format!("{method} is not allowed on {}", uri.path()))
        .into_response()
}
