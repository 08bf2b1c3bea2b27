//! Handlebars rendering in strict mode: an undefined variable is an error, never
//! an empty string. Output is not HTML-escaped: templates render config files.
//!
//! Templates come from roles, which are hostile input: partials (which can
//! include each other without end), decorators (which define inline partials)
//! and the `log` helper (which writes to the log of whoever renders) are
//! refused when a template is added, a render stops at [`MAX_RENDERED_BYTES`],
//! and the loops of one [`Templates`] stop at [`MAX_LOOP_WORK`], so a
//! template that loops without writing cannot run for ages either.

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use handlebars::template::{HelperTemplate, Parameter, Subexpression, Template, TemplateElement};
use handlebars::{
    BlockContext, BlockParams, Context, Handlebars, Helper, HelperDef, HelperResult, JsonValue,
    Output, RenderContext, RenderError, RenderErrorReason, Renderable, to_json,
};
use serde::Serialize;

/// The most a single template may render to.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// How deep blocks (an `{{else if}}` counts as one more) and subexpressions
/// may nest: rendering recurses once per level, and a few hundred levels
/// overflow a thread's stack.
pub const MAX_NESTING: usize = 64;

/// How many template elements the `{{#each}}` loops of one [`Templates`]
/// may render in all: each pass through a loop costs one plus the number of
/// elements in its body. Nested loops multiply, and a body that writes
/// nothing never reaches the size limit, so this bounds the work (about a
/// second). A file listing ten thousand hosts takes well under a million;
/// rendering a role's whole 64 MiB in lines of 50 bytes takes about 3.
pub const MAX_LOOP_WORK: usize = 8 << 20;

/// How many tags (`{{…}}`) one template may hold, and all templates of one
/// [`Templates`] together: Handlebars compiles a template in time quadratic
/// in its tags (2,000 blocks take about 0.4 s in a release build, 8,000 about
/// 5 s), so these bound the work of parsing what a role brings. A large
/// configuration file template holds a few hundred.
pub const MAX_TAGS: usize = 2_000;
pub const MAX_ROLE_TAGS: usize = 10_000;

/// Helpers a role may not call: `log` writes into the log of the agent or the
/// server that renders the template.
const REFUSED_HELPERS: [&str; 1] = ["log"];

/// The quoting helper: `{{sh vars.dir}}` inserts a value as one word of a
/// POSIX shell command.
const SH_HELPER: &str = "sh";

/// What every insertion into a command that is not `{{sh …}}` is made to go
/// through (see [`Templates::add_command`]); the space keeps a role from
/// calling it by name.
const NUMBER_HELPER: &str = "number only";

/// The block helpers a command template may use: they write nothing but
/// their own body, which is checked as the rest of the command.
const COMMAND_BLOCKS: [&str; 4] = ["if", "unless", "each", "with"];

/// A template problem, located inside the template file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The render stopped at its size limit (see [`Templates::render`]).
    pub too_large: bool,
}

/// The templates of one role. Renders share one loop budget
/// ([`MAX_LOOP_WORK`]), so many templates cannot add up to unbounded work.
pub struct Templates {
    hb: Handlebars<'static>,
    /// Tags the role's templates may still add ([`MAX_ROLE_TAGS`]).
    tags_left: usize,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        Self::with_loop_budget(MAX_LOOP_WORK)
    }

    /// Templates whose loops may do `budget` work in all (see
    /// [`MAX_LOOP_WORK`]).
    fn with_loop_budget(budget: usize) -> Self {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        // Refused when a template is added; unregistered too, so no path is left.
        for helper in REFUSED_HELPERS {
            hb.unregister_helper(helper);
        }
        hb.register_helper(SH_HELPER, Box::new(ShQuote));
        hb.register_helper(NUMBER_HELPER, Box::new(NumberOnly));
        hb.register_helper(
            "each",
            Box::new(BoundedEach {
                budget,
                work_left: AtomicUsize::new(budget),
            }),
        );
        Templates {
            hb,
            tags_left: MAX_ROLE_TAGS,
        }
    }

    /// Parses and registers a template under `name`, refusing what roles may
    /// not use (see the module documentation).
    pub fn add(&mut self, name: &str, source: &str) -> Result<(), TemplateError> {
        let template = self.compile(name, source)?;
        self.hb.register_template(name, template);
        Ok(())
    }

    /// Adds a template that renders a shell command: every value it inserts
    /// goes through `{{sh …}}` (quoted as one word) or is a number, so no
    /// value can add a command. Anything else inserted (a string, a list,
    /// a helper's result) fails the render, naming the value and the fix.
    /// Blocks other than `if`, `unless`, `each` and `with` are refused here.
    pub fn add_command(&mut self, name: &str, source: &str) -> Result<(), TemplateError> {
        let mut template = self.compile(name, source)?;
        sh_outside_quotes(&template, Quoting::None)?;
        numbers_only(&mut template)?;
        self.hb.register_template(name, template);
        Ok(())
    }

    /// Parses `source`, refusing what roles may not use.
    fn compile(&mut self, name: &str, source: &str) -> Result<Template, TemplateError> {
        let tags = check_nesting(source)?;
        if tags > self.tags_left {
            return Err(TemplateError {
                line: 1,
                column: 1,
                message: format!(
                    "the role's templates hold more than {MAX_ROLE_TAGS} tags ({{{{…}}}}) in all"
                ),
                too_large: false,
            });
        }
        self.tags_left -= tags;
        let template = Template::compile_with_name(source, name.to_string()).map_err(|e| {
            let (line, column) = e.pos().unwrap_or((1, 1));
            TemplateError {
                line,
                column,
                message: e.reason().to_string(),
                too_large: false,
            }
        })?;
        check_elements(&template, 0)?;
        Ok(template)
    }

    /// Renders `name`, stopping with an error (`too_large`) once the output
    /// passes `max_bytes` (at most [`MAX_RENDERED_BYTES`]).
    pub fn render(
        &self,
        name: &str,
        data: &impl Serialize,
        max_bytes: usize,
    ) -> Result<String, TemplateError> {
        let max_bytes = max_bytes.min(MAX_RENDERED_BYTES);
        let mut out = CappedWriter {
            buf: Vec::new(),
            cap: max_bytes,
        };
        self.hb
            .render_to_write(name, data, &mut out)
            .map_err(|e| TemplateError {
                line: e.line_no.unwrap_or(1),
                column: e.column_no.unwrap_or(1),
                too_large: matches!(e.reason(), RenderErrorReason::IOError(io) if io.kind() == io::ErrorKind::FileTooLarge),
                message: match e.reason() {
                    RenderErrorReason::MissingVariable(Some(path)) => {
                        format!("undefined variable `{path}`")
                    }
                    RenderErrorReason::MissingVariable(None) => "undefined variable".to_string(),
                    RenderErrorReason::IOError(io) if io.kind() == io::ErrorKind::FileTooLarge => {
                        format!("the template renders to more than {max_bytes} bytes")
                    }
                    other => other.to_string(),
                },
            })?;
        // Handlebars writes whole strings, so what it wrote is UTF-8.
        String::from_utf8(out.buf).map_err(|e| TemplateError {
            line: 1,
            column: 1,
            message: format!("the template rendered invalid UTF-8: {e}"),
            too_large: false,
        })
    }
}

/// Refuses nesting deeper than [`MAX_NESTING`] before Handlebars parses the
/// template: its parser recurses once per subexpression level and takes time
/// quadratic in the length of an `{{else if}}` chain. Scans the tags (`{{…}}`)
/// outside string literals: `(` opens a subexpression, `{{#…}}` and
/// `{{^…}}` a block, `{{else…}}` one level more until the block closes. It
/// errs on the side of refusing. Also refuses more than [`MAX_TAGS`] tags, and
/// returns how many there are.
fn check_nesting(source: &str) -> Result<usize, TemplateError> {
    let mut tags = 0;
    // Levels each open block holds: itself and its `else` branches; `levels`
    // is their sum, kept as they change rather than summed per character.
    let mut blocks: Vec<usize> = Vec::new();
    let mut levels = 0;
    let (mut tag, mut quote, mut parens): (Option<String>, Option<char>, usize) = (None, None, 0);
    let (mut line, mut column) = (1, 0);
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            (line, column) = (line + 1, 0);
        }
        column += 1;
        let Some(text) = &mut tag else {
            if c == '{' && chars.peek() == Some(&'{') {
                tag = Some(String::new());
                tags += 1;
                if tags > MAX_TAGS {
                    return Err(TemplateError {
                        line,
                        column,
                        message: format!(
                            "the template holds more than {MAX_TAGS} tags ({{{{…}}}})"
                        ),
                        too_large: false,
                    });
                }
            }
            continue;
        };
        match (quote, c) {
            (None, '}') if chars.peek() == Some(&'}') => {
                let head = text.trim_start_matches(['{', '~', ' ', '\t', '\r', '\n']);
                // `{{{{raw}}}}` and `{{{{/raw}}}}` delimit raw text, not a block.
                let raw = text.starts_with("{{");
                let opens = !raw && head.starts_with('#')
                    || (head.starts_with('^')
                        && !head[1..].trim_start_matches(['~', ' ']).is_empty());
                if opens {
                    blocks.push(1);
                    levels += 1;
                } else if !raw && head.starts_with('/') {
                    levels -= blocks.pop().unwrap_or(0);
                } else if (head.starts_with("else") || head.starts_with('^'))
                    && let Some(block) = blocks.last_mut()
                {
                    *block += 1;
                    levels += 1;
                }
                (tag, parens) = (None, 0);
            }
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '(') => parens += 1,
            (None, ')') => parens = parens.saturating_sub(1),
            _ => {}
        }
        if let Some(text) = &mut tag {
            text.push(c);
        }
        if parens + levels > MAX_NESTING {
            return Err(TemplateError {
                line,
                column,
                message: format!(
                    "blocks and subexpressions are nested more than {MAX_NESTING} deep"
                ),
                too_large: false,
            });
        }
    }
    Ok(tags)
}

/// Walks a parsed template, into blocks and subexpressions, for what a role
/// may not use. Rendering recurses once per nesting level, so nesting is
/// bounded here, before anything renders.
fn check_elements(template: &Template, depth: usize) -> Result<(), TemplateError> {
    for (i, element) in template.elements.iter().enumerate() {
        let (line, column) = template.mapping.get(i).map_or((1, 1), |m| (m.0, m.1));
        let refuse = |message: String| TemplateError {
            line,
            column,
            message,
            too_large: false,
        };
        match element {
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                return Err(refuse(
                    "partials ({{> name}}) are not supported in role templates".into(),
                ));
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err(refuse(
                    "decorators ({{* name}}, {{#* inline}}) are not supported in role templates"
                        .into(),
                ));
            }
            TemplateElement::Expression(h)
            | TemplateElement::HtmlExpression(h)
            | TemplateElement::HelperBlock(h) => check_helper(h, depth, (line, column))?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks one helper call or block (a plain `{{x}}` is a call too): its
/// name, its subexpressions and the blocks inside it, `depth` levels deep;
/// `at` is where it starts.
fn check_helper(
    h: &HelperTemplate,
    depth: usize,
    (line, column): (usize, usize),
) -> Result<(), TemplateError> {
    let refuse = |message: String| {
        Err(TemplateError {
            line,
            column,
            message,
            too_large: false,
        })
    };
    if depth >= MAX_NESTING {
        return refuse(format!(
            "blocks and subexpressions are nested more than {MAX_NESTING} deep"
        ));
    }
    if let Some(name) = h.name.as_name().filter(|n| REFUSED_HELPERS.contains(n)) {
        return refuse(format!(
            "the `{name}` helper is not available in role templates"
        ));
    }
    for p in h.params.iter().chain(h.hash.values()) {
        if let Parameter::Subexpression(sub) = p
            && let TemplateElement::Expression(inner) | TemplateElement::HtmlExpression(inner) =
                sub.as_element()
        {
            check_helper(inner, depth + 1, (line, column))?;
        }
    }
    for inner in [&h.template, &h.inverse].into_iter().flatten() {
        check_elements(inner, depth + 1)?;
    }
    Ok(())
}

/// Makes every insertion of `template` (a command) other than `{{sh …}}` go
/// through [`NumberOnly`]: `{{x}}` becomes `{{NUMBER x}}`, and a helper call
/// `{{h a b}}` becomes `{{NUMBER (h a b)}}`. Refuses blocks that are not
/// [`COMMAND_BLOCKS`]. [`check_elements`] has bounded the nesting already.
fn numbers_only(template: &mut Template) -> Result<(), TemplateError> {
    for (i, element) in template.elements.iter_mut().enumerate() {
        let (line, column) = template.mapping.get(i).map_or((1, 1), |m| (m.0, m.1));
        match element {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                if h.name.as_name() == Some(SH_HELPER) {
                    continue;
                }
                let name = std::mem::replace(&mut h.name, Parameter::Name(NUMBER_HELPER.into()));
                let inserted = if h.params.is_empty() && h.hash.is_empty() {
                    name
                } else {
                    let params = std::mem::take(&mut h.params);
                    let hash = std::mem::take(&mut h.hash);
                    Parameter::Subexpression(Subexpression::new(name, params, hash))
                };
                h.params = vec![inserted];
            }
            TemplateElement::HelperBlock(h) => {
                let name = h.name.as_name().unwrap_or_default();
                if !COMMAND_BLOCKS.contains(&name) {
                    return Err(TemplateError {
                        line,
                        column,
                        message: format!(
                            "the `{{{{#{name}}}}}` block cannot be used in a command; \
                             `if`, `unless`, `each` and `with` can"
                        ),
                        too_large: false,
                    });
                }
                for inner in [&mut h.template, &mut h.inverse].into_iter().flatten() {
                    numbers_only(inner)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where the shell is in a command's text: what a quote opened, or a
/// backslash about to escape the next character.
#[derive(Clone, Copy, PartialEq)]
enum Quoting {
    None,
    Escape,
    Single,
    Double,
    DoubleEscape,
}

impl Quoting {
    fn after(self, c: char) -> Quoting {
        use Quoting::*;
        match (self, c) {
            (None, '\\') => Escape,
            (None, '\'') => Single,
            (None, '"') => Double,
            (Escape, _) | (Single, '\'') => None,
            (Double, '\\') => DoubleEscape,
            (Double, '"') => None,
            (DoubleEscape, _) => Double,
            (state, _) => state,
        }
    }
}

/// Refuses `{{sh …}}` where its single quotes would not make one word: inside
/// double quotes (`$(…)` in the value still runs), inside single quotes (the
/// value's quotes close them) or after a backslash (which escapes its first
/// quote). Follows the shell's quoting through the text, into each branch of
/// a block with the state it starts in. Returns the state at the end.
fn sh_outside_quotes(template: &Template, mut state: Quoting) -> Result<Quoting, TemplateError> {
    for (i, element) in template.elements.iter().enumerate() {
        let (line, column) = template.mapping.get(i).map_or((1, 1), |m| (m.0, m.1));
        match element {
            TemplateElement::RawString(text) => state = text.chars().fold(state, Quoting::after),
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h)
                if h.name.as_name() == Some(SH_HELPER) && state != Quoting::None =>
            {
                let place = match state {
                    Quoting::Single => "inside single quotes",
                    Quoting::Double | Quoting::DoubleEscape => "inside double quotes",
                    _ => "right after a backslash",
                };
                return Err(TemplateError {
                    line,
                    column,
                    message: format!(
                        "`{{{{sh …}}}}` is {place}, where its quoting does not hold: \
                         write it outside any quotes (it makes one word by itself)"
                    ),
                    too_large: false,
                });
            }
            TemplateElement::HelperBlock(h) => {
                let entered = state;
                if let Some(inner) = &h.template {
                    state = sh_outside_quotes(inner, entered)?;
                }
                if let Some(inner) = &h.inverse {
                    sh_outside_quotes(inner, entered)?;
                }
            }
            _ => {}
        }
    }
    Ok(state)
}

/// Quotes `s` as one word for a POSIX shell: in single quotes, where nothing
/// is special but the single quote itself, written as `'\''`.
pub fn sh_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    out.push_str(&s.replace('\'', r"'\''"));
    out.push('\'');
    out
}

/// The name a helper's argument was written as, for messages.
fn shown_path(value: &handlebars::PathAndJson<'_>) -> String {
    value
        .relative_path()
        .map_or_else(|| "the value".to_string(), |p| format!("`{p}`"))
}

/// What a JSON value is, for messages.
fn json_kind(value: &JsonValue) -> &'static str {
    match value {
        JsonValue::Null => "null",
        JsonValue::Bool(_) => "a boolean",
        JsonValue::Number(_) => "a number",
        JsonValue::String(_) => "a string",
        JsonValue::Array(_) => "a list",
        JsonValue::Object(_) => "a table",
    }
}

/// `{{sh VALUE}}`: a string, number or boolean quoted as one shell word.
struct ShQuote;

impl HelperDef for ShQuote {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let (Some(value), None) = (h.param(0), h.param(1)) else {
            return Err(
                RenderErrorReason::Other("`sh` takes one value: {{sh vars.name}}".into()).into(),
            );
        };
        if value.is_value_missing() && r.strict_mode() {
            return Err(RenderError::strict_error(value.relative_path()));
        }
        let text = match value.value() {
            JsonValue::String(s) => s.clone(),
            v @ (JsonValue::Number(_) | JsonValue::Bool(_)) => v.to_string(),
            other => {
                return Err(RenderErrorReason::Other(format!(
                    "`sh` quotes a string, a number or a boolean, and {} is {}",
                    shown_path(value),
                    json_kind(other)
                ))
                .into());
            }
        };
        out.write(&sh_quote(&text))?;
        Ok(())
    }
}

/// What a command template inserts without `{{sh …}}`: only a number, which
/// cannot hold a shell word of its own.
struct NumberOnly;

impl HelperDef for NumberOnly {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex(NUMBER_HELPER, 0))?;
        if value.is_value_missing() && r.strict_mode() {
            return Err(RenderError::strict_error(value.relative_path()));
        }
        match value.value() {
            JsonValue::Number(n) => {
                out.write(&n.to_string())?;
                Ok(())
            }
            other => {
                let path = shown_path(value);
                let fix = value
                    .relative_path()
                    .map_or_else(|| "{{sh …}}".to_string(), |p| format!("{{{{sh {p}}}}}"));
                Err(RenderErrorReason::Other(format!(
                    "{path} is {} and is inserted into a command unquoted; only numbers \
                     may be: write {fix}",
                    json_kind(other)
                ))
                .into())
            }
        }
    }
}

/// The `{{#each}}` block helper, as Handlebars has it (`this`, `@index`,
/// `@key`, `@first`, `@last`, block parameters `as |value key|`, `{{else}}`
/// for an empty or missing list), except that each loop first takes its work
/// from a budget and fails once the budget is spent. The budget is charged
/// up front, before any pass, so a loop over a huge list fails at once.
struct BoundedEach {
    budget: usize,
    /// Shared by every render of one [`Templates`]; atomic only because
    /// helpers must be `Sync`.
    work_left: AtomicUsize,
}

impl HelperDef for BoundedEach {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let list = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("each", 0))?;
        let Some(body) = h.template() else {
            return Ok(());
        };
        // Each pass as (key, value); `@key` exists for objects only.
        let passes: Vec<(Option<&String>, &JsonValue)> = match list.value() {
            JsonValue::Array(items) if !items.is_empty() || h.inverse().is_none() => {
                items.iter().map(|v| (None, v)).collect()
            }
            JsonValue::Object(map) if !map.is_empty() || h.inverse().is_none() => {
                map.iter().map(|(k, v)| (Some(k), v)).collect()
            }
            _ => {
                return match h.inverse() {
                    Some(inverse) => inverse.render(r, ctx, rc, out),
                    None if r.strict_mode() => Err(RenderError::strict_error(list.relative_path())),
                    None => Ok(()),
                };
            }
        };
        self.take(passes.len().saturating_mul(1 + body.elements.len()))?;
        let params = match (h.block_param(), h.block_param_pair()) {
            (Some(name), _) => Some((name, None)),
            (None, Some((name, key_name))) => Some((name, Some(key_name))),
            (None, None) => None,
        };

        let mut block = BlockContext::new();
        match list.context_path() {
            Some(path) => block.base_path_mut().clone_from(path),
            None => block.set_base_value(list.value().clone()),
        }
        rc.push_block(block);
        let last = passes.len().saturating_sub(1);
        for (i, (key, value)) in passes.into_iter().enumerate() {
            let Some(block) = rc.block_mut() else {
                break;
            };
            block.set_local_var("first", to_json(i == 0));
            block.set_local_var("last", to_json(i == last));
            block.set_local_var("index", to_json(i));
            if let Some(key) = key {
                block.set_local_var("key", to_json(key));
            }
            // `this` is the item: a path below the list's when the list has
            // one (so `../` and lookups resolve), else the value itself.
            let segment = key.cloned().unwrap_or_else(|| i.to_string());
            match list.context_path() {
                Some(path) => {
                    let mut item = path.clone();
                    item.push(segment);
                    *block.base_path_mut() = item;
                }
                None => block.set_base_value(value.clone()),
            }
            if let Some((name, key_name)) = params {
                let mut params = BlockParams::new();
                if list.context_path().is_some() {
                    params.add_path(name, Vec::new())?;
                } else {
                    params.add_value(name, value.clone())?;
                }
                if let Some(key_name) = key_name {
                    params.add_value(key_name, key.map_or_else(|| to_json(i), to_json))?;
                }
                block.set_block_params(params);
            }
            body.render(r, ctx, rc, out)?;
        }
        rc.pop_block();
        Ok(())
    }
}

impl BoundedEach {
    /// Takes `work` from the budget, or spends it all and fails.
    fn take(&self, work: usize) -> Result<(), RenderError> {
        let taken = self
            .work_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(work)
            });
        if taken.is_err() {
            self.work_left.store(0, Ordering::Relaxed);
            return Err(RenderErrorReason::Other(format!(
                "the {{{{#each}}}} loops of the role's templates render more than \
                 {} elements in all (nested loops multiply)",
                self.budget
            ))
            .into());
        }
        Ok(())
    }
}

/// Collects output up to `cap` bytes; past it, fails with
/// [`io::ErrorKind::FileTooLarge`] so the render stops.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
}

impl Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(io::ErrorKind::FileTooLarge.into());
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_and_unescaped() {
        let mut t = Templates::new();
        t.add("a", "listen {{vars.port}}; # <&>\n").unwrap();
        let out = t
            .render("a", &json!({"vars": {"port": 80}}), MAX_RENDERED_BYTES)
            .unwrap();
        assert_eq!(out, "listen 80; # <&>\n");
        t.add("b", "x\n{{vars.prot}}").unwrap();
        let err = t
            .render("b", &json!({"vars": {"port": 80}}), MAX_RENDERED_BYTES)
            .unwrap_err();
        assert_eq!(err.line, 2, "{err:?}");
        assert!(err.message.contains("vars.prot"), "{err:?}");
        assert!(t.render("c", &json!({}), MAX_RENDERED_BYTES).is_err());
        let err = t.add("d", "a\n{{#if x}}").unwrap_err();
        assert_eq!(err.line, 2, "{err:?}");
    }

    fn refusal(source: &str) -> (usize, usize, String) {
        let e = Templates::new().add("t", source).unwrap_err();
        (e.line, e.column, e.message)
    }

    #[test]
    fn sh_quoting_gives_the_shell_back_the_very_string() {
        let tricky = [
            "",
            "plain",
            "two words",
            "it's",
            "''",
            "'; touch /tmp/pwned; '",
            "$(id) `id` ${HOME} $HOME",
            "back\\slash \\' \"double\"",
            "line\nbreak\ttab",
            "glob * ? [a] ~",
            "ünïcødé ✓",
        ];
        for s in tricky {
            let quoted = sh_quote(s);
            let out = std::process::Command::new("/bin/sh")
                .args(["-c", &format!("printf %s {quoted}")])
                .output()
                .unwrap();
            assert!(out.status.success(), "{quoted}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s, "{quoted}");
        }
    }

    #[test]
    fn partials_decorators_and_log_are_refused_where_written() {
        let partial = "partials ({{> name}}) are not supported in role templates";
        // Two templates including each other used to recurse until the stack overflowed.
        let mut t = Templates::new();
        assert_eq!(t.add("a", "x{{> b}}").unwrap_err().message, partial);
        assert_eq!(t.add("b", "x{{> a}}").unwrap_err().message, partial);
        assert_eq!(refusal("ok\n  {{#> b}}y{{/b}}"), (2, 3, partial.into()));
        let decorator =
            "decorators ({{* name}}, {{#* inline}}) are not supported in role templates";
        assert_eq!(
            refusal("{{#*inline \"r\"}}{{> r}}{{/inline}}"),
            (1, 1, decorator.into())
        );
        assert_eq!(refusal("{{*inline}}"), (1, 1, decorator.into()));
        let log = "the `log` helper is not available in role templates";
        assert_eq!(refusal("{{log \"x\"}}"), (1, 1, log.into()));
        assert_eq!(
            refusal("{{#if 1}}\n{{else}}{{#each x}}\n {{eq (log 1) 1}}{{/each}}{{/if}}"),
            (3, 2, log.into())
        );
        // `lookup` and a variable called `log` are fine.
        let mut t = Templates::new();
        t.add("l", "{{lookup vars \"a\"}}{{vars.log}}").unwrap();
        let out = t
            .render("l", &json!({"vars": {"a": 1, "log": 2}}), 10)
            .unwrap();
        assert_eq!(out, "12");
    }

    #[test]
    fn nesting_is_bounded_before_parsing() {
        let deep = "blocks and subexpressions are nested more than 64 deep";
        let ok = "{{#if vars}}".repeat(64) + &"{{/if}}".repeat(64);
        Templates::new().add("ok", &ok).unwrap();
        // Each of these used to overflow the stack when parsed or rendered.
        for n in [65, 400, 100_000] {
            let blocks = "{{#if vars}}".repeat(n) + &"{{/if}}".repeat(n);
            assert_eq!(refusal(&blocks), (1, 65 * 12 - 1, deep.into()));
            let chain = "{{#if a}}".to_string() + &"{{else if a}}".repeat(n) + "{{/if}}";
            assert_eq!(refusal(&chain), (1, 9 + 64 * 13 - 1, deep.into()));
            let sub = "{{eq ".to_string() + &"(eq ".repeat(n) + "1 1" + &")".repeat(n) + " 1}}";
            assert_eq!(refusal(&sub), (1, 5 + 64 * 4 + 1, deep.into()));
        }
        // Raw blocks neither open nor close one.
        let raw = "{{#if vars}}".repeat(64) + "{{{{raw}}}}{{{{/raw}}}}{{#if vars}}";
        assert_eq!(refusal(&raw), (1, 64 * 12 + 23 + 11, deep.into()));
        // Parentheses in string literals do not count.
        let quoted = format!("{{{{eq \"{}\" 1}}}}", "(".repeat(100));
        Templates::new().add("q", &quoted).unwrap();
    }

    #[test]
    fn rendering_stops_at_its_limit() {
        let mut t = Templates::new();
        t.add("big", "{{#each vars.l}}{{../vars.s}}{{/each}}")
            .unwrap();
        let data = json!({"vars": {"l": [1, 2, 3], "s": "0123456789"}});
        assert_eq!(t.render("big", &data, 30).unwrap().len(), 30);
        let e = t.render("big", &data, 29).unwrap_err();
        assert!(e.too_large, "{e:?}");
        assert_eq!(e.message, "the template renders to more than 29 bytes");
        // The limit is never above MAX_RENDERED_BYTES.
        let data = json!({"vars": {"l": [1, 2, 3], "s": "x".repeat(6 << 20)}});
        assert!(t.render("big", &data, usize::MAX).unwrap_err().too_large);
    }

    #[test]
    fn each_renders_as_handlebars_does() {
        let mut plain = Handlebars::new();
        plain.set_strict_mode(true);
        plain.register_escape_fn(handlebars::no_escape);
        let data = json!({"vars": {
            "l": ["a", "b", "c"],
            "m": {"x": 1, "y": {"z": 2}},
            "n": [[1, 2], [3]],
            "e": [],
            "o": {},
            "p": 7,
        }});
        let cases = [
            "{{#each vars.l}}{{@index}}{{@first}}{{@last}}{{this}}{{../vars.p}}|{{/each}}",
            "{{#each vars.m}}{{@key}}={{@index}}{{@first}}{{@last}}:{{this}}{{/each}}",
            "{{#each vars.m.y as |v k|}}{{k}}->{{v}}{{/each}}",
            "{{#each vars.l as |v i|}}{{i}}{{v}}{{#each ../vars.n as |w|}}[{{w.0}}{{@../index}}]{{/each}}{{/each}}",
            "{{#each vars.n}}{{#each this}}{{this}}{{@../index}}{{lookup ../this 0}}{{/each}};{{/each}}",
            "{{#each vars.e}}x{{else}}empty{{/each}}|{{#each vars.o}}x{{else}}none{{/each}}|{{#each vars.e}}x{{/each}}",
            "{{#each vars.p}}x{{else}}not a list{{/each}}",
            "{{#each (lookup vars \"l\")}}{{this}}{{@last}}{{/each}}",
            "{{#each vars.l}}{{#with ../vars.m}}{{x}}{{@index}}{{/with}}{{/each}}",
            "{{#each vars.l}}{{#if @first}}first {{else}}{{#unless @last}}mid {{/unless}}{{/if}}{{/each}}",
            "{{#each vars.missing}}x{{/each}}",
            "{{#each vars.p}}x{{/each}}",
            "{{#each}}x{{/each}}",
        ];
        for (i, case) in cases.iter().enumerate() {
            let name = format!("t{i}");
            let mut t = Templates::new();
            t.add(&name, case).unwrap();
            plain.register_template_string(&name, case).unwrap();
            let ours = t
                .render(&name, &data, MAX_RENDERED_BYTES)
                .map_err(|e| e.message);
            let theirs = plain
                .render(&name, &data)
                .map_err(|e| e.reason().to_string());
            match theirs {
                Ok(out) => assert_eq!(ours, Ok(out), "{case}"),
                Err(_) => assert!(ours.is_err(), "{case}: {ours:?}"),
            }
        }
    }

    #[test]
    fn tags_are_bounded_per_template_and_per_role() {
        // Compiling is quadratic in the tags: 100,000 would take minutes.
        let mut t = Templates::new();
        let e = t
            .add("many", &"{{#if x}}{{/if}}\n".repeat(50_000))
            .unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (1_001, "the template holds more than 2000 tags ({{…}})")
        );
        let full = "{{x}}".repeat(MAX_TAGS);
        for i in 0..MAX_ROLE_TAGS / MAX_TAGS {
            t.add(&format!("t{i}"), &full).unwrap();
        }
        let e = t.add("one-more", "{{x}}").unwrap_err();
        assert_eq!(
            e.message,
            "the role's templates hold more than 10000 tags ({{…}}) in all"
        );
    }

    #[test]
    fn loops_that_write_nothing_are_bounded() {
        // 10^11 comments rendered to nothing: never near the size limit, and
        // this used to render for days.
        let l: Vec<u32> = (0..10_000).collect();
        let data = json!({"vars": {"l": l}});
        let mut t = Templates::new();
        let body = "{{! nothing }}".repeat(1000);
        let source = format!(
            "ok\n{{{{#each vars.l}}}}{{{{#each ../vars.l}}}}{body}{{{{/each}}}}{{{{/each}}}}"
        );
        t.add("loops", &source).unwrap();
        let e = t.render("loops", &data, MAX_RENDERED_BYTES).unwrap_err();
        assert!(!e.too_large, "{e:?}");
        assert_eq!(
            (e.line, e.column, e.message.as_str()),
            (
                2,
                17,
                "the {{#each}} loops of the role's templates render more than 8388608 \
                 elements in all (nested loops multiply)"
            )
        );
        // The budget is shared by the role's templates: small renders add up.
        let mut t = Templates::with_loop_budget(100_000);
        t.add(
            "one",
            "{{#each vars.l}}{{#each ../vars.l}}{{/each}}{{/each}}",
        )
        .unwrap();
        let data = json!({"vars": {"l": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}});
        let mut renders = 0;
        while t.render("one", &data, MAX_RENDERED_BYTES).is_ok() {
            renders += 1;
        }
        // Each render takes 10 * 2 + 10 * 10 * 1.
        assert_eq!(renders, 100_000 / 120);
    }
}
