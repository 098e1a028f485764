//! Package policies resolved against their package, as Kibana builds them:
//! the package's defaults (`packageToPackagePolicy`), the caller's values in
//! Kibana's full body (`inputs: [...]`) or its simplified body
//! (`inputs: {"<template>-<input>": …}`), every variable checked against
//! its declaration, secrets replaced by references, and each enabled
//! stream's template rendered (`compiled_stream`).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use flotilla_domain::package_policy::{
    ConfigVar, DataStreamRef, Input, SecretReference, Stream, Vars,
};
use flotilla_domain::ValidationError;

use crate::manifest::{PolicyTemplate, Var, VarType};
use crate::package::Package;
use crate::render::{compile_template, secret_ref_id, TemplateVar};

/// The variable input packages add to every policy template: the dataset
/// the input writes to (default: the template's name).
pub const DATASET_VAR: &str = "data_stream.dataset";
/// Input packages may also choose the data stream type.
pub const TYPE_VAR: &str = "data_stream.type";

/// What a caller sent: package-level `vars` and `inputs` in either form.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyRequest<'a> {
    pub vars: Option<&'a Map<String, Value>>,
    pub inputs: Option<&'a Value>,
}

/// A secret value to seal and store.
#[derive(Debug, Clone)]
pub struct PlainSecret {
    pub id: String,
    pub value: String,
}

/// What an update starts from: the integration's current values (of this
/// or an older version of the package; values the package no longer
/// declares are dropped, as Kibana's upgrade drops them).
#[derive(Debug, Clone, Copy)]
pub struct Base<'a> {
    pub vars: &'a Vars,
    pub inputs: &'a [Input],
}

/// A package policy's resolved content.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub vars: Vars,
    pub inputs: Vec<Input>,
    pub secret_references: Vec<SecretReference>,
    pub new_secrets: Vec<PlainSecret>,
}

/// The key Kibana gives an input: `<policy template>-<input type>`.
pub fn input_key(input: &Input) -> String {
    match &input.policy_template {
        Some(t) => format!("{t}-{}", input.input_type),
        None => input.input_type.clone(),
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError::new(field, message)
}

fn var_defaults(decls: &[Var]) -> Vars {
    decls
        .iter()
        .map(|d| {
            let value = match &d.default {
                Some(Value::Null) | None if d.multi => Some(Value::Array(vec![])),
                Some(Value::Null) | None => None,
                Some(v) => Some(v.clone()),
            };
            (
                d.name.clone(),
                ConfigVar {
                    value,
                    var_type: Some(d.var_type.as_str().to_owned()),
                },
            )
        })
        .collect()
}

/// The variables an input package's template declares, with the dataset
/// variable Kibana adds.
pub fn input_package_stream_vars(template: &PolicyTemplate) -> Vec<Var> {
    let mut vars = template.vars.clone();
    if !vars.iter().any(|v| v.name == DATASET_VAR) {
        vars.push(Var {
            name: DATASET_VAR.to_owned(),
            var_type: VarType::Text,
            title: Some("Dataset name".into()),
            description: None,
            multi: false,
            required: true,
            show_user: true,
            secret: false,
            default: Some(Value::String(template.name.clone())),
            options: vec![],
        });
    }
    vars
}

fn type_var() -> Var {
    Var {
        name: TYPE_VAR.to_owned(),
        var_type: VarType::Select,
        title: Some("Data stream type".into()),
        description: None,
        multi: false,
        required: false,
        show_user: false,
        secret: false,
        default: None,
        options: ["logs", "metrics", "traces", "synthetics", "profiling"]
            .iter()
            .map(|t| crate::manifest::SelectOption {
                value: Value::String((*t).into()),
                text: (*t).into(),
            })
            .collect(),
    }
}

/// Where an input's and a stream's declarations are, for checking.
struct Decls {
    input: Vec<Var>,
    streams: Vec<Vec<Var>>,
}

impl Package {
    /// The package policy Kibana would create with no values given.
    pub fn default_inputs(&self) -> Vec<Input> {
        let mut out = Vec::new();
        for t in &self.manifest.policy_templates {
            if self.is_input_package() {
                let input_type = t.input.clone().unwrap_or_default();
                let stream_type = t.stream_type.clone().unwrap_or_else(|| "logs".into());
                out.push(Input {
                    input_type,
                    policy_template: Some(t.name.clone()),
                    enabled: true,
                    vars: Vars::new(),
                    streams: vec![Stream {
                        enabled: true,
                        data_stream: DataStreamRef {
                            stream_type,
                            dataset: format!("{}.{}", self.name(), t.name),
                            elasticsearch: Some(serde_json::json!({
                                "dynamic_dataset": true,
                                "dynamic_namespace": true
                            })),
                        },
                        vars: var_defaults(&input_package_stream_vars(t)),
                        compiled_stream: None,
                    }],
                    compiled_input: None,
                });
                continue;
            }
            for ti in &t.inputs {
                let streams: Vec<Stream> = self
                    .template_data_streams(t)
                    .filter_map(|ds| ds.stream(&ti.input_type).map(|s| (ds, s)))
                    .map(|(ds, s)| Stream {
                        enabled: s.enabled != Some(false),
                        data_stream: DataStreamRef {
                            stream_type: ds.manifest.stream_type.clone(),
                            dataset: ds.dataset.clone(),
                            elasticsearch: stream_elasticsearch(ds),
                        },
                        vars: var_defaults(&s.vars),
                        compiled_stream: None,
                    })
                    .collect();
                let enabled = streams.is_empty() || streams.iter().any(|s| s.enabled);
                out.push(Input {
                    input_type: ti.input_type.clone(),
                    policy_template: Some(t.name.clone()),
                    enabled,
                    vars: var_defaults(&ti.vars),
                    streams,
                    compiled_input: None,
                });
            }
        }
        out
    }

    /// What an input of [`Package::default_inputs`] declares: its own
    /// variables and each of its streams' (in the input's stream order),
    /// as the resolver checks them — for a form that offers them.
    pub fn input_declarations(&self, input: &Input) -> Option<(Vec<Var>, Vec<Vec<Var>>)> {
        self.decls_for(input).map(|d| (d.input, d.streams))
    }

    fn decls_for(&self, input: &Input) -> Option<Decls> {
        let t = self.template_for(input)?;
        if self.is_input_package() {
            let mut vars = input_package_stream_vars(t);
            vars.push(type_var());
            return Some(Decls {
                input: vec![],
                streams: vec![vars],
            });
        }
        let ti = t.inputs.iter().find(|i| i.input_type == input.input_type)?;
        let streams = input
            .streams
            .iter()
            .map(|s| {
                self.data_streams
                    .iter()
                    .find(|ds| ds.dataset == s.data_stream.dataset)
                    .and_then(|ds| ds.stream(&input.input_type))
                    .map(|st| st.vars.clone())
                    .unwrap_or_default()
            })
            .collect();
        Some(Decls {
            input: ti.vars.clone(),
            streams,
        })
    }

    /// The policy template an input belongs to (the first that has its
    /// type when the input names none).
    pub fn template_for(&self, input: &Input) -> Option<&PolicyTemplate> {
        let has_input = |t: &&PolicyTemplate| {
            if self.is_input_package() {
                t.input.as_deref() == Some(input.input_type.as_str())
            } else {
                t.inputs.iter().any(|i| i.input_type == input.input_type)
            }
        };
        match &input.policy_template {
            Some(name) => self.policy_template(name).filter(has_input),
            None => self.manifest.policy_templates.iter().find(has_input),
        }
    }

    /// Resolve a caller's request: defaults, values, checks, secrets and
    /// compiled templates. `previous` are the secret references the
    /// policy already holds (an update may keep them by reference).
    pub fn resolve_policy(
        &self,
        req: PolicyRequest<'_>,
        base: Option<Base<'_>>,
        previous: &[SecretReference],
        new_secret_id: &mut dyn FnMut() -> String,
    ) -> Result<Resolved, ValidationError> {
        let mut vars = var_defaults(&self.manifest.vars);
        let mut inputs = self.default_inputs();
        if let Some(base) = base {
            self.carry_over(base, &mut vars, &mut inputs);
        }
        if let Some(given) = req.vars {
            for (k, v) in given {
                // An input package's variables live on its template's
                // stream; given at the package level, they go there.
                if !vars.contains_key(k) && self.is_input_package() {
                    let stream = inputs.iter_mut().find_map(|i| {
                        i.streams
                            .first_mut()
                            .filter(|s| s.vars.contains_key(k) || k == TYPE_VAR)
                    });
                    if let Some(stream) = stream {
                        let value = ConfigVar::from_value(v.clone()).value;
                        match stream.vars.get_mut(k) {
                            Some(slot) => slot.value = value,
                            None => {
                                stream.vars.insert(
                                    k.clone(),
                                    ConfigVar {
                                        value,
                                        var_type: Some("select".into()),
                                    },
                                );
                            }
                        }
                        continue;
                    }
                }
                let Some(slot) = vars.get_mut(k) else {
                    return Err(err(
                        format!("vars.{k}"),
                        format!(
                            "package '{}' has no package-level variable '{k}'{}",
                            self.name(),
                            declared_list(&self.manifest.vars)
                        ),
                    ));
                };
                slot.value = ConfigVar::from_value(v.clone()).value;
            }
        }
        match req.inputs {
            None | Some(Value::Null) => {}
            Some(Value::Object(simplified)) => self.apply_simplified(&mut inputs, simplified)?,
            Some(Value::Array(full)) => self.apply_full(&mut inputs, full)?,
            Some(_) => return Err(err(
                "inputs",
                "must be a list of inputs, or an object keyed by '<policy template>-<input type>'",
            )),
        }

        // Check every value against its declaration.
        for (name, var) in &vars {
            if let Some(decl) = self.manifest.vars.iter().find(|d| &d.name == name) {
                check_var(&format!("vars.{name}"), decl, var, self.is_input_package())?;
            }
        }
        for input in inputs.iter().filter(|i| i.enabled) {
            let key = input_key(input);
            let decls = self
                .decls_for(input)
                .ok_or_else(|| err(format!("inputs.{key}"), "matches no policy template input"))?;
            for decl in &decls.input {
                let v = input.vars.get(&decl.name).cloned().unwrap_or(ConfigVar {
                    value: None,
                    var_type: None,
                });
                check_var(&format!("inputs.{key}.vars.{}", decl.name), decl, &v, false)?;
            }
            for (stream, decls) in input.streams.iter().zip(&decls.streams) {
                if !stream.enabled {
                    continue;
                }
                for decl in decls {
                    let v = stream.vars.get(&decl.name).cloned().unwrap_or(ConfigVar {
                        value: None,
                        var_type: None,
                    });
                    check_var(
                        &format!(
                            "inputs.{key}.streams.{}.vars.{}",
                            stream.data_stream.dataset, decl.name
                        ),
                        decl,
                        &v,
                        self.is_input_package(),
                    )?;
                }
            }
        }

        // Secrets: plain values become references to sealed values.
        let mut new_secrets = Vec::new();
        let mut refs = BTreeSet::new();
        let mut seal =
            |field: String, decl: &Var, var: &mut ConfigVar| -> Result<(), ValidationError> {
                if !(decl.secret || decl.var_type == VarType::Password) {
                    return Ok(());
                }
                match &var.value {
                    None => {}
                    Some(Value::String(s)) if s.is_empty() => {}
                    Some(v) if secret_ref_id(v).is_some() => {
                        let id = secret_ref_id(v).unwrap_or_default().to_owned();
                        if !previous.iter().any(|r| r.id == id) {
                            return Err(err(
                                field,
                                format!(
                                    "refers to secret '{id}', which this integration does not hold"
                                ),
                            ));
                        }
                        refs.insert(id);
                    }
                    Some(Value::String(s)) => {
                        let id = new_secret_id();
                        new_secrets.push(PlainSecret {
                            id: id.clone(),
                            value: s.clone(),
                        });
                        var.value = Some(serde_json::json!({"isSecretRef": true, "id": id}));
                        refs.insert(id);
                    }
                    Some(_) => return Err(err(field, "a secret must be a string")),
                }
                Ok(())
            };
        for (name, var) in vars.iter_mut() {
            if let Some(decl) = self.manifest.vars.iter().find(|d| &d.name == name) {
                seal(format!("vars.{name}"), decl, var)?;
            }
        }
        for input in inputs.iter_mut() {
            let key = input_key(input);
            let Some(decls) = self.decls_for(input) else {
                continue;
            };
            for (name, var) in input.vars.iter_mut() {
                if let Some(decl) = decls.input.iter().find(|d| &d.name == name) {
                    seal(format!("inputs.{key}.vars.{name}"), decl, var)?;
                }
            }
            for (stream, sdecls) in input.streams.iter_mut().zip(&decls.streams) {
                let ds = stream.data_stream.dataset.clone();
                for (name, var) in stream.vars.iter_mut() {
                    if let Some(decl) = sdecls.iter().find(|d| &d.name == name) {
                        seal(format!("inputs.{key}.streams.{ds}.vars.{name}"), decl, var)?;
                    }
                }
            }
        }

        self.compile_inputs(&vars, &mut inputs)?;
        // A secret reference in the output must be one of this
        // integration's own: a value or template naming another's would
        // have the fleet server hand that secret to this configuration.
        for input in &inputs {
            let compiled = input.compiled_input.iter().chain(
                input
                    .streams
                    .iter()
                    .filter_map(|s| s.compiled_stream.as_ref()),
            );
            for value in compiled {
                if let Some(id) = foreign_secret_ref(value, &refs) {
                    return Err(err(
                        format!("inputs.{}", input_key(input)),
                        format!("refers to secret '{id}', which this integration does not hold"),
                    ));
                }
            }
        }
        Ok(Resolved {
            vars,
            inputs,
            secret_references: refs.into_iter().map(|id| SecretReference { id }).collect(),
            new_secrets,
        })
    }

    fn carry_over(&self, base: Base<'_>, vars: &mut Vars, inputs: &mut [Input]) {
        // A value that was never set keeps the new version's default.
        let set = |to: &mut Vars, from: &Vars| {
            for (k, v) in from {
                if let (Some(slot), Some(value)) = (to.get_mut(k), &v.value) {
                    slot.value = Some(value.clone());
                }
            }
        };
        set(vars, base.vars);
        for old in base.inputs {
            let Some(new) = inputs.iter_mut().find(|i| {
                i.input_type == old.input_type
                    && (old.policy_template.is_none() || i.policy_template == old.policy_template)
            }) else {
                continue;
            };
            new.enabled = old.enabled;
            set(&mut new.vars, &old.vars);
            let single = self.is_input_package() && new.streams.len() == 1;
            for old_stream in &old.streams {
                let idx = new
                    .streams
                    .iter()
                    .position(|s| s.data_stream.dataset == old_stream.data_stream.dataset)
                    .or(single.then_some(0));
                let Some(idx) = idx else { continue };
                let stream = &mut new.streams[idx];
                stream.enabled = old_stream.enabled;
                set(&mut stream.vars, &old_stream.vars);
                if let Some(t) = old_stream.vars.get(TYPE_VAR) {
                    stream.vars.insert(TYPE_VAR.to_owned(), t.clone());
                }
                // A custom dataset stored before it was a variable.
                if single
                    && old_stream.data_stream.dataset != stream.data_stream.dataset
                    && !old_stream.vars.contains_key(DATASET_VAR)
                {
                    if let Some(v) = stream.vars.get_mut(DATASET_VAR) {
                        v.value = Some(Value::String(old_stream.data_stream.dataset.clone()));
                    }
                }
            }
        }
    }

    fn apply_simplified(
        &self,
        inputs: &mut [Input],
        given: &Map<String, Value>,
    ) -> Result<(), ValidationError> {
        for (key, body) in given {
            let field = format!("inputs.{key}");
            let keys: Vec<String> = inputs.iter().map(input_key).collect();
            let Some(idx) = keys.iter().position(|k| k == key) else {
                return Err(err(
                    field,
                    format!(
                        "package '{}' has no input '{key}' (it has: {})",
                        self.name(),
                        keys.join(", ")
                    ),
                ));
            };
            let body = object(&field, body, &["enabled", "vars", "streams"])?;
            let is_input_package = self.is_input_package();
            let decls = self.decls_for(&inputs[idx]);
            let input = &mut inputs[idx];
            input.enabled = body.get("enabled") != Some(&Value::Bool(false));
            check_bool(&format!("{field}.enabled"), body.get("enabled"))?;
            if let Some(v) = body.get("vars") {
                let v = object(&format!("{field}.vars"), v, &[])?;
                let declared = decls.as_ref().map(|d| d.input.clone()).unwrap_or_default();
                apply_vars(
                    &format!("{field}.vars"),
                    &mut input.vars,
                    v,
                    &declared,
                    is_input_package.then_some(&mut input.streams),
                )?;
            }
            if let Some(streams) = body.get("streams") {
                let streams = object(&format!("{field}.streams"), streams, &[])?;
                for (dataset, sbody) in streams {
                    let sfield = format!("{field}.streams.{dataset}");
                    let datasets: Vec<String> = input
                        .streams
                        .iter()
                        .map(|s| s.data_stream.dataset.clone())
                        .collect();
                    let Some(sidx) = datasets.iter().position(|d| d == dataset) else {
                        return Err(err(
                            sfield,
                            format!(
                                "input '{key}' has no stream '{dataset}' (it has: {})",
                                datasets.join(", ")
                            ),
                        ));
                    };
                    let sbody = object(&sfield, sbody, &["enabled", "vars"])?;
                    let declared = decls.as_ref().and_then(|d| d.streams.get(sidx));
                    set_stream(&sfield, &mut input.streams[sidx], sbody, declared)?;
                }
            }
        }
        Ok(())
    }

    fn apply_full(&self, inputs: &mut [Input], given: &[Value]) -> Result<(), ValidationError> {
        // Kibana's full body lists the inputs the policy has: the others
        // are kept, disabled, so that a later update can enable them.
        let mut seen = BTreeSet::new();
        let mut listed = vec![false; inputs.len()];
        for (i, body) in given.iter().enumerate() {
            let field = format!("inputs[{i}]");
            let body = object(
                &field,
                body,
                &[
                    "type",
                    "policy_template",
                    "enabled",
                    "vars",
                    "streams",
                    "id",
                    "compiled_input",
                    "config",
                    "keep_enabled",
                ],
            )?;
            let Some(Value::String(input_type)) = body.get("type") else {
                return Err(err(
                    format!("{field}.type"),
                    "is required (the input type, e.g. logfile)",
                ));
            };
            let template = match body.get("policy_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(t)) => Some(t.clone()),
                Some(_) => return Err(err(format!("{field}.policy_template"), "must be a string")),
            };
            let idx = inputs.iter().position(|inp| {
                inp.input_type == *input_type
                    && template
                        .as_ref()
                        .is_none_or(|t| inp.policy_template.as_ref() == Some(t))
            });
            let Some(idx) = idx else {
                let keys: Vec<String> = inputs.iter().map(input_key).collect();
                return Err(err(
                    format!("{field}.type"),
                    format!(
                        "package '{}' has no input '{}{input_type}' (it has: {})",
                        self.name(),
                        template.map(|t| format!("{t}-")).unwrap_or_default(),
                        keys.join(", ")
                    ),
                ));
            };
            if !seen.insert(idx) {
                return Err(err(
                    format!("{field}.type"),
                    format!("input '{}' is listed twice", input_key(&inputs[idx])),
                ));
            }
            listed[idx] = true;
            check_bool(&format!("{field}.enabled"), body.get("enabled"))?;
            let is_input_package = self.is_input_package();
            let decls = self.decls_for(&inputs[idx]);
            let input = &mut inputs[idx];
            input.enabled = body.get("enabled") != Some(&Value::Bool(false));
            if let Some(v) = body.get("vars") {
                let v = object(&format!("{field}.vars"), v, &[])?;
                let declared = decls.as_ref().map(|d| d.input.clone()).unwrap_or_default();
                apply_vars(
                    &format!("{field}.vars"),
                    &mut input.vars,
                    v,
                    &declared,
                    is_input_package.then_some(&mut input.streams),
                )?;
            }
            match body.get("streams") {
                None | Some(Value::Null) => {}
                Some(Value::Array(streams)) => {
                    let mut stream_listed = vec![false; input.streams.len()];
                    for (j, sbody) in streams.iter().enumerate() {
                        let sfield = format!("{field}.streams[{j}]");
                        let sbody = object(
                            &sfield,
                            sbody,
                            &[
                                "enabled",
                                "vars",
                                "data_stream",
                                "id",
                                "compiled_stream",
                                "config",
                            ],
                        )?;
                        let ds = sbody
                            .get("data_stream")
                            .and_then(Value::as_object)
                            .ok_or_else(|| {
                                err(
                                    format!("{sfield}.data_stream"),
                                    "is required: {\"type\", \"dataset\"}",
                                )
                            })?;
                        let dataset =
                            ds.get("dataset").and_then(Value::as_str).ok_or_else(|| {
                                err(format!("{sfield}.data_stream.dataset"), "is required")
                            })?;
                        let mut sidx = input
                            .streams
                            .iter()
                            .position(|s| s.data_stream.dataset == dataset);
                        // An input package has one stream, whatever dataset it writes to.
                        if sidx.is_none() && is_input_package && input.streams.len() == 1 {
                            sidx = Some(0);
                            crate::package::check_dataset_value(
                                &format!("{sfield}.data_stream.dataset"),
                                dataset,
                            )?;
                            let has_var = sbody
                                .get("vars")
                                .and_then(Value::as_object)
                                .is_some_and(|v| v.contains_key(DATASET_VAR));
                            if !has_var {
                                if let Some(v) = input.streams[0].vars.get_mut(DATASET_VAR) {
                                    v.value = Some(Value::String(dataset.to_owned()));
                                }
                            }
                        }
                        let Some(sidx) = sidx else {
                            let datasets: Vec<&str> = input
                                .streams
                                .iter()
                                .map(|s| s.data_stream.dataset.as_str())
                                .collect();
                            return Err(err(
                                format!("{sfield}.data_stream.dataset"),
                                format!(
                                    "input '{}' has no stream '{dataset}' (it has: {})",
                                    input_key(input),
                                    datasets.join(", ")
                                ),
                            ));
                        };
                        if stream_listed[sidx] {
                            return Err(err(
                                format!("{sfield}.data_stream.dataset"),
                                format!("stream '{dataset}' is listed twice"),
                            ));
                        }
                        stream_listed[sidx] = true;
                        if let Some(t) = ds.get("type").and_then(Value::as_str) {
                            let want = &input.streams[sidx].data_stream.stream_type;
                            if t != want && !is_input_package {
                                return Err(err(
                                    format!("{sfield}.data_stream.type"),
                                    format!("must be '{want}'"),
                                ));
                            }
                        }
                        let declared = decls.as_ref().and_then(|d| d.streams.get(sidx));
                        set_stream(&sfield, &mut input.streams[sidx], sbody, declared)?;
                    }
                    for (s, listed) in input.streams.iter_mut().zip(stream_listed) {
                        if !listed {
                            s.enabled = false;
                        }
                    }
                }
                Some(_) => {
                    return Err(err(format!("{field}.streams"), "must be a list of streams"))
                }
            }
        }
        for (input, listed) in inputs.iter_mut().zip(listed) {
            if !listed {
                input.enabled = false;
            }
        }
        Ok(())
    }

    /// Render each enabled stream (and input-level templates).
    pub fn compile_inputs(
        &self,
        package_vars: &Vars,
        inputs: &mut [Input],
    ) -> Result<(), ValidationError> {
        for input in inputs.iter_mut() {
            let key = input_key(input);
            for s in input.streams.iter_mut() {
                s.compiled_stream = None;
            }
            input.compiled_input = None;
            if !input.enabled {
                continue;
            }
            let template = self
                .template_for(input)
                .ok_or_else(|| err(format!("inputs.{key}"), "matches no policy template input"))?
                .clone();
            let layered = |layers: &[&Vars]| -> Vec<TemplateVar> {
                let mut merged: Vars = Vars::new();
                for layer in layers {
                    for (k, v) in layer.iter() {
                        merged.insert(k.clone(), v.clone());
                    }
                }
                merged
                    .into_iter()
                    .map(|(name, v)| TemplateVar {
                        var_type: v.var_type.as_deref().and_then(parse_var_type),
                        name,
                        value: v.value.unwrap_or(Value::Null),
                    })
                    .collect()
            };
            if !self.is_input_package() {
                if let Some(path) = template
                    .inputs
                    .iter()
                    .find(|i| i.input_type == input.input_type)
                    .and_then(|i| i.template_path.clone())
                {
                    let text = self.input_template(&path).unwrap_or("");
                    let vars = layered(&[package_vars, &input.vars]);
                    input.compiled_input = Some(compile_template(text, &vars).map_err(|e| {
                        err(format!("inputs.{key}"), format!("agent/input/{path}: {e}"))
                    })?);
                }
            }
            let input_vars = input.vars.clone();
            for s in input.streams.iter_mut().filter(|s| s.enabled) {
                let dataset = s.data_stream.dataset.clone();
                let field = format!("inputs.{key}.streams.{dataset}");
                let mut stream_vars = s.vars.clone();
                if stream_vars.get(DATASET_VAR).is_none_or(|v| {
                    v.value
                        .as_ref()
                        .is_none_or(|v| !crate::render::is_truthy(v))
                }) {
                    stream_vars.insert(
                        DATASET_VAR.to_owned(),
                        ConfigVar {
                            value: Some(Value::String(dataset.clone())),
                            var_type: Some("text".into()),
                        },
                    );
                }
                let vars = layered(&[package_vars, &input_vars, &stream_vars]);
                let templates: Vec<(String, String)> = if self.is_input_package() {
                    let path = template.template_path.clone().unwrap_or_default();
                    vec![(
                        format!("agent/input/{path}"),
                        self.input_template(&path).unwrap_or("").to_owned(),
                    )]
                } else {
                    let ds = self
                        .data_streams
                        .iter()
                        .find(|d| d.dataset == dataset)
                        .ok_or_else(|| {
                            err(
                                &field,
                                format!("package '{}' has no data stream '{dataset}'", self.name()),
                            )
                        })?;
                    let st = ds.stream(&input.input_type).ok_or_else(|| {
                        err(
                            &field,
                            format!(
                                "data stream '{dataset}' has no '{}' stream",
                                input.input_type
                            ),
                        )
                    })?;
                    self.stream_templates(ds, st)
                        .into_iter()
                        .map(|(p, t)| (p, t.to_owned()))
                        .collect()
                };
                let mut compiled = Value::Object(Map::new());
                for (path, text) in templates {
                    let one = compile_template(&text, &vars)
                        .map_err(|e| err(&field, format!("{path}: {e}")))?;
                    merge_compiled(&mut compiled, one);
                }
                s.compiled_stream = Some(compiled);
            }
        }
        Ok(())
    }
}

/// The first `$co.elastic.secret{id}` in `value` whose id is not in `own`.
fn foreign_secret_ref(value: &Value, own: &BTreeSet<String>) -> Option<String> {
    match value {
        Value::String(s) => crate::render::secret_refs_in(s)
            .into_iter()
            .find(|id| !own.contains(*id))
            .map(str::to_owned),
        Value::Array(a) => a.iter().find_map(|v| foreign_secret_ref(v, own)),
        Value::Object(m) => m.values().find_map(|v| foreign_secret_ref(v, own)),
        _ => None,
    }
}

/// Several templates of one stream fold together: objects deep-merge,
/// lists append, other values are replaced.
fn merge_compiled(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_compiled(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => b.extend(o),
        (b, o) => *b = o,
    }
}

pub(crate) fn parse_var_type(s: &str) -> Option<VarType> {
    serde_json::from_value(Value::String(s.to_owned())).ok()
}

fn stream_elasticsearch(ds: &crate::package::DataStream) -> Option<Value> {
    let es = ds.manifest.elasticsearch.as_ref()?;
    let mut m = Map::new();
    if es.dynamic_dataset {
        m.insert("dynamic_dataset".into(), Value::Bool(true));
    }
    if es.dynamic_namespace {
        m.insert("dynamic_namespace".into(), Value::Bool(true));
    }
    if let Some(p) = es.privileges.as_ref().filter(|p| !p.indices.is_empty()) {
        m.insert(
            "privileges".into(),
            serde_json::json!({"indices": p.indices}),
        );
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

fn declared_list(decls: &[Var]) -> String {
    if decls.is_empty() {
        " (it declares none)".to_owned()
    } else {
        format!(
            " (it declares: {})",
            decls
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn object<'v>(
    field: &str,
    v: &'v Value,
    allowed: &[&str],
) -> Result<&'v Map<String, Value>, ValidationError> {
    let Value::Object(m) = v else {
        return Err(err(field, "must be an object"));
    };
    if !allowed.is_empty() {
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(err(
                format!("{field}.{k}"),
                format!("is not a known field (known: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(m)
}

/// A stream as a request names it (either form): enabled unless it says
/// `enabled: false`, with its variables set.
fn set_stream(
    field: &str,
    stream: &mut Stream,
    body: &Map<String, Value>,
    declared: Option<&Vec<Var>>,
) -> Result<(), ValidationError> {
    check_bool(&format!("{field}.enabled"), body.get("enabled"))?;
    stream.enabled = body.get("enabled") != Some(&Value::Bool(false));
    if let Some(v) = body.get("vars") {
        let v = object(&format!("{field}.vars"), v, &[])?;
        let declared = declared.map(Vec::as_slice).unwrap_or_default();
        apply_vars(
            &format!("{field}.vars"),
            &mut stream.vars,
            v,
            declared,
            None,
        )?;
    }
    Ok(())
}

fn check_bool(field: &str, v: Option<&Value>) -> Result<(), ValidationError> {
    match v {
        None | Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(err(field, "must be true or false")),
    }
}

/// Set declared variables from a caller's values; an input package's
/// input-level values go to its stream (where its template's variables
/// live), as elastic-package sends them.
fn apply_vars(
    field: &str,
    vars: &mut Vars,
    given: &Map<String, Value>,
    declared: &[Var],
    input_package_streams: Option<&mut Vec<Stream>>,
) -> Result<(), ValidationError> {
    if let Some(streams) = input_package_streams {
        if declared.is_empty() {
            if let Some(stream) = streams.first_mut() {
                for (k, v) in given {
                    let Some(slot) = stream.vars.get_mut(k) else {
                        if k == TYPE_VAR {
                            stream.vars.insert(
                                k.clone(),
                                ConfigVar {
                                    value: ConfigVar::from_value(v.clone()).value,
                                    var_type: Some("select".into()),
                                },
                            );
                            continue;
                        }
                        return Err(err(
                            format!("{field}.{k}"),
                            format!("is not a variable of this input{}", declared_list(&[])),
                        ));
                    };
                    slot.value = ConfigVar::from_value(v.clone()).value;
                }
            }
            return Ok(());
        }
    }
    for (k, v) in given {
        let value = ConfigVar::from_value(v.clone()).value;
        match vars.get_mut(k) {
            Some(slot) => slot.value = value,
            None if declared.iter().any(|d| &d.name == k) => {
                let decl = declared
                    .iter()
                    .find(|d| &d.name == k)
                    .map(|d| d.var_type.as_str().to_owned());
                vars.insert(
                    k.clone(),
                    ConfigVar {
                        value,
                        var_type: decl,
                    },
                );
            }
            None => {
                return Err(err(
                    format!("{field}.{k}"),
                    format!(
                        "is not a variable of this input or stream{}",
                        declared_list(declared)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Kibana's `validatePackagePolicyConfig`, message for message where it
/// has one; Flotilla also refuses values of the wrong JSON type.
fn check_var(
    field: &str,
    decl: &Var,
    var: &ConfigVar,
    input_package: bool,
) -> Result<(), ValidationError> {
    let title = decl.title.as_deref().unwrap_or(&decl.name);
    let value = var.value.as_ref();
    let trimmed = match value {
        Some(Value::String(s)) => Some(s.trim()),
        _ => None,
    };
    let missing = match value {
        None => true,
        Some(Value::Null) => true,
        Some(Value::String(s)) if decl.var_type == VarType::Yaml => s.trim().is_empty(),
        Some(Value::Array(a)) if decl.multi => a.is_empty(),
        _ => false,
    };
    if decl.required && missing {
        return Err(err(field, format!("{title} is required")));
    }
    let Some(value) = value else { return Ok(()) };
    if value.is_null() {
        return Ok(());
    }
    if decl.is_secret() || decl.var_type == VarType::Password {
        if secret_ref_id(value).is_some() {
            return Ok(());
        }
        if value.get("isSecretRef").is_some() {
            return Err(err(
                field,
                "Secret reference is invalid, id must be a string",
            ));
        }
    }
    if decl.var_type == VarType::Yaml {
        return match value {
            Value::String(s) => crate::package::parse_yaml_value(s)
                .map(|_| ())
                .map_err(|_| err(field, "Invalid YAML format")),
            Value::Object(_) | Value::Array(_) => Ok(()),
            _ => Err(err(field, "Invalid YAML format")),
        };
    }
    if decl.multi {
        let Value::Array(items) = value else {
            return Err(err(
                field,
                format!("Invalid format for {title}: expected array"),
            ));
        };
        if decl.required
            && decl.var_type == VarType::Text
            && items
                .iter()
                .any(|i| i.as_str().is_some_and(|s| s.trim().is_empty()))
        {
            return Err(err(field, format!("{title} is required")));
        }
        for item in items {
            check_scalar(field, decl, item, input_package)?;
        }
        return Ok(());
    }
    if matches!(value, Value::Array(_)) {
        return Err(err(
            field,
            format!("Invalid format for {title}: expected a single value, not a list"),
        ));
    }
    let _ = trimmed;
    check_scalar(field, decl, value, input_package)
}

fn check_scalar(
    field: &str,
    decl: &Var,
    value: &Value,
    input_package: bool,
) -> Result<(), ValidationError> {
    match decl.var_type {
        VarType::Bool => match value {
            Value::Bool(_) => Ok(()),
            Value::String(s) if s == "true" || s == "false" => Ok(()),
            _ => Err(err(field, "Boolean values must be either true or false")),
        },
        VarType::Integer => {
            let ok = match value {
                Value::Number(n) => {
                    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
                }
                Value::String(s) => s.trim().parse::<i64>().is_ok() || s.trim().is_empty(),
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(err(field, "Invalid integer"))
            }
        }
        VarType::Select => {
            if decl.options.iter().any(|o| &o.value == value) {
                Ok(())
            } else {
                Err(err(
                    field,
                    format!(
                        "Invalid value for select type (one of: {})",
                        decl.options
                            .iter()
                            .map(|o| o.value.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        }
        VarType::Duration => match value {
            Value::String(s) => check_duration(field, s),
            _ => Err(err(field, "Duration cannot be empty")),
        },
        VarType::Url => match value {
            Value::String(s) if s.is_empty() => Ok(()),
            Value::String(s) => {
                let ok = s.split_once(':').is_some_and(|(scheme, rest)| {
                    !scheme.is_empty()
                        && scheme
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic())
                        && scheme
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                        && !rest.is_empty()
                        && !s.chars().any(char::is_whitespace)
                });
                if ok {
                    Ok(())
                } else {
                    Err(err(field, "Invalid URL format"))
                }
            }
            _ => Err(err(field, "Invalid URL format")),
        },
        VarType::Text
        | VarType::Textarea
        | VarType::Password
        | VarType::Email
        | VarType::TimeZone => {
            match value {
                Value::String(s) => {
                    if decl.var_type == VarType::Text && s.starts_with(['*', '&']) {
                        return Err(err(field, "Strings starting with special YAML characters like * or & need to be enclosed in double quotes."));
                    }
                    if input_package && decl.name == DATASET_VAR {
                        crate::package::check_dataset_value(field, s)?;
                    }
                    Ok(())
                }
                // Packages declare numbers and booleans as text defaults
                // (system's `language: 0`); they render as written.
                Value::Number(_) | Value::Bool(_) => Ok(()),
                _ => Err(err(
                    field,
                    format!("must be a string ({} variable)", decl.var_type.as_str()),
                )),
            }
        }
        VarType::Yaml => Ok(()),
    }
}

fn check_duration(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(err(field, "Duration cannot be empty"));
    }
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            break;
        }
        let after = &rest[digits..];
        let unit = ["ms", "s", "m", "h"]
            .into_iter()
            .find(|u| after.starts_with(u));
        let Some(unit) = unit else { break };
        rest = &after[unit.len()..];
        any = true;
    }
    if !any {
        return Err(err(
            field,
            "Invalid duration format. Expected format like \"1h30m45s\"",
        ));
    }
    if !rest.is_empty() {
        return Err(err(field, "Duration contains invalid characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::Files;
    use serde_json::json;

    /// A small integration: two data streams on one input, one of them off
    /// by default, a package-level variable and a secret.
    pub(crate) fn demo() -> Package {
        let mut f = Files::new();
        f.insert("manifest.yml".into(), "format_version: 3.0.0\nname: demo\ntitle: Demo\nversion: 1.2.0\nconditions:\n  kibana.version: ^8.0.0\nvars:\n  - name: region\n    type: select\n    title: Region\n    default: eu\n    options: [{value: eu, text: EU}, {value: us, text: US}]\n  - name: token\n    type: password\n    title: Token\n    secret: true\npolicy_templates:\n  - name: web\n    title: Web\n    inputs:\n      - type: logfile\n        title: Logs\n        vars:\n          - name: tail\n            type: bool\n            title: Tail\n            default: true\n".into());
        for (ds, enabled) in [("access", ""), ("debug", "    enabled: false\n")] {
            f.insert(
                format!("data_stream/{ds}/manifest.yml"),
                format!("type: logs\ntitle: {ds}\nstreams:\n  - input: logfile\n    title: {ds}\n{enabled}    vars:\n      - name: paths\n        type: text\n        title: Paths\n        multi: true\n        required: true\n        default: [/var/log/{ds}.log]\n      - name: max\n        type: integer\n        title: Max\n"),
            );
            f.insert(
                format!("data_stream/{ds}/agent/stream/stream.yml.hbs"),
                "paths:\n{{#each paths}}\n  - {{this}}\n{{/each}}\ntail: {{tail}}\nregion: {{region}}\n{{#if max}}\nmax: {{max}}\n{{/if}}\n{{#if token}}\ntoken: {{token}}\n{{/if}}\n".into(),
            );
        }
        Package::from_files(f).unwrap()
    }

    fn resolve(p: &Package, vars: Value, inputs: Value) -> Result<Resolved, ValidationError> {
        let mut n = 0;
        p.resolve_policy(
            PolicyRequest {
                vars: vars.as_object(),
                inputs: (!inputs.is_null()).then_some(&inputs),
            },
            None,
            &[],
            &mut || {
                n += 1;
                format!("s{n}")
            },
        )
    }

    fn stream<'a>(r: &'a Resolved, dataset: &str) -> &'a Stream {
        r.inputs[0]
            .streams
            .iter()
            .find(|s| s.data_stream.dataset == dataset)
            .unwrap()
    }

    #[test]
    fn defaults_follow_the_manifest() {
        let r = resolve(&demo(), Value::Null, Value::Null).unwrap();
        assert_eq!(r.inputs.len(), 1);
        assert_eq!(r.inputs[0].policy_template.as_deref(), Some("web"));
        assert!(stream(&r, "demo.access").enabled);
        assert!(
            !stream(&r, "demo.debug").enabled,
            "enabled: false in its manifest"
        );
        assert_eq!(stream(&r, "demo.debug").compiled_stream, None);
        assert_eq!(
            stream(&r, "demo.access").compiled_stream,
            Some(json!({"paths": ["/var/log/access.log"], "tail": true, "region": "eu"}))
        );
    }

    #[test]
    fn simplified_form_sets_values_and_enables_what_it_names() {
        let r = resolve(
            &demo(),
            json!({"region": "us", "token": "t0ps3cret"}),
            json!({"web-logfile": {"vars": {"tail": false}, "streams": {
                "demo.debug": {"vars": {"max": 5}}, "demo.access": {"enabled": false}}}}),
        )
        .unwrap();
        assert!(!stream(&r, "demo.access").enabled);
        let debug = stream(&r, "demo.debug");
        assert!(debug.enabled, "a named stream is enabled");
        assert_eq!(
            debug.compiled_stream,
            Some(
                json!({"paths": ["/var/log/debug.log"], "tail": false, "region": "us", "max": 5,
                        "token": "$co.elastic.secret{s1}"})
            )
        );
        assert_eq!(
            r.vars["token"].value,
            Some(json!({"isSecretRef": true, "id": "s1"}))
        );
        assert_eq!(r.new_secrets.len(), 1);
        assert_eq!(r.new_secrets[0].value, "t0ps3cret");
        assert_eq!(
            r.secret_references,
            vec![SecretReference { id: "s1".into() }]
        );
    }

    #[test]
    fn full_form_lists_what_the_policy_has() {
        let r = resolve(
            &demo(),
            Value::Null,
            json!([{"type": "logfile", "policy_template": "web", "streams": [
                {"data_stream": {"type": "logs", "dataset": "demo.debug"},
                 "vars": {"paths": {"value": ["/x.log"], "type": "text"}}}]}]),
        )
        .unwrap();
        assert!(!stream(&r, "demo.access").enabled, "not listed: off");
        assert_eq!(
            stream(&r, "demo.debug").vars["paths"].value,
            Some(json!(["/x.log"]))
        );
    }

    #[test]
    fn wrong_names_types_and_missing_values_are_named() {
        let p = demo();
        for (vars, inputs, field, msg) in [
            (
                json!({"nope": 1}),
                Value::Null,
                "vars.nope",
                "no package-level variable",
            ),
            (
                json!({"region": "mars"}),
                Value::Null,
                "vars.region",
                "Invalid value for select type",
            ),
            (
                Value::Null,
                json!({"web-nope": {}}),
                "inputs.web-nope",
                "has no input",
            ),
            (
                Value::Null,
                json!({"web-logfile": {"streams": {"demo.x": {}}}}),
                "inputs.web-logfile.streams.demo.x",
                "no stream",
            ),
            (
                Value::Null,
                json!({"web-logfile": {"vars": {"tail": "yes"}}}),
                "inputs.web-logfile.vars.tail",
                "Boolean",
            ),
            (
                Value::Null,
                json!({"web-logfile": {"streams": {"demo.access": {"vars": {"max": "many"}}}}}),
                "inputs.web-logfile.streams.demo.access.vars.max",
                "Invalid integer",
            ),
            (
                Value::Null,
                json!({"web-logfile": {"streams": {"demo.access": {"vars": {"paths": []}}}}}),
                "inputs.web-logfile.streams.demo.access.vars.paths",
                "Paths is required",
            ),
            (
                Value::Null,
                json!({"web-logfile": {"streams": {"demo.access": {"vars": {"paths": ["*x"]}}}}}),
                "inputs.web-logfile.streams.demo.access.vars.paths",
                "double quotes",
            ),
            (
                Value::Null,
                json!({"web-logfile": {"enabeld": true}}),
                "inputs.web-logfile.enabeld",
                "not a known field",
            ),
            (
                Value::Null,
                json!([{"type": "logfile", "streams": [{"data_stream": {"type": "metrics", "dataset": "demo.access"}}]}]),
                "inputs[0].streams[0].data_stream.type",
                "must be 'logs'",
            ),
            (
                Value::Null,
                json!([{"type": "logfile"}, {"type": "logfile"}]),
                "inputs[1].type",
                "listed twice",
            ),
            (
                json!({"token": {"isSecretRef": true, "id": "stolen"}}),
                Value::Null,
                "vars.token",
                "does not hold",
            ),
        ] {
            let e = resolve(&p, vars.clone(), inputs.clone()).unwrap_err();
            assert_eq!(e.field, field, "{vars} {inputs}: {}", e.message);
            assert!(e.message.contains(msg), "{field}: {}", e.message);
        }
    }

    #[test]
    fn an_update_starts_from_the_current_values_and_keeps_secrets() {
        let p = demo();
        let first = resolve(
            &p,
            json!({"token": "t"}),
            json!({"web-logfile": {"streams": {"demo.access": {"vars": {"max": 3}}}}}),
        )
        .unwrap();
        let again = p
            .resolve_policy(
                PolicyRequest {
                    vars: json!({"region": "us"}).as_object(),
                    inputs: None,
                },
                Some(Base {
                    vars: &first.vars,
                    inputs: &first.inputs,
                }),
                &first.secret_references,
                &mut || unreachable!("no new secret"),
            )
            .unwrap();
        assert_eq!(again.vars["token"].value, first.vars["token"].value);
        assert_eq!(again.secret_references, first.secret_references);
        assert_eq!(
            stream(&again, "demo.access").vars["max"].value,
            Some(json!(3))
        );
        assert_eq!(
            stream(&again, "demo.access")
                .compiled_stream
                .as_ref()
                .unwrap()["region"],
            "us"
        );
    }

    #[test]
    fn durations_are_checked_as_kibana_does() {
        assert!(check_duration("f", "1h30m45s").is_ok());
        assert!(check_duration("f", "250ms").is_ok());
        assert!(check_duration("f", "10")
            .unwrap_err()
            .message
            .contains("Invalid duration format"));
        assert!(check_duration("f", "10s!")
            .unwrap_err()
            .message
            .contains("invalid characters"));
        assert!(check_duration("f", "")
            .unwrap_err()
            .message
            .contains("empty"));
    }
}
