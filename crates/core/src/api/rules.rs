//! The Convers8 API's business rules for a send request: what the server
//! accepts beyond the JSON shape. The sandbox answers `validation_error` with
//! these details; the planner runs [`check_content`] on every rendered message
//! so a campaign learns about a 21-character button title before the first
//! send, not from the server. Pure functions: no I/O, no allocation on success
//! beyond parsing.
//!
//! Every error is the `details` text of a `validation_error`: it starts with
//! the path of the offending field (`content.action.buttons[1].reply.title`)
//! and says what was wrong in operator's words. Lengths count characters
//! (Unicode scalar values), not bytes, as the API does.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::model::{
    InteractiveContent, InteractiveHeader, LocationContent, MediaContent, MessageContent,
    MessageKind, TemplateContent, TemplateParameter, TextContent,
};

pub const TEXT_MAX_CHARS: usize = 4096;
pub const CAPTION_MAX_CHARS: usize = 1024;
pub const MEDIA_TYPES: [&str; 5] = ["image", "document", "video", "audio", "sticker"];
pub const INTERACTIVE_TYPES: [&str; 2] = ["button", "list"];
pub const MAX_BUTTONS: usize = 3;
pub const BUTTON_ID_MAX_CHARS: usize = 256;
pub const BUTTON_TITLE_MAX_CHARS: usize = 20;
pub const MAX_LIST_ROWS: usize = 10;
pub const ROW_ID_MAX_CHARS: usize = 256;
pub const ROW_TITLE_MAX_CHARS: usize = 24;
pub const ROW_DESCRIPTION_MAX_CHARS: usize = 72;
pub const SECTION_TITLE_MAX_CHARS: usize = 24;
pub const INTERACTIVE_BODY_MAX_CHARS: usize = 1024;
pub const HEADER_TYPES: [&str; 4] = ["text", "image", "video", "document"];
pub const HEADER_TEXT_MAX_CHARS: usize = 60;
pub const FOOTER_MAX_CHARS: usize = 60;
pub const TEMPLATE_COMPONENT_TYPES: [&str; 3] = ["header", "body", "button"];
pub const TEMPLATE_PARAMETER_TYPES: [&str; 4] = ["text", "image", "document", "video"];

/// Checks a send request body against the API's rules; `Err` carries the
/// `details` text naming the bad field.
pub fn check_send_request(kind: MessageKind, body: &Value) -> Result<MessageContent, String> {
    let Value::Object(fields) = body else {
        return Err(format!(
            "body: expected a JSON object, got {}",
            json_type(body)
        ));
    };
    let name_field = kind.name_field();
    if let Some(key) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "to" | "content") && k.as_str() != name_field)
    {
        return Err(unknown_top_level_field(kind, key));
    }

    let to = match fields.get("to") {
        None => return Err("to: missing; the recipient's E.164 phone number is required".into()),
        Some(Value::String(to)) => to,
        Some(other) => return Err(format!("to: expected a string, got {}", json_type(other))),
    };
    if !is_e164(to) {
        return Err(format!(
            "to: '{}' is not an E.164 phone number (+ then 7 to 15 digits)",
            clip(to)
        ));
    }
    match fields.get(name_field) {
        // Null is "absent", as for every optional field of the content.
        None | Some(Value::String(_) | Value::Null) => {}
        Some(other) => {
            return Err(format!(
                "{name_field}: expected a string, got {}",
                json_type(other)
            ));
        }
    }

    let content = match fields.get("content") {
        None => {
            return Err(format!(
                "content: missing; a {kind} message needs its content"
            ));
        }
        Some(content @ Value::Object(_)) => content,
        Some(other) => {
            return Err(format!(
                "content: expected a JSON object, got {}",
                json_type(other)
            ));
        }
    };
    let content = match kind {
        MessageKind::Text => MessageContent::Text(parse_content(content)?),
        MessageKind::Media => MessageContent::Media(parse_content(content)?),
        MessageKind::Interactive => MessageContent::Interactive(parse_content(content)?),
        MessageKind::Template => MessageContent::Template(parse_content(content)?),
        MessageKind::Location => MessageContent::Location(parse_content(content)?),
    };
    check_content(&content)?;
    Ok(content)
}

/// `^\+[1-9]\d{6,14}$`: a plus, then 7 to 15 ASCII digits not starting with 0.
pub fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    let digits = digits.as_bytes();
    (7..=15).contains(&digits.len()) && digits[0] != b'0' && digits.iter().all(u8::is_ascii_digit)
}

/// The business limits of a parsed content, whatever produced it (a request
/// body in the sandbox, a rendered template in the planner).
pub fn check_content(content: &MessageContent) -> Result<(), String> {
    match content {
        MessageContent::Text(c) => check_text(c),
        MessageContent::Media(c) => check_media(c),
        MessageContent::Interactive(c) => check_interactive(c),
        MessageContent::Template(c) => check_template(c),
        MessageContent::Location(c) => check_location(c),
    }
}

fn check_text(c: &TextContent) -> Result<(), String> {
    // Whitespace-only text renders as an empty bubble; the API refuses it.
    if c.text.trim().is_empty() {
        return Err("content.text: must not be empty or only whitespace".into());
    }
    max_chars("content.text", &c.text, TEXT_MAX_CHARS)
}

fn check_media(c: &MediaContent) -> Result<(), String> {
    one_of("content.type", &c.media_type, &MEDIA_TYPES)?;
    check_url("content.url", &c.url)?;
    if let Some(caption) = &c.caption {
        max_chars("content.caption", caption, CAPTION_MAX_CHARS)?;
    }
    Ok(())
}

fn check_interactive(c: &InteractiveContent) -> Result<(), String> {
    one_of("content.type", &c.interactive_type, &INTERACTIVE_TYPES)?;
    if let Some(header) = &c.header {
        check_header(header)?;
    }
    non_empty("content.body.text", &c.body.text)?;
    max_chars(
        "content.body.text",
        &c.body.text,
        INTERACTIVE_BODY_MAX_CHARS,
    )?;
    if let Some(footer) = &c.footer {
        max_chars("content.footer.text", &footer.text, FOOTER_MAX_CHARS)?;
    }
    if c.interactive_type == "button" {
        check_buttons(c)
    } else {
        check_list(c)
    }
}

fn check_header(h: &InteractiveHeader) -> Result<(), String> {
    one_of("content.header.type", &h.header_type, &HEADER_TYPES)?;
    if h.header_type == "text" {
        let Some(text) = &h.text else {
            return Err("content.header.text: missing; a text header needs its text".into());
        };
        non_empty("content.header.text", text)?;
        max_chars("content.header.text", text, HEADER_TEXT_MAX_CHARS)
    } else {
        let Some(url) = &h.url else {
            return Err(format!(
                "content.header.url: missing; an {} header needs the media's url",
                h.header_type
            ));
        };
        check_url("content.header.url", url)
    }
}

fn check_buttons(c: &InteractiveContent) -> Result<(), String> {
    if c.action.sections.is_some() {
        return Err(
            "content.action.sections: a button message has no sections (use type \"list\" for a list)"
                .into(),
        );
    }
    let Some(buttons) = &c.action.buttons else {
        return Err(format!(
            "content.action.buttons: missing; a button message needs 1 to {MAX_BUTTONS} reply buttons"
        ));
    };
    if buttons.is_empty() || buttons.len() > MAX_BUTTONS {
        return Err(format!(
            "content.action.buttons: {} buttons, 1 to {MAX_BUTTONS} allowed",
            buttons.len()
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(buttons.len());
    for (i, button) in buttons.iter().enumerate() {
        let path = format!("content.action.buttons[{i}]");
        one_of(&format!("{path}.type"), &button.button_type, &["reply"])?;
        let id = &button.reply.id;
        non_empty(&format!("{path}.reply.id"), id)?;
        max_chars(&format!("{path}.reply.id"), id, BUTTON_ID_MAX_CHARS)?;
        let title = &button.reply.title;
        non_empty(&format!("{path}.reply.title"), title)?;
        max_chars(
            &format!("{path}.reply.title"),
            title,
            BUTTON_TITLE_MAX_CHARS,
        )?;
        // The reply carries only the id back, so two equal ids are indistinguishable.
        if let Some(first) = seen.insert(id, i) {
            return Err(format!(
                "{path}.reply.id: '{}' is already the id of buttons[{first}]; ids must be unique",
                clip(id)
            ));
        }
    }
    Ok(())
}

fn check_list(c: &InteractiveContent) -> Result<(), String> {
    if c.action.buttons.is_some() {
        return Err(
            "content.action.buttons: a list message has no buttons (use type \"button\" for reply buttons)"
                .into(),
        );
    }
    let Some(sections) = &c.action.sections else {
        return Err(format!(
            "content.action.sections: missing; a list message needs sections with 1 to {MAX_LIST_ROWS} rows in total"
        ));
    };
    let total: usize = sections.iter().map(|s| s.rows.len()).sum();
    if total == 0 || total > MAX_LIST_ROWS {
        return Err(format!(
            "content.action.sections: {total} rows in total, 1 to {MAX_LIST_ROWS} allowed"
        ));
    }
    let mut seen: HashMap<&str, (usize, usize)> = HashMap::with_capacity(total);
    for (s, section) in sections.iter().enumerate() {
        let path = format!("content.action.sections[{s}]");
        if section.rows.is_empty() {
            return Err(format!(
                "{path}.rows: empty; every section needs at least one row"
            ));
        }
        if let Some(title) = &section.title {
            max_chars(&format!("{path}.title"), title, SECTION_TITLE_MAX_CHARS)?;
        }
        for (r, row) in section.rows.iter().enumerate() {
            let path = format!("{path}.rows[{r}]");
            non_empty(&format!("{path}.id"), &row.id)?;
            max_chars(&format!("{path}.id"), &row.id, ROW_ID_MAX_CHARS)?;
            non_empty(&format!("{path}.title"), &row.title)?;
            max_chars(&format!("{path}.title"), &row.title, ROW_TITLE_MAX_CHARS)?;
            if let Some(description) = &row.description {
                max_chars(
                    &format!("{path}.description"),
                    description,
                    ROW_DESCRIPTION_MAX_CHARS,
                )?;
            }
            if let Some((fs, fr)) = seen.insert(&row.id, (s, r)) {
                return Err(format!(
                    "{path}.id: '{}' is already the id of sections[{fs}].rows[{fr}]; ids must be unique",
                    clip(&row.id)
                ));
            }
        }
    }
    Ok(())
}

fn check_template(c: &TemplateContent) -> Result<(), String> {
    non_empty("content.template_name", &c.template_name)?;
    non_empty("content.language.code", &c.language.code)?;
    for (i, component) in c.components.iter().flatten().enumerate() {
        let path = format!("content.components[{i}]");
        one_of(
            &format!("{path}.type"),
            &component.component_type,
            &TEMPLATE_COMPONENT_TYPES,
        )?;
        for (j, parameter) in component.parameters.iter().flatten().enumerate() {
            check_parameter(&format!("{path}.parameters[{j}]"), parameter)?;
        }
    }
    Ok(())
}

fn check_parameter(path: &str, p: &TemplateParameter) -> Result<(), String> {
    one_of(
        &format!("{path}.type"),
        &p.parameter_type,
        &TEMPLATE_PARAMETER_TYPES,
    )?;
    let kind = p.parameter_type.as_str();
    let links = [
        ("image", &p.image),
        ("document", &p.document),
        ("video", &p.video),
    ];
    // Every link given must be usable, even one the type does not select.
    for (name, link) in links {
        if let Some(link) = link {
            non_empty(&format!("{path}.{name}.link"), &link.link)?;
        }
    }
    let present = match kind {
        "text" => p.text.is_some(),
        _ => links
            .iter()
            .any(|(name, link)| *name == kind && link.is_some()),
    };
    if !present {
        return Err(format!(
            "{path}.{kind}: missing; a {kind} parameter carries its value there"
        ));
    }
    match &p.text {
        Some(text) if kind == "text" => non_empty(&format!("{path}.text"), text),
        _ => Ok(()),
    }
}

fn check_location(c: &LocationContent) -> Result<(), String> {
    check_coordinate("content.latitude", &c.latitude, 90)?;
    check_coordinate("content.longitude", &c.longitude, 180)
}

/// A coordinate is a plain decimal (`-1.2921`, `36.8219`, `+90`): an optional
/// sign, an integer part without leading zeros, an optional fraction. Exponents,
/// `inf` and `NaN` are refused even though Rust would parse them, so the rule
/// matches the OpenAPI pattern exactly. The range is checked on the digits, not
/// a float, so `90.000000000000000001` is out of range as written.
fn check_coordinate(path: &str, value: &str, limit: u32) -> Result<(), String> {
    if coordinate_in_range(value, limit) {
        Ok(())
    } else {
        Err(format!(
            "{path}: '{}' is not a decimal number from -{limit} to {limit}",
            clip(value)
        ))
    }
}

fn coordinate_in_range(value: &str, limit: u32) -> bool {
    let unsigned = value.strip_prefix(['+', '-']).unwrap_or(value);
    let (int, frac) = match unsigned.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (unsigned, None),
    };
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(int) || int.len() > 3 || (int.len() > 1 && int.starts_with('0')) {
        return false;
    }
    if frac.is_some_and(|frac| !digits_only(frac)) {
        return false;
    }
    let Ok(whole) = int.parse::<u32>() else {
        return false;
    };
    whole < limit || (whole == limit && frac.is_none_or(|f| f.bytes().all(|b| b == b'0')))
}

/// Deserialises `content` as `T`, naming the path of the first problem
/// (`content.action.buttons[0].reply: missing field `id``).
fn parse_content<T: DeserializeOwned>(content: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(content).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            format!("content: {inner}")
        } else {
            format!("content.{path}: {inner}")
        }
    })
}

fn unknown_top_level_field(kind: MessageKind, key: &str) -> String {
    let name_field = kind.name_field();
    if key == "name" || key == "contact" {
        // The one place the two documents' endpoints differ: say so.
        format!(
            "{key}: unknown field; the {kind} endpoint calls the recipient's name `{name_field}`"
        )
    } else {
        format!(
            "{}: unknown field; expected to, {name_field}, content",
            clip(key)
        )
    }
}

fn non_empty(path: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{path}: must not be empty"))
    } else {
        Ok(())
    }
}

fn max_chars(path: &str, value: &str, max: usize) -> Result<(), String> {
    // Counting stops early: a long text costs no more than max + 1 steps.
    let count = value.chars().take(max + 1).count();
    if count > max {
        Err(format!(
            "{path}: {} characters, at most {max}",
            value.chars().count()
        ))
    } else {
        Ok(())
    }
}

fn one_of(path: &str, value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{path}: '{}' is not one of {}",
            clip(value),
            allowed.join(", ")
        ))
    }
}

fn check_url(path: &str, url: &str) -> Result<(), String> {
    non_empty(path, url)?;
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!(
            "{path}: '{}' must start with http:// or https://",
            clip(url)
        ))
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Quotes at most 40 characters of a user's value, so one huge field cannot
/// turn an error message into a copy of the request.
fn clip(value: &str) -> String {
    const MAX: usize = 40;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn text_body(text: &str) -> Value {
        json!({"to": "+254712345678", "name": "Ann", "content": {"text": text}})
    }

    fn buttons(n: usize) -> Value {
        let buttons: Vec<Value> = (0..n)
            .map(|i| json!({"type": "reply", "reply": {"id": format!("b{i}"), "title": format!("Option {i}")}}))
            .collect();
        json!({"to": "+254712345678", "content": {
            "type": "button", "body": {"text": "Pick one"}, "action": {"buttons": buttons}}})
    }

    fn list(rows_per_section: &[usize]) -> Value {
        let mut n = 0;
        let sections: Vec<Value> = rows_per_section
            .iter()
            .map(|&rows| {
                let rows: Vec<Value> = (0..rows)
                    .map(|_| {
                        n += 1;
                        json!({"id": format!("r{n}"), "title": format!("Row {n}")})
                    })
                    .collect();
                json!({"title": "Section", "rows": rows})
            })
            .collect();
        json!({"to": "+254712345678", "content": {
            "type": "list", "body": {"text": "Pick one"}, "action": {"sections": sections}}})
    }

    fn err(kind: MessageKind, body: Value) -> String {
        check_send_request(kind, &body).expect_err("the request should be refused")
    }

    #[test]
    fn e164_accepts_plus_and_7_to_15_digits() {
        assert!(is_e164("+2547123"));
        assert!(is_e164("+254712345678"));
        assert!(is_e164("+123456789012345"));
        assert!(!is_e164("+254712"), "6 digits");
        assert!(!is_e164("+1234567890123456"), "16 digits");
        assert!(!is_e164("254712345678"), "no plus");
        assert!(!is_e164("+0712345678"), "leading zero");
        assert!(!is_e164("+25471234567a"));
        assert!(!is_e164("+٢٥٤٧١٢٣٤٥٦٧"), "non-ASCII digits");
        assert!(!is_e164(""));
    }

    #[test]
    fn a_good_text_request_parses() {
        let content = check_send_request(MessageKind::Text, &text_body("Hello")).unwrap();
        assert_eq!(
            content,
            MessageContent::Text(TextContent {
                text: "Hello".into()
            })
        );
    }

    #[test]
    fn text_limits_count_characters() {
        assert_eq!(
            err(MessageKind::Text, text_body("  \n")),
            "content.text: must not be empty or only whitespace"
        );
        let ok = "é".repeat(4096); // 8192 bytes, 4096 characters
        assert!(check_send_request(MessageKind::Text, &text_body(&ok)).is_ok());
        assert_eq!(
            err(MessageKind::Text, text_body(&"x".repeat(4097))),
            "content.text: 4097 characters, at most 4096"
        );
    }

    #[test]
    fn body_shape_errors_name_the_field() {
        assert_eq!(
            err(MessageKind::Text, json!([1])),
            "body: expected a JSON object, got an array"
        );
        assert_eq!(
            err(MessageKind::Text, json!({"content": {"text": "hi"}})),
            "to: missing; the recipient's E.164 phone number is required"
        );
        assert_eq!(
            err(
                MessageKind::Text,
                json!({"to": "0712", "content": {"text": "hi"}})
            ),
            "to: '0712' is not an E.164 phone number (+ then 7 to 15 digits)"
        );
        assert_eq!(
            err(
                MessageKind::Text,
                json!({"to": "+254712345678", "name": 5, "content": {"text": "hi"}})
            ),
            "name: expected a string, got a number"
        );
        assert_eq!(
            err(MessageKind::Text, json!({"to": "+254712345678"})),
            "content: missing; a text message needs its content"
        );
        assert_eq!(
            err(
                MessageKind::Text,
                json!({"to": "+254712345678", "content": {}})
            ),
            "content: missing field `text`"
        );
        let unknown = err(
            MessageKind::Text,
            json!({"to": "+254712345678", "content": {"text": "hi", "emoji": true}}),
        );
        assert_eq!(
            unknown,
            "content.emoji: unknown field `emoji`, expected `text`"
        );
        assert_eq!(
            err(
                MessageKind::Text,
                json!({"to": "+254712345678", "priority": 1, "content": {"text": "hi"}})
            ),
            "priority: unknown field; expected to, name, content"
        );
    }

    #[test]
    fn location_uses_contact_not_name() {
        let body = json!({"to": "+254712345678", "contact": "Ann",
            "content": {"latitude": "-1.2921", "longitude": "36.8219", "name": "Office"}});
        assert!(check_send_request(MessageKind::Location, &body).is_ok());
        let body = json!({"to": "+254712345678", "name": "Ann",
            "content": {"latitude": "-1.2921", "longitude": "36.8219"}});
        assert_eq!(
            err(MessageKind::Location, body),
            "name: unknown field; the location endpoint calls the recipient's name `contact`"
        );
    }

    #[test]
    fn coordinates_are_plain_decimals_in_range() {
        for ok in ["0", "-0", "+90", "90.000", "-89.999999", "1.5", "-1.2921"] {
            assert!(coordinate_in_range(ok, 90), "{ok}");
        }
        for bad in [
            "90.0001", "91", "-100", "1e1", "NaN", "inf", "", ".5", "5.", "05", "1,5", " 1", "--1",
        ] {
            assert!(!coordinate_in_range(bad, 90), "{bad}");
        }
        assert!(coordinate_in_range("-180", 180));
        assert!(coordinate_in_range("179.99", 180));
        assert!(!coordinate_in_range("180.5", 180));
        let body = json!({"to": "+254712345678",
            "content": {"latitude": "95", "longitude": "36.8219"}});
        assert_eq!(
            err(MessageKind::Location, body),
            "content.latitude: '95' is not a decimal number from -90 to 90"
        );
    }

    #[test]
    fn media_rules() {
        let media = |t: &str, url: &str, caption: &str| json!({"to": "+254712345678", "content": {"type": t, "url": url, "caption": caption}});
        assert!(
            check_send_request(
                MessageKind::Media,
                &media("image", "https://x.test/a.png", "hi")
            )
            .is_ok()
        );
        assert_eq!(
            err(MessageKind::Media, media("gif", "https://x.test/a.gif", "")),
            "content.type: 'gif' is not one of image, document, video, audio, sticker"
        );
        assert_eq!(
            err(MessageKind::Media, media("image", "ftp://x.test/a.png", "")),
            "content.url: 'ftp://x.test/a.png' must start with http:// or https://"
        );
        assert_eq!(
            err(MessageKind::Media, media("image", "", "")),
            "content.url: must not be empty"
        );
        assert_eq!(
            err(
                MessageKind::Media,
                media("image", "http://x.test/a", &"c".repeat(1025))
            ),
            "content.caption: 1025 characters, at most 1024"
        );
    }

    #[test]
    fn button_rules() {
        assert!(check_send_request(MessageKind::Interactive, &buttons(3)).is_ok());
        assert_eq!(
            err(MessageKind::Interactive, buttons(4)),
            "content.action.buttons: 4 buttons, 1 to 3 allowed"
        );
        assert_eq!(
            err(MessageKind::Interactive, buttons(0)),
            "content.action.buttons: 0 buttons, 1 to 3 allowed"
        );
        let mut long = buttons(2);
        long["content"]["action"]["buttons"][1]["reply"]["title"] = json!("x".repeat(23));
        assert_eq!(
            err(MessageKind::Interactive, long),
            "content.action.buttons[1].reply.title: 23 characters, at most 20"
        );
        let mut dup = buttons(2);
        dup["content"]["action"]["buttons"][1]["reply"]["id"] = json!("b0");
        assert_eq!(
            err(MessageKind::Interactive, dup),
            "content.action.buttons[1].reply.id: 'b0' is already the id of buttons[0]; ids must be unique"
        );
        let mut missing = buttons(1);
        missing["content"]["action"]["buttons"][0]["reply"] = json!({"title": "Yes"});
        assert_eq!(
            err(MessageKind::Interactive, missing),
            "content.action.buttons[0].reply: missing field `id`"
        );
        let mut both = buttons(1);
        both["content"]["action"]["sections"] = json!([]);
        assert!(err(MessageKind::Interactive, both).starts_with("content.action.sections:"));
        let mut kind = buttons(1);
        kind["content"]["type"] = json!("carousel");
        assert_eq!(
            err(MessageKind::Interactive, kind),
            "content.type: 'carousel' is not one of button, list"
        );
    }

    #[test]
    fn list_rules() {
        assert!(check_send_request(MessageKind::Interactive, &list(&[4, 6])).is_ok());
        assert_eq!(
            err(MessageKind::Interactive, list(&[5, 6])),
            "content.action.sections: 11 rows in total, 1 to 10 allowed"
        );
        assert_eq!(
            err(MessageKind::Interactive, list(&[])),
            "content.action.sections: 0 rows in total, 1 to 10 allowed"
        );
        let mut long = list(&[2]);
        long["content"]["action"]["sections"][0]["rows"][1]["title"] = json!("y".repeat(25));
        assert_eq!(
            err(MessageKind::Interactive, long),
            "content.action.sections[0].rows[1].title: 25 characters, at most 24"
        );
        let mut desc = list(&[1]);
        desc["content"]["action"]["sections"][0]["rows"][0]["description"] = json!("d".repeat(73));
        assert_eq!(
            err(MessageKind::Interactive, desc),
            "content.action.sections[0].rows[0].description: 73 characters, at most 72"
        );
        let mut dup = list(&[1, 1]);
        dup["content"]["action"]["sections"][1]["rows"][0]["id"] = json!("r1");
        assert!(err(MessageKind::Interactive, dup).contains("sections[0].rows[0]"));
        let mut stray = list(&[1]);
        stray["content"]["action"]["buttons"] = json!([]);
        assert!(err(MessageKind::Interactive, stray).starts_with("content.action.buttons:"));
    }

    #[test]
    fn header_body_footer_rules() {
        let mut msg = buttons(1);
        msg["content"]["header"] = json!({"type": "text", "text": "h".repeat(61)});
        assert_eq!(
            err(MessageKind::Interactive, msg.clone()),
            "content.header.text: 61 characters, at most 60"
        );
        msg["content"]["header"] = json!({"type": "image"});
        assert!(
            err(MessageKind::Interactive, msg.clone()).starts_with("content.header.url: missing")
        );
        msg["content"]["header"] = json!({"type": "image", "url": "https://x.test/h.png"});
        assert!(check_send_request(MessageKind::Interactive, &msg).is_ok());
        msg["content"]["footer"] = json!({"text": "f".repeat(61)});
        assert_eq!(
            err(MessageKind::Interactive, msg.clone()),
            "content.footer.text: 61 characters, at most 60"
        );
        msg["content"]["footer"] = json!({"text": "ok"});
        msg["content"]["body"] = json!({"text": ""});
        assert_eq!(
            err(MessageKind::Interactive, msg),
            "content.body.text: must not be empty"
        );
    }

    #[test]
    fn template_rules() {
        let template = |params: Value| {
            json!({"to": "+254712345678", "content": {
                "template_name": "order_update", "language": {"code": "en"},
                "components": [{"type": "body", "parameters": params}]}})
        };
        let ok = template(json!([
            {"type": "text", "text": "Ann"},
            {"type": "image", "image": {"link": "https://x.test/i.png"}}
        ]));
        assert!(check_send_request(MessageKind::Template, &ok).is_ok());
        assert_eq!(
            err(MessageKind::Template, template(json!([{"type": "text"}]))),
            "content.components[0].parameters[0].text: missing; a text parameter carries its value there"
        );
        assert_eq!(
            err(
                MessageKind::Template,
                template(json!([{"type": "text", "text": ""}]))
            ),
            "content.components[0].parameters[0].text: must not be empty"
        );
        assert_eq!(
            err(
                MessageKind::Template,
                template(json!([{"type": "currency", "text": "1"}]))
            ),
            "content.components[0].parameters[0].type: 'currency' is not one of text, image, document, video"
        );
        assert!(
            err(
                MessageKind::Template,
                template(json!([{"type": "video", "image": {"link": "https://x"}}]))
            )
            .starts_with("content.components[0].parameters[0].video: missing")
        );
        let no_lang = json!({"to": "+254712345678", "content": {
            "template_name": "t", "language": {"code": ""}}});
        assert_eq!(
            err(MessageKind::Template, no_lang),
            "content.language.code: must not be empty"
        );
    }

    #[test]
    fn long_values_are_clipped_in_details() {
        let details = err(
            MessageKind::Text,
            json!({"to": "9".repeat(1000), "content": {"text": "hi"}}),
        );
        assert!(details.len() < 120, "{details}");
    }
}
