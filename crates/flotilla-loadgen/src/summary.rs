//! The one line a scenario ends with: figures in order, printed as
//! `name=value unit` for people or as one JSON object (`--json`).

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    Count(u64),
    /// Per second.
    Rate(f64),
    Millis(f64),
    Seconds(f64),
    Bytes(u64),
    Percent(f64),
    Ratio(f64),
    /// Per-second rates, in order (a rate per tenth of a run).
    Rates(Vec<f64>),
    Text(String),
    /// Raw samples a child process hands its parent (JSON only, 4 decimals).
    Samples(Vec<f64>),
    /// Not measured (shown as `-`, `null` in JSON).
    Missing,
}

impl Figure {
    pub fn opt_millis(v: Option<f64>) -> Figure {
        v.map_or(Figure::Missing, Figure::Millis)
    }
    pub fn opt_seconds(v: Option<f64>) -> Figure {
        v.map_or(Figure::Missing, Figure::Seconds)
    }

    fn json(&self) -> Value {
        match self {
            Figure::Count(n) | Figure::Bytes(n) => Value::from(*n),
            Figure::Rate(x)
            | Figure::Millis(x)
            | Figure::Seconds(x)
            | Figure::Percent(x)
            | Figure::Ratio(x) => round(*x, 3),
            Figure::Rates(xs) => Value::Array(xs.iter().map(|x| round(*x, 1)).collect()),
            Figure::Text(s) => Value::from(s.as_str()),
            Figure::Samples(xs) => Value::Array(xs.iter().map(|x| round(*x, 4)).collect()),
            Figure::Missing => Value::Null,
        }
    }

    fn human(&self) -> String {
        match self {
            Figure::Count(n) => n.to_string(),
            Figure::Rate(x) => format!("{}/s", sig(*x)),
            Figure::Millis(x) => format!("{}ms", sig(*x)),
            Figure::Seconds(x) => format!("{}s", sig(*x)),
            Figure::Bytes(n) => human_bytes(*n),
            Figure::Percent(x) => format!("{}%", sig(*x)),
            Figure::Ratio(x) => format!("{}x", sig(*x)),
            Figure::Rates(xs) => format!(
                "[{}]",
                xs.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Figure::Text(s) => s.clone(),
            Figure::Samples(xs) => format!("{} samples", xs.len()),
            Figure::Missing => "-".into(),
        }
    }
}

/// A number as JSON, rounded to `places` decimals (a non-finite one is
/// `null`).
fn round(x: f64, places: i32) -> Value {
    let f = 10f64.powi(places);
    serde_json::Number::from_f64((x * f).round() / f).map_or(Value::Null, Value::Number)
}

/// Three significant figures or more, never scientific notation.
fn sig(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

pub fn human_bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let x = n as f64;
    if x >= KIB * KIB {
        format!("{}MiB", sig(x / (KIB * KIB)))
    } else if x >= KIB {
        format!("{}KiB", sig(x / KIB))
    } else {
        format!("{n}B")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub scenario: String,
    pub figures: Vec<(String, Figure)>,
}

impl Summary {
    pub fn new(scenario: &str) -> Self {
        Summary {
            scenario: scenario.into(),
            figures: Vec::new(),
        }
    }

    pub fn push(&mut self, name: &str, figure: Figure) -> &mut Self {
        self.figures.push((name.into(), figure));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|(n, _)| n == name).map(|(_, f)| f)
    }

    /// `scenario: name=value …` on one line.
    pub fn human_line(&self) -> String {
        let mut line = format!("{}:", self.scenario);
        for (name, fig) in &self.figures {
            line.push(' ');
            line.push_str(name);
            line.push('=');
            line.push_str(&fig.human());
        }
        line
    }

    /// One JSON object: `scenario` and each figure by name.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert("scenario".into(), Value::from(self.scenario.as_str()));
        for (name, fig) in &self.figures {
            m.insert(name.clone(), fig.json());
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        let mut s = Summary::new("enroll");
        s.push("agents", Figure::Count(2000))
            .push("enroll_per_s", Figure::Rate(512.345))
            .push("p50_ms", Figure::Millis(12.04))
            .push("p99_ms", Figure::Millis(0.5))
            .push("per_tenth_per_s", Figure::Rates(vec![500.4, 498.6]))
            .push("rss", Figure::Bytes(3 * 1024 * 1024 / 2))
            .push("ratio", Figure::Ratio(2.5))
            .push("t100_s", Figure::Missing);
        s
    }

    #[test]
    fn one_human_line() {
        assert_eq!(
            sample().human_line(),
            "enroll: agents=2000 enroll_per_s=512/s p50_ms=12.0ms p99_ms=0.500ms per_tenth_per_s=[500,499] rss=1.50MiB ratio=2.50x t100_s=-"
        );
    }

    #[test]
    fn one_json_object() {
        let j = sample().json();
        assert_eq!(j["scenario"], "enroll");
        assert_eq!(j["agents"], 2000);
        assert_eq!(j["enroll_per_s"], 512.345);
        assert_eq!(j["per_tenth_per_s"], serde_json::json!([500.4, 498.6]));
        assert_eq!(j["rss"], 1572864);
        assert!(j["t100_s"].is_null());
        assert!(!j.to_string().contains('\n'));
        assert_eq!(sample().get("agents"), Some(&Figure::Count(2000)));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(10 * 1024), "10.0KiB");
        assert_eq!(human_bytes(300 * 1024 * 1024), "300MiB");
    }
}
