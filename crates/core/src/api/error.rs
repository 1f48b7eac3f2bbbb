//! Every way a call to the Convers8 API can fail, classified into what the
//! caller should do next: wait and retry, stop the run, give up on this
//! recipient, or treat the message as possibly delivered.
//!
//! The error's `code` in the body is the contract; the HTTP status is only a
//! hint used when the body says nothing. Whenever the request may have reached
//! the API — no answer after sending, a gateway's 502/504 page, an answer too
//! large to read — the error says so, because the API has no idempotency key
//! and a resend would be a second message. Nothing here ever holds the API key:
//! messages are built from the server's answer and the request's URL only.

use std::time::Duration;

use reqwest::StatusCode;

use super::model::{ErrorEnvelope, codes};

/// How many characters of an unexpected body an error keeps.
const EXCERPT_CHARS: usize = 200;

/// A failed API call, classified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// `rate_limit_exceeded`: nothing was accepted; retry after a pause.
    #[error("rate limited by the API{}: {message}", retry_after_text(*.retry_after))]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// `unauthorized`: the key is missing, wrong or expired. Stops a run.
    #[error("the API rejected the key ({message}): check CONVERS8_API_KEY or --api-key-file")]
    Unauthorized { message: String },
    /// `validation_error`: this request will never succeed as written.
    #[error("the API rejected the request: {message}{}", details_text(.details))]
    Validation {
        message: String,
        details: Option<String>,
    },
    /// `not_found`: the resource (e.g. a contact id) does not exist.
    #[error("not found: {message}{}", details_text(.details))]
    NotFound {
        message: String,
        details: Option<String>,
    },
    /// A 5xx answer: the server failed; the request may be retried.
    #[error("server error {status}{}: {message}", code_text(.code))]
    Server {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The request never left this machine (DNS, connect refused, TLS
    /// handshake): always safe to retry.
    #[error("could not reach the API at {url}: {reason}")]
    NeverSent { url: String, reason: String },
    /// This client refused the server's TLS certificate: nothing was sent,
    /// and every other request to that server would be refused the same
    /// way until the operator fixes the trust (or the URL). Stops a run.
    #[error("could not reach the API at {url}: {reason}")]
    CertificateRejected { url: String, reason: String },
    /// The request was (or may have been) written but no answer came back:
    /// a timeout or a reset after sending. The message may have been delivered.
    #[error(
        "no answer from the API at {url} after sending ({reason}): the request may have taken effect (a message may have been delivered)"
    )]
    MaybeDelivered { url: String, reason: String },
    /// A 502 or 504 (or a CDN's 520, 524, 598, 599) without the API's error
    /// envelope: a proxy in front of the API gave up waiting for it, possibly
    /// after forwarding the request, so the message may have been delivered. (The API's own 5xx carries its
    /// envelope and is a [`ApiError::Server`].)
    #[error(
        "a gateway in front of the API answered HTTP {status} ({excerpt}): the request may have reached the API (a message may have been delivered)"
    )]
    Gateway { status: u16, excerpt: String },
    /// An answer larger than the client reads: a broken or hostile server.
    /// The status line arrived, so the request may have been processed.
    #[error(
        "the API at {url} answered HTTP {status} with a body larger than the {limit}-byte limit (far beyond any documented answer): stopped reading it; the request may have taken effect (a message may have been delivered); check that the base URL is the Convers8 API"
    )]
    Oversized {
        url: String,
        status: u16,
        limit: usize,
    },
    /// An answer the documents do not describe.
    #[error("unexpected answer from the API (HTTP {status}): {excerpt}")]
    Unexpected { status: u16, excerpt: String },
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (retry after {:.1}s)", d.as_secs_f64()),
        None => String::new(),
    }
}

fn details_text(details: &Option<String>) -> String {
    match details {
        Some(d) if !d.is_empty() => format!(" ({d})"),
        _ => String::new(),
    }
}

fn code_text(code: &Option<String>) -> String {
    match code {
        Some(c) => format!(" [{c}]"),
        None => String::new(),
    }
}

/// What the engine does with a failure; a coarser view of [`ApiError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Retry this message later and slow everyone down.
    RateLimited,
    /// Stop the whole run; the rows stay pending.
    StopRun,
    /// Retry with backoff up to the attempt budget; counts towards the breaker.
    Retry,
    /// This recipient failed for good.
    Permanent,
    /// The message may have arrived: never resend automatically.
    Uncertain,
}

impl ApiError {
    /// A short, stable code to store and count (the API's own code where there is one).
    pub fn code(&self) -> &str {
        match self {
            ApiError::RateLimited { .. } => codes::RATE_LIMIT_EXCEEDED,
            ApiError::Unauthorized { .. } => codes::UNAUTHORIZED,
            ApiError::Validation { .. } => codes::VALIDATION_ERROR,
            ApiError::NotFound { .. } => codes::NOT_FOUND,
            ApiError::Server { code: Some(c), .. } => c,
            ApiError::Server { code: None, .. } => "server_error",
            ApiError::NeverSent { .. } => "connect_error",
            ApiError::CertificateRejected { .. } => "tls_rejected",
            ApiError::MaybeDelivered { .. } => "no_answer",
            ApiError::Gateway { .. } => "gateway_error",
            ApiError::Oversized { .. } | ApiError::Unexpected { .. } => "unexpected_response",
        }
    }

    /// The server's `details`, or the reason text, for the per-recipient report.
    pub fn details(&self) -> String {
        match self {
            ApiError::Validation { details, message } | ApiError::NotFound { details, message } => {
                details.clone().unwrap_or_else(|| message.clone())
            }
            ApiError::RateLimited { message, .. }
            | ApiError::Unauthorized { message }
            | ApiError::Server { message, .. } => message.clone(),
            ApiError::NeverSent { reason, .. }
            | ApiError::CertificateRejected { reason, .. }
            | ApiError::MaybeDelivered { reason, .. } => reason.clone(),
            ApiError::Gateway { status, excerpt } | ApiError::Unexpected { status, excerpt } => {
                format!("HTTP {status}: {excerpt}")
            }
            ApiError::Oversized { status, limit, .. } => {
                format!("HTTP {status}: the answer was larger than {limit} bytes (not read)")
            }
        }
    }

    pub fn disposition(&self) -> Disposition {
        match self {
            ApiError::RateLimited { .. } => Disposition::RateLimited,
            ApiError::Unauthorized { .. } | ApiError::CertificateRejected { .. } => {
                Disposition::StopRun
            }
            ApiError::Validation { .. } | ApiError::NotFound { .. } => Disposition::Permanent,
            ApiError::Server { .. } | ApiError::NeverSent { .. } => Disposition::Retry,
            // Each of these may have delivered the message; whatever the status
            // of an oversized answer, its body (and so its meaning) was not read.
            ApiError::MaybeDelivered { .. }
            | ApiError::Gateway { .. }
            | ApiError::Oversized { .. } => Disposition::Uncertain,
            // A success status whose body we cannot read: the server accepted
            // the message, so sending it again would send it twice.
            ApiError::Unexpected { status, .. } if (200..300).contains(status) => {
                Disposition::Uncertain
            }
            // An answer we cannot read is not a transient fault we know how to wait out.
            ApiError::Unexpected { status, .. } if *status >= 500 => Disposition::Retry,
            ApiError::Unexpected { .. } => Disposition::Permanent,
        }
    }

    /// Classifies a non-success HTTP answer from its status, `Retry-After` and body.
    pub fn from_response(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Self {
        let envelope: Option<ErrorEnvelope> = serde_json::from_slice(body).ok();
        let Some(envelope) = envelope else {
            // No documented envelope: fall back on the status.
            return match status.as_u16() {
                429 => ApiError::RateLimited {
                    retry_after,
                    message: excerpt(body),
                },
                401 | 403 => ApiError::Unauthorized {
                    message: format!("HTTP {}", status.as_u16()),
                },
                // A proxy's own page after it may have forwarded the request:
                // 502/504, and the CDN codes for an origin that broke or timed
                // out mid-answer (Cloudflare's 520 and 524, 598/599 elsewhere).
                // A 503 (or a CDN's 521–523: origin down, unreachable) is a
                // refusal to take the request at all, so it stays retryable.
                s @ (502 | 504 | 520 | 524 | 598 | 599) => ApiError::Gateway {
                    status: s,
                    excerpt: excerpt(body),
                },
                s if s >= 500 => ApiError::Server {
                    status: s,
                    code: None,
                    message: excerpt(body),
                },
                s => ApiError::Unexpected {
                    status: s,
                    excerpt: excerpt(body),
                },
            };
        };
        let message = envelope.message;
        let details = envelope.error.details;
        match envelope.error.code.as_str() {
            codes::RATE_LIMIT_EXCEEDED => ApiError::RateLimited {
                retry_after,
                message,
            },
            codes::UNAUTHORIZED => ApiError::Unauthorized { message },
            codes::VALIDATION_ERROR => ApiError::Validation { message, details },
            codes::NOT_FOUND => ApiError::NotFound { message, details },
            other if status.is_server_error() => ApiError::Server {
                status: status.as_u16(),
                code: Some(other.to_owned()),
                message,
            },
            // A code the documents do not name: the status says what it means.
            other => match status.as_u16() {
                429 => ApiError::RateLimited {
                    retry_after,
                    message: format!("{message} [{other}]"),
                },
                401 | 403 => ApiError::Unauthorized {
                    message: format!("{message} [{other}]"),
                },
                s => ApiError::Unexpected {
                    status: s,
                    excerpt: format!("error code '{other}': {message}"),
                },
            },
        }
    }

    /// Classifies a transport failure. Only a failure to connect proves the
    /// request never left; anything later may have delivered the message.
    pub fn from_transport(url: &str, err: &reqwest::Error) -> Self {
        let reason = transport_reason(url, err);
        if err.is_connect() && reason.starts_with(TLS_REJECTED) {
            ApiError::CertificateRejected {
                url: url.to_owned(),
                reason,
            }
        } else if err.is_connect() {
            ApiError::NeverSent {
                url: url.to_owned(),
                reason,
            }
        } else {
            ApiError::MaybeDelivered {
                url: url.to_owned(),
                reason,
            }
        }
    }
}

/// The innermost cause of a transport error, which is what an operator can act on
/// ("connection refused"), without the URL reqwest repeats at each level.
fn transport_reason(url: &str, err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connect failed"
    } else {
        "connection failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
    let mut innermost = None;
    while let Some(s) = source {
        innermost = Some(s.to_string());
        source = s.source();
    }
    match innermost {
        Some(cause) if !cause.is_empty() => cause_text(kind, &cause, url),
        _ => kind.to_owned(),
    }
}

/// How rustls words a server certificate it would not accept, and the reason
/// it gives when no trusted root signed the chain.
const CERTIFICATE_REJECTED: &str = "invalid peer certificate: ";
/// How [`cause_text`] begins the reason of a certificate it rejected.
const TLS_REJECTED: &str = "TLS handshake failed: the certificate of ";
const UNKNOWN_ISSUER: &str = "UnknownIssuer";

/// `kind: cause`, except for a certificate the client would not accept: that
/// names the host and, when no trusted CA signed the certificate (a
/// TLS-inspecting proxy, a private CA), where to add the one that did. The
/// client trusts the system store, which `SSL_CERT_FILE` replaces, plus the
/// webpki roots.
fn cause_text(kind: &str, cause: &str, url: &str) -> String {
    let Some(at) = cause.find(CERTIFICATE_REJECTED) else {
        return format!("{kind}: {cause}");
    };
    let cause = &cause[at..];
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or_else(|| url.to_owned());
    if cause[CERTIFICATE_REJECTED.len()..].starts_with(UNKNOWN_ISSUER) {
        format!(
            "{TLS_REJECTED}{host} is not trusted ({cause}); if a TLS-inspecting proxy or a private CA issued it, add that CA to the system certificate store or set SSL_CERT_FILE to a PEM file holding it"
        )
    } else {
        format!("{TLS_REJECTED}{host} was rejected ({cause})")
    }
}

/// The first characters of a body, on one line, for error messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT_CHARS)
        .collect();
    let trimmed = one_line.trim();
    if trimmed.is_empty() {
        "(empty body)".to_owned()
    } else if text.chars().count() > EXCERPT_CHARS {
        format!("{trimmed}…")
    } else {
        trimmed.to_owned()
    }
}

/// Parses `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(3600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(code: &str, details: &str) -> Vec<u8> {
        serde_json::json!({
            "success": false,
            "message": "Error message",
            "error": {"code": code, "details": details}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn body_code_wins_over_status() {
        // A 400 status whose body says rate limited is rate limited.
        let e = ApiError::from_response(
            StatusCode::BAD_REQUEST,
            None,
            &envelope("rate_limit_exceeded", ""),
        );
        assert_eq!(e.disposition(), Disposition::RateLimited);
        let e = ApiError::from_response(StatusCode::OK, None, &envelope("unauthorized", "bad"));
        assert_eq!(e.disposition(), Disposition::StopRun);
    }

    #[test]
    fn documented_codes_classify() {
        let cases = [
            ("not_found", Disposition::Permanent, "not_found"),
            (
                "validation_error",
                Disposition::Permanent,
                "validation_error",
            ),
            ("unauthorized", Disposition::StopRun, "unauthorized"),
            (
                "rate_limit_exceeded",
                Disposition::RateLimited,
                "rate_limit_exceeded",
            ),
        ];
        for (code, disposition, stored) in cases {
            let e = ApiError::from_response(StatusCode::BAD_REQUEST, None, &envelope(code, "d"));
            assert_eq!(e.disposition(), disposition, "{code}");
            assert_eq!(e.code(), stored);
        }
        let e = ApiError::from_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            &envelope("internal_error", "boom"),
        );
        assert_eq!(e.disposition(), Disposition::Retry);
        assert_eq!(e.code(), "internal_error");
    }

    #[test]
    fn an_unknown_code_takes_the_meaning_of_its_status() {
        let e = ApiError::from_response(
            StatusCode::UNAUTHORIZED,
            None,
            &envelope("invalid_token", "expired"),
        );
        assert_eq!(e.disposition(), Disposition::StopRun);
        let e = ApiError::from_response(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            &envelope("too_many_requests", ""),
        );
        assert_eq!(e.disposition(), Disposition::RateLimited);
        let e = ApiError::from_response(StatusCode::CONFLICT, None, &envelope("conflict", ""));
        assert_eq!(e.code(), "unexpected_response");
    }

    #[test]
    fn status_is_the_fallback_without_an_envelope() {
        let e = ApiError::from_response(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(2)),
            b"slow down",
        );
        assert_eq!(
            e,
            ApiError::RateLimited {
                retry_after: Some(Duration::from_secs(2)),
                message: "slow down".into()
            }
        );
        let e = ApiError::from_response(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            b"<html>no upstream</html>",
        );
        assert_eq!(e.disposition(), Disposition::Retry);
        // A proxy's 502 page may follow a forwarded request: not retried.
        let e = ApiError::from_response(StatusCode::BAD_GATEWAY, None, b"<html>bad gateway</html>");
        assert_eq!(e.disposition(), Disposition::Uncertain);
        assert_eq!(e.code(), "gateway_error");
        let e = ApiError::from_response(StatusCode::IM_A_TEAPOT, None, b"");
        assert_eq!(
            e,
            ApiError::Unexpected {
                status: 418,
                excerpt: "(empty body)".into()
            }
        );
    }

    #[test]
    fn a_gateway_page_may_mean_the_request_was_forwarded() {
        let html = b"<html><body><h1>502 Bad Gateway</h1></body></html>".as_slice();
        // Without the API's envelope, 502 and 504 may have been forwarded: never resent.
        for (status, body) in [
            (StatusCode::BAD_GATEWAY, html),
            (
                StatusCode::GATEWAY_TIMEOUT,
                b"upstream request timeout".as_slice(),
            ),
            (StatusCode::BAD_GATEWAY, b"".as_slice()),
            (
                StatusCode::from_u16(524).expect("status"),
                b"A timeout occurred".as_slice(),
            ),
            (StatusCode::from_u16(520).expect("status"), b"".as_slice()),
            (
                StatusCode::GATEWAY_TIMEOUT,
                b"{\"message\": \"Endpoint request timed out\"}".as_slice(),
            ),
        ] {
            let e = ApiError::from_response(status, None, body);
            assert!(
                matches!(e, ApiError::Gateway { status: s, .. } if s == status.as_u16()),
                "{status}: {e:?}"
            );
            assert_eq!(e.disposition(), Disposition::Uncertain, "{status}");
            assert_eq!(e.code(), "gateway_error");
            assert!(
                e.details()
                    .starts_with(&format!("HTTP {}", status.as_u16()))
            );
            assert!(!e.to_string().contains('\n'));
        }
        let e = ApiError::from_response(StatusCode::BAD_GATEWAY, None, html);
        assert!(e.details().contains("502 Bad Gateway"), "{}", e.details());
        assert!(e.to_string().contains("may have reached the API"), "{e}");

        // A 503 page, or any other 5xx page, is a refusal to take the request: retried.
        for status in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            let e = ApiError::from_response(status, None, html);
            assert_eq!(e.disposition(), Disposition::Retry, "{status}");
            assert_eq!(e.code(), "server_error");
        }

        // The API's own envelope on any 5xx, 502/504 included, stays retryable.
        for status in [
            StatusCode::BAD_GATEWAY,
            StatusCode::GATEWAY_TIMEOUT,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            let e = ApiError::from_response(status, None, &envelope("internal_error", "boom"));
            assert!(
                matches!(&e, ApiError::Server { status: s, code: Some(c), .. } if *s == status.as_u16() && c == "internal_error"),
                "{status}: {e:?}"
            );
            assert_eq!(e.disposition(), Disposition::Retry, "{status}");
        }
    }

    #[test]
    fn an_oversized_answer_may_have_delivered_whatever_its_status() {
        for status in [200, 400, 401, 429, 500, 502] {
            let e = ApiError::Oversized {
                url: "http://127.0.0.1:1/whatsapp/message/text".into(),
                status,
                limit: 65536,
            };
            assert_eq!(e.disposition(), Disposition::Uncertain, "{status}");
            assert_eq!(e.code(), "unexpected_response");
            let shown = e.to_string();
            assert!(
                shown.contains("larger than the 65536-byte limit"),
                "{shown}"
            );
            assert!(shown.contains(&format!("HTTP {status}")), "{shown}");
            assert!(!shown.contains('\n'));
            assert!(e.details().contains("larger than 65536 bytes"));
        }
    }

    #[test]
    fn an_untrusted_certificate_names_the_host_and_the_fix() {
        let url = "https://localhost:8443/whatsapp/message/text";
        let reason = cause_text(
            "connect failed",
            "invalid peer certificate: UnknownIssuer",
            url,
        );
        assert_eq!(
            reason,
            "TLS handshake failed: the certificate of localhost:8443 is not trusted (invalid peer certificate: UnknownIssuer); if a TLS-inspecting proxy or a private CA issued it, add that CA to the system certificate store or set SSL_CERT_FILE to a PEM file holding it"
        );
        // The default port is not shown; the error carries the reason, whole, on one line.
        let e = ApiError::NeverSent {
            url: "https://api.example.com/whatsapp/message/text".into(),
            reason: cause_text(
                "connect failed",
                "invalid peer certificate: UnknownIssuer",
                "https://api.example.com/whatsapp/message/text",
            ),
        };
        let shown = e.to_string();
        assert!(
            shown.contains("the certificate of api.example.com is not trusted"),
            "{shown}"
        );
        assert!(!shown.contains('\n'));
        assert!(e.details().contains("SSL_CERT_FILE"), "{}", e.details());
        assert_eq!(e.code(), "connect_error");
        assert_eq!(e.disposition(), Disposition::Retry);

        // A certificate rejected for another reason: adding a CA would not help.
        for cause in [
            "invalid peer certificate: certificate not valid for name \"127.0.0.1\"; certificate is only valid for DnsName(\"localhost\")",
            "invalid peer certificate: Expired",
        ] {
            let reason = cause_text("connect failed", cause, url);
            assert_eq!(
                reason,
                format!(
                    "TLS handshake failed: the certificate of localhost:8443 was rejected ({cause})"
                )
            );
        }
        // Anything else is left as it was.
        assert_eq!(
            cause_text("connect failed", "Connection refused (os error 111)", url),
            "connect failed: Connection refused (os error 111)"
        );
    }

    #[test]
    fn excerpt_is_short_and_one_line() {
        let long = "x\n".repeat(500);
        let e = excerpt(long.as_bytes());
        assert!(!e.contains('\n'));
        assert!(e.chars().count() <= EXCERPT_CHARS + 1);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
    }
}
