//! The sandbox's error answers: always the documented envelope
//! `{"success": false, "message", "error": {"code", "details"}}`, with the
//! status a real server would use and, for 429, a `Retry-After` header. Every
//! refusal in the sandbox goes through [`ApiError`], so no axum default (plain
//! text rejections, empty 404s) can leak out.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::model::{ErrorBody, ErrorEnvelope, codes};

/// Marks a response whose connection must be closed without sending it; the
/// connection loop in `serve` acts on it. Served in-process (tests calling
/// [`super::app`] directly), the 500 it is attached to goes out instead.
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
    pub details: String,
    /// Whole seconds, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: &'static str, details: String) -> Self {
        ApiError {
            status,
            code,
            message,
            details,
            retry_after: None,
        }
    }

    pub fn validation(details: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::VALIDATION_ERROR,
            "The request data failed validation",
            details.into(),
        )
    }

    pub fn unauthorized(details: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "Invalid or missing API key",
            details.into(),
        )
    }

    pub fn not_found(details: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            "The requested resource was not found",
            details.into(),
        )
    }

    pub fn rate_limited(retry_after: u64, details: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                codes::RATE_LIMIT_EXCEEDED,
                "Too many requests in a short period",
                details.into(),
            )
        }
    }

    pub fn internal(details: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL_ERROR,
            "Internal server error",
            details.into(),
        )
    }

    /// Not a documented code; the status (405) and the `Allow` header axum
    /// adds are what a client acts on.
    pub fn method_not_allowed(details: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            details.into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = ErrorEnvelope {
            success: false,
            message: self.message.to_owned(),
            error: ErrorBody {
                code: self.code.to_owned(),
                details: Some(self.details),
            },
        };
        let mut response = (self.status, axum::Json(envelope)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
