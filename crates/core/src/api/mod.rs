//! The Convers8 API: wire types ([`model`]), the business rules a request must
//! meet ([`rules`]), the HTTP client ([`client`]) and the classification of
//! every failure ([`error`]).

pub mod client;
pub mod error;
pub mod model;
pub mod rules;

pub use client::{ApiKey, Client, ClientConfig, ClientError, is_production};
pub use error::{ApiError, Disposition};
