//! Cases for what the operator console reads: its sessions, and a
//! policy's rollout.

use super::*;
use crate::{Entity, NewConsoleSession};

fn operator(id: &str) -> OperatorApiKey {
    OperatorApiKey {
        id: id.into(),
        name: format!("operator {id}"),
        active: true,
        hint: "flt_".into(),
        created_at: Utc::now(),
    }
}

fn session(hash: &str, key: &str, expires: chrono::DateTime<Utc>) -> NewConsoleSession {
    NewConsoleSession {
        id_hash: hash.into(),
        operator_key_id: key.into(),
        csrf_token: format!("csrf-{hash}"),
        created_at: expires - Duration::hours(8),
        expires_at: expires,
    }
}

pub async fn console_sessions_expire_end_with_their_key_and_sign_out(s: S) {
    let now = Utc::now();
    s.create_operator_key(&operator("k1"), "kh1").await.unwrap();
    s.create_operator_key(&operator("k2"), "kh2").await.unwrap();
    let later = now + Duration::hours(8);
    s.create_console_session(&session("s1", "k1", later))
        .await
        .unwrap();
    s.create_console_session(&session("s2", "k1", now + Duration::minutes(1)))
        .await
        .unwrap();
    s.create_console_session(&session("s3", "k2", later))
        .await
        .unwrap();

    // Found by its hash, with its operator and CSRF token.
    let found = s.find_console_session("s1", now).await.unwrap().unwrap();
    assert_eq!(found.operator.id, "k1");
    assert_eq!(found.operator.name, "operator k1");
    assert_eq!(found.csrf_token, "csrf-s1");
    assert_eq!(
        found.expires_at.timestamp_millis(),
        later.timestamp_millis()
    );
    assert!(s.find_console_session("nope", now).await.unwrap().is_none());

    // A session is over at its expiry, and expired ones can be removed.
    let at_expiry = now + Duration::minutes(1);
    assert!(s
        .find_console_session("s2", at_expiry)
        .await
        .unwrap()
        .is_none());
    assert!(s
        .find_console_session("s2", at_expiry - Duration::milliseconds(1))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        s.delete_expired_console_sessions(at_expiry).await.unwrap(),
        1
    );
    assert!(s.find_console_session("s2", now).await.unwrap().is_none());

    // The same id twice is a conflict; an unknown or revoked key opens none.
    assert!(matches!(
        s.create_console_session(&session("s1", "k2", later)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_console_session(&session("s4", "nobody", later))
            .await,
        Err(StoreError::NotFound {
            entity: Entity::OperatorKey,
            ..
        })
    ));

    // Revoking the key ends its sessions, and only its.
    s.revoke_operator_key("k1").await.unwrap();
    assert!(s.find_console_session("s1", now).await.unwrap().is_none());
    assert!(matches!(
        s.create_console_session(&session("s5", "k1", later)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(s.find_console_session("s3", now).await.unwrap().is_some());

    // Sign-out deletes it.
    assert!(s.delete_console_session("s3").await.unwrap());
    assert!(!s.delete_console_session("s3").await.unwrap());
    assert!(s.find_console_session("s3", now).await.unwrap().is_none());
}

pub async fn policy_rollout_counts_active_agents_on_the_revision(s: S) {
    let p = s
        .create_policy(&policy("p1", "one"), Utc::now())
        .await
        .unwrap();
    s.create_policy(&policy("p2", "two"), Utc::now())
        .await
        .unwrap();
    let none = s.policy_rollout("p1", p.revision).await.unwrap();
    assert_eq!((none.agents, none.on_revision), (0, 0));
    for id in ["a1", "a2", "a3"] {
        enrolled(&s, id, "p1").await;
    }
    enrolled(&s, "b1", "p2").await;
    let r = s.policy_rollout("p1", p.revision).await.unwrap();
    assert_eq!((r.agents, r.on_revision), (3, 0), "none runs it yet");
    s.agent_runs_policy("a1", "p1", p.revision, Utc::now())
        .await
        .unwrap();
    let update = AgentPolicyUpdate {
        description: Some(Some("changed".into())),
        ..Default::default()
    };
    let changed = s.update_policy("p1", &update, Utc::now()).await.unwrap();
    assert!(changed.revision > p.revision);
    s.agent_runs_policy("a2", "p1", changed.revision, Utc::now())
        .await
        .unwrap();
    let r = s.policy_rollout("p1", p.revision).await.unwrap();
    assert_eq!((r.agents, r.on_revision), (3, 2), "a later revision counts");
    let r = s.policy_rollout("p1", changed.revision).await.unwrap();
    assert_eq!((r.agents, r.on_revision), (3, 1));
    // Unenrolled agents are not the policy's any more.
    s.unenroll_now("a3", Utc::now()).await.unwrap();
    let r = s.policy_rollout("p1", p.revision).await.unwrap();
    assert_eq!((r.agents, r.on_revision), (2, 2));
    let r = s.policy_rollout("p2", 1).await.unwrap();
    assert_eq!(r.agents, 1);
}

pub async fn rollout_history_counts_when_agents_reached_the_revision(s: S) {
    let t0 = Utc::now() - Duration::minutes(10);
    let p = s.create_policy(&policy("p1", "one"), t0).await.unwrap();
    for id in ["a1", "a2", "a3", "a4"] {
        enrolled(&s, id, "p1").await;
    }
    let h = s
        .policy_rollout_history("p1", p.revision, t0, 10)
        .await
        .unwrap();
    assert_eq!(h.by_revision, vec![(None, 4)], "none runs a revision yet");
    assert!(h.reached.is_empty() && h.last_reached.is_none(), "{h:?}");
    // Two agents take the first revision, then the policy changes and
    // three take the new one: one at once, two four seconds later.
    for id in ["a1", "a2"] {
        s.agent_runs_policy(id, "p1", p.revision, t0 + Duration::seconds(1))
            .await
            .unwrap();
    }
    let update = AgentPolicyUpdate {
        description: Some(Some("changed".into())),
        ..Default::default()
    };
    let t1 = t0 + Duration::seconds(60);
    let changed = s.update_policy("p1", &update, t1).await.unwrap();
    s.agent_runs_policy("a1", "p1", changed.revision, t1)
        .await
        .unwrap();
    for id in ["a3", "a4"] {
        s.agent_runs_policy(id, "p1", changed.revision, t1 + Duration::seconds(4))
            .await
            .unwrap();
    }
    let h = s
        .policy_rollout_history("p1", changed.revision, t1, 4)
        .await
        .unwrap();
    assert_eq!(
        h.by_revision,
        vec![(Some(changed.revision), 3), (Some(p.revision), 1)],
        "newest revision first"
    );
    assert_eq!(
        h.last_reached.map(|t| t.timestamp_millis()),
        Some((t1 + Duration::seconds(4)).timestamp_millis())
    );
    let counts: Vec<u64> = h.reached.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, vec![1, 2], "{h:?}");
    assert_eq!(h.reached[0].0.timestamp_millis(), t1.timestamp_millis());
    assert!(h.reached[1].0 > t1 && h.reached[1].0 <= t1 + Duration::seconds(4));
    // Reassigned agents leave the policy, their revision forgotten;
    // arrivals before `since` are counted in the first bucket.
    s.create_policy(&policy("p2", "two"), t0).await.unwrap();
    s.reassign_agent("a3", "p2", t1 + Duration::seconds(5))
        .await
        .unwrap();
    let h = s
        .policy_rollout_history("p1", changed.revision, t1 + Duration::seconds(2), 4)
        .await
        .unwrap();
    assert_eq!(h.by_revision[0], (Some(changed.revision), 2));
    let counts: Vec<u64> = h.reached.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts.iter().sum::<u64>(), 2);
    assert_eq!(counts[0], 1, "a1 arrived before `since`: {h:?}");
    let h2 = s.policy_rollout_history("p2", 1, t0, 4).await.unwrap();
    assert_eq!(h2.by_revision, vec![(None, 1)]);
}
