//! Rendering `[message.content]` for one recipient: handlebars, strict, no HTML escaping.
//!
//! This module owns compiling every template string of the content once, the
//! template context (each CSV column by its header, `vars.*`, `recipient.phone`,
//! `recipient.row`), and turning a missing variable into a message that names
//! it and the template's place. Recipient data is data: a cell is a value in
//! the context, never template text, so `{{...}}` inside a cell comes out as
//! written. It must not read files, judge phones, or know about the API beyond
//! the content's JSON shape.
//!
//! The built-in names win: a CSV column called `vars` or `recipient` is not
//! reachable from templates. A column named like a handlebars helper (`len`,
//! `eq`, `lookup`, `if`, ...) is reachable only as `{{[len]}}`-style lookups
//! through `@root`, because `{{len}}` calls the helper.

use std::collections::BTreeSet;
use std::sync::Mutex;

use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
use handlebars::{
    Context, Handlebars, Output, PathSeg, RenderContext, RenderErrorReason, Renderable, Template,
};
use serde_json::{Map, Value};

use crate::campaign::MessageSpec;

/// The helpers handlebars registers by default; `{{name}}` with one of these
/// names calls the helper instead of reading a column.
const BUILTIN_HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len",
];
/// Block helpers whose body sees a different context (`this` is the item).
const SCOPE_HELPERS: &[&str] = &["each", "with"];
const RECIPIENT_FIELDS: &[&str] = &["phone", "row"];

/// A template that cannot be used for any recipient. One line, naming the
/// template's place in `[message.content]`.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {place} has a syntax error{}: {reason}", at.map(|(l, c)| format!(" at line {l}, column {c}")).unwrap_or_default())]
    Syntax {
        place: String,
        at: Option<(usize, usize)>,
        reason: String,
    },
    #[error("template {place} uses {{{{{variable}}}}}, which [vars] does not define")]
    UnknownVar { place: String, variable: String },
    #[error(
        "template {place} uses {{{{{variable}}}}}: recipient has only recipient.phone and recipient.row"
    )]
    UnknownRecipientField { place: String, variable: String },
    #[error(
        "template {place} uses {{{{{what}}}}}: partials and decorators are not supported in campaigns"
    )]
    Unsupported { place: String, what: String },
}

/// A template that cannot be rendered for one row.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {place} uses {{{{{variable}}}}}, which this row does not have")]
    Missing { place: String, variable: String },
    #[error("template {place} failed for row {row}: {reason}")]
    Failed {
        place: String,
        row: u64,
        reason: String,
    },
}

/// One row as the templates see it.
#[derive(Debug, Clone, Copy)]
pub struct RowContext<'a> {
    pub headers: &'a [String],
    pub record: &'a csv::StringRecord,
    /// E.164.
    pub phone: &'a str,
    /// 1-based data row.
    pub row: u64,
}

/// The content with its template strings compiled, ready to render per row.
///
/// `Send + Sync`: one renderer can serve several threads. Each render reuses
/// the previous row's context when no other thread holds it, so a row costs
/// no allocation for its cells.
pub struct Renderer {
    registry: Handlebars<'static>,
    templates: Vec<Compiled>,
    shape: Node,
    /// `{"vars": .., "recipient": {..}}`: the part of the context every row shares.
    base: Map<String, Value>,
    referenced: BTreeSet<String>,
    /// A template reads the context as a whole (`{{#each this}}`, `lookup this ..`):
    /// every column must be in the context, not only the referenced ones.
    needs_all_columns: bool,
    scope: Mutex<Option<RowScope>>,
}

struct Compiled {
    place: String,
    template: Template,
}

/// The content JSON with template strings replaced by indexes into `templates`.
enum Node {
    Literal(Value),
    Template(usize),
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
}

/// A row context kept between renders, with the columns it was laid out for.
struct RowScope {
    headers: Vec<String>,
    /// (index in the record, key in the context) of each column templates can see.
    slots: Vec<(usize, String)>,
    context: Context,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field(
                "templates",
                &self.templates.iter().map(|t| &t.place).collect::<Vec<_>>(),
            )
            .field("referenced", &self.referenced)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    /// Compiles every template string in `message.content` once and checks
    /// the `vars.*` and `recipient.*` names they use.
    pub fn compile(
        message: &MessageSpec,
        vars: &Map<String, Value>,
    ) -> Result<Renderer, TemplateError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        // These are WhatsApp messages, not HTML: `&` must stay `&`.
        registry.register_escape_fn(handlebars::no_escape);

        let mut templates = Vec::new();
        let mut uses = Uses::default();
        let shape = build(
            &message.content,
            "message.content".to_owned(),
            &mut templates,
            &mut uses,
        )?;
        let vars_value = Value::Object(vars.clone());
        for (place, variable, path) in &uses.values {
            let Some((first, rest)) = path.split_first() else {
                continue;
            };
            if first == "vars" && lookup(&vars_value, rest).is_none() {
                return Err(TemplateError::UnknownVar {
                    place: place.clone(),
                    variable: variable.clone(),
                });
            }
            let known_recipient_field = match rest {
                [] => true,
                [field] => RECIPIENT_FIELDS.contains(&field.as_str()),
                _ => false,
            };
            if first == "recipient" && !known_recipient_field {
                return Err(TemplateError::UnknownRecipientField {
                    place: place.clone(),
                    variable: variable.clone(),
                });
            }
        }

        let mut base = Map::new();
        base.insert("vars".into(), vars_value);
        let mut recipient = Map::new();
        recipient.insert("phone".into(), Value::String(String::new()));
        recipient.insert("row".into(), Value::from(0u64));
        base.insert("recipient".into(), Value::Object(recipient));

        Ok(Renderer {
            registry,
            templates,
            shape,
            base,
            referenced: uses.columns,
            needs_all_columns: uses.whole_context,
            scope: Mutex::new(None),
        })
    }

    /// Top-level names the templates read that are not `vars.*`,
    /// `recipient.*`, `@`-variables or helpers: the CSV columns they need.
    ///
    /// Found by walking the parsed templates, so it is exact for plain
    /// `{{name}}`, `{{[first name]}}`, helper arguments (`{{#if city}}`,
    /// `{{eq city "x"}}`), `@root.name` and `../name` out of blocks. Names used
    /// inside `{{#each}}`/`{{#with}}` bodies belong to the item, not the row,
    /// and are not listed. A name used only as an `#if` condition is listed
    /// even though a missing one would merely be false. Dynamic lookups
    /// (`{{lookup this col}}`) cannot be listed; they still work, and a
    /// missing one fails at render time.
    pub fn referenced_columns(&self) -> BTreeSet<String> {
        self.referenced.clone()
    }

    /// The content for one row: every template string replaced by its
    /// rendering, everything else copied.
    pub fn render(&self, ctx: &RowContext<'_>) -> Result<Value, RenderError> {
        // Take the kept scope if nobody else is using it; otherwise make one.
        let kept = self.scope.try_lock().ok().and_then(|mut s| s.take());
        let mut scope = match kept {
            Some(s) if s.headers.as_slice() == ctx.headers => s,
            _ => self.new_scope(ctx.headers),
        };
        fill(&mut scope, ctx);
        let result = self.render_node(&self.shape, &scope.context, ctx.row);
        if let Ok(mut slot) = self.scope.try_lock() {
            *slot = Some(scope);
        }
        result
    }

    fn new_scope(&self, headers: &[String]) -> RowScope {
        let slots = headers
            .iter()
            .enumerate()
            .filter(|(_, h)| {
                !h.is_empty()
                    && !self.base.contains_key(h.as_str())
                    && (self.needs_all_columns || self.referenced.contains(h.as_str()))
            })
            .map(|(i, h)| (i, h.clone()))
            .collect();
        RowScope {
            headers: headers.to_vec(),
            slots,
            context: Context::from(Value::Object(self.base.clone())),
        }
    }

    fn render_node(&self, node: &Node, context: &Context, row: u64) -> Result<Value, RenderError> {
        Ok(match node {
            Node::Literal(v) => v.clone(),
            Node::Template(i) => Value::String(self.render_template(*i, context, row)?),
            Node::Object(fields) => {
                let mut out = Map::new();
                for (k, v) in fields {
                    out.insert(k.clone(), self.render_node(v, context, row)?);
                }
                Value::Object(out)
            }
            Node::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.render_node(v, context, row))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    fn render_template(
        &self,
        index: usize,
        context: &Context,
        row: u64,
    ) -> Result<String, RenderError> {
        let Some(compiled) = self.templates.get(index) else {
            return Ok(String::new());
        };
        let mut out = StringOut(String::with_capacity(64));
        let mut rc = RenderContext::new(None);
        compiled
            .template
            .render(&self.registry, context, &mut rc, &mut out)
            .map_err(|e| match e.reason() {
                RenderErrorReason::MissingVariable(path) => RenderError::Missing {
                    place: compiled.place.clone(),
                    variable: path.clone().unwrap_or_else(|| "a variable".to_owned()),
                },
                other => RenderError::Failed {
                    place: compiled.place.clone(),
                    row,
                    reason: other.to_string().replace('\n', " "),
                },
            })?;
        Ok(out.0)
    }
}

/// Writes this row's cells and recipient fields into the kept context,
/// reusing the strings already there.
fn fill(scope: &mut RowScope, ctx: &RowContext<'_>) {
    let Value::Object(map) = scope.context.data_mut() else {
        return;
    };
    for (index, key) in &scope.slots {
        match ctx.record.get(*index) {
            Some(cell) => match map.get_mut(key) {
                Some(Value::String(s)) => {
                    s.clear();
                    s.push_str(cell);
                }
                _ => {
                    map.insert(key.clone(), Value::String(cell.to_owned()));
                }
            },
            // A short record must not show the previous row's value.
            None => {
                map.remove(key);
            }
        }
    }
    if let Some(Value::Object(recipient)) = map.get_mut("recipient") {
        match recipient.get_mut("phone") {
            Some(Value::String(s)) => {
                s.clear();
                s.push_str(ctx.phone);
            }
            _ => {
                recipient.insert("phone".into(), Value::String(ctx.phone.to_owned()));
            }
        }
        recipient.insert("row".into(), Value::from(ctx.row));
    }
}

/// Collects handlebars output into one String (no intermediate buffer).
struct StringOut(String);

impl Output for StringOut {
    fn write(&mut self, seg: &str) -> std::io::Result<()> {
        self.0.push_str(seg);
        Ok(())
    }
}

fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn build(
    value: &Value,
    place: String,
    templates: &mut Vec<Compiled>,
    uses: &mut Uses,
) -> Result<Node, TemplateError> {
    Ok(match value {
        // Fast path: no `{{`, nothing to render.
        Value::String(s) if !s.contains("{{") => Node::Literal(value.clone()),
        Value::String(s) => {
            let template = Template::compile(s).map_err(|e| TemplateError::Syntax {
                place: place.clone(),
                at: e.pos(),
                reason: syntax_reason(e.reason()),
            })?;
            uses.walk_template(&template, &place, 0)?;
            templates.push(Compiled { place, template });
            Node::Template(templates.len() - 1)
        }
        Value::Object(fields) => {
            let mut out = Vec::with_capacity(fields.len());
            for (k, v) in fields {
                out.push((
                    k.clone(),
                    build(v, format!("{place}.{k}"), templates, uses)?,
                ));
            }
            Node::Object(out)
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, v) in items.iter().enumerate() {
                out.push(build(v, format!("{place}[{i}]"), templates, uses)?);
            }
            Node::Array(out)
        }
        other => Node::Literal(other.clone()),
    })
}

/// handlebars' reason, minus pest's list of every token it could have
/// accepted, which reads as noise to someone writing a WhatsApp message.
fn syntax_reason(reason: &handlebars::TemplateErrorReason) -> String {
    let text = reason.to_string().replace('\n', " ");
    if text.starts_with("invalid handlebars syntax") {
        "invalid handlebars syntax: check that every {{ has its }} and every {{#block}} its {{/block}}"
            .to_owned()
    } else {
        text
    }
}

/// What the templates read from the row context, found by walking their AST.
#[derive(Default)]
struct Uses {
    /// Top-level names that are CSV columns.
    columns: BTreeSet<String>,
    /// (place, as written, path from the root) of each plain value expression
    /// at the top level, for checking `vars.*` and `recipient.*` up front.
    values: Vec<(String, String, Vec<String>)>,
    whole_context: bool,
}

impl Uses {
    /// `depth` counts the `each`/`with` blocks around: inside them, bare
    /// names belong to the item.
    fn walk_template(
        &mut self,
        t: &Template,
        place: &str,
        depth: usize,
    ) -> Result<(), TemplateError> {
        for element in &t.elements {
            match element {
                TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
                TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                    self.walk_helper(h, place, depth)?;
                }
                TemplateElement::HelperBlock(h) => {
                    self.walk_helper(h, place, depth)?;
                    let inner = match &h.name {
                        Parameter::Name(n) if SCOPE_HELPERS.contains(&n.as_str()) => depth + 1,
                        Parameter::Path(p) if SCOPE_HELPERS.contains(&raw_path(p)) => depth + 1,
                        _ => depth,
                    };
                    if let Some(body) = &h.template {
                        self.walk_template(body, place, inner)?;
                    }
                    if let Some(inverse) = &h.inverse {
                        // `{{else}}` of `each` renders in the outer context.
                        self.walk_template(inverse, place, depth)?;
                    }
                }
                TemplateElement::DecoratorExpression(d)
                | TemplateElement::DecoratorBlock(d)
                | TemplateElement::PartialExpression(d)
                | TemplateElement::PartialBlock(d) => {
                    let sigil = match element {
                        TemplateElement::PartialExpression(_) => "> ",
                        TemplateElement::PartialBlock(_) => "#> ",
                        TemplateElement::DecoratorBlock(_) => "#* ",
                        _ => "* ",
                    };
                    let name = match &d.name {
                        Parameter::Name(n) => n.as_str(),
                        Parameter::Path(p) => raw_path(p),
                        _ => "...",
                    };
                    let what = format!("{sigil}{name}");
                    return Err(TemplateError::Unsupported {
                        place: place.to_owned(),
                        what,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn walk_helper(
        &mut self,
        h: &HelperTemplate,
        place: &str,
        depth: usize,
    ) -> Result<(), TemplateError> {
        let name_only = !h.block && h.params.is_empty() && h.hash.is_empty();
        match &h.name {
            Parameter::Path(p) if name_only && !BUILTIN_HELPERS.contains(&raw_path(p)) => {
                if let Some(path) = self.walk_path(p, depth)
                    && depth == 0
                {
                    self.values
                        .push((place.to_owned(), raw_path(p).to_owned(), path));
                }
            }
            Parameter::Name(n)
                if name_only && depth == 0 && !BUILTIN_HELPERS.contains(&n.as_str()) =>
            {
                self.columns.insert(n.clone());
            }
            Parameter::Subexpression(s) => {
                if let TemplateElement::Expression(inner) = s.as_element() {
                    self.walk_helper(inner, place, depth)?;
                }
            }
            _ => {}
        }
        let params = h.params.iter().chain(h.hash.values());
        for param in params {
            match param {
                Parameter::Path(p) => {
                    self.walk_path(p, depth);
                }
                Parameter::Subexpression(s) => {
                    if let TemplateElement::Expression(inner) = s.as_element() {
                        self.walk_helper(inner, place, depth)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records the column a path reads, if it reads one at the row's level;
    /// returns the path from the root when it can tell.
    fn walk_path(&mut self, p: &handlebars::Path, depth: usize) -> Option<Vec<String>> {
        let handlebars::Path::Relative((segs, _)) = p else {
            // `@index`, `@key`, ...: block-local.
            return None;
        };
        let mut ups = 0;
        let mut from_root = false;
        let mut names = Vec::new();
        for seg in segs {
            match seg {
                PathSeg::Named(n) => names.push(n.clone()),
                // `../` and `@root` are the only rules a path can carry
                // besides names; tell them apart by the raw text below.
                PathSeg::Ruled(_) if names.is_empty() => ups += 1,
                PathSeg::Ruled(_) => {}
                _ => {}
            }
        }
        if raw_path(p).starts_with("@root") {
            from_root = true;
        }
        let at_row = from_root || ups >= depth;
        if !at_row {
            return None;
        }
        match names.first() {
            // `this` (or `@root`) on its own: the whole row.
            None => {
                self.whole_context = true;
                None
            }
            Some(first) => {
                if first != "vars" && first != "recipient" {
                    self.columns.insert(first.clone());
                }
                Some(names)
            }
        }
    }
}

fn raw_path(p: &handlebars::Path) -> &str {
    match p {
        handlebars::Path::Relative((_, raw)) => raw,
        handlebars::Path::Local((_, _, raw)) => raw,
    }
}

/// Debug helper for tests: which columns a set of headers puts in the context.
#[cfg(test)]
fn slot_names(r: &Renderer, headers: &[String]) -> Vec<String> {
    r.new_scope(headers)
        .slots
        .into_iter()
        .map(|(_, k)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::MessageKind;
    use serde_json::json;

    fn spec(content: Value) -> MessageSpec {
        MessageSpec {
            kind: MessageKind::Text,
            content,
        }
    }

    fn vars() -> Map<String, Value> {
        let Value::Object(m) = json!({"shop_url": "https://example.com/bf?a=1&b=2", "discount": 30, "secret": "s3cr3t", "nested": {"x": "y"}})
        else {
            unreachable!()
        };
        m
    }

    fn headers(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn render_row(r: &Renderer, h: &[String], cells: &[&str]) -> Result<Value, RenderError> {
        let record = csv::StringRecord::from(cells.to_vec());
        r.render(&RowContext {
            headers: h,
            record: &record,
            phone: "+254712345678",
            row: 7,
        })
    }

    #[test]
    fn renders_columns_vars_and_recipient() {
        let r = Renderer::compile(
            &spec(json!({"text": "Hi {{name}} from {{[home town]}}: {{vars.discount}}% off {{vars.shop_url}} ({{recipient.phone}}, row {{recipient.row}}) {{vars.nested.x}}"})),
            &vars(),
        )
        .unwrap();
        let h = headers(&["phone", "name", "home town"]);
        let out = render_row(&r, &h, &["0712", "Amina", "Kisumu"]).unwrap();
        assert_eq!(
            out,
            json!({"text": "Hi Amina from Kisumu: 30% off https://example.com/bf?a=1&b=2 (+254712345678, row 7) y"})
        );
        assert_eq!(
            r.referenced_columns(),
            BTreeSet::from(["name".to_owned(), "home town".to_owned()])
        );
    }

    #[test]
    fn non_strings_and_plain_strings_are_copied() {
        let content = json!({
            "type": "button",
            "body": {"text": "Pick, {{name}}"},
            "action": {"buttons": [
                {"type": "reply", "reply": {"id": "yes", "title": "Yes {{name}}"}},
                {"type": "reply", "reply": {"id": "no", "title": "No"}}
            ]},
            "n": 3, "f": true, "z": null
        });
        let r = Renderer::compile(&spec(content), &Map::new()).unwrap();
        assert_eq!(r.templates.len(), 2);
        let h = headers(&["name"]);
        let out = render_row(&r, &h, &["Tom"]).unwrap();
        assert_eq!(out["action"]["buttons"][0]["reply"]["title"], "Yes Tom");
        assert_eq!(out["action"]["buttons"][1]["reply"]["title"], "No");
        assert_eq!(out["body"]["text"], "Pick, Tom");
        assert_eq!(
            (&out["n"], &out["f"], &out["z"]),
            (&json!(3), &json!(true), &Value::Null)
        );
    }

    #[test]
    fn cell_text_is_data_not_template() {
        let r = Renderer::compile(&spec(json!({"text": "<{{name}}>"})), &vars()).unwrap();
        let h = headers(&["name"]);
        for cell in [
            "{{vars.secret}}",
            "{{#each this}}x{{/each}}",
            "Tom & Jerry <3 \"quoted\" 'x'",
            "Wanjikũ 🎉 مرحبا 你好 \u{200d}",
            "",
            "\\{{x}}",
        ] {
            let out = render_row(&r, &h, &[cell]).unwrap();
            assert_eq!(out["text"], format!("<{cell}>"), "{cell}");
        }
    }

    #[test]
    fn missing_variables_name_the_variable_and_place() {
        let r = Renderer::compile(
            &spec(json!({"body": {"text": "Hi {{name}}"}, "footer": {"text": "{{city}}"}})),
            &Map::new(),
        )
        .unwrap();
        let h = headers(&["phone", "name"]);
        let e = render_row(&r, &h, &["+1", "Tom"]).unwrap_err().to_string();
        assert_eq!(
            e,
            "template message.content.footer.text uses {{city}}, which this row does not have"
        );
        // A short row must not borrow the previous row's cell.
        let h = headers(&["phone", "name", "city"]);
        render_row(&r, &h, &["+1", "Tom", "Nairobi"]).unwrap();
        let short = csv::StringRecord::from(vec!["+1", "Tom"]);
        let e = r
            .render(&RowContext {
                headers: &h,
                record: &short,
                phone: "+1",
                row: 2,
            })
            .unwrap_err();
        assert!(
            matches!(e, RenderError::Missing { ref variable, .. } if variable == "city"),
            "{e}"
        );
    }

    #[test]
    fn vars_and_recipient_typos_fail_at_compile() {
        let e = Renderer::compile(&spec(json!({"text": "{{vars.shopurl}}"})), &vars()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "template message.content.text uses {{vars.shopurl}}, which [vars] does not define"
        );
        let e =
            Renderer::compile(&spec(json!({"text": "{{recipient.name}}"})), &vars()).unwrap_err();
        assert!(
            e.to_string()
                .contains("uses {{recipient.name}}: recipient has only"),
            "{e}"
        );
        // A condition on a var that may be absent is fine.
        Renderer::compile(
            &spec(json!({"text": "{{#if vars.maybe}}x{{/if}}"})),
            &vars(),
        )
        .unwrap();
    }

    #[test]
    fn syntax_errors_name_the_place() {
        let e = Renderer::compile(
            &spec(json!({"action": {"buttons": [{"reply": {"title": "Hi {{name"}}]}})),
            &Map::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "template message.content.action.buttons[0].reply.title has a syntax error"
            ),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = Renderer::compile(&spec(json!({"text": "{{> header}}"})), &Map::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "template message.content.text uses {{> header}}: partials and decorators are not supported in campaigns"
        );
        let e =
            Renderer::compile(&spec(json!({"text": "{{#if x}}open"})), &Map::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "template message.content.text has a syntax error at line 1, column 14: invalid handlebars syntax: check that every {{ has its }} and every {{#block}} its {{/block}}"
        );
        // Closed the wrong way round: handlebars names the mismatch itself.
        let e = Renderer::compile(&spec(json!({"text": "{{#if x}}a{{/each}}"})), &Map::new())
            .unwrap_err();
        assert!(e.to_string().contains("has a syntax error"), "{e}");
    }

    #[test]
    fn referenced_columns_from_the_ast() {
        let r = Renderer::compile(
            &spec(json!({"text": "{{#if vip}}VIP {{/if}}{{eq tier \"gold\"}} {{#each items}}{{title}}{{../owner}}{{@root.region}}{{@index}}{{/each}}{{#with vars.nested}}{{x}}{{/with}} {{{raw_html}}} {{len}} {{recipient.phone}} {{this.city}}"})),
            &vars(),
        )
        .unwrap();
        let cols: Vec<String> = r.referenced_columns().into_iter().collect();
        assert_eq!(
            cols,
            [
                "city", "items", "owner", "raw_html", "region", "tier", "vip"
            ]
        );
        // Only referenced columns go into the context.
        let h = headers(&["phone", "vip", "unused", "vars"]);
        assert_eq!(slot_names(&r, &h), ["vip"]);
        // `this` as a whole needs every column.
        let r = Renderer::compile(
            &spec(json!({"text": "{{#each this}}{{@key}}={{this}};{{/each}}"})),
            &Map::new(),
        )
        .unwrap();
        assert!(r.needs_all_columns);
        let h = headers(&["a", "b"]);
        let out = render_row(&r, &h, &["1", "2"]).unwrap();
        assert_eq!(out["text"], "a=1;b=2;recipient=[object];vars=[object];");
    }

    #[test]
    fn builtins_win_over_columns_named_vars_or_recipient() {
        let r = Renderer::compile(
            &spec(json!({"text": "{{vars.discount}} {{recipient.row}}"})),
            &vars(),
        )
        .unwrap();
        let h = headers(&["vars", "recipient"]);
        let out = render_row(&r, &h, &["x", "y"]).unwrap();
        assert_eq!(out["text"], "30 7");
    }

    #[test]
    fn renderer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Renderer>();
        let r = std::sync::Arc::new(
            Renderer::compile(&spec(json!({"text": "{{n}}"})), &Map::new()).unwrap(),
        );
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let h = headers(&["n"]);
                    for i in 0..500 {
                        let v = format!("{t}-{i}");
                        assert_eq!(render_row(&r, &h, &[&v]).unwrap()["text"], v);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    /// `cargo test --lib render_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn render_speed() {
        let content = json!({
            "type": "button",
            "body": {"text": "Hi {{name}}, {{vars.discount}}% off in {{city}} today: {{vars.shop_url}}"},
            "footer": {"text": "Reply STOP to opt out, {{first}}"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes {{tier}}"}}]}
        });
        let r = Renderer::compile(&spec(content), &vars()).unwrap();
        let h = headers(&["phone", "name", "city", "first", "tier"]);
        let records: Vec<csv::StringRecord> = (0..20_000)
            .map(|i| {
                csv::StringRecord::from(vec![
                    format!("+2547{i:08}"),
                    format!("Name {i}"),
                    "Nairobi".into(),
                    "Amina".into(),
                    "gold".into(),
                ])
            })
            .collect();
        let start = std::time::Instant::now();
        for (i, rec) in records.iter().enumerate() {
            let ctx = RowContext {
                headers: &h,
                record: rec,
                phone: "+254700000000",
                row: i as u64 + 1,
            };
            std::hint::black_box(r.render(&ctx).unwrap());
        }
        println!(
            "render: {:.2} µs/row (3 templates, 5 columns)",
            start.elapsed().as_secs_f64() * 1e6 / records.len() as f64
        );
    }
}
