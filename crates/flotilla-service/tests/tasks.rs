//! The task manager over a real (SQLite) store, driven by a manual clock:
//! retries and their backoff, failure, timeouts, lease take-over, and the
//! life cycle of a user-scoped task's key.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use secrecy::SecretString;
use serde_json::json;

use flotilla_api::tasks::{ScheduleTaskRequest, TaskSchedule};
use flotilla_domain::apikey::OperatorApiKey;
use flotilla_service::crypto::Sealer;
use flotilla_service::tasks::builtin::{self, Maintenance, INVALIDATE_API_KEYS};
use flotilla_service::tasks::keys::KeyStrategy;
use flotilla_service::tasks::{
    ManagerConfig, ManualClock, RunContext, RunResult, TaskDefinition, TaskError, TaskManager,
    TaskRunner,
};
use flotilla_service::{FleetSettings, Services};
use flotilla_store::{KeyProvider, NewTask, TaskStatus, UserScope};

struct Fixture {
    services: Services,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
        .await
        .unwrap();
    let services = Services::new(
        store,
        FleetSettings::default(),
        Sealer::from_secret(b"test key for the task manager"),
    );
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap(),
    ));
    Fixture {
        services,
        clock,
        _dir: dir,
    }
}

fn strategy() -> Arc<KeyStrategy> {
    Arc::new(KeyStrategy {
        grant_secondary: false,
        use_key: KeyProvider::Primary,
        secondary: None,
    })
}

fn manager(f: &Fixture, instance: &str, extra: Vec<TaskDefinition>) -> Arc<TaskManager> {
    let maintenance = Maintenance {
        test_types: true,
        ..Default::default()
    };
    let mut registry = builtin::registry(&maintenance, strategy());
    for d in extra {
        registry.register(d);
    }
    TaskManager::new(
        f.services.clone(),
        registry,
        f.clock.clone(),
        ManagerConfig {
            instance_id: instance.into(),
            ..Default::default()
        },
        strategy(),
    )
}

fn one_shot(id: &str, ty: &str, params: serde_json::Value) -> ScheduleTaskRequest {
    ScheduleTaskRequest {
        id: Some(id.into()),
        task_type: ty.into(),
        params: Some(params),
        state: None,
        schedule: None,
        run_at: None,
        enabled: None,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test]
async fn failures_retry_with_backoff_then_fail() {
    let f = fixture().await;
    let tm = manager(&f, "i1", vec![]);
    let t0 = f.clock.now_for_test();
    tm.schedule(None, one_shot("flaky", "test:fail", json!({"times": 2})))
        .await
        .unwrap();
    tm.schedule(None, one_shot("doomed", "test:fail", json!({})))
        .await
        .unwrap();
    tm.schedule(
        None,
        one_shot("broken", "test:fail", json!({"unrecoverable": true})),
    )
    .await
    .unwrap();

    assert_eq!(tm.run_due().await.unwrap(), 3);
    // Unrecoverable: failed at once.
    let broken = tm.get("broken").await.unwrap();
    assert_eq!(broken.status, "failed");
    assert_eq!(broken.last_error.as_deref(), Some("asked to fail for good"));
    // Retryable: back to idle, due 15–30 s later (the first backoff step).
    let flaky = tm.get("flaky").await.unwrap();
    assert_eq!((flaky.status.as_str(), flaky.attempts), ("idle", 1));
    let wait = (flaky.run_at - t0).num_milliseconds();
    assert!(
        (15_000..30_000).contains(&wait),
        "first retry after {wait} ms"
    );
    assert_eq!(flaky.last_error.as_deref(), Some("failing attempt 1"));

    // Not before it is due.
    f.clock.advance(secs(14));
    assert_eq!(tm.run_due().await.unwrap(), 0);
    f.clock.advance(secs(16));
    assert_eq!(tm.run_due().await.unwrap(), 2);
    let flaky = tm.get("flaky").await.unwrap();
    assert_eq!(flaky.attempts, 2);
    let wait = (flaky.run_at - f.clock.now_for_test()).num_milliseconds();
    assert!(
        (30_000..60_000).contains(&wait),
        "second retry after {wait} ms"
    );

    f.clock.advance(secs(60));
    assert_eq!(tm.run_due().await.unwrap(), 2);
    // The third attempt succeeds: a one-shot task is then done.
    assert!(tm.get("flaky").await.is_err());
    // Out of attempts (3): failed, with the last error.
    let doomed = tm.get("doomed").await.unwrap();
    assert_eq!(doomed.status, "failed");
    assert_eq!(
        doomed.last_error.as_deref(),
        Some("failing attempt 3 (attempt 3 of 3)")
    );
    // The audit trail has every run.
    let runs = f
        .services
        .store
        .task_runs(Some("doomed"), 10)
        .await
        .unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r.outcome.as_deref() == Some("failed")));
    // Run soon gives a failed task fresh attempts.
    let again = tm.run_soon("doomed").await.unwrap();
    assert_eq!((again.status.as_str(), again.attempts), ("idle", 0));
}

#[tokio::test]
async fn recurring_tasks_keep_their_schedule_through_failures() {
    let f = fixture().await;
    let tm = manager(&f, "i1", vec![]);
    let t0 = f.clock.now_for_test();
    let mut req = one_shot("every-minute", "test:noop", json!({}));
    req.schedule = Some(TaskSchedule {
        interval: "1m".into(),
    });
    tm.schedule(None, req.clone()).await.unwrap();
    assert_eq!(tm.run_due().await.unwrap(), 1);
    let t = tm.get("every-minute").await.unwrap();
    assert_eq!(t.state, json!({"runs": 1}));
    assert_eq!(t.run_at, t0 + chrono::Duration::seconds(60));
    assert_eq!((t.attempts, t.runs), (0, 1));
    // Scheduling the same id again is a no-op (its interval may move).
    let (again, created) = tm.schedule(None, req).await.unwrap();
    assert!(!created);
    assert_eq!(again.state, json!({"runs": 1}));
    f.clock.advance(secs(60));
    assert_eq!(tm.run_due().await.unwrap(), 1);
    assert_eq!(
        tm.get("every-minute").await.unwrap().state,
        json!({"runs": 2})
    );

    // A recurring task that fails is rescheduled, not failed.
    let mut failing = one_shot("failing-recurring", "test:fail", json!({}));
    failing.schedule = Some(TaskSchedule {
        interval: "10m".into(),
    });
    tm.schedule(None, failing).await.unwrap();
    for _ in 0..5 {
        tm.run_due().await.unwrap();
        f.clock.advance(secs(600));
    }
    let t = tm.get("failing-recurring").await.unwrap();
    assert_eq!(t.status, "idle");
    assert!(t.last_error.is_some());
}

struct Forever;

#[async_trait]
impl TaskRunner for Forever {
    async fn run(&self, _ctx: RunContext) -> Result<RunResult, TaskError> {
        std::future::pending::<()>().await;
        unreachable!()
    }
}

#[tokio::test]
async fn a_run_past_its_timeout_is_cancelled_and_counted_as_a_failure() {
    let f = fixture().await;
    let mut def = TaskDefinition::new("test:forever", "Never ends", Arc::new(Forever));
    def.timeout = Duration::from_millis(50);
    def.max_attempts = 2;
    let tm = manager(&f, "i1", vec![def]);
    tm.schedule(None, one_shot("stuck", "test:forever", json!({})))
        .await
        .unwrap();
    assert_eq!(tm.run_due().await.unwrap(), 1);
    let t = tm.get("stuck").await.unwrap();
    assert_eq!((t.status.as_str(), t.attempts), ("idle", 1));
    assert_eq!(t.last_error.as_deref(), Some("timed out after 50ms"));
    f.clock.advance(secs(31));
    assert_eq!(tm.run_due().await.unwrap(), 1);
    let t = tm.get("stuck").await.unwrap();
    assert_eq!(t.status, "failed");
}

#[tokio::test]
async fn a_lease_that_runs_out_is_taken_over_and_the_old_run_cancelled() {
    let f = fixture().await;
    let a = manager(&f, "instance-a", vec![]);
    let b = manager(&f, "instance-b", vec![]);
    a.schedule(None, one_shot("long", "test:sleep", json!({"ms": 600_000})))
        .await
        .unwrap();
    // A claims and starts it, then stops renewing (it "died").
    assert_eq!(a.poll_once().await.unwrap(), 1);
    assert_eq!(b.run_due().await.unwrap(), 0, "the lease holds");
    f.clock.advance(secs(31));
    // Past the lease, B takes it over as attempt 2 (and sleeps on).
    assert_eq!(b.poll_once().await.unwrap(), 1);
    let t = b.get("long").await.unwrap();
    assert_eq!(t.owner_id.as_deref(), Some("instance-b"));
    assert_eq!(t.attempts, 2);
    // A's lease keeper finds its claim gone and cancels its run; A's
    // result changes nothing.
    a.renew_leases().await.unwrap();
    let runs = wait_for_outcome(&f, "long", "lost").await;
    assert_eq!(runs.owner, "instance-a");
    let t = b.get("long").await.unwrap();
    assert_eq!(t.owner_id.as_deref(), Some("instance-b"));
    assert_eq!(t.status, "running");
}

async fn wait_for_outcome(f: &Fixture, task: &str, outcome: &str) -> flotilla_store::TaskRun {
    let deadline = tokio::time::Instant::now() + secs(10);
    loop {
        let runs = f.services.store.task_runs(Some(task), 10).await.unwrap();
        if let Some(r) = runs
            .into_iter()
            .find(|r| r.outcome.as_deref() == Some(outcome))
        {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no run of {task} ended {outcome}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn operator(f: &Fixture) -> (OperatorApiKey, SecretString) {
    let secret = "op-secret-for-task-tests-0123456789";
    let key = OperatorApiKey {
        id: "op1".into(),
        name: "ops".into(),
        active: true,
        hint: "op-s".into(),
        created_at: Utc::now(),
    };
    let stored = f
        .services
        .store
        .create_operator_key(&key, &flotilla_service::secrets::hash_token(secret))
        .await
        .unwrap();
    (stored, SecretString::from(secret.to_owned()))
}

#[tokio::test]
async fn user_scoped_keys_are_granted_used_and_invalidated_after_the_delay() {
    let f = fixture().await;
    let tm = manager(&f, "i1", vec![]);
    let (op, credential) = operator(&f).await;
    let (task, _) = tm
        .schedule(
            Some((&op, &credential)),
            one_shot("mine", "test:whoami", json!({})),
        )
        .await
        .unwrap();
    let scope = task.user_scope.clone().unwrap();
    assert_eq!(scope.user_id, "operator:op1");
    let key_id = scope.api_key_id.clone().unwrap();
    // Stored sealed: the record holds no plain key.
    let stored = f.services.store.get_task("mine").await.unwrap();
    let sealed = stored.user.unwrap().api_key_sealed.unwrap();
    assert!(!sealed.contains(&key_id));
    // The run authenticates as the operator's granted key.
    assert_eq!(tm.run_due().await.unwrap(), 1);
    let t = tm.get("mine").await.unwrap();
    assert_eq!(t.state["provider"], "primary");
    assert_eq!(t.state["key_id"], key_id.as_str());
    assert_eq!(t.state["verified"], key_id.as_str());
    let record = f
        .services
        .store
        .get_api_key(&key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.owner.as_deref(), Some("operator:op1"));

    // A task whose sealed key cannot be opened (corrupted) is deleted in
    // the same bulk delete and still gives up its key.
    let (other, _) = tm
        .schedule(
            Some((&op, &credential)),
            one_shot("other", "test:whoami", json!({})),
        )
        .await
        .unwrap();
    let other_key = other.user_scope.unwrap().api_key_id.unwrap();
    f.services
        .store
        .schedule_task(
            &NewTask {
                id: "unreadable".into(),
                task_type: "test:whoami".into(),
                params: json!({}),
                state: json!({}),
                interval_ms: None,
                run_at: f.clock.now_for_test(),
                enabled: false,
                cost: 2,
                user: Some(UserScope {
                    user_id: "operator:op1".into(),
                    user_name: "ops".into(),
                    api_key_id: Some(other_key.clone()),
                    api_key_sealed: Some("garbage".into()),
                    secondary_api_key_id: None,
                    secondary_api_key_sealed: None,
                }),
            },
            f.clock.now_for_test(),
        )
        .await
        .unwrap();
    f.services
        .store
        .delete_tasks(&["other".into()], f.clock.now_for_test())
        .await
        .unwrap();
    let result = tm
        .delete(&["mine".into(), "unreadable".into(), "missing".into()])
        .await
        .unwrap();
    let ok: Vec<bool> = result.results.iter().map(|r| r.success).collect();
    assert_eq!(ok, [true, true, false]);

    // Not invalidated before the removal delay (1 h)…
    builtin::ensure_scheduled(
        &tm,
        &Maintenance {
            test_types: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tm.run_due().await.unwrap();
    assert!(f
        .services
        .store
        .get_api_key(&key_id)
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_none());
    // …then every queued key is.
    f.clock.advance(secs(3601));
    tm.run_due().await.unwrap();
    for k in [&key_id, &other_key] {
        let r = f.services.store.get_api_key(k).await.unwrap().unwrap();
        assert!(r.invalidated_at.is_some(), "{k} was not invalidated");
    }
    assert!(f
        .services
        .store
        .keys_to_invalidate(f.clock.now_for_test(), 10)
        .await
        .unwrap()
        .is_empty());
    let inv_task = tm.get(INVALIDATE_API_KEYS).await.unwrap();
    assert_eq!(inv_task.state["invalidated"], 2);
    assert_eq!(inv_task.status, "idle", "it always reschedules");
}

#[tokio::test]
async fn operators_cannot_schedule_internal_types_or_bad_bodies() {
    let f = fixture().await;
    let tm = manager(&f, "i1", vec![]);
    let (op, credential) = operator(&f).await;
    let who = Some((&op, &credential));
    for (req, field) in [
        (one_shot("x", INVALIDATE_API_KEYS, json!({})), "taskType"),
        (one_shot("x", "no:such", json!({})), "taskType"),
        (one_shot("bad id with spaces", "test:noop", json!({})), "id"),
        (
            ScheduleTaskRequest {
                schedule: Some(TaskSchedule {
                    interval: "soon".into(),
                }),
                ..one_shot("x", "test:noop", json!({}))
            },
            "schedule.interval",
        ),
        (one_shot("x", "test:noop", json!([1])), "params"),
    ] {
        match tm.schedule(who, req).await {
            Err(flotilla_service::ServiceError::Invalid(v)) => assert_eq!(v.field, field),
            other => panic!("expected a validation error on {field}, got {other:?}"),
        }
    }
    // A one-shot task with another type under a taken id is a conflict.
    tm.schedule(who, one_shot("taken", "test:noop", json!({})))
        .await
        .unwrap();
    assert!(matches!(
        tm.schedule(who, one_shot("taken", "test:sleep", json!({})))
            .await,
        Err(flotilla_service::ServiceError::Conflict(_))
    ));
    assert_eq!(
        f.services.store.get_task("taken").await.unwrap().status,
        TaskStatus::Idle
    );
}

trait NowForTest {
    fn now_for_test(&self) -> chrono::DateTime<Utc>;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> chrono::DateTime<Utc> {
        use flotilla_service::tasks::Clock as _;
        self.now()
    }
}

#[tokio::test]
async fn a_provider_that_is_down_keeps_its_keys_queued() {
    use flotilla_service::tasks::keys::SecondaryProvider;
    let f = fixture().await;
    // Nothing listens there.
    let down = Arc::new(KeyStrategy {
        grant_secondary: true,
        use_key: KeyProvider::Primary,
        secondary: Some(SecondaryProvider {
            hosts: vec!["http://127.0.0.1:9".into()],
            credential: SecretString::from("ApiKey eDp5".to_owned()),
        }),
    });
    let maintenance = Maintenance {
        removal_delay: Duration::ZERO,
        ..Default::default()
    };
    let tm = TaskManager::new(
        f.services.clone(),
        builtin::registry(&maintenance, down.clone()),
        f.clock.clone(),
        ManagerConfig::default(),
        down,
    );
    let now = f.clock.now_for_test();
    f.services
        .store
        .queue_keys_for_invalidation(
            &[
                (
                    KeyProvider::Secondary,
                    "remote-1".into(),
                    Some("gone".into()),
                ),
                (KeyProvider::Primary, "local-1".into(), Some("gone".into())),
            ],
            now,
        )
        .await
        .unwrap();
    builtin::ensure_scheduled(&tm, &maintenance).await.unwrap();
    tm.run_due().await.unwrap();
    let queued = f.services.store.keys_to_invalidate(now, 10).await.unwrap();
    assert_eq!(queued.len(), 1, "the primary key is done: {queued:?}");
    assert_eq!(queued[0].key_id, "remote-1");
    assert_eq!(queued[0].attempts, 1);
    assert!(queued[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("unreachable"));
    // The invalidation task itself did not fail: it retries on schedule.
    let t = tm.get(INVALIDATE_API_KEYS).await.unwrap();
    assert_eq!(t.status, "idle");
    assert_eq!(t.state["failed"], 1);
}

struct Panics;

#[async_trait]
impl TaskRunner for Panics {
    async fn run(&self, _ctx: RunContext) -> Result<RunResult, TaskError> {
        panic!("a bug in a runner");
    }
}

#[tokio::test]
async fn a_runner_that_panics_fails_its_run_and_frees_its_slot() {
    let f = fixture().await;
    let def = TaskDefinition::new("test:panics", "Panics", Arc::new(Panics));
    let tm = manager(&f, "i1", vec![def]);
    tm.schedule(None, one_shot("bug", "test:panics", json!({})))
        .await
        .unwrap();
    assert_eq!(tm.run_due().await.unwrap(), 1);
    let t = tm.get("bug").await.unwrap();
    assert_eq!((t.status.as_str(), t.attempts), ("idle", 1));
    assert_eq!(t.last_error.as_deref(), Some("the run panicked"));
    let h = tm.health().await.unwrap();
    assert_eq!(h["stats"]["runtime"]["load"]["running"], 0, "{h}");
}
