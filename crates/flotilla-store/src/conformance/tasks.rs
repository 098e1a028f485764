//! Cases for the task manager's tables.

use std::collections::HashSet;

use chrono::{DateTime, TimeZone};

use super::*;
use crate::{
    ClaimRequest, KeyProvider, NewTask, RunOutcome, Scheduled, TaskFilter, TaskStatus, UserScope,
};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

fn task(id: &str, ty: &str, run_at: DateTime<Utc>) -> NewTask {
    NewTask {
        id: id.into(),
        task_type: ty.into(),
        params: json!({"p": id}),
        state: json!({}),
        interval_ms: None,
        run_at,
        enabled: true,
        cost: 2,
        user: None,
    }
}

fn claim(owner: &str, types: &[&str], now: DateTime<Utc>, capacity: i64) -> ClaimRequest {
    ClaimRequest {
        owner: owner.into(),
        types: types.iter().map(|t| t.to_string()).collect(),
        per_type: vec![],
        limit: 100,
        capacity,
        now,
        lease_until: now + Duration::seconds(30),
    }
}

fn user(key: &str) -> UserScope {
    UserScope {
        user_id: "operator:op1".into(),
        user_name: "ops".into(),
        api_key_id: Some(format!("{key}-p")),
        api_key_sealed: Some("sealed-p".into()),
        secondary_api_key_id: Some(format!("{key}-s")),
        secondary_api_key_sealed: Some("sealed-s".into()),
    }
}

pub async fn tasks_are_scheduled_once_per_id(s: S) {
    let now = t0();
    let mut new = task("fleet:x:1", "fleet:x", now);
    new.interval_ms = Some(60_000);
    let Scheduled::Created(created) = s.schedule_task(&new, now).await.unwrap() else {
        panic!("first schedule creates");
    };
    assert_eq!(created.status, TaskStatus::Idle);
    assert_eq!(created.attempts, 0);
    assert!(created.enabled);
    // Same id and type: the existing task, interval moved in place.
    new.interval_ms = Some(120_000);
    new.params = json!({"other": true});
    let Scheduled::Existing(existing) = s.schedule_task(&new, now).await.unwrap() else {
        panic!("second schedule keeps the task");
    };
    assert_eq!(existing.interval_ms, Some(120_000));
    assert_eq!(existing.params, json!({"p": "fleet:x:1"}));
    assert_eq!(existing.run_at, now + Duration::seconds(60));
    // Changed while it runs: the interval still changes.
    let running = s
        .claim_tasks(&claim("i1", &["fleet:x"], now + Duration::seconds(120), 10))
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    new.interval_ms = Some(30_000);
    let Scheduled::Existing(existing) = s.schedule_task(&new, now).await.unwrap() else {
        panic!("kept");
    };
    assert_eq!(existing.interval_ms, Some(30_000));
    assert_eq!(existing.status, TaskStatus::Running);
    // Another type under the id is refused.
    let other = task("fleet:x:1", "fleet:y", now);
    assert!(matches!(
        s.schedule_task(&other, now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.get_task("missing").await,
        Err(StoreError::NotFound {
            entity: crate::Entity::Task,
            ..
        })
    ));
    for i in 0..5 {
        s.schedule_task(&task(&format!("t{i}"), "other", now), now)
            .await
            .unwrap();
    }
    let page = s
        .list_tasks(
            &TaskFilter {
                task_type: Some("other".into()),
                status: None,
            },
            Page {
                page: 2,
                per_page: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 5);
    let ids: Vec<_> = page.items.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["t2", "t3"]);
}

pub async fn claims_take_due_tasks_in_order_up_to_capacity(s: S) {
    let now = t0();
    for i in 0..6 {
        s.schedule_task(
            &task(&format!("a{i}"), "a", now - Duration::seconds(10 - i)),
            now,
        )
        .await
        .unwrap();
    }
    // Not due, disabled, and of a type this instance does not run.
    s.schedule_task(&task("later", "a", now + Duration::seconds(5)), now)
        .await
        .unwrap();
    let mut off = task("off", "a", now - Duration::seconds(60));
    off.enabled = false;
    s.schedule_task(&off, now).await.unwrap();
    s.schedule_task(&task("b0", "b", now - Duration::seconds(60)), now)
        .await
        .unwrap();

    // Capacity 5 cost units, each task costs 2: two fit.
    let got = s.claim_tasks(&claim("i1", &["a"], now, 5)).await.unwrap();
    let ids: Vec<_> = got.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["a0", "a1"]);
    for t in &got {
        assert_eq!(t.status, TaskStatus::Running);
        assert_eq!(t.owner.as_deref(), Some("i1"));
        assert_eq!(t.attempts, 1);
        assert!(t.claim_token.as_deref().unwrap().starts_with("i1:"));
        assert_eq!(t.lease_expires_at, Some(now + Duration::seconds(30)));
    }
    assert_ne!(
        got[0].claim_token, got[1].claim_token,
        "a claim token names one run of one task"
    );
    let rest = s.claim_tasks(&claim("i2", &["a"], now, 100)).await.unwrap();
    let ids: Vec<_> = rest.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["a2", "a3", "a4", "a5"]);
    assert!(s
        .claim_tasks(&claim("i2", &["a"], now, 100))
        .await
        .unwrap()
        .is_empty());
    let runs = s.task_runs(Some("a0"), 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].owner, "i1");
    assert_eq!(runs[0].finished_at, None);
    // At most one of a limited type per claim.
    for i in 0..3 {
        s.schedule_task(&task(&format!("l{i}"), "limited", now), now)
            .await
            .unwrap();
    }
    let mut req = claim("i3", &["limited", "b"], now, 100);
    req.per_type = vec![("limited".into(), 1)];
    let got = s.claim_tasks(&req).await.unwrap();
    let mut ids: Vec<_> = got.iter().map(|t| t.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["b0", "l0"]);
    // Enabling makes it claimable.
    s.set_tasks_enabled(&["off".into()], true, now)
        .await
        .unwrap();
    let got = s.claim_tasks(&claim("i1", &["a"], now, 100)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, "off");
}

pub async fn expired_leases_are_taken_over_and_stale_runs_change_nothing(s: S) {
    let now = t0();
    s.schedule_task(&task("t", "a", now), now).await.unwrap();
    let first = s.claim_tasks(&claim("i1", &["a"], now, 10)).await.unwrap();
    let token1 = first[0].claim_token.clone().unwrap();
    // The lease holds: nobody else takes it; extending it works.
    let later = now + Duration::seconds(20);
    assert!(s
        .claim_tasks(&claim("i2", &["a"], later, 10))
        .await
        .unwrap()
        .is_empty());
    let held = s
        .extend_task_leases(
            "i1",
            std::slice::from_ref(&token1),
            now + Duration::seconds(40),
        )
        .await
        .unwrap();
    assert_eq!(held, vec![token1.clone()]);
    assert!(s
        .claim_tasks(&claim("i2", &["a"], now + Duration::seconds(35), 10))
        .await
        .unwrap()
        .is_empty());
    // i1 dies: past the lease, i2 takes it over, as attempt 2.
    let after = now + Duration::seconds(41);
    let second = s
        .claim_tasks(&claim("i2", &["a"], after, 10))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempts, 2);
    let token2 = second[0].claim_token.clone().unwrap();
    assert_ne!(token1, token2);
    // i1's late writes change nothing.
    assert!(s
        .extend_task_leases("i1", std::slice::from_ref(&token1), after)
        .await
        .unwrap()
        .is_empty());
    assert!(!s
        .finish_task_run("t", &token1, &RunOutcome::Delete, after, 5)
        .await
        .unwrap());
    assert_eq!(s.get_task("t").await.unwrap().owner.as_deref(), Some("i2"));
    assert!(s
        .finish_task_run("t", &token2, &RunOutcome::Delete, after, 5)
        .await
        .unwrap());
    assert!(s.get_task("t").await.is_err());
    let runs = s.task_runs(Some("t"), 10).await.unwrap();
    let outcomes: Vec<_> = runs.iter().map(|r| r.outcome.as_deref()).collect();
    assert_eq!(outcomes, [Some("succeeded"), Some("lost")]);

    // The id scheduled again: its runs get new tokens (the audit trail
    // still holds the old ones).
    s.schedule_task(&task("t", "a", after), after)
        .await
        .unwrap();
    let again = s
        .claim_tasks(&claim("i2", &["a"], after, 10))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].claim_token.as_deref(), Some(token2.as_str()));
    // A running task whose lease ran out can be run soon: it is released.
    let late = after + Duration::seconds(31);
    let soon = s.run_task_soon("t", late).await.unwrap();
    assert_eq!((soon.status, soon.owner), (TaskStatus::Idle, None));
}

pub async fn finished_runs_reschedule_fail_or_delete(s: S) {
    let now = t0();
    let mut rec = task("rec", "a", now);
    rec.interval_ms = Some(60_000);
    s.schedule_task(&rec, now).await.unwrap();
    s.schedule_task(&task("one", "a", now), now).await.unwrap();
    let got = s.claim_tasks(&claim("i1", &["a"], now, 10)).await.unwrap();
    assert_eq!(got.len(), 2);
    let token = |id: &str| {
        got.iter()
            .find(|t| t.id == id)
            .unwrap()
            .claim_token
            .clone()
            .unwrap()
    };
    let next = now + Duration::seconds(60);
    assert!(s
        .finish_task_run(
            "rec",
            &token("rec"),
            &RunOutcome::Reschedule {
                state: Some(json!({"n": 1})),
                run_at: next,
                interval_ms: None,
                reset_attempts: true,
                disable: false,
                error: None,
            },
            now,
            12,
        )
        .await
        .unwrap());
    let rec = s.get_task("rec").await.unwrap();
    assert_eq!(rec.status, TaskStatus::Idle);
    assert_eq!(rec.state, json!({"n": 1}));
    assert_eq!(rec.run_at, next);
    assert_eq!((rec.attempts, rec.runs), (0, 1));
    assert_eq!(rec.owner, None);
    assert_eq!(rec.last_run_ms, Some(12));
    assert!(s
        .finish_task_run(
            "one",
            &token("one"),
            &RunOutcome::Fail {
                error: "boom".into()
            },
            now,
            3,
        )
        .await
        .unwrap());
    let one = s.get_task("one").await.unwrap();
    assert_eq!(one.status, TaskStatus::Failed);
    assert_eq!(one.last_error.as_deref(), Some("boom"));
    // A failed task is not claimed; run soon starts it afresh.
    assert!(s
        .claim_tasks(&claim("i1", &["a"], now, 10))
        .await
        .unwrap()
        .is_empty());
    let again = s.run_task_soon("one", now).await.unwrap();
    assert_eq!((again.status, again.attempts), (TaskStatus::Idle, 0));
    let got = s.claim_tasks(&claim("i1", &["a"], now, 10)).await.unwrap();
    assert_eq!(got.len(), 1);
    // A running task cannot be run soon.
    assert!(matches!(
        s.run_task_soon("one", now).await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn deleted_tasks_queue_every_key_they_held(s: S) {
    let now = t0();
    for i in 0..3 {
        let mut t = task(&format!("u{i}"), "a", now);
        t.user = Some(user(&format!("k{i}")));
        s.schedule_task(&t, now).await.unwrap();
    }
    // The sealed keys are never needed to give the ids up.
    let got = s.get_task("u0").await.unwrap();
    assert_eq!(
        got.user.as_ref().unwrap().api_key_id.as_deref(),
        Some("k0-p")
    );
    let deleted = s
        .delete_tasks(&["u0".into(), "missing".into(), "u1".into()], now)
        .await
        .unwrap();
    assert_eq!(deleted, vec!["u0".to_string(), "u1".to_string()]);
    let queued = s
        .keys_to_invalidate(now + Duration::seconds(1), 100)
        .await
        .unwrap();
    let mut keys: Vec<_> = queued
        .iter()
        .map(|q| (q.provider, q.key_id.as_str()))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            (KeyProvider::Primary, "k0-p"),
            (KeyProvider::Primary, "k1-p"),
            (KeyProvider::Secondary, "k0-s"),
            (KeyProvider::Secondary, "k1-s"),
        ]
    );
    // Not before the delay.
    assert!(s
        .keys_to_invalidate(now - Duration::seconds(1), 100)
        .await
        .unwrap()
        .is_empty());
    // A key a live task still holds is never handed out.
    s.queue_keys_for_invalidation(&[(KeyProvider::Primary, "k2-p".into(), None)], now)
        .await
        .unwrap();
    let queued = s.keys_to_invalidate(now, 100).await.unwrap();
    assert!(queued.iter().all(|q| q.key_id != "k2-p"));
    // Failures are counted and kept; confirmations remove.
    s.key_invalidation_failed(KeyProvider::Secondary, &["k0-s".into()], "down")
        .await
        .unwrap();
    s.keys_invalidated(KeyProvider::Primary, &["k0-p".into(), "k1-p".into()])
        .await
        .unwrap();
    let queued = s.keys_to_invalidate(now, 100).await.unwrap();
    assert_eq!(queued.len(), 2);
    let k0s = queued.iter().find(|q| q.key_id == "k0-s").unwrap();
    assert_eq!((k0s.attempts, k0s.last_error.as_deref()), (1, Some("down")));
    assert_eq!(
        queued.last().unwrap().key_id,
        "k0-s",
        "a key that failed waits behind fresh ones"
    );
    // A one-shot task finished for good gives its keys up too.
    let got = s.claim_tasks(&claim("i1", &["a"], now, 10)).await.unwrap();
    assert_eq!(got[0].id, "u2");
    s.finish_task_run(
        "u2",
        got[0].claim_token.as_deref().unwrap(),
        &RunOutcome::Delete,
        now,
        1,
    )
    .await
    .unwrap();
    let queued = s.keys_to_invalidate(now, 100).await.unwrap();
    assert!(queued.iter().any(|q| q.key_id == "k2-p"));
    assert!(queued.iter().any(|q| q.key_id == "k2-s"));
}

pub async fn concurrent_claims_never_share_a_task(s: S) {
    let now = Utc::now();
    for i in 0..200 {
        s.schedule_task(&task(&format!("c{i:03}"), "a", now), now)
            .await
            .unwrap();
    }
    let mut handles = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let mut req = claim(&format!("w{w}"), &["a"], now, 14);
                req.limit = 7;
                let got = match s.claim_tasks(&req).await {
                    Ok(g) => g,
                    Err(StoreError::Busy) => continue,
                    Err(e) => panic!("{e}"),
                };
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|t| t.id));
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for h in handles {
        for id in h.await.unwrap() {
            total += 1;
            assert!(seen.insert(id.clone()), "{id} was claimed twice");
        }
    }
    assert_eq!(total, 200);
    let counts = s.task_counts(now).await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].status, TaskStatus::Running);
    assert_eq!(counts[0].count, 200);
}
