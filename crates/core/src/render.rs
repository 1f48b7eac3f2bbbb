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
//! It also refuses, before handlebars sees it, a template nested deeper than
//! [`MAX_NESTING`]: handlebars parses, compiles, renders and drops templates
//! by recursion, so 2,000 nested `{{#if}}` would overflow the stack and abort
//! the process instead of naming the template.
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

/// The deepest a template may nest, counting every level handlebars
/// recurses on: `{{#…}}` and raw blocks, each `{{else …}}` link of a chain
/// (handlebars nests a chain one level per link), `(…)` subexpressions and
/// `[…]`/`{…}` literals, all added up. A debug build spends about 8 KiB of
/// stack per `{{#with}}` level, so 64 levels take a quarter of the 2 MiB a
/// thread gets; no WhatsApp message needs more.
pub const MAX_NESTING: usize = 64;

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
    #[error(
        "template {place} nests more than {limit} levels at line {}, column {} ({{{{#…}}}} blocks, {{{{else …}}}} branches, (…) subexpressions and […] literals within one another): use at most {limit}",
        at.0, at.1
    )]
    TooDeep {
        place: String,
        limit: usize,
        /// Line and column (1-based, in characters) where the limit is passed.
        at: (usize, usize),
    },
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
            if let Some(offset) = nesting_over(s, MAX_NESTING) {
                return Err(TemplateError::TooDeep {
                    place,
                    limit: MAX_NESTING,
                    at: line_column(s, offset),
                });
            }
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

/// The byte offset where `source` first nests deeper than `limit`, found
/// without handlebars and without recursion (see [`MAX_NESTING`]).
///
/// It reads the text the way handlebars' grammar does, where that decides
/// what is a mustache: `\{{` is text, `{{! … }}` and `{{!-- … --}}` are
/// comments, `{{{{raw}}}} … {{{{/raw}}}}` is text between its tags, and inside
/// a mustache a string literal or a `[path key]` may hold any `}}`, `)` or
/// `{{/if}}` without closing anything. Where it cannot match the grammar
/// exactly it counts more, never less: a false alarm needs more than
/// [`MAX_NESTING`] levels of something, an overflow aborts the process. Where
/// handlebars' parse must fail (an unterminated string, a `[` without `]`),
/// the rest is not scanned: handlebars reports the syntax error instead.
fn nesting_over(source: &str, limit: usize) -> Option<usize> {
    let mut scan = Nesting::new(source.as_bytes(), limit);
    scan.run();
    scan.over_at
}

/// The scanner behind [`nesting_over`].
struct Nesting<'s> {
    s: &'s [u8],
    limit: usize,
    /// The levels each open block adds: 1, plus 1 per `{{else …}}` link.
    blocks: Vec<usize>,
    /// The sum of `blocks`.
    block_depth: usize,
    /// The deepest level seen, for tests.
    max: usize,
    over_at: Option<usize>,
    /// The last search for a `--}}`: from where, and what it found. Comments
    /// that never end must not make the scan quadratic.
    long_comment_end: Option<(usize, Option<usize>)>,
}

impl<'s> Nesting<'s> {
    fn new(s: &'s [u8], limit: usize) -> Self {
        Nesting {
            s,
            limit,
            blocks: Vec::new(),
            block_depth: 0,
            max: 0,
            over_at: None,
            long_comment_end: None,
        }
    }

    /// Records a level reached at `at`; true once past the limit (stop there).
    fn reach(&mut self, depth: usize, at: usize) -> bool {
        self.max = self.max.max(depth);
        if depth > self.limit && self.over_at.is_none() {
            self.over_at = Some(at);
        }
        self.over_at.is_some()
    }

    fn run(&mut self) {
        let s = self.s;
        let mut i = 0;
        while i < s.len() {
            i = match s[i] {
                b'\\' => skip_escape(s, i),
                b'{' if s.get(i + 1) == Some(&b'{') => match self.mustache(i) {
                    Some(next) => next,
                    None => return,
                },
                _ => i + 1,
            };
        }
    }

    /// The mustache at `start`; returns where the text after it begins, or
    /// `None` when nothing after it matters (past the limit, or handlebars
    /// cannot parse past it).
    fn mustache(&mut self, start: usize) -> Option<usize> {
        let s = self.s;
        if s[start..].starts_with(b"{{{{") {
            return self.raw_block(start);
        }
        // Only exactly `{{!` opens a comment (`{{~!` is no comment).
        if s[start..].starts_with(b"{{!") {
            return self.comment(start);
        }
        // The grammar allows whitespace around the `~` and after `#`.
        let mut i = skip_ws(s, start + 2);
        if s.get(i) == Some(&b'~') {
            i = skip_ws(s, i + 1);
        }
        let mut name = true;
        let mut partial = false;
        match s.get(i) {
            Some(b'#') => {
                i = skip_ws(s, i + 1);
                match s.get(i) {
                    Some(b'>') => {
                        partial = true;
                        i += 1;
                    }
                    Some(b'*') => i += 1,
                    _ => {}
                }
                self.blocks.push(1);
                self.block_depth += 1;
                if self.reach(self.block_depth, start) {
                    return None;
                }
            }
            Some(b'/') => {
                if let Some(levels) = self.blocks.pop() {
                    self.block_depth -= levels;
                }
                // A partial block's end names it the way its start does.
                partial = true;
                i += 1;
            }
            Some(b'^') => {
                i += 1;
                if self.chain_link(i, start) {
                    return None;
                }
            }
            Some(b'e') if s[i..].starts_with(b"else") => {
                i += 4;
                if self.chain_link(i, start) {
                    return None;
                }
                // What follows reads as parameters either way: `{{else if
                // x}}` names a helper and gives it parameters, and where
                // that fails to parse (`{{else [x]}}`, `{{else 1.[x]}}`),
                // the tag is the helper `else` with parameters.
                name = false;
            }
            Some(b'>') => {
                partial = true;
                i += 1;
            }
            Some(b'{' | b'&' | b'*') => i += 1,
            _ => {}
        }
        self.inside(i, name, partial)
    }

    /// `{{else …}}` or `{{^…}}` at `start`, its keyword ending before `i`:
    /// a link of an else chain (one more level until the block closes)
    /// unless the tag is a plain `{{else}}`. True once past the limit.
    fn chain_link(&mut self, i: usize, start: usize) -> bool {
        let s = self.s;
        let mut j = skip_ws(s, i);
        if s.get(j) == Some(&b'~') {
            j = skip_ws(s, j + 1);
        }
        if s[j..].starts_with(b"}}") {
            return false;
        }
        match self.blocks.last_mut() {
            Some(levels) => *levels += 1,
            // Outside a block handlebars refuses it; counting more is safe.
            None => self.blocks.push(1),
        }
        self.block_depth += 1;
        self.reach(self.block_depth, start)
    }

    /// The inside of a mustache from `i` to its `}}`. `name`: the next token
    /// is a name, where `[` opens a path key rather than an array literal;
    /// `partial`: a partial's tag, whose name (outside parentheses) has its
    /// own characters and may be in single quotes.
    fn inside(&mut self, mut i: usize, mut name: bool, partial: bool) -> Option<usize> {
        let s = self.s;
        let mut parens = 0usize;
        loop {
            let c = *s.get(i)?;
            match c {
                b'}' if s.get(i + 1) == Some(&b'}') => return Some(i + 2),
                b'(' => {
                    parens += 1;
                    if self.reach(self.block_depth + parens, i) {
                        return None;
                    }
                    name = true;
                    i += 1;
                }
                b')' => {
                    parens = parens.saturating_sub(1);
                    name = false;
                    i += 1;
                }
                // `foo/[x]` names the partial `foo/`; `[x]` is a parameter.
                c if name && partial && parens == 0 && is_partial_char(c) => {
                    while s.get(i).is_some_and(|&c| is_partial_char(c)) {
                        i += 1;
                    }
                    name = false;
                }
                b'[' if name => {
                    i = path_key_end(s, i)?;
                    i = word_end(s, i, false)?;
                    name = false;
                }
                b'[' | b'{' if !name => {
                    // handlebars tries a literal first, then a path key.
                    let (end, depth) = literal_end(s, i, self.limit.saturating_add(1));
                    if self.reach(self.block_depth + parens + depth, i) {
                        return None;
                    }
                    i = match end {
                        Some(end) => end,
                        None if c == b'[' => word_end(s, path_key_end(s, i)?, false)?,
                        // Nothing else starts with `{` here: handlebars stops.
                        None => return Some(i + 1),
                    };
                    name = false;
                }
                b'\'' if name && partial && parens == 0 => {
                    i = match quoted_partial_end(s, i) {
                        Ok(end) => end,
                        Err(Stop::EndOfInput) => return None,
                        Err(Stop::Invalid) => return Some(i + 1),
                    };
                    name = false;
                }
                b'"' | b'\'' if !name => {
                    i = match string_end(s, i) {
                        Ok(end) => end,
                        Err(Stop::EndOfInput) => return None,
                        Err(Stop::Invalid) => return Some(i + 1),
                    };
                }
                // A quote where no rule takes one: handlebars stops here.
                b'"' | b'\'' => return Some(i + 1),
                b'=' => {
                    name = false;
                    i += 1;
                }
                c if is_symbol_char(c) || matches!(c, b'.' | b'/' | b'@') => {
                    i = word_end(s, i, !name)?;
                    name = false;
                }
                _ => i += 1,
            }
        }
    }

    /// `{{{{helper …}}}} text {{{{/helper}}}}`: the helper's parameters are
    /// one block deep; the text between the tags is not parsed.
    fn raw_block(&mut self, start: usize) -> Option<usize> {
        let s = self.s;
        self.blocks.push(1);
        self.block_depth += 1;
        if self.reach(self.block_depth, start) {
            return None;
        }
        let mut i = self.inside(start + 4, true, false)?;
        self.blocks.pop();
        self.block_depth -= 1;
        if s[i..].starts_with(b"}}") {
            i += 2;
        }
        // The text runs to the first `{{{{` that is not escaped.
        loop {
            match s.get(i)? {
                b'\\' => i = skip_escape(s, i),
                b'{' if s[i..].starts_with(b"{{{{") => break,
                _ => i += 1,
            }
        }
        let mut j = skip_ws(s, i + 4);
        if s.get(j) == Some(&b'~') {
            j = skip_ws(s, j + 1);
        }
        if s.get(j) == Some(&b'/') {
            find(s, j, b"}}}}").map(|end| end + 4)
        } else {
            // Not an end tag: handlebars fails here.
            Some(i + 4)
        }
    }

    /// `{{!-- … --}}` (which may hold `}}`) or `{{! … }}` at `start`.
    fn comment(&mut self, start: usize) -> Option<usize> {
        let s = self.s;
        let i = skip_ws(s, start + 3);
        if s[i..].starts_with(b"--") {
            let from = i + 2;
            let end = match self.long_comment_end {
                Some((searched, found))
                    if searched <= from && found.is_none_or(|end| end >= from) =>
                {
                    found
                }
                _ => {
                    let found = find(s, from, b"--}}");
                    self.long_comment_end = Some((from, found));
                    found
                }
            };
            if let Some(end) = end {
                return Some(end + 4);
            }
        }
        find(s, start + 3, b"}}").map(|end| end + 2)
    }
}

/// Why a sub-scan stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The input ended first: handlebars' parse fails with nothing after.
    EndOfInput,
    /// The grammar does not allow what comes next.
    Invalid,
}

/// The grammar's `symbol_char`: what identifiers are made of. Any byte of a
/// non-ASCII character counts.
fn is_symbol_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'$' | b':') || c >= 0x80
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

fn find(s: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    s.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// Backslashes at `i` in text. One backslash before `{{` makes it text
/// (with up to four braces); two or more leave the `{{` a mustache.
fn skip_escape(s: &[u8], i: usize) -> usize {
    let run = s[i..].iter().take_while(|&&c| c == b'\\').count();
    if run == 1 && s[i + 1..].starts_with(b"{{") {
        if s[i + 3..].starts_with(b"{{") {
            i + 5
        } else {
            i + 3
        }
    } else {
        i + run
    }
}

/// A path key `[…]` at `i`: it ends at the first `]`, whatever is inside.
fn path_key_end(s: &[u8], i: usize) -> Option<usize> {
    find(s, i + 1, b"]").map(|end| end + 1)
}

/// The grammar's `partial_symbol_char`: what a partial's bare name is made of.
fn is_partial_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'@' | b'/' | b'.') || c >= 0x80
}

/// The rest of a path or word from `start`: identifiers, numbers, `.`, `/`,
/// `@`, and `[…]` keys after a separator (`a.[b c]`). As a `parameter`, a
/// number comes first: `1.[x]` is the number `1.`, then `[x]`.
fn word_end(s: &[u8], start: usize, parameter: bool) -> Option<usize> {
    let mut i = start;
    while let Some(&c) = s.get(i) {
        if c == b'[' && i > start && matches!(s[i - 1], b'.' | b'/') {
            if parameter && scalar_end(s, start) == Some(i) {
                break;
            }
            i = path_key_end(s, i)?;
        } else if is_symbol_char(c) || matches!(c, b'.' | b'/' | b'@') {
            i += 1;
        } else {
            break;
        }
    }
    Some(i)
}

/// A string literal at `i` (`"…"` or `'…'`, JSON escapes): the offset after it.
fn string_end(s: &[u8], i: usize) -> Result<usize, Stop> {
    let quote = s[i];
    let mut j = i + 1;
    loop {
        match *s.get(j).ok_or(Stop::EndOfInput)? {
            c if c == quote => return Ok(j + 1),
            b'\\' => match *s.get(j + 1).ok_or(Stop::EndOfInput)? {
                c if c == quote || matches!(c, b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                    j += 2
                }
                b'u' => {
                    let hex = s.get(j + 2..j + 6).ok_or(Stop::EndOfInput)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(Stop::Invalid);
                    }
                    j += 6;
                }
                _ => return Err(Stop::Invalid),
            },
            _ => j += 1,
        }
    }
}

/// A partial's quoted name at `i`: `'…'`, at least one character, `\'`
/// inside. The offset after it.
fn quoted_partial_end(s: &[u8], i: usize) -> Result<usize, Stop> {
    let mut j = i + 1;
    loop {
        match *s.get(j).ok_or(Stop::EndOfInput)? {
            b'\'' if j == i + 1 => return Err(Stop::Invalid),
            b'\'' => return Ok(j + 1),
            b'\\' if s.get(j + 1) == Some(&b'\'') => j += 2,
            _ => j += 1,
        }
    }
}

/// A JSON-like literal at `i` as handlebars' grammar reads one (`literal`:
/// strings, numbers, `null`, booleans, `[…]` arrays and `{"k": …}` objects,
/// `[,1]` included), without recursion. Returns where it ends (`None` when
/// the grammar does not match it: then no part of it matched) and the
/// deepest `[`/`{` nesting reached on the way, which the parser's recursion
/// reaches even when it fails. Gives up past `cap` levels.
fn literal_end(s: &[u8], mut i: usize, cap: usize) -> (Option<usize>, usize) {
    #[derive(Clone, Copy, PartialEq)]
    enum Want {
        /// A value.
        Value,
        /// Just after `[`: a value, `,` or `]`.
        ArrayStart,
        /// Just after `{`: a key, `,` or `}`.
        ObjectStart,
        /// A key (after `,` in an object).
        Key,
        /// `:` after a key.
        Colon,
        /// After a value inside a container: `,` or its closing bracket.
        Next,
    }
    // Closing brackets of the containers open around `i`.
    let mut open: Vec<u8> = Vec::new();
    let mut max = 0;
    let mut want = Want::Value;
    loop {
        if !open.is_empty() {
            i = skip_ws(s, i);
        }
        let Some(&c) = s.get(i) else {
            return (None, max);
        };
        let mut value_done = false;
        match (want, c) {
            (Want::Value | Want::ArrayStart, b'[') | (Want::Value | Want::ArrayStart, b'{') => {
                open.push(if c == b'[' { b']' } else { b'}' });
                max = max.max(open.len());
                if open.len() > cap {
                    return (None, max);
                }
                want = if c == b'[' {
                    Want::ArrayStart
                } else {
                    Want::ObjectStart
                };
                i += 1;
            }
            (Want::ArrayStart, b']') | (Want::ObjectStart, b'}') | (Want::Next, b']' | b'}')
                if open.last() == Some(&c) =>
            {
                open.pop();
                i += 1;
                value_done = true;
            }
            (Want::ArrayStart, b',') => {
                want = Want::Value;
                i += 1;
            }
            (Want::ObjectStart | Want::Key, b'"' | b'\'') => match string_end(s, i) {
                Ok(end) => {
                    want = Want::Colon;
                    i = end;
                }
                Err(_) => return (None, max),
            },
            (Want::ObjectStart, b',') => {
                want = Want::Key;
                i += 1;
            }
            (Want::Colon, b':') => {
                want = Want::Value;
                i += 1;
            }
            (Want::Next, b',') => {
                want = if open.last() == Some(&b']') {
                    Want::Value
                } else {
                    Want::Key
                };
                i += 1;
            }
            (Want::Value | Want::ArrayStart, _) => match scalar_end(s, i) {
                Some(end) => {
                    i = end;
                    value_done = true;
                }
                None => return (None, max),
            },
            _ => return (None, max),
        }
        if value_done {
            if open.is_empty() {
                return (Some(i), max);
            }
            want = Want::Next;
        }
    }
}

/// A string, number, `null`, `true` or `false` at `i`: the offset after it.
fn scalar_end(s: &[u8], i: usize) -> Option<usize> {
    let c = *s.get(i)?;
    if c == b'"' || c == b'\'' {
        return string_end(s, i).ok();
    }
    let not_followed_by_symbol =
        |end: usize| (!s.get(end).is_some_and(|&c| is_symbol_char(c))).then_some(end);
    for word in [&b"null"[..], b"true", b"false"] {
        if s[i..].starts_with(word) {
            return not_followed_by_symbol(i + word.len());
        }
    }
    // -? digit+ .? digit* (E -? digit+)?
    let digits = |mut j: usize| {
        while s.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        j
    };
    let mut j = i;
    if s.get(j) == Some(&b'-') {
        j += 1;
    }
    let int_end = digits(j);
    if int_end == j {
        return None;
    }
    j = int_end;
    if s.get(j) == Some(&b'.') {
        j = digits(j + 1);
    }
    if s.get(j) == Some(&b'E') {
        let mut k = j + 1;
        if s.get(k) == Some(&b'-') {
            k += 1;
        }
        let exp_end = digits(k);
        if exp_end > k {
            j = exp_end;
        }
    }
    not_followed_by_symbol(j)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source.as_bytes()[..offset.min(source.len())];
    let line_start = before
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |p| p + 1);
    let line = 1 + before.iter().filter(|&&c| c == b'\n').count();
    let column = 1 + String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count();
    (line, column)
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
    use std::collections::HashMap;

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

    /// The deepest level the scanner sees in `source`, with no limit.
    fn depth(source: &str) -> usize {
        let mut scan = Nesting::new(source.as_bytes(), usize::MAX);
        scan.run();
        scan.max
    }

    #[test]
    fn nesting_counts_blocks_chains_subexpressions_and_literals() {
        for (source, expected) in [
            ("Hi {{name}} (and [friends] {of} theirs)", 0),
            ("{{#if a}}x{{/if}}{{#if b}}y{{/if}}", 1),
            (
                "{{#if a}}{{#each b}}{{#with c}}{{/with}}{{/each}}{{/if}}",
                3,
            ),
            // Whitespace control and the spaces the grammar allows.
            ("{{~#if a~}}{{~#each b~}}{{~/each~}}{{~/if~}}", 2),
            ("{{ ~ # if a }}{{ # each b }}{{ / each }}{{ ~ / if ~ }}", 2),
            ("{{#> layout}}{{#*inline \"x\"}}{{/inline}}{{/layout}}", 2),
            // A plain else adds nothing; every chained branch nests one more.
            ("{{#if a}}x{{else}}y{{^}}z{{/if}}", 1),
            (
                "{{#if a}}{{else if b}}{{else if c}}{{^if d}}{{else}}{{/if}}",
                4,
            ),
            ("{{#if a}}{{else if b}}{{/if}}{{#if c}}{{/if}}", 2),
            ("{{a (b (c (d x)))}}", 3),
            ("{{#if (eq (len a) 1)}}{{/if}}", 3),
            ("{{a (b) (c) (d)}}", 1),
            ("{{x [[1, [2]], {\"a\": {\"b\": [3]}}]}}", 4),
            ("{{{{raw}}}}{{#if a}}{{#if b}}{{{{/raw}}}}", 1),
        ] {
            assert_eq!(depth(source), expected, "{source}");
        }
    }

    #[test]
    fn nesting_skips_what_handlebars_does_not_parse_as_mustaches() {
        for (source, expected) in [
            // One backslash escapes `{{` (and `{{{{`); two leave it a mustache.
            ("\\{{#if a}}\\{{#if b}}", 0),
            ("\\{{{{#if a}}", 0),
            ("\\\\{{#if a}}{{/if}}", 1),
            // Comments, which may hold `}}` in the long form.
            ("{{!-- {{#if a}} }} {{#if b}} --}}", 0),
            ("{{! {{#if a}}", 0),
            ("{{!--}}{{#if a}}{{/if}}", 1),
            // The text of a raw block, up to its end tag; `\{{{{` in it is text.
            (
                "{{{{raw}}}} {{#if a}} \\{{{{/raw}}}} {{#if b}} {{{{/raw}}}}",
                1,
            ),
            // Strings and path keys hold closers and mustaches without effect.
            ("{{eq a \"{{#if b}}(((\"}}", 0),
            ("{{x '{{#if (b'}}", 0),
            ("{{[{{#if a}}]}}", 0),
        ] {
            assert_eq!(depth(source), expected, "{source}");
        }
    }

    /// Closers hidden where handlebars does not see them must not lower the
    /// count, or a deep template slips through.
    #[test]
    fn nesting_is_not_lowered_by_hidden_closers() {
        let open = "{{#if a}}".repeat(40);
        let close = "{{/if}}".repeat(80);
        for hidden in [
            format!("{{{{x \"{close}\"}}}}"),
            format!("{{{{x '{close}'}}}}"),
            format!("{{{{x \"\\\"{close}\"}}}}"),
            format!("{{{{[{close}]}}}}"),
            format!("{{{{x a.[{close}]}}}}"),
            format!("{{{{x [\"{close}\"]}}}}"),
            format!("{{{{x {{\"k\": \"{close}\"}}}}}}"),
            format!("{{{{!-- {close} --}}}}"),
            format!("{{{{{{{{raw}}}}}}}}{close}{{{{{{{{/raw}}}}}}}}"),
            close.replace("{{", "\\{{"),
            format!("{{{{> '{close}'}}}}"),
            // A partial's bare name ends before `[`, a number literal
            // before `.[`: what follows is an array, not a path key.
            format!("{{{{> x/[ \"]{close}\" ]}}}}"),
            format!("{{{{x 1.[ \"]{close}\" ]}}}}"),
            format!("{{{{else 1.[ \"]{close}\" ]}}}}"),
        ] {
            let source = format!("{open}{hidden}{open}{close}");
            assert!(depth(&source) >= 80, "{hidden}: {}", depth(&source));
            // handlebars reads it the same way: the template is 80 deep.
            if let Ok(t) = Template::compile(&source) {
                assert_eq!(ast_depth(&t), 80, "{hidden}");
            }
        }
        // A `"` inside a path key starts no string: the parentheses after
        // it nest.
        let source = format!("{{{{x [a\"] {}y{} \"}}}}", "(z ".repeat(70), ")".repeat(70));
        assert!(depth(&source) >= 70);
        // An array that does not parse is a path key to its first `]`.
        let source = format!("{{{{x [ \"] {}y{} \"}}}}", "(z ".repeat(70), ")".repeat(70));
        assert!(depth(&source) >= 70);
    }

    #[test]
    fn nesting_survives_any_input_in_linear_time() {
        for source in [
            "{{",
            "{{{{",
            "{{!",
            "{{!--",
            "{{#",
            "{{/",
            "{{else",
            "{{^",
            "{{x \"",
            "{{x '",
            "{{x [",
            "{{x {",
            "{{x \"\\u12",
            "{{> '",
            "{{x (",
            "\\",
            "\\{",
            "{{x [1,",
            "{{}}",
            "{{{{raw}}}}",
            "{{{{raw}}}}{{{{x}}}}",
            "{{[a]",
            "{{x [\"a\" 1]}}",
            "{{x 1E-}}",
        ] {
            depth(source);
            nesting_over(source, MAX_NESTING);
        }
        // Unterminated comments and path keys, many times over: each must
        // not search the rest of the text again.
        for piece in ["{{!-- }}", "{{x a.[b}}", "{{x [1,}}"] {
            assert!(nesting_over(&piece.repeat(50_000), MAX_NESTING).is_none());
        }
    }

    /// handlebars' own view of a template's depth, counted the way the
    /// scanner counts: blocks, chain links, subexpressions, literals.
    fn ast_depth(t: &Template) -> usize {
        fn params(
            name: &Parameter,
            params: &[Parameter],
            hash: &HashMap<String, Parameter>,
        ) -> usize {
            std::iter::once(name)
                .chain(params)
                .chain(hash.values())
                .map(param)
                .max()
                .unwrap_or(0)
        }
        fn param(p: &Parameter) -> usize {
            match p {
                Parameter::Subexpression(s) => match s.as_element() {
                    TemplateElement::Expression(h) => 1 + params(&h.name, &h.params, &h.hash),
                    _ => 1,
                },
                Parameter::Literal(v) => json(v),
                _ => 0,
            }
        }
        fn json(v: &Value) -> usize {
            match v {
                Value::Array(items) => 1 + items.iter().map(json).max().unwrap_or(0),
                Value::Object(m) => 1 + m.values().map(json).max().unwrap_or(0),
                _ => 0,
            }
        }
        let body = |t: &Option<Template>| t.as_ref().map_or(0, ast_depth);
        t.elements
            .iter()
            .map(|e| match e {
                TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                    params(&h.name, &h.params, &h.hash)
                }
                TemplateElement::HelperBlock(h) => {
                    1 + params(&h.name, &h.params, &h.hash)
                        .max(body(&h.template))
                        .max(body(&h.inverse))
                }
                TemplateElement::DecoratorExpression(d) | TemplateElement::PartialExpression(d) => {
                    params(&d.name, &d.params, &d.hash)
                }
                TemplateElement::DecoratorBlock(d) | TemplateElement::PartialBlock(d) => {
                    1 + params(&d.name, &d.params, &d.hash).max(body(&d.template))
                }
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// Valid pieces that hide braces, closers and quotes where handlebars
    /// does not read them as such, plus bytes that break the grammar.
    fn piece() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            4 => prop::sample::select(vec![
                "Hi ", "{{name}}", "{{{name}}}", "{{&name}}", "{{~name~}}", "\\{{#if a}}",
                "\\\\", "\\{{{{", "{{!-- {{/if}} }} --}}", "{{! {{#if a}}}}", "{{!--}}",
                "{{eq a \"{{/if}})}}\"}}", "{{eq a '}}{{/if}}('}}", "{{[a}}{{/if}}]}}",
                "{{x [\"]\", \"}}{{/if}}\"]}}", "{{x {\"k\": \"}}\", \"l\": [{}]}}}",
                "{{{{raw}}}}{{/if}}{{#if a}}\\{{{{/raw}}}}{{{{/raw}}}}", "{{x [a\"] (y (z w))}}",
                "{{lookup . 'a'}}", "{{x [[1,[2]],{\"a\":[3]}]}}", "{{x (y (z \")\"))}}",
                "{{x a.[b c] (y) k=(z [1])}}", "{{x [,1] 1.5E-3 -2 null true}}",
                "{{x [ \"]}}{{/if}}\" ]}}", "{{else.x}}", "{{> (p) a=1}}", "{{x \"\\u00e9\\\"\"}}",
                "{{> x/[ \"]}}{{/if}}\" ]}}", "{{> x.y/z @a}}", "{{x 1.[\"]}}{{/if}}\"]}}",
                "{{x a.[b].[c] [d]}}",
            ])
            .prop_map(str::to_owned),
            1 => "[{}()\\[\\]\"'\\\\!#/~^&> a-z.,:=-]{0,8}",
        ]
    }

    fn template() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let blocks = prop::sample::select(vec![
            ("{{#if a}}", "{{/if}}"),
            ("{{~#each b~}}", "{{~/each~}}"),
            ("{{ # with c }}", "{{ / with }}"),
            ("{{#if (eq (len a) \")\")}}", "{{/if}}"),
            ("{{#unless [a\"]}}", "{{/unless}}"),
            ("{{#> p}}", "{{/p}}"),
            ("{{#> 'q}}'}}", "{{/'q}}'}}"),
            ("{{#*inline \"i\"}}", "{{/inline}}"),
        ]);
        piece().prop_recursive(8, 96, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| v.concat()),
                (blocks.clone(), prop::collection::vec(inner.clone(), 0..3))
                    .prop_map(|((open, close), body)| format!("{open}{}{close}", body.concat())),
                (inner.clone(), inner.clone(), inner.clone(), any::<bool>()).prop_map(
                    |(a, b, c, caret)| {
                        let chain = if caret { "{{^if y}}" } else { "{{else if y}}" };
                        format!("{{{{#if x}}}}{a}{chain}{b}{{{{else}}}}{c}{{{{/if}}}}")
                    }
                ),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Wherever handlebars parses a template, the scanner counts at
        /// least as deep as handlebars nests it.
        #[test]
        fn nesting_never_counts_less_than_handlebars(source in template()) {
            let scanned = depth(&source);
            if let Ok(t) = Template::compile(&source) {
                let parsed = ast_depth(&t);
                proptest::prop_assert!(scanned >= parsed, "scanned {} < parsed {}", scanned, parsed);
            }
        }
    }

    #[test]
    fn templates_nested_past_the_limit_are_refused_naming_the_place() {
        let nest = |n: usize| {
            format!(
                "{}{{{{name}}}}{}",
                "{{#if name}}".repeat(n),
                "{{/if}}".repeat(n)
            )
        };
        Renderer::compile(&spec(json!({"text": nest(MAX_NESTING)})), &Map::new()).unwrap();
        let e = Renderer::compile(
            &spec(json!({"body": {"text": format!("Hi\n{}", nest(2_000))}})),
            &Map::new(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "template message.content.body.text nests more than 64 levels at line 2, column 769 ({{#…}} blocks, {{else …}} branches, (…) subexpressions and […] literals within one another): use at most 64"
        );
        for deep in [
            format!("{{{{#if a}}}}{}{{{{/if}}}}", "{{else if b}}".repeat(64)),
            format!("{{{{eq {}x{} 1}}}}", "(eq ".repeat(65), ")".repeat(65)),
            format!("{{{{eq x {}{}}}}}", "[".repeat(65), "]".repeat(65)),
            "{{#with b}}{{#if (eq c 1)}}".repeat(33),
        ] {
            let e = Renderer::compile(&spec(json!({"text": deep})), &Map::new()).unwrap_err();
            assert!(matches!(e, TemplateError::TooDeep { .. }), "{e}");
        }
    }

    /// The limit must leave room: a template at it compiles, renders and
    /// drops on a thread with the 2 MiB stack Rust gives new threads (the
    /// planner renders on one), even in a debug build.
    #[test]
    fn templates_at_the_limit_render_on_a_small_stack() {
        let n = MAX_NESTING;
        let templates = [
            format!("{}{{{{x}}}}{}", "{{#if x}}".repeat(n), "{{/if}}".repeat(n)),
            format!(
                "{}{{{{x}}}}{}",
                "{{#with this}}".repeat(n),
                "{{/with}}".repeat(n)
            ),
            format!(
                "{{{{#each vars.deep}}}}{}{{{{this}}}}{}",
                "{{#each this}}".repeat(n - 1),
                "{{/each}}".repeat(n)
            ),
            format!(
                "{{{{#if no}}}}{}x{{{{/if}}}}",
                "{{else if no}}".repeat(n - 1)
            ),
            format!("{{{{not {}x{}}}}}", "(not ".repeat(n), ")".repeat(n)),
            format!(
                "{}{{{{not {}x{}}}}}{}",
                "{{#if x}}".repeat(n / 2),
                "(not ".repeat(n / 2),
                ")".repeat(n / 2),
                "{{/if}}".repeat(n / 2)
            ),
        ];
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                // 64 arrays deep, for `{{#each}}` to go all the way down.
                let deep = (0..n).fold(json!(1), |inner, _| json!([inner]));
                let Value::Object(vars) = json!({ "deep": deep }) else {
                    unreachable!()
                };
                let h = headers(&["x", "no"]);
                for t in templates {
                    let r = Renderer::compile(&spec(json!({ "text": t })), &vars).unwrap();
                    let out = render_row(&r, &h, &["1", ""]).unwrap();
                    assert!(
                        matches!(out["text"].as_str(), Some("1" | "true" | "false" | "")),
                        "{out}"
                    );
                }
            })
            .unwrap()
            .join()
            .unwrap();
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
