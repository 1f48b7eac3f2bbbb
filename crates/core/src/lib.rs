//! `convers8-campaign`: send one WhatsApp message to each recipient of a
//! campaign through the Convers8 API — paced, checkpointed in SQLite, and
//! resumable after anything breaks.
//!
//! # Layout
//!
//! - [`api`]: the Convers8 client — wire types, the HTTP client, and the
//!   classification of every failure into what the engine should do next.
//! - [`sandbox`]: a local Convers8 server (axum) with the API's rules, rate
//!   limits and injectable faults, for tests, benchmarks and rehearsals.
//! - [`campaign`]: the campaign TOML model and its validation.
//! - [`recipients`]: streaming the recipient CSV.
//! - [`phone`]: [`phone::E164`], a validated phone number, and the one parser
//!   that turns a cell or a flag into one.
//! - [`render`]: handlebars templates (strict, no HTML escaping) into request content.
//! - [`state`]: the SQLite state file — schema, claims, batched result writes, counts.
//! - [`ledger`]: the account's audience ledger shared by campaigns — every
//!   message that left, and the opt-out list.
//! - [`engine`]: the run loop — pacing, retries, circuit breaker, shutdown,
//!   progress — and the one "call until a final answer" helper.
//! - [`contacts`]: importing a CSV of contacts, on the engine's pace, retries and stop.
//! - [`report`]: status and per-recipient export.
//!
//! The command line (`convers8-campaign`, the workspace's root package) is a
//! client of this crate: it parses flags, listens for signals, draws the
//! progress and chooses exit codes. Nothing here knows about flags, prints,
//! or ends the process.

pub mod api;
pub mod campaign;
pub mod contacts;
pub mod engine;
pub mod ledger;
pub mod phone;
pub mod recipients;
pub mod render;
pub mod report;
pub mod sandbox;
pub mod state;
pub mod zones;
