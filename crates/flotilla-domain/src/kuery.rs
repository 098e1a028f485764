//! Agent search: the subset of Kibana's KQL that Fleet's `kuery` parameter
//! uses over agents, parsed into a typed tree the store compiles to a
//! parameterised WHERE clause.
//!
//! ```text
//! query   := or
//! or      := and ("or" and)*
//! and     := not ("and" not)*
//! not     := "not" not | primary
//! primary := "(" query ")" | field ":" values | field ("<" | "<=" | ">" | ">=") value
//! values  := value | "(" value ("or" value)* ")"
//! value   := word | "quoted \"text\"" | prefix* | *
//! ```
//!
//! Keywords are case-insensitive; field names may carry Kibana's
//! `fleet-agents.` prefix. `field:*` asks that the field is set. Times are
//! RFC 3339 or `now`, `now-5m`, `now+1h` (units s, m, h, d, w), resolved
//! against the instant given to [`parse`]. Hand-written (a recursive-descent
//! parser of ~300 lines) rather than a parser generator: the language is
//! small, and the errors name the byte position and the field.

use chrono::{DateTime, Duration, Utc};

use crate::agent::AgentStatus;

/// The longest query accepted, in bytes.
pub const MAX_QUERY_LEN: usize = 4096;
/// The deepest nesting of parentheses and `not`s accepted.
pub const MAX_DEPTH: usize = 32;
/// The most field terms in one query.
pub const MAX_TERMS: usize = 256;

/// The agent fields a query can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Id,
    Status,
    PolicyId,
    PolicyRevision,
    /// The agent's version.
    Version,
    Tags,
    /// `local_metadata.host.hostname`.
    Hostname,
    /// The enrollment key that enrolled the agent.
    EnrollmentKeyId,
    LastCheckin,
    EnrolledAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Status,
    Int,
    Time,
}

impl Field {
    /// The names (after any `fleet-agents.` prefix) each field answers to.
    const NAMES: &'static [(&'static str, Field)] = &[
        ("id", Field::Id),
        ("agent.id", Field::Id),
        ("status", Field::Status),
        ("policy_id", Field::PolicyId),
        ("policy_revision", Field::PolicyRevision),
        ("policy_revision_idx", Field::PolicyRevision),
        ("version", Field::Version),
        ("agent.version", Field::Version),
        ("local_metadata.elastic.agent.version", Field::Version),
        ("tags", Field::Tags),
        ("hostname", Field::Hostname),
        ("local_metadata.host.hostname", Field::Hostname),
        ("enrollment_api_key_id", Field::EnrollmentKeyId),
        ("enrollment_token_id", Field::EnrollmentKeyId),
        ("last_checkin", Field::LastCheckin),
        ("enrolled_at", Field::EnrolledAt),
    ];

    fn from_name(name: &str) -> Option<Field> {
        let bare = name.strip_prefix("fleet-agents.").unwrap_or(name);
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == bare)
            .map(|(_, f)| *f)
    }

    /// The field's canonical name.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or_default()
    }

    fn kind(self) -> Kind {
        match self {
            Field::Status => Kind::Status,
            Field::PolicyRevision => Kind::Int,
            Field::LastCheckin | Field::EnrolledAt => Kind::Time,
            _ => Kind::Text,
        }
    }
}

/// A comparison of an ordered field (times, the policy revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A value a term compares with, typed by its field.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Status(AgentStatus),
    Int(i64),
    Time(DateTime<Utc>),
}

/// What one term asks of its field.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// The field is set (`field:*`).
    Exists,
    /// Text starting with this (`field:web-*`), case-sensitive.
    Prefix(String),
    Cmp(CmpOp, Value),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Term(Field, Cond),
}

impl Expr {
    /// Whether any term names `field` (the agent list shows unenrolled
    /// agents when the query asks about status, as its `status` filter does).
    pub fn mentions(&self, field: Field) -> bool {
        match self {
            Expr::And(es) | Expr::Or(es) => es.iter().any(|e| e.mentions(field)),
            Expr::Not(e) => e.mentions(field),
            Expr::Term(f, _) => *f == field,
        }
    }
}

/// A query that does not parse, naming where (a byte offset into the
/// query) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kuery: at position {position}: {message}")]
pub struct KueryError {
    pub position: usize,
    pub message: String,
}

fn err<T>(position: usize, message: impl Into<String>) -> Result<T, KueryError> {
    Err(KueryError {
        position,
        message: message.into(),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Colon,
    Cmp(CmpOp),
    /// An unquoted word (field names, values, keywords).
    Word(String),
    Quoted(String),
}

fn lex(input: &str) -> Result<Vec<(usize, Tok)>, KueryError> {
    let mut out = Vec::new();
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((i, Tok::LParen));
                i += 1;
            }
            b')' => {
                out.push((i, Tok::RParen));
                i += 1;
            }
            b':' => {
                out.push((i, Tok::Colon));
                i += 1;
            }
            b'<' | b'>' => {
                let eq = bytes.get(i + 1) == Some(&b'=');
                let op = match (c, eq) {
                    (b'<', false) => CmpOp::Lt,
                    (b'<', true) => CmpOp::Le,
                    (_, false) => CmpOp::Gt,
                    (_, true) => CmpOp::Ge,
                };
                out.push((i, Tok::Cmp(op)));
                i += if eq { 2 } else { 1 };
            }
            b'"' => {
                let start = i;
                i += 1;
                let mut s = String::new();
                loop {
                    let Some(ch) = input[i..].chars().next() else {
                        return err(start, "unterminated quoted value");
                    };
                    i += ch.len_utf8();
                    match ch {
                        '"' => break,
                        '\\' => {
                            let Some(next) = input[i..].chars().next() else {
                                return err(start, "unterminated quoted value");
                            };
                            i += next.len_utf8();
                            s.push(next);
                        }
                        c => s.push(c),
                    }
                }
                out.push((start, Tok::Quoted(s)));
            }
            _ => {
                let start = i;
                while i < bytes.len() {
                    let ch = input[i..].chars().next().unwrap_or(' ');
                    if ch.is_whitespace() || matches!(ch, '(' | ')' | ':' | '<' | '>' | '"') {
                        break;
                    }
                    if ch.is_control() {
                        return err(i, "control characters are not allowed");
                    }
                    i += ch.len_utf8();
                }
                out.push((start, Tok::Word(input[start..i].to_owned())));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    end: usize,
    now: DateTime<Utc>,
    terms: usize,
}

fn keyword(t: &Tok, kw: &str) -> bool {
    matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(_, t)| t)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.at).map(|(p, _)| *p).unwrap_or(self.end)
    }

    fn next(&mut self) -> Option<(usize, Tok)> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn or(&mut self, depth: usize) -> Result<Expr, KueryError> {
        let mut parts = vec![self.and(depth)?];
        while self.peek().is_some_and(|t| keyword(t, "or")) {
            self.at += 1;
            parts.push(self.and(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, KueryError> {
        let mut parts = vec![self.not(depth)?];
        while self.peek().is_some_and(|t| keyword(t, "and")) {
            self.at += 1;
            parts.push(self.not(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }

    fn not(&mut self, depth: usize) -> Result<Expr, KueryError> {
        if depth > MAX_DEPTH {
            return err(self.pos(), format!("nested deeper than {MAX_DEPTH}"));
        }
        if self.peek().is_some_and(|t| keyword(t, "not")) {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.not(depth + 1)?)));
        }
        self.primary(depth)
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, KueryError> {
        let pos = self.pos();
        match self.next() {
            Some((_, Tok::LParen)) => {
                let e = self.or(depth + 1)?;
                match self.next() {
                    Some((_, Tok::RParen)) => Ok(e),
                    _ => err(pos, "unclosed parenthesis"),
                }
            }
            Some((p, Tok::Word(name))) => {
                if ["and", "or", "not"]
                    .iter()
                    .any(|k| name.eq_ignore_ascii_case(k))
                {
                    return err(p, format!("expected a field name, found '{name}'"));
                }
                let field = Field::from_name(&name)
                    .ok_or_else(|| KueryError {
                        position: p,
                        message: format!(
                            "unknown field '{name}' (known: id, status, policy_id, policy_revision, \
                             version, tags, hostname, enrollment_api_key_id, last_checkin, enrolled_at)"
                        ),
                    })?;
                self.terms += 1;
                if self.terms > MAX_TERMS {
                    return err(p, format!("more than {MAX_TERMS} terms"));
                }
                let op_pos = self.pos();
                match self.next() {
                    Some((_, Tok::Colon)) => self.values(field),
                    Some((_, Tok::Cmp(op))) => {
                        if !matches!(field.kind(), Kind::Time | Kind::Int) {
                            return err(
                                op_pos,
                                format!(
                                    "field '{}' cannot be compared with {}",
                                    field.name(),
                                    op.as_sql()
                                ),
                            );
                        }
                        let vpos = self.pos();
                        let (raw, quoted) = self.raw_value()?;
                        if !quoted && raw.ends_with('*') {
                            return err(vpos, "a range takes no wildcard");
                        }
                        Ok(Expr::Term(
                            field,
                            Cond::Cmp(op, self.typed(field, &raw, vpos)?),
                        ))
                    }
                    _ => err(
                        op_pos,
                        format!("expected ':' or a comparison after '{name}'"),
                    ),
                }
            }
            Some((p, Tok::Quoted(_))) => err(
                p,
                "expected a field name, found a quoted value (free text search is not supported)",
            ),
            Some((p, t)) => err(p, format!("unexpected {}", describe(&t))),
            None => err(pos, "unexpected end of query"),
        }
    }

    /// `value` or `(value or value …)` after `field:`.
    fn values(&mut self, field: Field) -> Result<Expr, KueryError> {
        if self.peek() == Some(&Tok::LParen) {
            let open = self.pos();
            self.at += 1;
            let mut alts = vec![self.value(field)?];
            loop {
                match self.peek() {
                    Some(t) if keyword(t, "or") => {
                        self.at += 1;
                        alts.push(self.value(field)?);
                    }
                    Some(Tok::RParen) => {
                        self.at += 1;
                        break;
                    }
                    _ => {
                        return err(
                            open,
                            "unclosed parenthesis in a value list (only 'or' is allowed inside)",
                        )
                    }
                }
            }
            return Ok(if alts.len() == 1 {
                alts.remove(0)
            } else {
                Expr::Or(alts)
            });
        }
        self.value(field)
    }

    fn raw_value(&mut self) -> Result<(String, bool), KueryError> {
        let pos = self.pos();
        match self.next() {
            Some((_, Tok::Word(w))) => Ok((w, false)),
            Some((_, Tok::Quoted(q))) => Ok((q, true)),
            Some((p, t)) => err(p, format!("expected a value, found {}", describe(&t))),
            None => err(pos, "expected a value, found the end of the query"),
        }
    }

    fn value(&mut self, field: Field) -> Result<Expr, KueryError> {
        let pos = self.pos();
        let (raw, quoted) = self.raw_value()?;
        if !quoted {
            if raw == "*" {
                return Ok(Expr::Term(field, Cond::Exists));
            }
            if let Some(prefix) = raw.strip_suffix('*') {
                if prefix.contains('*') {
                    return err(pos, "only a trailing '*' is supported");
                }
                if field.kind() != Kind::Text {
                    return err(pos, format!("field '{}' takes no wildcard", field.name()));
                }
                return Ok(Expr::Term(field, Cond::Prefix(prefix.to_owned())));
            }
            if raw.contains('*') {
                return err(pos, "only a trailing '*' is supported");
            }
        }
        Ok(Expr::Term(
            field,
            Cond::Cmp(CmpOp::Eq, self.typed(field, &raw, pos)?),
        ))
    }

    fn typed(&self, field: Field, raw: &str, pos: usize) -> Result<Value, KueryError> {
        match field.kind() {
            Kind::Text => Ok(Value::Text(raw.to_owned())),
            Kind::Status => AgentStatus::parse(&raw.to_ascii_lowercase())
                .map(Value::Status)
                .ok_or_else(|| KueryError {
                    position: pos,
                    message: format!(
                        "unknown status '{raw}' (known: {})",
                        AgentStatus::ALL.map(|s| s.as_str()).join(", ")
                    ),
                }),
            Kind::Int => raw.parse().map(Value::Int).map_err(|_| KueryError {
                position: pos,
                message: format!("field '{}' takes an integer, not '{raw}'", field.name()),
            }),
            Kind::Time => parse_time(raw, self.now)
                .map(Value::Time)
                .ok_or_else(|| KueryError {
                    position: pos,
                    message: format!(
                        "field '{}' takes an RFC 3339 time or now[+-]N(s|m|h|d|w), not '{raw}'",
                        field.name()
                    ),
                }),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Colon => "':'".into(),
        Tok::Cmp(op) => format!("'{}'", op.as_sql()),
        Tok::Word(w) => format!("'{w}'"),
        Tok::Quoted(q) => format!("\"{q}\""),
    }
}

/// RFC 3339, or `now` with an optional `+N`/`-N` and a unit.
fn parse_time(raw: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    let rest = raw.strip_prefix("now")?;
    if rest.is_empty() {
        return Some(now);
    }
    let (sign, num) = match rest.as_bytes().first()? {
        b'-' => (-1, &rest[1..]),
        b'+' => (1, &rest[1..]),
        _ => return None,
    };
    let unit = num.chars().last()?;
    let n: i64 = num[..num.len() - unit.len_utf8()].parse().ok()?;
    if !(0..=100_000_000).contains(&n) {
        return None;
    }
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return None,
    };
    now.checked_add_signed(Duration::seconds(sign * n * secs))
}

/// Parse a query; relative times are resolved against `now`. An empty
/// (or blank) query is `None`: no filter.
pub fn parse(input: &str, now: DateTime<Utc>) -> Result<Option<Expr>, KueryError> {
    if input.len() > MAX_QUERY_LEN {
        return err(MAX_QUERY_LEN, format!("longer than {MAX_QUERY_LEN} bytes"));
    }
    let toks = lex(input)?;
    if toks.is_empty() {
        return Ok(None);
    }
    let mut p = Parser {
        toks,
        at: 0,
        end: input.len(),
        now,
        terms: 0,
    };
    let e = p.or(0)?;
    if let Some((pos, t)) = p.toks.get(p.at) {
        return err(
            *pos,
            format!(
                "unexpected {} (expected 'and', 'or' or the end)",
                describe(t)
            ),
        );
    }
    Ok(Some(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap()
    }

    fn q(s: &str) -> Expr {
        parse(s, now()).unwrap().unwrap()
    }

    fn e(s: &str) -> KueryError {
        parse(s, now()).unwrap_err()
    }

    fn text(f: Field, v: &str) -> Expr {
        Expr::Term(f, Cond::Cmp(CmpOp::Eq, Value::Text(v.into())))
    }

    #[test]
    fn the_issue_example_parses_with_precedence() {
        assert_eq!(
            q("status:offline and policy_id:web and tags:prod"),
            Expr::And(vec![
                Expr::Term(
                    Field::Status,
                    Cond::Cmp(CmpOp::Eq, Value::Status(AgentStatus::Offline))
                ),
                text(Field::PolicyId, "web"),
                text(Field::Tags, "prod"),
            ])
        );
        // and binds tighter than or; keywords in any case.
        assert_eq!(
            q("tags:a OR tags:b AND NOT tags:c"),
            Expr::Or(vec![
                text(Field::Tags, "a"),
                Expr::And(vec![
                    text(Field::Tags, "b"),
                    Expr::Not(Box::new(text(Field::Tags, "c")))
                ]),
            ])
        );
        assert_eq!(
            q("(tags:a or tags:b) and id:x"),
            Expr::And(vec![
                Expr::Or(vec![text(Field::Tags, "a"), text(Field::Tags, "b")]),
                text(Field::Id, "x"),
            ])
        );
    }

    #[test]
    fn kibana_prefixed_names_and_aliases() {
        assert_eq!(
            q("fleet-agents.policy_id:web"),
            text(Field::PolicyId, "web")
        );
        assert_eq!(
            q("fleet-agents.local_metadata.host.hostname:h1"),
            text(Field::Hostname, "h1")
        );
        assert_eq!(
            q("local_metadata.elastic.agent.version:9.1.0"),
            text(Field::Version, "9.1.0")
        );
    }

    #[test]
    fn quoted_values_wildcards_and_exists() {
        assert_eq!(
            q(r#"hostname:"web 01 \"a\"""#),
            text(Field::Hostname, "web 01 \"a\"")
        );
        assert_eq!(
            q("hostname:web-*"),
            Expr::Term(Field::Hostname, Cond::Prefix("web-".into()))
        );
        // A quoted star is a literal star.
        assert_eq!(q(r#"tags:"a*""#), text(Field::Tags, "a*"));
        assert_eq!(
            q("last_checkin:*"),
            Expr::Term(Field::LastCheckin, Cond::Exists)
        );
        assert_eq!(
            q("status:(online or degraded)"),
            Expr::Or(vec![
                Expr::Term(
                    Field::Status,
                    Cond::Cmp(CmpOp::Eq, Value::Status(AgentStatus::Online))
                ),
                Expr::Term(
                    Field::Status,
                    Cond::Cmp(CmpOp::Eq, Value::Status(AgentStatus::Degraded))
                ),
            ])
        );
    }

    #[test]
    fn ranges_over_times_and_revisions() {
        assert_eq!(
            q(r#"last_checkin < "2026-01-01T00:00:00Z""#),
            Expr::Term(
                Field::LastCheckin,
                Cond::Cmp(
                    CmpOp::Lt,
                    Value::Time(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())
                )
            )
        );
        assert_eq!(
            q("last_checkin >= now-5m"),
            Expr::Term(
                Field::LastCheckin,
                Cond::Cmp(CmpOp::Ge, Value::Time(now() - Duration::minutes(5)))
            )
        );
        assert_eq!(
            q("enrolled_at>now+1d"),
            Expr::Term(
                Field::EnrolledAt,
                Cond::Cmp(CmpOp::Gt, Value::Time(now() + Duration::days(1)))
            )
        );
        assert_eq!(
            q("policy_revision<=3"),
            Expr::Term(Field::PolicyRevision, Cond::Cmp(CmpOp::Le, Value::Int(3)))
        );
    }

    #[test]
    fn blank_is_no_filter() {
        assert_eq!(parse("   ", now()).unwrap(), None);
    }

    #[test]
    fn errors_name_the_position_and_the_field() {
        let x = e("status:online and colour:red");
        assert_eq!(x.position, 18);
        assert!(x.message.contains("unknown field 'colour'"), "{x}");
        assert!(x.to_string().starts_with("kuery: at position 18:"));
        let x = e("status:sleepy");
        assert_eq!(x.position, 7);
        assert!(x.message.contains("unknown status 'sleepy'"));
        assert!(e("tags:a and").message.contains("end of query"));
        assert_eq!(e("(tags:a").position, 0);
        assert!(e("(tags:a").message.contains("unclosed"));
        assert!(e("tags:a tags:b").message.contains("expected 'and', 'or'"));
        assert!(e("tags < 3").message.contains("cannot be compared"));
        assert!(e("last_checkin < yesterday").message.contains("RFC 3339"));
        assert!(e("policy_revision:x").message.contains("integer"));
        assert!(e("tags:a*b").message.contains("trailing"));
        assert!(e("status:on*").message.contains("no wildcard"));
        assert!(e(r#"tags:"open"#).message.contains("unterminated"));
        assert!(e(r#""free text""#).message.contains("field name"));
        assert!(e("tags").message.contains("expected ':'"));
        assert!(e(")").message.contains("unexpected ')'"));
        assert!(e("and:x").message.contains("field name"));
        assert!(e("now-5x").message.contains("unknown field"));
        assert!(e("last_checkin < now-5x").message.contains("RFC 3339"));
    }

    #[test]
    fn length_depth_and_terms_are_bounded() {
        let long = format!("tags:{}", "a".repeat(MAX_QUERY_LEN));
        assert!(e(&long).message.contains("longer than"));
        let deep = format!(
            "{}tags:a{}",
            "(".repeat(MAX_DEPTH + 2),
            ")".repeat(MAX_DEPTH + 2)
        );
        assert!(e(&deep).message.contains("nested deeper"));
        let nots = format!("{}tags:a", "not ".repeat(MAX_DEPTH + 2));
        assert!(e(&nots).message.contains("nested deeper"));
        assert!(parse(
            &format!("{}tags:a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH)),
            now()
        )
        .is_ok());
        let many = vec!["tags:a"; MAX_TERMS + 1].join(" or ");
        assert!(e(&many).message.contains("terms"));
        // Nothing in any byte soup panics.
        for s in [
            "\"",
            "\\",
            "(((",
            "a:(",
            "a:(b or",
            ":",
            "<",
            "tags:(a b)",
            "é:ü",
            "tags:\u{7}",
        ] {
            let _ = parse(s, now());
        }
    }

    #[test]
    fn mentions_finds_a_field_anywhere() {
        assert!(q("tags:a or not status:online").mentions(Field::Status));
        assert!(!q("tags:a").mentions(Field::Status));
    }
}
