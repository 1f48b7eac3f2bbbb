//! The Convers8 API: wire types ([`model`]), the business rules a request must
//! meet ([`rules`]), the HTTP client ([`client`]) and failure classification ([`error`]).
pub mod model;
pub mod rules;
