//! Races for the read-modify-write paths. On SQLite the single writer
//! serialises them; on PostgreSQL (READ COMMITTED) each would lose a change
//! if it trusted a read taken before its write.

use super::*;

/// Races for the read-modify-write paths. On SQLite the single writer
/// serialises them; on PostgreSQL (READ COMMITTED) each would lose a change
/// if it trusted a read taken before its write.
pub(super) const RACES: usize = 30;

/// Two connections enrol with one enrollment id at once, many times: at
/// most one active agent remains each time (PostgreSQL's READ COMMITTED
/// lets both transactions miss each other; the unique index catches it).
pub async fn concurrent_enrolments_with_one_enrollment_id_leave_one_agent(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    for round in 0..10 {
        let eid = format!("e{round}");
        let mut tasks = Vec::new();
        for n in 0..4 {
            let s = s.clone();
            let (a, k) = enrolling(&format!("r{round}-{n}"), "p", &eid);
            tasks.push(tokio::spawn(
                async move { s.enroll_agent(&a, &k, &[]).await },
            ));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::Conflict(_)) | Err(StoreError::Busy) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert!(ok >= 1, "one enrolment succeeds");
        let active = s
            .list_agents(
                &AgentFilter::default(),
                Page {
                    page: 1,
                    per_page: 1000,
                },
                now,
            )
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|a| a.id.starts_with(&format!("r{round}-")))
            .count();
        assert_eq!(
            active, 1,
            "round {round}: one active agent per enrollment id"
        );
    }
}

pub async fn deleting_an_output_races_making_it_default(s: S) {
    let now = Utc::now();
    s.create_output("a", &output("a", true), now).await.unwrap();
    for round in 0..RACES {
        let id = format!("b{round}");
        s.create_output(&id, &output(&id, false), now)
            .await
            .unwrap();
        let (s1, s2, id1, id2) = (s.clone(), s.clone(), id.clone(), id.clone());
        let delete = tokio::spawn(async move { s1.delete_output(&id1).await });
        let promote = tokio::spawn(async move {
            let u = OutputUpdate {
                is_default: Some(true),
                ..Default::default()
            };
            s2.update_output(&id2, &u, now).await
        });
        let _ = delete.await.unwrap();
        let _ = promote.await.unwrap();
        let defaults = s
            .list_outputs(page(1, 1000))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|o| o.is_default)
            .count();
        assert_eq!(defaults, 1, "round {round}: exactly one default output");
    }
}

pub async fn deleting_an_integration_races_moving_it(s: S) {
    install_nginx(&*s).await;
    let now = Utc::now();
    for round in 0..RACES {
        let (from, to, id) = (
            format!("f{round}"),
            format!("t{round}"),
            format!("i{round}"),
        );
        s.create_policy(&policy(&from, &from), now).await.unwrap();
        s.create_policy(&policy(&to, &to), now).await.unwrap();
        let pp = s
            .create_package_policy(&integration(&id, &from), now)
            .await
            .unwrap();
        let to_before = s.get_policy(&to).await.unwrap().revision;
        let (s1, s2, id1, id2) = (s.clone(), s.clone(), id.clone(), id.clone());
        let mut moved = integration(&id, &to);
        moved.name = pp.name.clone();
        // The move starts first, so the delete may read while it is under way.
        let mv =
            tokio::spawn(async move { s2.update_package_policy(&id2, &moved, None, now).await });
        let delete = tokio::spawn(async move { s1.delete_package_policy(&id1, now).await });
        let deleted = delete.await.unwrap();
        let moved = mv.await.unwrap();
        let to_after = s.get_policy(&to).await.unwrap().revision;
        if deleted.is_ok() && moved.is_ok() {
            // Moved, then deleted from where it was moved to: that policy
            // changed twice.
            assert!(
                to_after >= to_before + 2,
                "round {round}: the policy the integration was deleted from got no new revision"
            );
        }
        if moved.is_ok() {
            assert!(to_after > to_before, "round {round}");
        }
    }
}

pub async fn concurrent_acks_have_one_first(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    enrolled(&s, "a", "p").await;
    for round in 0..RACES {
        let mut action = unenroll_action(&format!("s{round}"), "a");
        action.action_type = ActionType::Settings;
        s.create_action(&action).await.unwrap();
        let acks: Vec<_> = (0..2)
            .map(|_| {
                let (s, id) = (s.clone(), action.id.clone());
                tokio::spawn(async move { s.ack_action("a", &id, None, now).await })
            })
            .collect();
        let mut firsts = 0;
        for a in acks {
            match a.await.unwrap() {
                Ok(ActionAck::Acked { first_time, .. }) => firsts += usize::from(first_time),
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(firsts, 1, "round {round}: one ack is the first");
    }
}

pub async fn concurrent_orphaned_reports_have_one_winner(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    for round in 0..RACES {
        let id = format!("o{round}");
        enrolled(&s, &id, "p").await;
        let reports: Vec<_> = (0..2)
            .map(|_| {
                let (s, id) = (s.clone(), id.clone());
                tokio::spawn(async move { s.audit_unenroll(&id, "orphaned", now, now).await })
            })
            .collect();
        let mut ok = 0;
        for r in reports {
            match r.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::Conflict(_)) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(
            ok, 1,
            "round {round}: a second orphaned report is a conflict"
        );
    }
}

/// Removing a package races saving an integration on it: never an
/// integration left on a removed package.
pub async fn removing_a_package_races_saving_an_integration_on_it(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    for round in 0..RACES {
        install_nginx(&*s).await;
        let id = format!("i{round}");
        let (s1, s2) = (s.clone(), s.clone());
        let new = integration(&id, "p");
        let create = tokio::spawn(async move { s1.create_package_policy(&new, now).await });
        let remove = tokio::spawn(async move { s2.delete_package("nginx", "1.20.0").await });
        let created = create.await.unwrap();
        let removed = remove.await.unwrap();
        let installed = s.package_digest("nginx", "1.20.0").await.unwrap().is_some();
        let exists = s.get_package_policy(&id).await.is_ok();
        assert!(
            !exists || installed,
            "round {round}: an integration on a removed package"
        );
        assert_eq!(exists, created.is_ok(), "round {round}: {created:?}");
        assert_eq!(installed, removed.is_err(), "round {round}: {removed:?}");
        if exists {
            s.delete_package_policy(&id, now).await.unwrap();
        }
    }
}
