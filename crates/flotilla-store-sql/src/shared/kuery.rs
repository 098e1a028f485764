//! A parsed `kuery` (`flotilla_domain::kuery::Expr`) as a WHERE clause over
//! the agent query's `a` (agents), `p` (its policy) and `m` (its report).
//! Every value is a bound parameter; the text holds only column names,
//! operators and placeholders. Both engines run the same text: exact and
//! prefix matches are case-sensitive on both (`SUBSTR(…) = $n`, not
//! `LIKE`, which SQLite folds), and each term is `COALESCE(…, FALSE)` so a
//! `not` over a missing value (no version yet, say) matches, as KQL does.

use flotilla_domain::kuery::{CmpOp, Cond, Expr, Field, Value};

use super::prelude::*;

/// An agent list's ORDER BY terms (after `ORDER BY`): agents without the
/// field last in either direction, ties in id order. Column names only;
/// the status expression uses the agent query's `$5` and `$7`.
pub(crate) fn order_by(sort: Option<flotilla_domain::agent::AgentSort>) -> String {
    use flotilla_domain::agent::AgentSortField as F;
    let sort = sort.unwrap_or_default();
    // (column, text, may be missing)
    let (col, text, nullable) = match sort.field {
        F::EnrolledAt => ("a.enrolled_at".to_owned(), false, false),
        F::LastCheckin => ("a.last_checkin".to_owned(), false, true),
        F::Hostname => (HOSTNAME_SQL.to_owned(), true, true),
        F::Status => (
            concat!("(", agent_status_sql!(), ")").to_owned(),
            true,
            false,
        ),
        F::PolicyId => ("a.policy_id".to_owned(), true, false),
        F::PolicyRevision => ("a.policy_revision".to_owned(), false, true),
        F::Version => ("a.agent_version".to_owned(), true, true),
    };
    let dir = if sort.ascending { "ASC" } else { "DESC" };
    let collate = if text { BINARY_COLLATION } else { "" };
    // A column that is never missing is ordered by itself alone, so an
    // index on it can serve the order.
    let missing_last = if nullable {
        format!("({col}) IS NULL, ")
    } else {
        String::new()
    };
    format!("{missing_last}({col}){collate} {dir}, a.id")
}

/// `expr` as SQL, its values added to `args` as `$first`, `$first+1`…
pub(crate) fn compile(expr: &Expr, args: &mut Args, first: usize) -> Result<String> {
    let mut c = Compiler { args, next: first };
    c.expr(expr)
}

struct Compiler<'a> {
    args: &'a mut Args,
    next: usize,
}

impl Compiler<'_> {
    /// Bind `v`; its placeholder's number.
    fn param<T>(&mut self, v: T) -> Result<usize>
    where
        T: for<'t> sqlx::Encode<'t, Db> + sqlx::Type<Db>,
    {
        add(self.args, v)?;
        self.next += 1;
        Ok(self.next - 1)
    }

    /// Bind `v`; its placeholder.
    fn bind<T>(&mut self, v: T) -> Result<String>
    where
        T: for<'t> sqlx::Encode<'t, Db> + sqlx::Type<Db>,
    {
        Ok(format!("${}", self.param(v)?))
    }

    fn expr(&mut self, e: &Expr) -> Result<String> {
        Ok(match e {
            Expr::And(es) => self.join(es, " AND ")?,
            Expr::Or(es) => self.join(es, " OR ")?,
            Expr::Not(e) => format!("NOT ({})", self.expr(e)?),
            Expr::Term(f, c) => format!("COALESCE(({}), FALSE)", self.term(*f, c)?),
        })
    }

    fn join(&mut self, es: &[Expr], op: &str) -> Result<String> {
        let parts = es
            .iter()
            .map(|e| self.expr(e).map(|s| format!("({s})")))
            .collect::<Result<Vec<_>>>()?;
        Ok(parts.join(op))
    }

    /// The column a field is, for the fields that are one.
    fn column(&mut self, f: Field) -> Result<String> {
        Ok(match f {
            Field::Id => "a.id".into(),
            Field::PolicyId => "a.policy_id".into(),
            Field::PolicyRevision => "a.policy_revision".into(),
            Field::Version => "a.agent_version".into(),
            Field::EnrollmentKeyId => "a.enrollment_api_key_id".into(),
            Field::LastCheckin => "a.last_checkin".into(),
            Field::EnrolledAt => "a.enrolled_at".into(),
            Field::Hostname => {
                let path = self.param(json_field_path("host.hostname"))?;
                json_field_sql("m.local_metadata", path)
            }
            Field::Status => concat!("(", agent_status_sql!(), ")").into(),
            Field::Tags => unreachable!("tags are matched through agent_tags"),
        })
    }

    fn term(&mut self, f: Field, c: &Cond) -> Result<String> {
        if f == Field::Tags {
            let cond = match c {
                Cond::Exists => "TRUE".to_owned(),
                Cond::Prefix(p) => self.prefix("t.tag", p)?,
                Cond::Cmp(_, v) => format!("t.tag = {}", self.value(v)?),
            };
            return Ok(format!(
                "EXISTS (SELECT 1 FROM agent_tags t WHERE t.agent_id = a.id AND {cond})"
            ));
        }
        let col = self.column(f)?;
        Ok(match c {
            Cond::Exists => format!("{col} IS NOT NULL"),
            Cond::Prefix(p) => self.prefix(&col, p)?,
            Cond::Cmp(op, v) => format!("{col} {} {}", cmp(*op), self.value(v)?),
        })
    }

    fn prefix(&mut self, col: &str, p: &str) -> Result<String> {
        if p.is_empty() {
            return Ok(format!("{col} IS NOT NULL"));
        }
        let n = i32::try_from(p.chars().count()).unwrap_or(i32::MAX);
        let n = self.bind(n)?;
        let p = self.bind(p.to_owned())?;
        Ok(format!("SUBSTR({col}, 1, {n}) = {p}"))
    }

    fn value(&mut self, v: &Value) -> Result<String> {
        match v {
            Value::Text(s) => self.bind(s.clone()),
            Value::Status(s) => self.bind(s.as_str().to_owned()),
            Value::Int(i) => self.bind(*i),
            Value::Time(t) => self.bind(ms(*t)),
        }
    }
}

fn cmp(op: CmpOp) -> &'static str {
    op.as_sql()
}
