//! Agent status history: counts by status in one read, one sample per
//! interval however many servers record it, pruning.

use super::*;
use flotilla_domain::status_history::StatusSample;

fn checkin(id: &str, at: chrono::DateTime<Utc>, status: &str) -> CheckinRecord {
    CheckinRecord {
        agent_id: id.into(),
        at,
        status: status.into(),
        message: String::new(),
        local_metadata: None,
        components: None,
        agent_version: None,
        reported_policy: None,
    }
}

fn sample(at: chrono::DateTime<Utc>, online: u64) -> StatusSample {
    StatusSample {
        at,
        online,
        offline: 1,
        unhealthy: 2,
        updating: 3,
        inactive: 4,
    }
}

pub async fn agent_status_counts_and_history_samples(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    for id in ["on", "sick", "new", "gone"] {
        enrolled(&s, id, "p").await;
    }
    s.record_checkins(&[checkin("on", now, "online"), checkin("sick", now, "error")])
        .await
        .unwrap();
    s.unenroll_now("gone", now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    enrolled(&s, "elsewhere", "q").await;
    let of_q = s.agent_status_counts(Some("q"), now).await.unwrap();
    assert_eq!(of_q.iter().map(|(_, n)| n).sum::<u64>(), 1, "{of_q:?}");
    assert!(of_q.contains(&(AgentStatus::Enrolling, 1)));
    let counts = s.agent_status_counts(Some("p"), now).await.unwrap();
    let all = s.agent_status_counts(None, now).await.unwrap();
    assert_eq!(
        all.iter().map(|(_, n)| n).sum::<u64>(),
        counts.iter().map(|(_, n)| n).sum::<u64>() + 1
    );
    let of = |st: AgentStatus| counts.iter().find(|(s, _)| *s == st).unwrap().1;
    assert_eq!(of(AgentStatus::Online), 1, "{counts:?}");
    assert_eq!(of(AgentStatus::Error), 1, "{counts:?}");
    assert_eq!(of(AgentStatus::Enrolling), 1, "{counts:?}");
    assert_eq!(of(AgentStatus::Unenrolled), 1, "{counts:?}");
    // Later, the check-ins are old: offline, as the listing says.
    let later = now + Duration::hours(1);
    let counts = s.agent_status_counts(Some("p"), later).await.unwrap();
    let listed = s
        .list_agents(
            &AgentFilter {
                status: Some(AgentStatus::Offline),
                ..Default::default()
            },
            page(1, 10),
            later,
        )
        .await
        .unwrap()
        .total;
    assert_eq!(
        counts
            .iter()
            .find(|(s, _)| *s == AgentStatus::Offline)
            .unwrap()
            .1,
        listed
    );

    // One sample per interval: the second write of a bucket is ignored.
    let t0 = chrono::DateTime::from_timestamp_millis(1_700_000_040_000).unwrap();
    assert!(s.record_status_sample(&sample(t0, 5)).await.unwrap());
    assert!(!s.record_status_sample(&sample(t0, 99)).await.unwrap());
    for i in 1..5 {
        let at = t0 + Duration::minutes(i);
        assert!(s
            .record_status_sample(&sample(at, 5 + i as u64))
            .await
            .unwrap());
    }
    let all = s
        .status_history(t0, t0 + Duration::hours(1), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0], sample(t0, 5), "the first write stands");
    assert!(all.windows(2).all(|w| w[0].at < w[1].at), "oldest first");
    // A limit keeps the newest.
    let last = s
        .status_history(t0, t0 + Duration::hours(1), 2)
        .await
        .unwrap();
    assert_eq!(last.iter().map(|x| x.online).collect::<Vec<_>>(), [8, 9]);
    let some = s
        .status_history(t0 + Duration::minutes(1), t0 + Duration::minutes(2), 100)
        .await
        .unwrap();
    assert_eq!(some.len(), 2);
    assert_eq!(
        s.prune_status_history(t0 + Duration::minutes(3))
            .await
            .unwrap(),
        3
    );
    let left = s
        .status_history(t0, t0 + Duration::hours(1), 100)
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
}

/// Servers sampling the same interval at once: one row.
pub async fn concurrent_status_samples_write_one_row(s: S) {
    let t0 = chrono::DateTime::from_timestamp_millis(1_700_000_100_000).unwrap();
    let mut calls = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        calls.push(tokio::spawn(async move {
            s.record_status_sample(&sample(t0, i)).await.unwrap()
        }));
    }
    let mut written = 0;
    for c in calls {
        if c.await.unwrap() {
            written += 1;
        }
    }
    assert_eq!(written, 1);
    assert_eq!(s.status_history(t0, t0, 10).await.unwrap().len(), 1);
}
