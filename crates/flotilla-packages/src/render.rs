//! Agent templates rendered as Kibana renders them (`compileTemplate` in
//! Fleet's `epm/agent/agent.ts`): Handlebars without HTML escaping, Fleet's
//! helpers, dotted variable names as nested objects, `yaml` variables
//! substituted as parsed YAML after the template is parsed, and secrets as
//! `$co.elastic.secret{<id>}` references.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, Renderable, ScopedJson,
};
use serde_json::{Map, Value};

use crate::manifest::VarType;

/// A variable handed to a template: its declared type (if the package
/// declares it) and its value.
#[derive(Debug, Clone)]
pub struct TemplateVar {
    pub name: String,
    pub var_type: Option<VarType>,
    pub value: Value,
}

/// A reference to a stored secret, as package policies hold them.
pub fn secret_ref_id(value: &Value) -> Option<&str> {
    let obj = value.as_object()?;
    if obj.get("isSecretRef") == Some(&Value::Bool(true)) {
        obj.get("id").and_then(Value::as_str)
    } else {
        None
    }
}

/// What a secret reference renders as; the fleet server substitutes the
/// value when it hands the policy to an agent.
pub fn compiled_secret_ref(id: &str) -> String {
    format!("$co.elastic.secret{{{id}}}")
}

/// The secret ids referenced in a string, in order.
pub fn secret_refs_in(s: &str) -> Vec<&str> {
    const OPEN: &str = "$co.elastic.secret{";
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        match after.find('}') {
            Some(j) => {
                out.push(&after[..j]);
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

/// Replace each `$co.elastic.secret{id}` in `s` with `lookup(id)`, in one
/// pass (a value never has references in it replaced); unknown ids stay.
pub fn replace_secret_refs(s: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    const OPEN: &str = "$co.elastic.secret{";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        let Some(j) = after.find('}') else { break };
        out.push_str(&rest[..i]);
        match lookup(&after[..j]) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[i..i + OPEN.len() + j + 1]),
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    out
}

fn engine() -> &'static Handlebars<'static> {
    static ENGINE: OnceLock<Handlebars<'static>> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut hb = Handlebars::new();
        hb.register_escape_fn(handlebars::no_escape);
        hb.register_helper("contains", Box::new(Contains));
        hb.register_helper("escape_string", Box::new(escape_string));
        hb.register_helper("escape_multiline_string", Box::new(escape_multiline_string));
        hb.register_helper("to_json", Box::new(to_json));
        hb.register_helper("url_encode", Box::new(url_encode));
        hb.register_helper(LENGTH_HELPER, Box::new(Length));
        hb
    })
}

/// Blocks may nest this deep in a template (Handlebars renders blocks by
/// recursion: a deeper template could exhaust a thread's stack).
pub const MAX_BLOCK_DEPTH: usize = 32;
/// A rendered template may be at most this large.
pub const MAX_RENDERED_BYTES: usize = 4 << 20;

/// Check that a template parses, uses no partials and nests its blocks at
/// most [`MAX_BLOCK_DEPTH`] deep. Checked before Handlebars sees it (its
/// parser recurses too).
pub fn check_template(template: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        let tag = rest[i + 2..].trim_start_matches(['{', '~']);
        if tag.starts_with('>') || tag.starts_with("#>") || tag.starts_with("#*") {
            return Err("partials and inline blocks are not supported in agent templates".into());
        }
        if tag.starts_with('#') {
            depth += 1;
            if depth > MAX_BLOCK_DEPTH {
                return Err(format!("blocks nest more than {MAX_BLOCK_DEPTH} deep"));
            }
        } else if tag.starts_with('/') {
            depth = depth.saturating_sub(1);
        }
        rest = &rest[i + 2..];
    }
    handlebars::Template::compile(&rewrite_length(template))
        .map(|_| ())
        .map_err(|e| {
            format!(
                "not a valid Handlebars template: {}",
                first_line(&e.to_string())
            )
        })
}

/// An `Output` that refuses to grow past [`MAX_RENDERED_BYTES`].
struct Bounded(String);

impl Output for Bounded {
    fn write(&mut self, seg: &str) -> Result<(), std::io::Error> {
        if self.0.len() + seg.len() > MAX_RENDERED_BYTES {
            return Err(std::io::Error::other(format!(
                "the rendered template exceeds {} MiB",
                MAX_RENDERED_BYTES >> 20
            )));
        }
        self.0.push_str(seg);
        Ok(())
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_owned()
}

/// Render `template` with `vars` and parse the result as YAML.
pub fn compile_template(template: &str, vars: &[TemplateVar]) -> Result<Value, String> {
    let mut context = Map::new();
    let mut yaml_values: BTreeMap<String, Value> = BTreeMap::new();
    for var in vars {
        let mut parts: Vec<&str> = var.name.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        if last.is_empty() || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("invalid variable name '{}'", var.name));
        }
        // A secret is its reference, whatever its type (a yaml secret too).
        let value = if let Some(id) = secret_ref_id(&var.value) {
            Value::String(compiled_secret_ref(id))
        } else if var.var_type == Some(VarType::Yaml) {
            let placeholder = format!("##{}##", var.name);
            let parsed = match &var.value {
                Value::String(s) if !s.is_empty() => Some(
                    crate::package::parse_yaml_value(s)
                        .map_err(|e| format!("variable '{}' is not valid YAML: {e}", var.name))?,
                ),
                Value::String(_) | Value::Null | Value::Bool(false) => None,
                other => Some(other.clone()),
            };
            match parsed {
                Some(parsed) => {
                    yaml_values.insert(placeholder.clone(), parsed);
                    Value::String(format!("\"{placeholder}\""))
                }
                None => {
                    yaml_values.insert(placeholder, Value::Null);
                    Value::Null
                }
            }
        } else {
            var.value.clone()
        };
        insert_path(&mut context, &parts, last, value);
    }
    let context = Value::Object(context);

    check_template(template)?;
    let compiled = handlebars::Template::compile(&rewrite_length(template)).map_err(|e| {
        format!(
            "not a valid Handlebars template: {}",
            first_line(&e.to_string())
        )
    })?;
    let render_error = |e: RenderError| {
        format!(
            "could not render the template: {}",
            first_line(&e.to_string())
        )
    };
    let ctx = Context::wraps(&context).map_err(render_error)?;
    let mut out = Bounded(String::new());
    let mut rc = RenderContext::new(None);
    compiled
        .render(engine(), &ctx, &mut rc, &mut out)
        .map_err(render_error)?;
    let rendered = out.0;
    let rendered = replace_root_level_yaml(&yaml_values, &rendered)?;
    let parsed = crate::package::parse_yaml_value(&rendered)
        .map_err(|e| format!("the rendered template is not valid YAML: {e}"))?;
    let mut parsed = match parsed {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "the rendered template is not a YAML mapping (got {})",
                type_name(&other)
            ))
        }
    };
    // js-yaml reads `key: ` as null; Kibana keeps such keys as '' when the
    // variable of that name was a blank string.
    for (key, value) in parsed.iter_mut() {
        if value.is_null() {
            if let Some(Value::String(s)) = context.get(key) {
                if s.trim().is_empty() {
                    *value = Value::String(String::new());
                }
            }
        }
    }
    let mut parsed = Value::Object(parsed);
    if !yaml_values.is_empty() {
        replace_yaml_placeholders(&yaml_values, &mut parsed);
    }
    Ok(parsed)
}

/// `a.b.c = v` as JavaScript does it: missing (or falsy) steps become
/// objects; a step that is some other truthy value swallows the assignment.
fn insert_path(node: &mut Map<String, Value>, parts: &[&str], last: &str, value: Value) {
    match parts.split_first() {
        None => {
            node.insert(last.to_owned(), value);
        }
        Some((first, rest)) => {
            let entry = node
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !is_truthy(entry) {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(m) = entry {
                insert_path(m, rest, last, value);
            }
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A `yaml` variable written alone at the start of a line becomes that
/// YAML, dumped in place (or nothing when it is empty).
fn replace_root_level_yaml(
    yaml_values: &BTreeMap<String, Value>,
    rendered: &str,
) -> Result<String, String> {
    if yaml_values.is_empty() {
        return Ok(rendered.to_owned());
    }
    let mut out = String::with_capacity(rendered.len());
    for line in rendered.split_inclusive('\n') {
        let mut line = line.to_owned();
        for (placeholder, value) in yaml_values {
            let quoted = format!("\"{placeholder}\"");
            if let Some(rest) = line.strip_prefix(&quoted) {
                let dumped = if is_truthy(value) {
                    serde_saphyr::to_string(value)
                        .map_err(|e| format!("could not write YAML: {e}"))?
                } else {
                    String::new()
                };
                line = format!("{dumped}{rest}");
            }
        }
        out.push_str(&line);
    }
    Ok(out)
}

fn replace_yaml_placeholders(yaml_values: &BTreeMap<String, Value>, value: &mut Value) {
    match value {
        Value::Object(m) => m
            .values_mut()
            .for_each(|v| replace_yaml_placeholders(yaml_values, v)),
        Value::Array(a) => a
            .iter_mut()
            .for_each(|v| replace_yaml_placeholders(yaml_values, v)),
        Value::String(s) => {
            if let Some(v) = yaml_values.get(s.as_str()) {
                *value = v.clone();
            }
        }
        _ => {}
    }
}

/// JavaScript truthiness, for the values a template can see.
pub(crate) fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

const LENGTH_HELPER: &str = "__flotilla_length";

/// JavaScript's `x.length` (strings and arrays), which templates use as
/// `{{#if tags.length}}`. Handlebars for Rust has no such property, so
/// `path.length` inside a mustache is rewritten to `(__flotilla_length path)`.
fn rewrite_length(template: &str) -> String {
    if !template.contains(".length") {
        return template.to_owned();
    }
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let tag = &rest[start..start + end + 2];
        out.push_str(&rewrite_tag(tag));
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

fn rewrite_tag(tag: &str) -> String {
    if tag.starts_with("{{!") {
        return tag.to_owned();
    }
    let mut out = String::with_capacity(tag.len() + 32);
    let mut token = String::new();
    let mut quote: Option<char> = None;
    let flush = |token: &mut String, out: &mut String| {
        match token.strip_suffix(".length") {
            Some(base)
                if !base.is_empty()
                    && base
                        .chars()
                        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '@' | '/'))
                    && !base.starts_with('.') =>
            {
                out.push_str(&format!("({LENGTH_HELPER} {base})"));
            }
            _ => out.push_str(token),
        }
        token.clear();
    };
    for c in tag.chars() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => {
                flush(&mut token, &mut out);
                out.push(c);
                quote = Some(c);
            }
            None if c.is_whitespace() || matches!(c, '(' | ')' | '{' | '}' | '=' | '|') => {
                flush(&mut token, &mut out);
                out.push(c);
            }
            None => token.push(c),
        }
    }
    flush(&mut token, &mut out);
    out
}

struct Length;

impl HelperDef for Length {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let v = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
        let len = match v {
            Value::String(s) => Value::from(s.encode_utf16().count()),
            Value::Array(a) => Value::from(a.len()),
            _ => Value::Null,
        };
        Ok(ScopedJson::Derived(len))
    }
}

/// `{{#contains item list}}…{{/contains}}`: the block when `list` (a list
/// or a string) includes `item`; inline, `true` or nothing.
struct Contains;

impl HelperDef for Contains {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let item = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
        let check = h.param(1).map(|p| p.value().clone()).unwrap_or(Value::Null);
        let found = match (&check, &item) {
            (Value::Array(list), item) => list.contains(item),
            (Value::String(s), Value::String(item)) => s.contains(item.as_str()),
            (Value::String(s), Value::Number(n)) => s.contains(&n.to_string()),
            _ => false,
        };
        if found {
            match h.template() {
                Some(t) => t.render(r, ctx, rc, out)?,
                None => out.write("true")?,
            }
        }
        Ok(())
    }
}

fn string_param(h: &Helper<'_>) -> Option<String> {
    match h.param(0).map(|p| p.value()) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(Value::String(_)) => None,
        Some(Value::Bool(false)) => None,
        Some(other) => Some(js_to_string(other)),
    }
}

/// JavaScript's `String(value)` for JSON values.
fn js_to_string(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(js_to_string).collect::<Vec<_>>().join(","),
        Value::Object(_) => "[object Object]".into(),
        other => other.to_string(),
    }
}

/// Wrap in single quotes for YAML: quotes doubled, newlines doubled (a
/// single one would fold into a space).
fn escape_string(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    if let Some(s) = string_param(h) {
        out.write(&format!(
            "'{}'",
            s.replace('\'', "''").replace('\n', "\n\n")
        ))?;
    }
    Ok(())
}

fn escape_multiline_string(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    if let Some(s) = string_param(h) {
        out.write(&s.replace('\'', "''").replace('\n', "\n\n"))?;
    }
    Ok(())
}

/// A string is taken to be JSON already; anything else is serialised.
fn to_json(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    match h.param(0).map(|p| (p.value(), p.is_value_missing())) {
        None | Some((_, true)) => {}
        Some((Value::String(s), _)) => out.write(s)?,
        Some((v, _)) => out.write(
            &serde_json::to_string(v).map_err(|e| RenderErrorReason::Other(e.to_string()))?,
        )?,
    }
    Ok(())
}

/// Kibana's `url_encode`: `encodeURIComponent`, then `! ' ( ) *` too, so
/// everything but `A–Z a–z 0–9 - _ . ~` is percent-encoded as UTF-8.
const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn url_encode(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    // As in JavaScript, a missing value encodes as `undefined`.
    let text = match h.param(0) {
        None => "undefined".to_owned(),
        Some(p) if p.is_value_missing() => "undefined".to_owned(),
        Some(p) => js_to_string(p.value()),
    };
    out.write(&percent_encoding::utf8_percent_encode(&text, URI_COMPONENT).to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn var(name: &str, ty: Option<VarType>, value: Value) -> TemplateVar {
        TemplateVar {
            name: name.into(),
            var_type: ty,
            value,
        }
    }

    #[test]
    fn dotted_names_nest_and_nothing_is_html_escaped() {
        let out = compile_template(
            "a: {{providers.aws.role}}\nb: '{{q}}'\n",
            &[
                var(
                    "providers.aws.role",
                    None,
                    json!("arn:aws:iam::1:role/<x>&"),
                ),
                var("q", None, json!("a\"b")),
            ],
        )
        .unwrap();
        assert_eq!(out, json!({"a": "arn:aws:iam::1:role/<x>&", "b": "a\"b"}));
    }

    #[test]
    fn yaml_vars_are_substituted_parsed_at_root_and_nested() {
        let tpl = "paths: [a]\n{{#if processors.length}}\nprocessors:\n{{processors}}\n{{/if}}\nssl: {{ssl}}\n{{custom}}\n";
        let out = compile_template(
            tpl,
            &[
                var(
                    "processors",
                    Some(VarType::Yaml),
                    json!("- add_fields:\n    target: x\n"),
                ),
                var(
                    "ssl",
                    Some(VarType::Yaml),
                    json!("verification_mode: none\n"),
                ),
                var("custom", Some(VarType::Yaml), json!("close_eof: true\n")),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"paths": ["a"], "processors": [{"add_fields": {"target": "x"}}],
                   "ssl": {"verification_mode": "none"}, "close_eof": true})
        );
        // Empty yaml vars disappear; `.length` of nothing is false.
        let out = compile_template(
            tpl,
            &[
                var("processors", Some(VarType::Yaml), json!("")),
                var("ssl", Some(VarType::Yaml), json!("# only a comment\n")),
                var("custom", Some(VarType::Yaml), json!("")),
            ],
        )
        .unwrap();
        assert_eq!(out, json!({"paths": ["a"], "ssl": null}));
    }

    #[test]
    fn helpers_behave_as_in_kibana() {
        let tpl = "{{#contains \"forwarded\" tags}}fwd: true\n{{/contains}}{{#contains \"x\" tags}}x: true\n{{/contains}}e: {{escape_string s}}\nm: '{{escape_multiline_string s}}'\nj: {{to_json obj}}\nu: {{url_encode url}}\nv: {{url_encode missing}}\nn: {{tags.length}}\n";
        let out = compile_template(
            tpl,
            &[
                var("tags", None, json!(["forwarded", "y"])),
                var("s", None, json!("it's")),
                var("obj", None, json!({"a": [1]})),
                var("url", None, json!("a b/c?d=é(*)")),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"fwd": true, "e": "it's", "m": "it's", "j": {"a": [1]},
                   "u": "a%20b%2Fc%3Fd%3D%C3%A9%28%2A%29", "v": "undefined", "n": 2})
        );
    }

    #[test]
    fn blank_strings_stay_blank_and_secrets_are_references() {
        let out = compile_template(
            "e: {{e}}\npassword: {{p}}\n",
            &[
                var("e", None, json!(" ")),
                var(
                    "p",
                    Some(VarType::Password),
                    json!({"isSecretRef": true, "id": "abc"}),
                ),
            ],
        )
        .unwrap();
        assert_eq!(out, json!({"e": "", "password": "$co.elastic.secret{abc}"}));
    }

    #[test]
    fn deep_nesting_partials_and_huge_output_are_refused() {
        let deep = "{{#if a}}".repeat(5000) + &"{{/if}}".repeat(5000);
        assert!(check_template(&deep).unwrap_err().contains("nest"));
        assert!(compile_template(&deep, &[]).is_err());
        assert!(check_template("{{> other}}")
            .unwrap_err()
            .contains("partials"));
        assert!(check_template("{{#*inline \"x\"}}{{/inline}}").is_err());
        let ok = "{{#if a}}".repeat(MAX_BLOCK_DEPTH) + &"{{/if}}".repeat(MAX_BLOCK_DEPTH);
        assert!(check_template(&ok).is_ok());
        let list = Value::Array((0..300).map(|i| json!(i)).collect());
        let e = compile_template(
            "{{#each l}}{{#each ../l}}{{#each ../../l}}xxxxxxxxxxxxxxxx{{/each}}{{/each}}{{/each}}",
            &[var("l", None, list)],
        )
        .unwrap_err();
        assert!(e.contains("exceeds"), "{e}");
    }

    #[test]
    fn secret_references_are_found_and_replaced_in_one_pass() {
        let s = "Bearer $co.elastic.secret{a} and $co.elastic.secret{b} $co.elastic.secret{";
        assert_eq!(secret_refs_in(s), ["a", "b"]);
        let out = replace_secret_refs(s, |id| {
            (id == "a").then(|| "$co.elastic.secret{b}".to_owned())
        });
        assert_eq!(
            out,
            "Bearer $co.elastic.secret{b} and $co.elastic.secret{b} $co.elastic.secret{"
        );
    }

    #[test]
    fn a_yaml_secret_renders_as_its_reference() {
        let out = compile_template(
            "ssl: {{ssl}}\n",
            &[var(
                "ssl",
                Some(VarType::Yaml),
                json!({"isSecretRef": true, "id": "k"}),
            )],
        )
        .unwrap();
        assert_eq!(out, json!({"ssl": "$co.elastic.secret{k}"}));
    }

    #[test]
    fn broken_templates_and_output_are_errors_not_panics() {
        assert!(check_template("{{#if x}}no end").is_err());
        assert!(compile_template("a: [", &[]).is_err());
        assert!(compile_template("- a\n- b\n", &[]).is_err());
        assert_eq!(compile_template("", &[]).unwrap(), json!({}));
    }
}
