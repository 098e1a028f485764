//! Fleet operations: enrollment keys' limits and the record of which key
//! enrolled which agent.

use super::*;
use crate::{Enrolment, KeyUse};
use flotilla_domain::enrollment::EnrollRefusal;

fn limited_key(
    id: &str,
    max_uses: Option<u64>,
    expiration: Option<chrono::DateTime<Utc>>,
) -> EnrollmentApiKey {
    EnrollmentApiKey {
        id: id.into(),
        name: format!("key {id}"),
        policy_id: "p".into(),
        active: true,
        hint: "abcd".into(),
        created_at: Utc::now(),
        expiration,
        max_uses,
        uses: 0,
    }
}

fn enrolment(id: &str, key_use: KeyUse, at: chrono::DateTime<Utc>) -> Enrolment {
    let mut a = agent(id, "p", &[]);
    a.enrolled_at = at;
    a.enrollment_api_key_id = match &key_use {
        KeyUse::None => Some("static:test".into()),
        KeyUse::Counted(k) | KeyUse::Limited(k) => Some(k.clone()),
    };
    let access = key(&format!("acc-{id}"), id, "access");
    a.access_api_key_id = Some(access.id.clone());
    Enrolment {
        agent: a,
        access_key: access,
        replace: vec![],
        key_use,
    }
}

fn refusal(r: &crate::Result<()>) -> Option<EnrollRefusal> {
    match r {
        Err(StoreError::KeyRefused { why, .. }) => Some(*why),
        _ => None,
    }
}

pub async fn enrollment_keys_count_their_uses_and_refuse_once_spent_or_expired(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    let two = limited_key("two", Some(2), None);
    s.create_enrollment_key(&two, "h-two").await.unwrap();
    s.create_enrollment_key(&limited_key("any", None, None), "h-any")
        .await
        .unwrap();
    let exp = now + Duration::seconds(60);
    s.create_enrollment_key(&limited_key("soon", None, Some(exp)), "h-soon")
        .await
        .unwrap();
    let got = s.get_enrollment_key("two").await.unwrap();
    assert_eq!((got.max_uses, got.uses, got.expiration), (Some(2), 0, None));
    let got = s.get_enrollment_key("soon").await.unwrap();
    assert_eq!(
        got.expiration.map(|e| e.timestamp_millis()),
        Some(exp.timestamp_millis())
    );

    // Limited ones mixed with counted and uncounted ones in one batch.
    let out = s
        .enroll_agents(&[
            enrolment("l1", KeyUse::Limited("two".into()), now),
            enrolment("c1", KeyUse::Counted("any".into()), now),
            enrolment("l2", KeyUse::Limited("two".into()), now),
            enrolment("c2", KeyUse::Counted("any".into()), now),
            enrolment("l3", KeyUse::Limited("two".into()), now),
            enrolment("s1", KeyUse::None, now),
        ])
        .await
        .unwrap();
    assert!(
        out[0].is_ok() && out[1].is_ok() && out[2].is_ok() && out[3].is_ok() && out[5].is_ok(),
        "{out:?}"
    );
    assert_eq!(refusal(&out[4]), Some(EnrollRefusal::Spent), "{out:?}");
    assert!(out[4].as_ref().unwrap_err().to_string().contains("spent"));
    assert!(s.get_fleet_agent("l3").await.unwrap().is_none());
    assert!(
        s.get_api_key("acc-l3").await.unwrap().is_none(),
        "a refused enrolment writes nothing"
    );
    assert_eq!(s.get_enrollment_key("two").await.unwrap().uses, 2);
    assert_eq!(s.get_enrollment_key("any").await.unwrap().uses, 2);

    // Which key enrolled which agent, and the filter by key.
    let l1 = s.get_agent("l1", now).await.unwrap();
    assert_eq!(l1.enrollment_api_key_id.as_deref(), Some("two"));
    let by_key = |k: &str| AgentFilter {
        enrollment_api_key_id: Some(k.into()),
        ..Default::default()
    };
    let mut ids: Vec<String> = s
        .list_agents(&by_key("two"), page(1, 10), now)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|a| a.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["l1", "l2"]);
    assert_eq!(
        s.list_agents(&by_key("static:test"), page(1, 10), now)
            .await
            .unwrap()
            .total,
        1
    );

    // Expiry against the enrolment's time; the instant itself has passed.
    let ok = s
        .enroll_agents(&[enrolment(
            "e1",
            KeyUse::Limited("soon".into()),
            exp - Duration::milliseconds(1),
        )])
        .await
        .unwrap();
    assert!(ok[0].is_ok(), "{ok:?}");
    let late = s
        .enroll_agents(&[enrolment("e2", KeyUse::Limited("soon".into()), exp)])
        .await
        .unwrap();
    assert_eq!(refusal(&late[0]), Some(EnrollRefusal::Expired), "{late:?}");
    assert_eq!(s.get_enrollment_key("soon").await.unwrap().uses, 1);

    // Revoked meanwhile (after the grant was given).
    let three = limited_key("three", Some(3), None);
    s.create_enrollment_key(&three, "h-three").await.unwrap();
    s.revoke_enrollment_key("three").await.unwrap();
    let out = s
        .enroll_agents(&[enrolment("r1", KeyUse::Limited("three".into()), now)])
        .await
        .unwrap();
    assert_eq!(refusal(&out[0]), Some(EnrollRefusal::Revoked), "{out:?}");
    // A key that is gone altogether.
    let out = s
        .enroll_agents(&[enrolment("g1", KeyUse::Limited("ghost".into()), now)])
        .await
        .unwrap();
    assert!(
        matches!(out[0], Err(StoreError::NotFound { .. })),
        "{out:?}"
    );
}

pub async fn concurrent_enrolments_never_exceed_max_uses(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_enrollment_key(&limited_key("five", Some(5), None), "h-five")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.enroll_agents(&[enrolment(
                &format!("a{i}"),
                KeyUse::Limited("five".into()),
                now,
            )])
            .await
            .unwrap()
            .pop()
            .unwrap()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::KeyRefused {
                why: EnrollRefusal::Spent,
                ..
            }) => {}
            // PostgreSQL may answer a serialisation conflict or busy;
            // neither may have written.
            Err(StoreError::Busy | StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(s.get_enrollment_key("five").await.unwrap().uses, 5);
    let filter = AgentFilter {
        enrollment_api_key_id: Some("five".into()),
        ..Default::default()
    };
    assert_eq!(
        s.list_agents(&filter, page(1, 50), now)
            .await
            .unwrap()
            .total,
        5
    );
}

fn checkin(id: &str, at: chrono::DateTime<Utc>, version: &str) -> CheckinRecord {
    CheckinRecord {
        agent_id: id.into(),
        at,
        status: "online".into(),
        message: String::new(),
        local_metadata: None,
        components: None,
        agent_version: Some(version.into()),
        reported_policy: None,
    }
}

pub async fn agents_are_searched_by_kuery(s: S) {
    use flotilla_domain::kuery;
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    let mut a1 = enrolment("web-01", KeyUse::None, now - Duration::hours(3));
    a1.agent.tags = vec!["prod".into(), "web".into()];
    a1.agent.enrollment_api_key_id = Some("k1".into());
    let mut a2 = enrolment("web-02", KeyUse::None, now - Duration::hours(2));
    a2.agent.tags = vec!["dev".into()];
    a2.agent.enrollment_api_key_id = Some("k2".into());
    let mut a3 = enrolment("DB-01", KeyUse::None, now - Duration::hours(1));
    a3.agent.policy_id = "q".into();
    let a4 = enrolment("gone", KeyUse::None, now - Duration::hours(4));
    let out = s.enroll_agents(&[a1, a2, a3, a4]).await.unwrap();
    assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
    s.record_checkins(&[
        checkin("web-01", now, "9.1.0"),
        checkin("web-02", now - Duration::minutes(10), "8.15.0"),
    ])
    .await
    .unwrap();
    s.unenroll_now("gone", now).await.unwrap();

    let find = |q: &str| {
        let s = s.clone();
        let expr = kuery::parse(q, now).unwrap();
        async move {
            let filter = AgentFilter {
                kuery: expr,
                ..Default::default()
            };
            let got = s.list_agents(&filter, page(1, 50), now).await.unwrap();
            let mut ids: Vec<String> = got.items.into_iter().map(|a| a.id).collect();
            assert_eq!(
                ids.len() as u64,
                got.total,
                "the count agrees with the rows"
            );
            ids.sort();
            ids
        }
    };
    assert_eq!(
        find("status:online and policy_id:p and tags:prod").await,
        ["web-01"]
    );
    assert_eq!(find("status:offline").await, ["web-02"]);
    assert_eq!(
        find("status:(online OR offline)").await,
        ["web-01", "web-02"]
    );
    assert_eq!(find("fleet-agents.policy_id:q").await, ["DB-01"]);
    assert_eq!(find("hostname:web-*").await, ["web-01", "web-02"]);
    // Case-sensitive on both engines.
    assert!(find("hostname:db-*").await.is_empty());
    assert_eq!(
        find("local_metadata.host.hostname:\"DB-01\"").await,
        ["DB-01"]
    );
    assert_eq!(find("version:9.*").await, ["web-01"]);
    assert_eq!(
        find("not version:9.*").await,
        ["DB-01", "web-02"],
        "no version matches not"
    );
    assert_eq!(find("version:*").await, ["web-01", "web-02"]);
    assert_eq!(find("tags:* and not tags:dev").await, ["web-01"]);
    assert_eq!(find("tags:pr*").await, ["web-01"]);
    assert_eq!(find("enrollment_api_key_id:k2").await, ["web-02"]);
    assert_eq!(find("last_checkin < now-5m").await, ["web-02"]);
    assert_eq!(find("last_checkin >= now-5m").await, ["web-01"]);
    assert_eq!(find("not last_checkin:*").await, ["DB-01"]);
    let cut = (now - Duration::minutes(150)).to_rfc3339();
    assert_eq!(
        find(&format!("enrolled_at > \"{cut}\"")).await,
        ["DB-01", "web-02"]
    );
    assert_eq!(
        find("(tags:prod or policy_id:q) and not status:enrolling").await,
        ["web-01"]
    );
    // The unenrolled agent is hidden unless the query asks about status.
    assert!(find("id:gone").await.is_empty());
    assert_eq!(find("status:unenrolled").await, ["gone"]);
    // A value that looks like SQL is only a value.
    assert!(find("id:\"x' OR '1'='1\"").await.is_empty());
    // With the other filters.
    let filter = AgentFilter {
        policy_id: Some("p".into()),
        kuery: kuery::parse("hostname:web-*", now).unwrap(),
        tag: Some("dev".into()),
        ..Default::default()
    };
    let got = s.list_agents(&filter, page(1, 10), now).await.unwrap();
    assert_eq!(got.total, 1);
    assert_eq!(got.items[0].id, "web-02");
}

pub async fn agents_are_sorted_by_each_field_missing_values_last(s: S) {
    use flotilla_domain::agent::{AgentSort, AgentSortField as F};
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    let a1 = enrolment("web-01", KeyUse::None, now - Duration::hours(3));
    let a2 = enrolment("web-02", KeyUse::None, now - Duration::hours(2));
    let mut a3 = enrolment("DB-01", KeyUse::None, now - Duration::hours(1));
    a3.agent.policy_id = "q".into();
    // Same enrolment time as web-02: ties go in id order.
    let a4 = enrolment("web-00", KeyUse::None, now - Duration::hours(2));
    let out = s.enroll_agents(&[a1, a2, a3, a4]).await.unwrap();
    assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
    s.record_checkins(&[
        checkin("web-01", now, "9.1.0"),
        checkin("web-02", now - Duration::minutes(10), "10.0.0"),
        checkin("web-00", now - Duration::minutes(1), "8.15.0"),
    ])
    .await
    .unwrap();
    s.record_policy_change_failure("web-02", &serde_json::json!({"message": "bad input"}))
        .await
        .unwrap();
    let sorted = |field: F, ascending: bool| {
        let s = s.clone();
        async move {
            let filter = AgentFilter {
                sort: Some(AgentSort { field, ascending }),
                ..Default::default()
            };
            let got = s.list_agents(&filter, page(1, 50), now).await.unwrap();
            got.items.into_iter().map(|a| a.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        sorted(F::EnrolledAt, false).await,
        ["DB-01", "web-00", "web-02", "web-01"],
        "the default order, ties by id"
    );
    let default = s
        .list_agents(&AgentFilter::default(), page(1, 50), now)
        .await
        .unwrap();
    assert_eq!(
        default
            .items
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["DB-01", "web-00", "web-02", "web-01"]
    );
    assert_eq!(
        sorted(F::EnrolledAt, true).await,
        ["web-01", "web-00", "web-02", "DB-01"]
    );
    assert_eq!(
        sorted(F::LastCheckin, false).await,
        ["web-01", "web-00", "web-02", "DB-01"],
        "never checked in: last"
    );
    assert_eq!(
        sorted(F::LastCheckin, true).await,
        ["web-02", "web-00", "web-01", "DB-01"],
        "never checked in: last either way"
    );
    // By code point on both engines: upper case first.
    assert_eq!(
        sorted(F::Hostname, true).await,
        ["DB-01", "web-00", "web-01", "web-02"]
    );
    assert_eq!(
        sorted(F::Hostname, false).await,
        ["web-02", "web-01", "web-00", "DB-01"]
    );
    // Text order, not version order; no version last.
    assert_eq!(
        sorted(F::Version, true).await,
        ["web-02", "web-00", "web-01", "DB-01"]
    );
    // enrolling < offline < online.
    assert_eq!(
        sorted(F::Status, true).await,
        ["DB-01", "web-02", "web-00", "web-01"]
    );
    assert_eq!(
        sorted(F::PolicyId, false).await,
        ["DB-01", "web-00", "web-01", "web-02"]
    );
    s.agent_runs_policy("web-01", "p", 1, now).await.unwrap();
    assert_eq!(
        sorted(F::PolicyRevision, false).await[0],
        "web-01",
        "the only one with a revision first"
    );
    // Paging keeps the order.
    let filter = AgentFilter {
        sort: Some(AgentSort {
            field: F::Hostname,
            ascending: true,
        }),
        ..Default::default()
    };
    let second = s.list_agents(&filter, page(2, 2), now).await.unwrap();
    assert_eq!(
        second
            .items
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["web-01", "web-02"]
    );
    assert_eq!(second.total, 4);
    // The agents whose last policy change failed.
    let failed = AgentFilter {
        policy_change_failed: true,
        ..Default::default()
    };
    let got = s.list_agents(&failed, page(1, 10), now).await.unwrap();
    assert_eq!(got.total, 1);
    assert_eq!(got.items[0].id, "web-02");
    let ids = s.agent_ids(&failed, None, 10, now).await.unwrap();
    assert_eq!(ids, ["web-02"]);
}
