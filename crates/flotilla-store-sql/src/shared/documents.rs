//! The embedded output: data streams and their documents.

use super::prelude::*;
use flotilla_store::{ApiKeyFilter, DataStreamStats, DocumentQuery, NewDocument, StoredDocument};

/// Rows per multi-row INSERT (well under both engines' bind limits).
const INSERT_CHUNK: usize = 200;

#[tracing::instrument(skip_all)]
pub(super) async fn existing_data_streams(s: &Engine, names: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for chunk in names.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let mut args = Args::default();
        for n in chunk {
            add(&mut args, n.clone())?;
        }
        let found: Vec<String> = sqlx::query_scalar_with(
            sql!(
                "SELECT name FROM data_streams WHERE name IN ({})",
                marks.join(", ")
            ),
            args,
        )
        .fetch_all(&s.pool)
        .await
        .db()?;
        out.extend(found);
    }
    Ok(out)
}

#[tracing::instrument(skip_all, fields(docs = docs.len()))]
pub(super) async fn insert_documents(
    s: &Engine,
    docs: &[NewDocument],
    now: DateTime<Utc>,
) -> Result<()> {
    if docs.is_empty() {
        return Ok(());
    }
    let now = ms(now);
    let mut tx = s.begin_write().await?;
    let mut streams: Vec<&str> = docs.iter().map(|d| d.data_stream.as_str()).collect();
    streams.sort_unstable();
    streams.dedup();
    for name in streams {
        sqlx::query("INSERT INTO data_streams (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .db()?;
    }
    for chunk in docs.chunks(INSERT_CHUNK) {
        let mut args = Args::default();
        let mut rows = Vec::with_capacity(chunk.len());
        for (i, d) in chunk.iter().enumerate() {
            let b = i * 5;
            rows.push(format!(
                "(${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            ));
            add(&mut args, d.id.clone())?;
            add(&mut args, d.data_stream.clone())?;
            add(&mut args, ms(d.timestamp))?;
            add(&mut args, d.source.clone())?;
            add(&mut args, now)?;
        }
        sqlx::query_with(
            sql!(
                "INSERT INTO documents (id, data_stream, ts, doc, ingested_at) VALUES {}",
                rows.join(", ")
            ),
            args,
        )
        .execute(&mut *tx)
        .await
        .or_conflict(|| "a document with that id exists already".to_owned())?;
    }
    tx.commit().await.db()?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub(super) async fn data_stream_names(s: &Engine) -> Result<Vec<String>> {
    sqlx::query_scalar("SELECT name FROM data_streams ORDER BY name")
        .fetch_all(&s.pool)
        .await
        .db()
}

#[tracing::instrument(skip_all)]
pub(super) async fn list_data_streams(s: &Engine) -> Result<Vec<DataStreamStats>> {
    let rows: Vec<DataStreamRow> = sqlx::query_as(
        "SELECT s.name, s.created_at, COUNT(d.id) AS documents, \
         COALESCE(SUM(LENGTH(d.doc)), 0) AS size_bytes, MAX(d.ts) AS last_event \
         FROM data_streams s LEFT JOIN documents d ON d.data_stream = s.name \
         GROUP BY s.name, s.created_at ORDER BY s.name",
    )
    .fetch_all(&s.pool)
    .await
    .db()?;
    Ok(rows.into_iter().map(Into::into).collect())
}

fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[tracing::instrument(skip_all)]
pub(super) async fn search_documents(
    s: &Engine,
    data_stream: &str,
    q: &DocumentQuery,
    page: Page,
) -> Result<Paged<StoredDocument>> {
    let mut args = Args::default();
    let mut conds = vec!["data_stream = $1".to_owned()];
    add(&mut args, data_stream.to_owned())?;
    let mut n = 1;
    if let Some(from) = q.from {
        n += 1;
        conds.push(format!("ts >= ${n}"));
        add(&mut args, ms(from))?;
    }
    if let Some(to) = q.to {
        n += 1;
        conds.push(format!("ts < ${n}"));
        add(&mut args, ms(to))?;
    }
    if let Some(text) = q.text.as_deref().filter(|t| !t.is_empty()) {
        n += 1;
        conds.push(format!("LOWER(doc) LIKE ${n} ESCAPE '\\'"));
        add(&mut args, like_escaped(text))?;
    }
    for (field, value) in &q.matches {
        n += 1;
        let path = n;
        add(&mut args, json_field_path(field))?;
        n += 1;
        conds.push(format!("{} = ${n}", json_field_sql("doc", path)));
        add(&mut args, value.clone())?;
    }
    let order = if q.ascending {
        "ts ASC, id ASC"
    } else {
        "ts DESC, id DESC"
    };
    let filter = conds.join(" AND ");
    let (rows, total) = page_of::<DocumentRow>(
        &s.pool,
        &format!("SELECT id, data_stream, ts, doc FROM documents WHERE {filter} ORDER BY {order}"),
        &format!("SELECT COUNT(*) FROM documents WHERE {filter}"),
        args,
        page,
    )
    .await?;
    Ok(Paged {
        items: rows
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<_>>()?,
        total,
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn delete_documents_before(
    s: &Engine,
    data_stream: &str,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64> {
    let mut tx = s.begin_write().await?;
    let n = sqlx::query(
        "DELETE FROM documents WHERE data_stream = $1 AND id IN \
         (SELECT id FROM documents WHERE data_stream = $1 AND ts < $2 ORDER BY ts LIMIT $3)",
    )
    .bind(data_stream)
    .bind(ms(before))
    .bind(i64::from(limit))
    .execute(&mut *tx)
    .await
    .db()?
    .rows_affected();
    tx.commit().await.db()?;
    Ok(n)
}

#[tracing::instrument(skip_all)]
pub(super) async fn find_api_keys(s: &Engine, f: &ApiKeyFilter) -> Result<Vec<ApiKeyRecord>> {
    let mut args = Args::default();
    let mut conds = vec!["kind = 'user'".to_owned()];
    let mut n = 0;
    for (col, value) in [("id", &f.id), ("name", &f.name), ("owner", &f.owner)] {
        if let Some(v) = value {
            n += 1;
            conds.push(format!("{col} = ${n}"));
            add(&mut args, v.clone())?;
        }
    }
    if !f.invalidated {
        conds.push("invalidated_at IS NULL".into());
    }
    let rows: Vec<ApiKeyRow> = sqlx::query_as_with(
        sql!(
            "SELECT {API_KEY_COLS} FROM api_keys WHERE {} ORDER BY created_at, id LIMIT 10000",
            conds.join(" AND ")
        ),
        args,
    )
    .fetch_all(&s.pool)
    .await
    .db()?;
    rows.into_iter().map(TryInto::try_into).collect()
}
