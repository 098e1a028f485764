//! Printing results: a table of chosen columns, or JSON.

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::Value;

/// Columns: a header and the dotted path of the field it shows.
pub(crate) type Columns = &'static [(&'static str, &'static str)];

/// A result and the columns to show it with (none: always JSON).
pub(crate) struct View {
    pub(crate) value: Value,
    pub(crate) columns: Columns,
}

pub(crate) fn view(value: Value, columns: Columns) -> View {
    View { value, columns }
}

pub(crate) const DELETED_COLS: Columns = &[("DELETED", "id")];

/// The rows of a response: `items` of a list, `item` of one, or the body.
fn rows(value: &Value) -> Vec<&Value> {
    if let Some(items) = value.get("items").and_then(Value::as_array) {
        items.iter().collect()
    } else if let Some(item) = value.get("item") {
        vec![item]
    } else {
        vec![value]
    }
}

fn cell(row: &Value, path: &str) -> String {
    let mut cur = row;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Print to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|_| out.flush());
}

pub(crate) fn render(view: &View, json: bool) {
    if json || view.columns.is_empty() {
        let out = match view.value.get("item") {
            Some(item) if view.value.get("items").is_none() => item,
            _ => &view.value,
        };
        emit(&serde_json::to_string_pretty(out).unwrap_or_default());
        return;
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(view.columns.iter().map(|(h, _)| *h));
    for row in rows(&view.value) {
        table.add_row(view.columns.iter().map(|(_, path)| cell(row, path)));
    }
    emit(&table.to_string());
    if let (Some(total), Some(items)) = (
        view.value.get("total"),
        view.value.get("items").and_then(Value::as_array),
    ) {
        let page = view.value.get("page").and_then(Value::as_u64).unwrap_or(1);
        eprintln!("{} of {} (page {page})", items.len(), total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_follow_paths_and_join_lists() {
        let row = json!({"package": {"name": "nginx"}, "hosts": ["a", "b"], "n": null});
        assert_eq!(cell(&row, "package.name"), "nginx");
        assert_eq!(cell(&row, "hosts"), "a, b");
        assert_eq!(cell(&row, "n"), "");
        assert_eq!(cell(&row, "missing.x"), "");
    }
}
