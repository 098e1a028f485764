//! A package read from its files and checked: every reference between its
//! manifests and templates resolves, or it is refused with the file and
//! field that are wrong.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::manifest::{
    DataStreamManifest, Manifest, PackageType, PolicyTemplate, StreamManifest, Var, VarType,
};

/// A package's files: path inside the package folder → UTF-8 text. Only
/// the files Flotilla reads are kept (manifests, changelog, agent
/// templates); docs, images, fields and Kibana assets are dropped.
pub type Files = BTreeMap<String, String>;

/// Why a package was refused: the file, the field inside it (when one is
/// to blame) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct PackageError {
    pub file: String,
    pub field: String,
    pub message: String,
}

impl PackageError {
    pub fn new(
        file: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        PackageError {
            file: file.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn render(&self) -> String {
        match (self.file.is_empty(), self.field.is_empty()) {
            (true, _) => self.message.clone(),
            (false, true) => format!("{}: {}", self.file, self.message),
            (false, false) => format!("{}: {}: {}", self.file, self.field, self.message),
        }
    }
}

/// Data stream types the package-spec allows.
const STREAM_TYPES: &[&str] = &["logs", "metrics", "traces", "synthetics", "profiling"];

/// The template a stream uses when its manifest names none.
pub const DEFAULT_STREAM_TEMPLATE: &str = "stream.yml.hbs";

#[derive(Debug, Clone)]
pub struct DataStream {
    /// The folder under `data_stream/`.
    pub folder: String,
    pub manifest: DataStreamManifest,
    /// `manifest.dataset`, else `<package>.<folder>`.
    pub dataset: String,
}

impl DataStream {
    /// The stream of this data stream fed by `input_type`.
    pub fn stream(&self, input_type: &str) -> Option<&StreamManifest> {
        self.manifest.streams.iter().find(|s| s.input == input_type)
    }

    pub fn manifest_path(&self) -> String {
        format!("data_stream/{}/manifest.yml", self.folder)
    }
}

/// A checked package.
#[derive(Debug, Clone)]
pub struct Package {
    pub manifest: Manifest,
    pub data_streams: Vec<DataStream>,
    files: Files,
}

/// Whether a path inside a package is one Flotilla keeps.
pub fn is_kept_file(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(
        parts.as_slice(),
        ["manifest.yml"]
            | ["changelog.yml"]
            | ["agent", "input", _]
            | ["data_stream", _, "manifest.yml"]
            | ["data_stream", _, "agent", "stream", _]
    )
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    }
}

/// Parse YAML as Kibana's js-yaml would (YAML 1.2 core schema), into JSON.
pub fn parse_yaml_value(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str_with_options::<Value>(text, yaml_options()).map_err(|e| {
        e.to_string()
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .to_owned()
    })
}

fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, PackageError> {
    let value = parse_yaml_value(text)
        .map_err(|e| PackageError::new(file, "", format!("not valid YAML: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        PackageError::new(file, field, e.inner().to_string())
    })
}

impl Package {
    /// Read and check a package from its files.
    pub fn from_files(mut files: Files) -> Result<Package, PackageError> {
        files.retain(|path, _| is_kept_file(path));
        let text = files
            .get("manifest.yml")
            .ok_or_else(|| PackageError::new("manifest.yml", "", "is missing"))?;
        let manifest: Manifest = parse("manifest.yml", text)?;
        check_manifest(&manifest)?;

        let mut folders: BTreeSet<&str> = BTreeSet::new();
        for path in files.keys() {
            if let Some(rest) = path.strip_prefix("data_stream/") {
                if let Some((folder, _)) = rest.split_once('/') {
                    folders.insert(folder);
                }
            }
        }
        let mut data_streams = Vec::new();
        for folder in folders {
            let path = format!("data_stream/{folder}/manifest.yml");
            let text = files
                .get(&path)
                .ok_or_else(|| PackageError::new(&path, "", "is missing"))?;
            let ds: DataStreamManifest = parse(&path, text)?;
            let dataset = ds
                .dataset
                .clone()
                .unwrap_or_else(|| format!("{}.{folder}", manifest.name));
            data_streams.push(DataStream {
                folder: folder.to_owned(),
                manifest: ds,
                dataset,
            });
        }
        let package = Package {
            manifest,
            data_streams,
            files,
        };
        package.check_references()?;
        Ok(package)
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    pub fn is_input_package(&self) -> bool {
        self.manifest.package_type == PackageType::Input
    }

    pub fn files(&self) -> &Files {
        &self.files
    }

    pub fn into_files(self) -> Files {
        self.files
    }

    pub fn policy_template(&self, name: &str) -> Option<&PolicyTemplate> {
        self.manifest
            .policy_templates
            .iter()
            .find(|t| t.name == name)
    }

    pub fn data_stream(&self, folder: &str) -> Option<&DataStream> {
        self.data_streams.iter().find(|d| d.folder == folder)
    }

    /// The data streams a policy template covers.
    pub fn template_data_streams<'a>(
        &'a self,
        template: &'a PolicyTemplate,
    ) -> impl Iterator<Item = &'a DataStream> + 'a {
        self.data_streams
            .iter()
            .filter(move |ds| match &template.data_streams {
                Some(names) => names.contains(&ds.folder),
                None => true,
            })
    }

    /// The text of a stream's templates, in order (`template_paths`, else
    /// `template_path`, else `stream.yml.hbs`).
    pub fn stream_templates(
        &self,
        ds: &DataStream,
        stream: &StreamManifest,
    ) -> Vec<(String, &str)> {
        stream_template_names(stream)
            .into_iter()
            .map(|name| {
                let path = format!("data_stream/{}/agent/stream/{name}", ds.folder);
                let text = self.files.get(&path).map(String::as_str).unwrap_or("");
                (path, text)
            })
            .collect()
    }

    /// An input-level template (`agent/input/<name>`).
    pub fn input_template(&self, name: &str) -> Option<&str> {
        self.files
            .get(&format!("agent/input/{name}"))
            .map(String::as_str)
    }

    fn check_references(&self) -> Result<(), PackageError> {
        let m = &self.manifest;
        let mut names = BTreeSet::new();
        for (i, t) in m.policy_templates.iter().enumerate() {
            let field = format!("policy_templates[{i}]");
            if !names.insert(t.name.as_str()) {
                return Err(PackageError::new(
                    "manifest.yml",
                    format!("{field}.name"),
                    format!("policy template '{}' is declared twice", t.name),
                ));
            }
            check_vars("manifest.yml", &format!("{field}.vars"), &t.vars)?;
            if self.is_input_package() {
                let input = t.input.as_deref().ok_or_else(|| {
                    PackageError::new(
                        "manifest.yml",
                        format!("{field}.input"),
                        "is required in an input package",
                    )
                })?;
                if input.is_empty() {
                    return Err(PackageError::new(
                        "manifest.yml",
                        format!("{field}.input"),
                        "must not be empty",
                    ));
                }
                match t.stream_type.as_deref() {
                    Some(ty) if STREAM_TYPES.contains(&ty) => {}
                    Some(ty) => {
                        return Err(PackageError::new(
                            "manifest.yml",
                            format!("{field}.type"),
                            format!(
                                "'{ty}' is not a data stream type (one of {})",
                                STREAM_TYPES.join(", ")
                            ),
                        ))
                    }
                    None => {
                        return Err(PackageError::new(
                            "manifest.yml",
                            format!("{field}.type"),
                            "is required in an input package",
                        ))
                    }
                }
                let template = t.template_path.as_deref().ok_or_else(|| {
                    PackageError::new(
                        "manifest.yml",
                        format!("{field}.template_path"),
                        "is required in an input package",
                    )
                })?;
                self.check_template(
                    &format!("agent/input/{template}"),
                    "manifest.yml",
                    &format!("{field}.template_path"),
                )?;
            } else {
                if let Some(ds) = &t.data_streams {
                    for (j, name) in ds.iter().enumerate() {
                        if self.data_stream(name).is_none() {
                            return Err(PackageError::new(
                                "manifest.yml",
                                format!("{field}.data_streams[{j}]"),
                                format!("there is no data stream '{name}' (no data_stream/{name}/manifest.yml)"),
                            ));
                        }
                    }
                }
                let mut inputs = BTreeSet::new();
                for (j, input) in t.inputs.iter().enumerate() {
                    let f = format!("{field}.inputs[{j}]");
                    if input.input_type.is_empty() {
                        return Err(PackageError::new(
                            "manifest.yml",
                            format!("{f}.type"),
                            "must not be empty",
                        ));
                    }
                    if !inputs.insert(input.input_type.as_str()) {
                        return Err(PackageError::new(
                            "manifest.yml",
                            format!("{f}.type"),
                            format!(
                                "input '{}' is declared twice in policy template '{}'",
                                input.input_type, t.name
                            ),
                        ));
                    }
                    check_vars("manifest.yml", &format!("{f}.vars"), &input.vars)?;
                    if let Some(path) = &input.template_path {
                        self.check_template(
                            &format!("agent/input/{path}"),
                            "manifest.yml",
                            &format!("{f}.template_path"),
                        )?;
                    }
                }
            }
        }
        check_vars("manifest.yml", "vars", &m.vars)?;
        for ds in &self.data_streams {
            let file = ds.manifest_path();
            if !STREAM_TYPES.contains(&ds.manifest.stream_type.as_str()) {
                return Err(PackageError::new(
                    &file,
                    "type",
                    format!(
                        "'{}' is not a data stream type (one of {})",
                        ds.manifest.stream_type,
                        STREAM_TYPES.join(", ")
                    ),
                ));
            }
            check_dataset(&file, &ds.dataset)?;
            for (k, stream) in ds.manifest.streams.iter().enumerate() {
                let f = format!("streams[{k}]");
                if stream.input.is_empty() {
                    return Err(PackageError::new(
                        &file,
                        format!("{f}.input"),
                        "must not be empty",
                    ));
                }
                check_vars(&file, &format!("{f}.vars"), &stream.vars)?;
                let field = if stream.template_paths.is_some() {
                    "template_paths"
                } else {
                    "template_path"
                };
                for name in stream_template_names(stream) {
                    self.check_template(
                        &format!("data_stream/{}/agent/stream/{name}", ds.folder),
                        &file,
                        &format!("{f}.{field}"),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn check_template(&self, path: &str, file: &str, field: &str) -> Result<(), PackageError> {
        let text = self.files.get(path).ok_or_else(|| {
            PackageError::new(file, field, format!("the template {path} does not exist"))
        })?;
        crate::render::check_template(text).map_err(|e| PackageError::new(path, "", e))
    }

    /// What `GET /api/fleet/epm/packages/{name}/{version}` shows.
    pub fn info(&self) -> PackageInfo {
        PackageInfo {
            name: self.manifest.name.clone(),
            title: self.manifest.title.clone(),
            version: self.manifest.version.clone(),
            description: self.manifest.description.clone(),
            package_type: self.manifest.package_type.clone(),
            format_version: self.manifest.format_version.clone(),
            owner: self.manifest.owner.as_ref().and_then(|o| o.github.clone()),
            kibana_version: self
                .manifest
                .conditions
                .as_ref()
                .and_then(|c| c.kibana_version().map(str::to_owned)),
            vars: self.manifest.vars.clone(),
            policy_templates: self.manifest.policy_templates.clone(),
            data_streams: self
                .data_streams
                .iter()
                .map(|ds| DataStreamInfo {
                    folder: ds.folder.clone(),
                    stream_type: ds.manifest.stream_type.clone(),
                    dataset: ds.dataset.clone(),
                    title: ds.manifest.title.clone(),
                    streams: ds.manifest.streams.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageInfo {
    pub name: String,
    pub title: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(rename = "type")]
    pub package_type: PackageType,
    pub format_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kibana_version: Option<String>,
    pub vars: Vec<Var>,
    pub policy_templates: Vec<PolicyTemplate>,
    pub data_streams: Vec<DataStreamInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataStreamInfo {
    pub folder: String,
    #[serde(rename = "type")]
    pub stream_type: String,
    pub dataset: String,
    pub title: String,
    pub streams: Vec<StreamManifest>,
}

fn stream_template_names(stream: &StreamManifest) -> Vec<&str> {
    match (&stream.template_paths, &stream.template_path) {
        (Some(paths), _) if !paths.is_empty() => paths.iter().map(String::as_str).collect(),
        (_, Some(path)) => vec![path.as_str()],
        _ => vec![DEFAULT_STREAM_TEMPLATE],
    }
}

fn check_manifest(m: &Manifest) -> Result<(), PackageError> {
    let f = "manifest.yml";
    let name_ok = !m.name.is_empty()
        && m.name.len() <= 100
        && m.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !name_ok {
        return Err(PackageError::new(
            f,
            "name",
            "must be 1-100 lowercase letters, digits or '_'",
        ));
    }
    semver::Version::parse(&m.version).map_err(|e| {
        PackageError::new(
            f,
            "version",
            format!("'{}' is not a semantic version: {e}", m.version),
        )
    })?;
    semver::Version::parse(&m.format_version).map_err(|e| {
        PackageError::new(
            f,
            "format_version",
            format!("'{}' is not a semantic version: {e}", m.format_version),
        )
    })?;
    if m.title.trim().is_empty() {
        return Err(PackageError::new(f, "title", "must not be empty"));
    }
    if let Some(range) = m.conditions.as_ref().and_then(|c| c.kibana_version()) {
        if range.trim().is_empty() {
            return Err(PackageError::new(
                f,
                "conditions.kibana.version",
                "must not be empty",
            ));
        }
    }
    Ok(())
}

/// A dataset a caller chose (input packages' `data_stream.dataset`).
pub fn check_dataset_value(
    field: &str,
    dataset: &str,
) -> Result<(), flotilla_domain::ValidationError> {
    check_dataset("", dataset).map_err(|e| flotilla_domain::ValidationError::new(field, e.message))
}

fn check_dataset(file: &str, dataset: &str) -> Result<(), PackageError> {
    let ok = dataset.len() <= 100 && flotilla_domain::permissions::is_data_stream_part(dataset);
    if ok {
        Ok(())
    } else {
        Err(PackageError::new(
            file,
            "dataset",
            format!("'{dataset}' is not a valid dataset (lowercase, no '-', no spaces or \\/*?\"<>|,#:)"),
        ))
    }
}

fn check_vars(file: &str, field: &str, vars: &[Var]) -> Result<(), PackageError> {
    let mut seen = BTreeSet::new();
    for (i, v) in vars.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if v.name.is_empty() {
            return Err(PackageError::new(
                file,
                format!("{f}.name"),
                "must not be empty",
            ));
        }
        if v.name
            .split('.')
            .any(|p| p.is_empty() || matches!(p, "__proto__" | "constructor" | "prototype"))
        {
            return Err(PackageError::new(
                file,
                format!("{f}.name"),
                format!("'{}' is not a valid variable name", v.name),
            ));
        }
        if !seen.insert(v.name.as_str()) {
            return Err(PackageError::new(
                file,
                format!("{f}.name"),
                format!("variable '{}' is declared twice", v.name),
            ));
        }
        if v.var_type == VarType::Select && v.options.is_empty() {
            return Err(PackageError::new(
                file,
                format!("{f}.options"),
                "a select variable needs options",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(manifest: &str, extra: &[(&str, &str)]) -> Files {
        let mut f = Files::new();
        f.insert("manifest.yml".into(), manifest.into());
        for (p, t) in extra {
            f.insert((*p).into(), (*t).into());
        }
        f
    }

    const HEAD: &str = "format_version: 3.0.0\nname: demo\ntitle: Demo\nversion: 1.0.0\n";

    #[test]
    fn both_condition_forms_and_default_datasets_are_read() {
        let flat = format!("{HEAD}conditions:\n  kibana.version: ^8.8.0\npolicy_templates: []\n");
        let p = Package::from_files(files(&flat, &[])).unwrap();
        assert_eq!(
            p.manifest.conditions.unwrap().kibana_version(),
            Some("^8.8.0")
        );
        let nested = format!("{HEAD}conditions:\n  kibana:\n    version: ^9.0.0\npolicy_templates:\n  - name: t\n    title: T\n    inputs: [{{type: x, title: X}}]\n");
        let ds = "type: logs\ntitle: D\nstreams:\n  - input: x\n    title: X\n    template_paths: [a.yml.hbs, b.yml.hbs]\n";
        let p = Package::from_files(files(
            &nested,
            &[
                ("data_stream/d/manifest.yml", ds),
                ("data_stream/d/agent/stream/a.yml.hbs", "a: [1]\n"),
                ("data_stream/d/agent/stream/b.yml.hbs", "a: [2]\nb: 1\n"),
                ("docs/README.md", "dropped"),
            ],
        ))
        .unwrap();
        assert_eq!(p.data_streams[0].dataset, "demo.d");
        assert!(!p.files().contains_key("docs/README.md"));
        // Several templates merge: lists append, objects merge.
        let r = p
            .resolve_policy(
                crate::policy::PolicyRequest::default(),
                None,
                &[],
                &mut || unreachable!(),
            )
            .unwrap();
        assert_eq!(
            r.inputs[0].streams[0].compiled_stream,
            Some(serde_json::json!({"a": [1, 2], "b": 1}))
        );
    }

    #[test]
    fn bad_packages_name_the_file_and_field() {
        let t = "policy_templates:\n  - name: t\n    title: T\n    inputs: [{type: x, title: X}]\n";
        for (manifest, extra, want) in [
            ("name: demo\n".to_owned(), vec![], "manifest.yml: missing field `format_version`"),
            (HEAD.replace("1.0.0\n", "one\n"), vec![], "manifest.yml: version: 'one' is not a semantic version"),
            (HEAD.replace("name: demo", "name: Demo-Pkg"), vec![], "manifest.yml: name:"),
            (format!("{HEAD}type: plugin\n"), vec![], "manifest.yml: type: unknown variant `plugin`"),
            (format!("{HEAD}vars:\n  - name: v\n    type: colour\n"), vec![], "manifest.yml: vars[0].type: unknown variant `colour`"),
            (format!("{HEAD}vars:\n  - name: v\n    type: select\n"), vec![], "manifest.yml: vars[0].options: a select variable needs options"),
            (format!("{HEAD}vars:\n  - {{name: v, type: text}}\n  - {{name: v, type: text}}\n"), vec![], "manifest.yml: vars[1].name: variable 'v' is declared twice"),
            (format!("{HEAD}policy_templates:\n  - name: t\n    title: T\n    data_streams: [nope]\n"), vec![], "manifest.yml: policy_templates[0].data_streams[0]: there is no data stream 'nope'"),
            (format!("{HEAD}{t}"), vec![("data_stream/d/manifest.yml", "type: blobs\ntitle: D\n")], "data_stream/d/manifest.yml: type: 'blobs' is not a data stream type"),
            (format!("{HEAD}{t}"), vec![("data_stream/d/manifest.yml", "type: logs\ntitle: D\nstreams:\n  - input: x\n    title: X\n")], "data_stream/d/manifest.yml: streams[0].template_path: the template data_stream/d/agent/stream/stream.yml.hbs does not exist"),
            (format!("{HEAD}{t}"), vec![("data_stream/d/agent/stream/stream.yml.hbs", "")], "data_stream/d/manifest.yml: is missing"),
            (format!("{HEAD}{t}"), vec![("data_stream/d/manifest.yml", "type: logs\n  title: [\n")], "data_stream/d/manifest.yml: not valid YAML"),
        ] {
            let extra: Vec<(&str, &str)> = extra;
            let e = Package::from_files(files(&manifest, &extra)).unwrap_err().to_string();
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
    }
}
