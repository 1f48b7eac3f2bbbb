//! Contacts of a Convers8 account beyond one request at a time: [`import`]
//! creates one contact per row of a CSV file under the engine's pace, retry
//! and stop. Single requests (list, get, create) are the [`Client`]'s own
//! methods.
//!
//! [`Client`]: crate::api::Client

pub mod import;
