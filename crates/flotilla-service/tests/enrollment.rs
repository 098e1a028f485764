//! Enrollment keys' limits through the fleet use case, judged by the
//! services' clock (a manual one: no sleeps).

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use secrecy::ExposeSecret;
use serde_json::json;

use flotilla_api::management::{CreateAgentPolicy, CreateEnrollmentKey};
use flotilla_service::crypto::Sealer;
use flotilla_service::fleet::FleetErrorKind;
use flotilla_service::tasks::ManualClock;
use flotilla_service::{FleetSettings, Services};
use flotilla_store::AgentFilter;

async fn services(dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> Services {
    let store = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
        .await
        .unwrap();
    let s = Services::new(
        store,
        FleetSettings::default(),
        Sealer::from_secret(b"test key for enrollment"),
    )
    .with_clock(clock);
    s.management()
        .create_policy(CreateAgentPolicy {
            id: Some("p".into()),
            name: "p".into(),
            namespace: None,
            description: None,
            output_id: None,
            inactivity_timeout: None,
        })
        .await
        .unwrap();
    s
}

async fn enroll(s: &Services, token: &str) -> Result<String, FleetErrorKind> {
    let fleet = s.fleet();
    let grant = fleet
        .enrollment_grant(token, None)
        .await
        .map_err(|e| e.kind)?;
    let body = serde_json::from_value(json!({"type": "PERMANENT", "metadata": {}})).unwrap();
    fleet
        .enroll(grant, Some("Elastic Agent v9.6.0"), body)
        .await
        .map(|r| r.item.id)
        .map_err(|e| e.kind)
}

#[tokio::test]
async fn a_key_expires_by_the_services_clock_and_is_spent_after_max_uses() {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let s = services(&dir, clock.clone()).await;
    let m = s.management();

    // An expiration in the past (by the clock) is refused when creating.
    let past = m
        .create_enrollment_key(CreateEnrollmentKey {
            policy_id: "p".into(),
            name: None,
            expiration: Some(start - chrono::Duration::seconds(1)),
            max_uses: None,
        })
        .await;
    assert!(past.unwrap_err().to_string().contains("expiration"));

    let (key, token) = m
        .create_enrollment_key(CreateEnrollmentKey {
            policy_id: "p".into(),
            name: None,
            expiration: Some(start + chrono::Duration::hours(1)),
            max_uses: Some(2),
        })
        .await
        .unwrap();
    let token = token.expose_secret().to_owned();
    let a1 = enroll(&s, &token).await.unwrap();
    let agent = m.get_agent(&a1).await.unwrap();
    assert_eq!(
        agent.enrollment_api_key_id.as_deref(),
        Some(key.id.as_str())
    );

    // Past the expiration: refused as expired, though a use is left.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        enroll(&s, &token).await,
        Err(FleetErrorKind::EnrollmentKeyExpired)
    );
    assert_eq!(m.get_enrollment_key(&key.id).await.unwrap().uses, 1);

    // A key limited only by uses: spent after two.
    let (two, token) = m
        .create_enrollment_key(CreateEnrollmentKey {
            policy_id: "p".into(),
            name: None,
            expiration: None,
            max_uses: Some(2),
        })
        .await
        .unwrap();
    let token = token.expose_secret().to_owned();
    enroll(&s, &token).await.unwrap();
    enroll(&s, &token).await.unwrap();
    assert_eq!(
        enroll(&s, &token).await,
        Err(FleetErrorKind::EnrollmentKeySpent)
    );
    let two = m.get_enrollment_key(&two.id).await.unwrap();
    assert_eq!((two.uses, two.max_uses), (2, Some(2)));
    let filter = AgentFilter {
        enrollment_api_key_id: Some(two.id.clone()),
        ..Default::default()
    };
    let page = flotilla_store::Page::default();
    assert_eq!(m.list_agents(&filter, page).await.unwrap().total, 2);

    // An unlimited key counts its uses too.
    let (any, token) = m
        .create_enrollment_key(CreateEnrollmentKey {
            policy_id: "p".into(),
            name: None,
            expiration: None,
            max_uses: None,
        })
        .await
        .unwrap();
    let token = token.expose_secret().to_owned();
    for _ in 0..3 {
        enroll(&s, &token).await.unwrap();
    }
    assert_eq!(m.get_enrollment_key(&any.id).await.unwrap().uses, 3);
}
