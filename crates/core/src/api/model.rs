//! The Convers8 API's wire types, field for field as the documents give them.
//!
//! Requests are what the client sends and the sandbox accepts; responses the
//! reverse. Both sides share these types so they cannot drift apart. Optional
//! fields are skipped when absent so a body carries only what the operator set.
//! This module holds data only: no I/O, no validation beyond serde's shape
//! checks (the sandbox owns the API's business rules).

use serde::{Deserialize, Serialize};

/// The five message kinds, each with its own endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Text,
    Media,
    Interactive,
    Template,
    Location,
}

impl MessageKind {
    pub const ALL: [MessageKind; 5] = [
        MessageKind::Text,
        MessageKind::Media,
        MessageKind::Interactive,
        MessageKind::Template,
        MessageKind::Location,
    ];

    /// The lowercase name used in campaign files and endpoint paths.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Media => "media",
            MessageKind::Interactive => "interactive",
            MessageKind::Template => "template",
            MessageKind::Location => "location",
        }
    }

    /// The endpoint path, relative to the base URL.
    pub fn path(self) -> &'static str {
        match self {
            MessageKind::Text => "/whatsapp/message/text",
            MessageKind::Media => "/whatsapp/message/media",
            MessageKind::Interactive => "/whatsapp/message/interactive",
            MessageKind::Template => "/whatsapp/message/template",
            MessageKind::Location => "/whatsapp/message/location",
        }
    }

    /// The request field that carries the recipient's display name: the
    /// location endpoint calls it `contact`, every other one `name`.
    pub fn name_field(self) -> &'static str {
        match self {
            MessageKind::Location => "contact",
            _ => "name",
        }
    }

    pub fn parse(s: &str) -> Option<MessageKind> {
        MessageKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /whatsapp/message/text` content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextContent {
    pub text: String,
}

/// `POST /whatsapp/message/media` content: an image, document, video or audio by URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaContent {
    #[serde(rename = "type")]
    pub media_type: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

/// `POST /whatsapp/message/interactive` content: reply buttons or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteractiveContent {
    /// `button` or `list`.
    #[serde(rename = "type")]
    pub interactive_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<InteractiveHeader>,
    pub body: TextObject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<TextObject>,
    pub action: InteractiveAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteractiveHeader {
    #[serde(rename = "type")]
    pub header_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextObject {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteractiveAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buttons: Option<Vec<ReplyButton>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sections: Option<Vec<ListSection>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyButton {
    /// Always `reply` in the documents.
    #[serde(rename = "type")]
    pub button_type: String,
    pub reply: ButtonReply,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonReply {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub rows: Vec<ListRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRow {
    pub id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `POST /whatsapp/message/template` content: a pre-approved template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateContent {
    pub template_name: String,
    pub language: TemplateLanguage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<TemplateComponent>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateLanguage {
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateComponent {
    /// `header`, `body` or `button`.
    #[serde(rename = "type")]
    pub component_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Vec<TemplateParameter>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateParameter {
    /// `text`, `image`, `document` or `video`; the field of that name carries the value.
    #[serde(rename = "type")]
    pub parameter_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<MediaLink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<MediaLink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<MediaLink>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaLink {
    pub link: String,
}

/// `POST /whatsapp/message/location` content. Coordinates are strings in the documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationContent {
    pub latitude: String,
    pub longitude: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The `content` of any message, tagged by its kind outside the JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageContent {
    Text(TextContent),
    Media(MediaContent),
    Interactive(InteractiveContent),
    Template(TemplateContent),
    Location(LocationContent),
}

impl MessageContent {
    pub fn kind(&self) -> MessageKind {
        match self {
            MessageContent::Text(_) => MessageKind::Text,
            MessageContent::Media(_) => MessageKind::Media,
            MessageContent::Interactive(_) => MessageKind::Interactive,
            MessageContent::Template(_) => MessageKind::Template,
            MessageContent::Location(_) => MessageKind::Location,
        }
    }

    /// Parses a JSON `content` object as the given kind, rejecting unknown fields.
    pub fn from_json(kind: MessageKind, value: serde_json::Value) -> serde_json::Result<Self> {
        Ok(match kind {
            MessageKind::Text => MessageContent::Text(serde_json::from_value(value)?),
            MessageKind::Media => MessageContent::Media(serde_json::from_value(value)?),
            MessageKind::Interactive => MessageContent::Interactive(serde_json::from_value(value)?),
            MessageKind::Template => MessageContent::Template(serde_json::from_value(value)?),
            MessageKind::Location => MessageContent::Location(serde_json::from_value(value)?),
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        // Serialising these plain structs cannot fail: no maps with non-string keys.
        let value = match self {
            MessageContent::Text(c) => serde_json::to_value(c),
            MessageContent::Media(c) => serde_json::to_value(c),
            MessageContent::Interactive(c) => serde_json::to_value(c),
            MessageContent::Template(c) => serde_json::to_value(c),
            MessageContent::Location(c) => serde_json::to_value(c),
        };
        value.unwrap_or(serde_json::Value::Null)
    }
}

/// One outgoing message: recipient, display name and content.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    /// E.164 phone number, with the leading `+`.
    pub to: String,
    /// Sent as `name` (or `contact` for locations).
    pub name: Option<String>,
    pub content: MessageContent,
}

impl OutboundMessage {
    /// The exact request body for this message's endpoint.
    pub fn to_body(&self) -> serde_json::Value {
        build_body(
            self.content.kind(),
            &self.to,
            self.name.as_deref(),
            self.content.to_json(),
        )
    }
}

/// Assembles a request body from its parts, naming the recipient field as the
/// endpoint expects. The engine uses this with already-rendered content.
pub fn build_body(
    kind: MessageKind,
    to: &str,
    name: Option<&str>,
    content: serde_json::Value,
) -> serde_json::Value {
    let mut body = serde_json::Map::with_capacity(3);
    body.insert("to".into(), serde_json::Value::String(to.to_owned()));
    if let Some(name) = name {
        body.insert(
            kind.name_field().into(),
            serde_json::Value::String(name.to_owned()),
        );
    }
    body.insert("content".into(), content);
    serde_json::Value::Object(body)
}

/// A send endpoint's success answer. Every field but `message_id` is optional in practice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendResponse {
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
}

/// A contact as the contacts endpoints return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub id: String,
    pub name: String,
    pub phone_number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// `POST /contacts` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewContact {
    pub name: String,
    pub phone_number: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    pub total: u64,
    pub page: u64,
    pub per_page: u64,
    pub total_pages: u64,
}

/// One page of `GET /contacts`, whichever of the two documented shapes it came in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactsPage {
    pub contacts: Vec<Contact>,
    /// Absent when the server answered with the reference's bare array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagination: Option<Pagination>,
}

/// The guide's success envelope: `{success, message?, data}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub data: T,
}

/// `data` of a single-contact answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactData {
    pub contact: Contact,
}

/// The documented error envelope: `{success: false, message, error: {code, details}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub message: String,
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    #[serde(default)]
    pub details: Option<String>,
}

/// The error codes the documents name.
pub mod codes {
    pub const NOT_FOUND: &str = "not_found";
    pub const VALIDATION_ERROR: &str = "validation_error";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const RATE_LIMIT_EXCEEDED: &str = "rate_limit_exceeded";
    /// Not in the documents; the sandbox uses it for injected 500s.
    pub const INTERNAL_ERROR: &str = "internal_error";
}
