//! A form generated from a package's variable declarations, and the
//! submitted form read back into Kibana's simplified package-policy body.
//!
//! Field names carry where a variable lives by position, never by its
//! (dotted, free-form) name alone: `p:<name>` (package level),
//! `i:<input>:<name>` (an input's), `s:<input>:<stream>:<name>` (a data
//! stream's); `ie:<input>` and `se:<input>:<stream>` are the enable boxes.
//! Element ids are positional too (`f-p-3`), so they are always valid.

use std::collections::HashMap;

use maud::{html, Markup};
use serde_json::{Map, Value};

use flotilla_packages::manifest::{Var, VarType};
use flotilla_packages::policy::input_key;
use flotilla_packages::Package;

/// What the form offers, in the package's order.
pub(crate) struct Layout {
    package_vars: Vec<Var>,
    inputs: Vec<InputLayout>,
}

struct InputLayout {
    key: String,
    title: String,
    description: Option<String>,
    enabled: bool,
    vars: Vec<Var>,
    streams: Vec<StreamLayout>,
}

struct StreamLayout {
    dataset: String,
    title: String,
    enabled: bool,
    vars: Vec<Var>,
}

/// The body for the service: package `vars` and simplified `inputs`.
pub(crate) struct Body {
    pub(crate) vars: Map<String, Value>,
    pub(crate) inputs: Map<String, Value>,
}

/// A submitted form: its values by field name (the last one wins) and the
/// errors found, by field name.
pub(crate) struct Submitted {
    values: HashMap<String, String>,
    pub(crate) errors: HashMap<String, String>,
}

impl Submitted {
    pub(crate) fn new(pairs: Vec<(String, String)>) -> Self {
        Submitted {
            values: pairs.into_iter().collect(),
            errors: HashMap::new(),
        }
    }

    /// A field's trimmed text.
    pub(crate) fn text(&self, key: &str) -> Option<String> {
        self.values.get(key).map(|v| v.trim().to_owned())
    }

    fn raw(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn checked(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }
}

fn label_of(v: &Var) -> &str {
    v.title.as_deref().unwrap_or(&v.name)
}

fn is_secret(v: &Var) -> bool {
    v.secret || v.var_type == VarType::Password
}

/// A default value as the text a field shows.
fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join("\n"),
        other => other.to_string(),
    }
}

impl Layout {
    pub(crate) fn of(package: &Package) -> Layout {
        let mut inputs = Vec::new();
        for input in package.default_inputs() {
            let Some((input_vars, stream_vars)) = package.input_declarations(&input) else {
                continue;
            };
            let template = package.template_for(&input);
            let ti =
                template.and_then(|t| t.inputs.iter().find(|i| i.input_type == input.input_type));
            let title = match (template, ti) {
                (Some(t), Some(i)) => format!("{}: {}", t.title, i.title),
                (Some(t), None) => t.title.clone(),
                _ => input.input_type.clone(),
            };
            let description = ti
                .and_then(|i| i.description.clone())
                .or_else(|| template.and_then(|t| t.description.clone()));
            let streams = input
                .streams
                .iter()
                .zip(stream_vars)
                .map(|(s, vars)| {
                    let ds = package
                        .data_streams
                        .iter()
                        .find(|ds| ds.dataset == s.data_stream.dataset);
                    let title = ds
                        .and_then(|ds| ds.stream(&input.input_type))
                        .map(|st| st.title.clone())
                        .or_else(|| ds.map(|ds| ds.manifest.title.clone()))
                        .unwrap_or_else(|| s.data_stream.dataset.clone());
                    StreamLayout {
                        dataset: s.data_stream.dataset.clone(),
                        title,
                        enabled: s.enabled,
                        vars,
                    }
                })
                .collect();
            inputs.push(InputLayout {
                key: input_key(&input),
                title,
                description,
                enabled: input.enabled,
                vars: input_vars,
                streams,
            });
        }
        Layout {
            package_vars: package.manifest.vars.clone(),
            inputs,
        }
    }

    /// Every variable with its field name and the path the service names
    /// it by in a validation error.
    fn fields(&self) -> Vec<(String, String, &Var)> {
        let mut out = Vec::new();
        for v in &self.package_vars {
            out.push((format!("p:{}", v.name), format!("vars.{}", v.name), v));
        }
        for (ii, input) in self.inputs.iter().enumerate() {
            for v in &input.vars {
                out.push((
                    format!("i:{ii}:{}", v.name),
                    format!("inputs.{}.vars.{}", input.key, v.name),
                    v,
                ));
            }
            for (si, s) in input.streams.iter().enumerate() {
                for v in &s.vars {
                    out.push((
                        format!("s:{ii}:{si}:{}", v.name),
                        format!("inputs.{}.streams.{}.vars.{}", input.key, s.dataset, v.name),
                        v,
                    ));
                }
            }
        }
        out
    }

    /// The form field a service error's path names, if any.
    pub(crate) fn key_for_path(&self, path: &str) -> Option<String> {
        self.fields()
            .into_iter()
            .find(|(_, p, _)| path == p || path.starts_with(&format!("{p}[")))
            .map(|(k, _, _)| k)
    }

    /// The fields, grouped as the package asks: what `show_user` or
    /// `required` marks first, the rest under "Advanced options".
    pub(crate) fn render(&self, submitted: Option<&Submitted>) -> Markup {
        html! {
            @if !self.package_vars.is_empty() {
                fieldset {
                    legend { "Package settings" }
                    (group(self.package_vars.iter().map(|v| (format!("p:{}", v.name), v)).collect(), submitted))
                }
            }
            @for (ii, input) in self.inputs.iter().enumerate() {
                @let ie = format!("ie:{ii}");
                @let on = submitted.map_or(input.enabled, |s| s.checked(&ie));
                fieldset .input {
                    legend { (input.title) }
                    div .field .check {
                        input type="checkbox" id=(field_id(&ie)) name=(ie) value="on" checked[on];
                        label for=(field_id(&ie)) { "Collect with " code { (input.key) } }
                    }
                    @if let Some(d) = &input.description { p .muted { (d) } }
                    (group(input.vars.iter().map(|v| (format!("i:{ii}:{}", v.name), v)).collect(), submitted))
                    @for (si, s) in input.streams.iter().enumerate() {
                        @let se = format!("se:{ii}:{si}");
                        @let son = submitted.map_or(s.enabled, |sub| sub.checked(&se));
                        fieldset .stream {
                            legend { (s.title) " " code { (s.dataset) } }
                            div .field .check {
                                input type="checkbox" id=(field_id(&se)) name=(se) value="on" checked[son];
                                label for=(field_id(&se)) { "Collect " code { (s.dataset) } }
                            }
                            (group(s.vars.iter().map(|v| (format!("s:{ii}:{si}:{}", v.name), v)).collect(), submitted))
                        }
                    }
                }
            }
        }
    }

    /// Read a submission into the service's body; errors (required,
    /// numbers, options) go into `submitted.errors` by field name. Only
    /// the variables of enabled inputs and streams are checked.
    pub(crate) fn read(&self, submitted: &mut Submitted) -> Body {
        let mut vars = Map::new();
        for v in &self.package_vars {
            if let Some(value) = read_var(submitted, &format!("p:{}", v.name), v, true) {
                vars.insert(v.name.clone(), value);
            }
        }
        let mut inputs = Map::new();
        for (ii, input) in self.inputs.iter().enumerate() {
            let on = submitted.checked(&format!("ie:{ii}"));
            let mut ivars = Map::new();
            for v in &input.vars {
                if let Some(value) = read_var(submitted, &format!("i:{ii}:{}", v.name), v, on) {
                    ivars.insert(v.name.clone(), value);
                }
            }
            let mut streams = Map::new();
            for (si, s) in input.streams.iter().enumerate() {
                let son = on && submitted.checked(&format!("se:{ii}:{si}"));
                let mut svars = Map::new();
                for v in &s.vars {
                    let key = format!("s:{ii}:{si}:{}", v.name);
                    if let Some(value) = read_var(submitted, &key, v, son) {
                        svars.insert(v.name.clone(), value);
                    }
                }
                let mut sbody = Map::new();
                sbody.insert("enabled".into(), Value::Bool(son));
                sbody.insert("vars".into(), Value::Object(svars));
                streams.insert(s.dataset.clone(), Value::Object(sbody));
            }
            let mut ibody = Map::new();
            ibody.insert("enabled".into(), Value::Bool(on));
            ibody.insert("vars".into(), Value::Object(ivars));
            if !streams.is_empty() {
                ibody.insert("streams".into(), Value::Object(streams));
            }
            inputs.insert(input.key.clone(), Value::Object(ibody));
        }
        Body { vars, inputs }
    }
}

/// `None`: leave the variable as the package has it (a secret left
/// empty). `check`: whether required values and formats are enforced
/// (its input or stream is on).
fn read_var(submitted: &mut Submitted, key: &str, v: &Var, check: bool) -> Option<Value> {
    let fail = |s: &mut Submitted, m: &str| {
        if check {
            s.errors.insert(key.to_owned(), m.to_owned());
        }
    };
    if v.var_type == VarType::Bool && !v.multi {
        return Some(Value::Bool(submitted.checked(key)));
    }
    let raw = submitted.raw(key).unwrap_or("").to_owned();
    let empty = raw.trim().is_empty();
    if empty {
        if v.required {
            fail(submitted, "is required");
        }
        if is_secret(v) {
            return None;
        }
        // Cleared on purpose: no value (not the package's default).
        let blank = if v.multi {
            Value::Array(vec![])
        } else {
            Value::Null
        };
        return Some(serde_json::json!({ "value": blank }));
    }
    let one = |s: &str| -> Result<Value, String> {
        match v.var_type {
            VarType::Integer => s
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("“{}” is not a whole number", s.trim())),
            VarType::Bool => match s.trim() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                other => Err(format!("“{other}” is not true or false")),
            },
            VarType::Select if !v.options.is_empty() => v
                .options
                .iter()
                .find(|o| value_text(&o.value) == s.trim())
                .map(|o| o.value.clone())
                .ok_or_else(|| "choose one of the options".to_owned()),
            // Free text (yaml and textarea keep their lines and spacing).
            VarType::Yaml | VarType::Textarea => Ok(Value::String(s.to_owned())),
            _ => Ok(Value::String(s.trim().to_owned())),
        }
    };
    let parsed = if v.multi {
        raw.lines()
            .filter(|l| !l.trim().is_empty())
            .map(one)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    } else {
        one(&raw)
    };
    match parsed {
        Ok(value) => Some(value),
        Err(m) => {
            fail(submitted, &m);
            None
        }
    }
}

/// An element id for a field name: positional, so always valid.
fn field_id(key: &str) -> String {
    let mut id = String::from("f-");
    for c in key.chars() {
        id.push(if c.is_ascii_alphanumeric() { c } else { '-' });
    }
    // Names may differ only in punctuation: a short digest keeps ids apart.
    let sum = key
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("{id}-{sum:x}")
}

fn group(vars: Vec<(String, &Var)>, submitted: Option<&Submitted>) -> Markup {
    let (shown, advanced): (Vec<_>, Vec<_>) = vars
        .into_iter()
        .partition(|(_, v)| v.show_user || v.required);
    html! {
        @for (key, v) in &shown { (field(key, v, submitted)) }
        @if !advanced.is_empty() {
            @let has_error = submitted.is_some_and(|s| advanced.iter().any(|(k, _)| s.errors.contains_key(k)));
            details .advanced open[has_error] {
                summary { "Advanced options (" (advanced.len()) ")" }
                @for (key, v) in &advanced { (field(key, v, submitted)) }
            }
        }
    }
}

/// One variable's field: its kind from its type, the default (or what
/// was submitted) filled in, secrets never echoed, the error beside it.
fn field(key: &str, v: &Var, submitted: Option<&Submitted>) -> Markup {
    let id = field_id(key);
    let err_id = format!("{id}-err");
    let hint_id = format!("{id}-hint");
    let error = submitted.and_then(|s| s.errors.get(key));
    let current: String = match submitted {
        Some(s) => s.raw(key).unwrap_or("").to_owned(),
        None => v.default.as_ref().map(value_text).unwrap_or_default(),
    };
    let mut described = Vec::new();
    if v.description.is_some() || v.multi {
        described.push(hint_id.clone());
    }
    if error.is_some() {
        described.push(err_id.clone());
    }
    let described = (!described.is_empty()).then(|| described.join(" "));
    let invalid = error.is_some().then_some("true");
    let required = v.required.then_some("true");
    let label = html! {
        label for=(id) {
            (label_of(v))
            @if v.required { " " span .req { "(required)" } }
        }
    };
    let control = if v.var_type == VarType::Bool && !v.multi {
        let on = match submitted {
            Some(s) => s.checked(key),
            None => v.default == Some(Value::Bool(true)),
        };
        return html! {
            div .field .check {
                input type="checkbox" id=(id) name=(key) value="true" checked[on]
                    aria-describedby=[described.as_deref()] aria-invalid=[invalid];
                (label)
                (hints(v, &hint_id, error, &err_id))
            }
        };
    } else if is_secret(v) {
        html! {
            input type="password" id=(id) name=(key) value="" autocomplete="new-password"
                aria-required=[required] aria-describedby=[described.as_deref()] aria-invalid=[invalid];
        }
    } else if v.multi || matches!(v.var_type, VarType::Textarea | VarType::Yaml) {
        let rows = current.lines().count().clamp(2, 12);
        html! {
            textarea id=(id) name=(key) rows=(rows) spellcheck="false"
                aria-required=[required] aria-describedby=[described.as_deref()] aria-invalid=[invalid] { (current) }
        }
    } else if v.var_type == VarType::Select && !v.options.is_empty() {
        html! {
            select id=(id) name=(key) aria-required=[required] aria-describedby=[described.as_deref()] aria-invalid=[invalid] {
                @if !v.required || current.is_empty() { option value="" { "—" } }
                @for o in &v.options {
                    @let ov = value_text(&o.value);
                    option value=(ov) selected[ov == current] { (o.text) }
                }
            }
        }
    } else if v.var_type == VarType::Integer {
        html! {
            input type="number" step="1" inputmode="numeric" id=(id) name=(key) value=(current)
                aria-required=[required] aria-describedby=[described.as_deref()] aria-invalid=[invalid];
        }
    } else {
        html! {
            input type="text" id=(id) name=(key) value=(current) spellcheck="false"
                aria-required=[required] aria-describedby=[described.as_deref()] aria-invalid=[invalid];
        }
    };
    html! {
        div .field .var {
            (label)
            (control)
            (hints(v, &hint_id, error, &err_id))
        }
    }
}

fn hints(v: &Var, hint_id: &str, error: Option<&String>, err_id: &str) -> Markup {
    html! {
        @if v.description.is_some() || v.multi {
            p .hint id=(hint_id) {
                @if let Some(d) = &v.description { (d) " " }
                @if v.multi { "One value a line." }
            }
        }
        @if let Some(e) = error { p .field-error id=(err_id) { (label_of(v)) " " (e) } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, t: VarType) -> Var {
        Var {
            name: name.into(),
            var_type: t,
            title: None,
            description: None,
            multi: false,
            required: false,
            show_user: true,
            secret: false,
            default: None,
            options: vec![],
        }
    }

    fn submitted(pairs: &[(&str, &str)]) -> Submitted {
        Submitted::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn values_follow_their_types() {
        let mut s = submitted(&[("n", " 12 "), ("m", "a\n\n b \n"), ("bad", "x")]);
        assert_eq!(
            read_var(&mut s, "n", &var("n", VarType::Integer), true),
            Some(Value::from(12))
        );
        let mut multi = var("m", VarType::Text);
        multi.multi = true;
        assert_eq!(
            read_var(&mut s, "m", &multi, true),
            Some(serde_json::json!(["a", "b"]))
        );
        assert_eq!(
            read_var(&mut s, "bad", &var("bad", VarType::Integer), true),
            None
        );
        assert!(s.errors["bad"].contains("whole number"));
        assert_eq!(
            read_var(&mut s, "b", &var("b", VarType::Bool), true),
            Some(Value::Bool(false))
        );
    }

    #[test]
    fn required_is_enforced_only_where_collected_and_secrets_are_left_alone() {
        let mut req = var("r", VarType::Text);
        req.required = true;
        let mut s = submitted(&[]);
        read_var(&mut s, "r", &req, false);
        assert!(s.errors.is_empty());
        read_var(&mut s, "r", &req, true);
        assert_eq!(s.errors["r"], "is required");
        let mut secret = var("k", VarType::Text);
        secret.secret = true;
        assert_eq!(read_var(&mut s, "k", &secret, true), None);
    }

    #[test]
    fn selects_take_only_their_options() {
        let mut sel = var("s", VarType::Select);
        sel.options = vec![flotilla_packages::manifest::SelectOption {
            value: Value::String("a".into()),
            text: "A".into(),
        }];
        let mut s = submitted(&[("s", "a"), ("t", "zzz")]);
        assert_eq!(
            read_var(&mut s, "s", &sel, true),
            Some(Value::String("a".into()))
        );
        assert_eq!(read_var(&mut s, "t", &sel, true), None);
        assert!(s.errors.contains_key("t"));
    }

    #[test]
    fn secrets_are_never_echoed() {
        let mut secret = var("k", VarType::Password);
        secret.required = true;
        let s = submitted(&[("k", "hunter2")]);
        let html = field("k", &secret, Some(&s)).into_string();
        assert!(!html.contains("hunter2"));
        assert!(html.contains("type=\"password\""));
    }
}
