//! Cases for the embedded output's documents and the security API's keys.

use chrono::TimeZone;

use super::*;
use crate::{ApiKeyFilter, DocumentQuery, KeyKind, NewDocument};

fn doc(id: &str, stream: &str, minute: u32, source: serde_json::Value) -> NewDocument {
    let ts = Utc.with_ymd_and_hms(2026, 12, 1, 10, minute, 0).unwrap();
    let mut source = source;
    source["@timestamp"] = json!(ts.to_rfc3339());
    NewDocument {
        id: id.into(),
        data_stream: stream.into(),
        timestamp: ts,
        source: source.to_string(),
    }
}

pub async fn documents_are_stored_searched_and_expired(s: S) {
    let now = Utc::now();
    assert!(s
        .existing_data_streams(&["logs-a-default".into()])
        .await
        .unwrap()
        .is_empty());
    let docs: Vec<NewDocument> = (0..450)
        .map(|i| {
            doc(
                &format!("d{i:04}"),
                if i % 3 == 0 { "logs-b-default" } else { "logs-a-default" },
                (i % 60) as u32,
                json!({"message": format!("line {i} 100%_done"), "host": {"name": format!("web-{}", i % 2)}}),
            )
        })
        .collect();
    s.insert_documents(&docs, now).await.unwrap();
    // A repeated id fails the whole batch: nothing of it is stored.
    let dup = vec![
        doc("new-1", "logs-c-default", 1, json!({})),
        doc("d0001", "logs-a-default", 1, json!({})),
    ];
    assert!(s.insert_documents(&dup, now).await.is_err());
    assert_eq!(
        s.existing_data_streams(&[
            "logs-a-default".into(),
            "logs-c-default".into(),
            "logs-b-default".into()
        ])
        .await
        .unwrap()
        .len(),
        2
    );

    let streams = s.list_data_streams().await.unwrap();
    assert_eq!(streams.len(), 2);
    assert_eq!(streams[0].name, "logs-a-default");
    assert_eq!(streams[0].documents, 300);
    assert_eq!(streams[1].documents, 150);
    assert!(streams[0].size_bytes > 300 * 40);
    assert_eq!(
        streams[0].last_event,
        Some(Utc.with_ymd_and_hms(2026, 12, 1, 10, 59, 0).unwrap())
    );

    let page = |n| Page {
        page: n,
        per_page: 10,
    };
    let all = s
        .search_documents("logs-a-default", &DocumentQuery::default(), page(1))
        .await
        .unwrap();
    assert_eq!(all.total, 300);
    assert_eq!(all.items.len(), 10);
    assert!(
        all.items
            .windows(2)
            .all(|w| w[0].timestamp >= w[1].timestamp),
        "newest first"
    );
    let q = DocumentQuery {
        from: Some(Utc.with_ymd_and_hms(2026, 12, 1, 10, 10, 0).unwrap()),
        to: Some(Utc.with_ymd_and_hms(2026, 12, 1, 10, 20, 0).unwrap()),
        ascending: true,
        ..Default::default()
    };
    let ranged = s
        .search_documents("logs-a-default", &q, page(1))
        .await
        .unwrap();
    assert!(ranged
        .items
        .iter()
        .all(|d| d.timestamp.format("%M").to_string().as_str() >= "10"));
    assert!(
        ranged
            .items
            .windows(2)
            .all(|w| w[0].timestamp <= w[1].timestamp),
        "oldest first"
    );
    let text = DocumentQuery {
        text: Some("LINE 7 ".into()),
        ..Default::default()
    };
    let found = s
        .search_documents("logs-a-default", &text, page(1))
        .await
        .unwrap();
    assert_eq!(found.total, 1, "case-insensitive substring");
    let wild = DocumentQuery {
        text: Some("%_".into()),
        ..Default::default()
    };
    assert_eq!(
        s.search_documents("logs-a-default", &wild, page(1))
            .await
            .unwrap()
            .total,
        300,
        "LIKE characters are literal"
    );
    let nothing = DocumentQuery {
        text: Some("x%y".into()),
        ..Default::default()
    };
    assert_eq!(
        s.search_documents("logs-a-default", &nothing, page(1))
            .await
            .unwrap()
            .total,
        0
    );
    let by_host = DocumentQuery {
        matches: vec![("host.name".into(), "web-1".into())],
        ..Default::default()
    };
    assert_eq!(
        s.search_documents("logs-a-default", &by_host, page(1))
            .await
            .unwrap()
            .total,
        150
    );
    let source = &s
        .search_documents("logs-b-default", &by_host, page(1))
        .await
        .unwrap()
        .items[0]
        .source;
    assert_eq!(source["host"]["name"], "web-1");

    // Retention deletes a stream's old documents in batches.
    assert_eq!(
        s.data_stream_names().await.unwrap(),
        ["logs-a-default", "logs-b-default"]
    );
    let cutoff = Utc.with_ymd_and_hms(2026, 12, 1, 10, 30, 0).unwrap();
    let first = s
        .delete_documents_before("logs-a-default", cutoff, 100)
        .await
        .unwrap();
    assert_eq!(first, 100);
    let rest = s
        .delete_documents_before("logs-a-default", cutoff, 1000)
        .await
        .unwrap();
    let old_a = (0..450).filter(|i| i % 3 != 0 && i % 60 < 30).count() as u64;
    assert_eq!(first + rest, old_a);
    assert_eq!(
        s.delete_documents_before("logs-a-default", cutoff, 1000)
            .await
            .unwrap(),
        0
    );
    // The same id in another stream is another document.
    s.insert_documents(&[doc("d0001", "logs-c-default", 1, json!({}))], now)
        .await
        .unwrap();
    let streams = s.list_data_streams().await.unwrap();
    assert_eq!(streams[0].documents, 300 - old_a);
    assert_eq!(streams[1].documents, 150, "other streams untouched");
    assert_eq!(streams[2].documents, 1);
}

pub async fn security_api_keys_are_found_by_id_name_and_owner(s: S) {
    let mut a = key("k1", "x", "user");
    a.kind = KeyKind::User;
    a.agent_id = None;
    a.name = "ingest".into();
    a.owner = Some("owner-1".into());
    a.expires_at = Some(Utc::now() + Duration::days(1));
    s.insert_api_key(&a).await.unwrap();
    let mut b = a.clone();
    b.id = "k2".into();
    b.owner = Some("owner-2".into());
    s.insert_api_key(&b).await.unwrap();
    let got = s.get_api_key("k1").await.unwrap().unwrap();
    assert_eq!(got.owner.as_deref(), Some("owner-1"));
    assert_eq!(got.kind, KeyKind::User);
    assert!(got.expires_at.is_some());
    let by = |f: ApiKeyFilter| {
        let s = s.clone();
        async move {
            s.find_api_keys(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|k| k.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        by(ApiKeyFilter {
            name: Some("ingest".into()),
            ..Default::default()
        })
        .await,
        ["k1", "k2"]
    );
    assert_eq!(
        by(ApiKeyFilter {
            owner: Some("owner-2".into()),
            ..Default::default()
        })
        .await,
        ["k2"]
    );
    assert_eq!(
        by(ApiKeyFilter {
            id: Some("k1".into()),
            ..Default::default()
        })
        .await,
        ["k1"]
    );
    s.invalidate_api_keys(&["k1".into()], Utc::now())
        .await
        .unwrap();
    assert_eq!(
        by(ApiKeyFilter {
            name: Some("ingest".into()),
            ..Default::default()
        })
        .await,
        ["k2"]
    );
    assert_eq!(
        by(ApiKeyFilter {
            name: Some("ingest".into()),
            invalidated: true,
            ..Default::default()
        })
        .await,
        ["k1", "k2"]
    );
}
