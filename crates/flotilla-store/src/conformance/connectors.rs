//! Cases for cloud connectors and verifier policies.

use serde_json::{json, Map, Value};

use flotilla_domain::connector::{
    CloudProvider, PermissionResult, PermissionStatus, PermissionSummary, VerificationStatus,
};

use super::races::RACES;
use super::*;
use crate::{
    ConnectorSecret, ConnectorUpdate, Entity, NewConnector, VerificationWrite, VerifierPolicy,
};

fn vars(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

pub fn connector(id: &str) -> NewConnector {
    NewConnector {
        id: id.into(),
        name: format!("connector {id}"),
        cloud_provider: CloudProvider::Aws,
        account_type: None,
        namespace: None,
        vars: vars(json!({
            "role_arn": {"type": "text", "value": "arn:aws:iam::123456789012:role/r"},
            "external_id": {"type": "password", "value": {"isSecretRef": true, "id": format!("{id}-x")}}
        })),
        secrets: vec![ConnectorSecret {
            id: format!("{id}-x"),
            sealed: "sealed-x".into(),
        }],
    }
}

pub async fn connectors_keep_their_secrets_and_verification(s: S) {
    let t = Utc::now();
    let c = s.create_connector(&connector("c1"), t).await.unwrap();
    assert_eq!(c.package_policy_count, 0);
    assert_eq!(c.verification_status, None);
    assert!(matches!(
        s.create_connector(&connector("c1"), t).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.connector_secrets("c1").await.unwrap(),
        vec![ConnectorSecret {
            id: "c1-x".into(),
            sealed: "sealed-x".into()
        }]
    );
    // An update replaces a secret; a stale read is refused.
    let update = ConnectorUpdate {
        name: Some("renamed".into()),
        vars: Some(vars(
            json!({"external_id": {"type": "password", "value": {"isSecretRef": true, "id": "c1-y"}}}),
        )),
        add_secrets: vec![ConnectorSecret {
            id: "c1-y".into(),
            sealed: "sealed-y".into(),
        }],
        drop_secrets: vec!["c1-x".into()],
        read_at: Some(c.updated_at),
        ..Default::default()
    };
    let u = s.update_connector("c1", &update, t).await.unwrap();
    assert_eq!(u.name, "renamed");
    assert!(u.updated_at > c.updated_at, "an update moves updated_at");
    assert_eq!(s.connector_secrets("c1").await.unwrap()[0].id, "c1-y");
    assert!(matches!(
        s.update_connector("c1", &update, t).await,
        Err(StoreError::Conflict(_))
    ));
    // Verification fields: written without moving updated_at; a write for
    // another verification is skipped.
    let started = t + Duration::seconds(5);
    let w = VerificationWrite {
        status: Some(Some(VerificationStatus::Pending)),
        started_at: Some(Some(started)),
        verification_id: Some(Some("v1".into())),
        ..Default::default()
    };
    assert!(s.write_verification("c1", &w).await.unwrap());
    let summary = PermissionSummary {
        package_policy_id: "pp".into(),
        policy_id: "p".into(),
        policy_template: "ec2".into(),
        package_name: "aws".into(),
        package_version: "1.0.0".into(),
        last_verified_at: Some("2026-12-01T00:00:00Z".into()),
        permissions: vec![PermissionResult {
            action: "ec2:DescribeInstances".into(),
            status: PermissionStatus::Denied,
            required: true,
            error_code: Some("implicitDeny".into()),
            message: None,
        }],
    };
    let late = VerificationWrite {
        status: Some(Some(VerificationStatus::Success)),
        if_verification: Some("v0".into()),
        ..Default::default()
    };
    assert!(!s.write_verification("c1", &late).await.unwrap());
    let fold = VerificationWrite {
        status: Some(Some(VerificationStatus::Failed)),
        failed_at: Some(Some(started)),
        message: Some(Some("1 missing".into())),
        permissions: Some(vec![summary.clone()]),
        if_verification: Some("v1".into()),
        ..Default::default()
    };
    assert!(s.write_verification("c1", &fold).await.unwrap());
    let got = s.get_connector("c1").await.unwrap();
    assert_eq!(got.updated_at, u.updated_at);
    assert_eq!(got.verification_status, Some(VerificationStatus::Failed));
    assert_eq!(
        got.verification_started_at.map(|t| t.timestamp_millis()),
        Some(started.timestamp_millis())
    );
    assert_eq!(got.verification_id.as_deref(), Some("v1"));
    assert_eq!(got.verification_message.as_deref(), Some("1 missing"));
    assert_eq!(got.verification_permissions, vec![summary]);
    let listed = s.list_connectors(page(1, 10)).await.unwrap();
    assert_eq!((listed.total, listed.items[0].id.as_str()), (1, "c1"));
    // Deleting takes the secrets with it.
    s.delete_connector("c1").await.unwrap();
    assert!(s.connector_secrets("c1").await.unwrap().is_empty());
    assert!(matches!(
        s.get_connector("c1").await,
        Err(StoreError::NotFound {
            entity: Entity::CloudConnector,
            ..
        })
    ));
}

pub async fn a_connector_in_use_cannot_be_deleted(s: S) {
    let t = Utc::now();
    install_nginx(&*s).await;
    s.create_policy(&policy("p", "P"), t).await.unwrap();
    s.create_connector(&connector("c1"), t).await.unwrap();
    let mut i = integration("i1", "p");
    i.cloud_connector_id = Some("missing".into());
    assert!(matches!(
        s.create_package_policy(&i, t).await,
        Err(StoreError::NotFound {
            entity: Entity::CloudConnector,
            ..
        })
    ));
    i.cloud_connector_id = Some("c1".into());
    s.create_package_policy(&i, t).await.unwrap();
    assert_eq!(s.get_connector("c1").await.unwrap().package_policy_count, 1);
    assert_eq!(s.connector_integrations(10).await.unwrap().len(), 1);
    assert!(matches!(
        s.delete_connector("c1").await,
        Err(StoreError::InUse(_))
    ));
    s.delete_package_policy("i1", t).await.unwrap();
    s.delete_connector("c1").await.unwrap();
}

pub async fn deleting_a_connector_races_saving_an_integration_on_it(s: S) {
    let t = Utc::now();
    install_nginx(&*s).await;
    s.create_policy(&policy("p", "P"), t).await.unwrap();
    for round in 0..RACES {
        let cid = format!("c{round}");
        s.create_connector(&connector(&cid), t).await.unwrap();
        let id = format!("i{round}");
        let mut new = integration(&id, "p");
        new.cloud_connector_id = Some(cid.clone());
        let (s1, s2, c2) = (s.clone(), s.clone(), cid.clone());
        let create = tokio::spawn(async move { s1.create_package_policy(&new, t).await });
        let delete = tokio::spawn(async move { s2.delete_connector(&c2).await });
        let created = create.await.unwrap();
        let deleted = delete.await.unwrap();
        let exists = s.get_connector(&cid).await.is_ok();
        let used = s.get_package_policy(&id).await.is_ok();
        assert!(
            !used || exists,
            "round {round}: an integration on a deleted connector"
        );
        assert_eq!(used, created.is_ok(), "round {round}: {created:?}");
        assert_eq!(exists, deleted.is_err(), "round {round}: {deleted:?}");
        if used {
            s.delete_package_policy(&id, t).await.unwrap();
        }
    }
}

pub async fn verifier_policies_live_and_die_with_their_policy(s: S) {
    let t = Utc::now();
    let v = VerifierPolicy {
        policy_id: "vp1".into(),
        connector_id: "c1".into(),
        verification_id: "v1".into(),
        created_at: t,
        expires_at: t + Duration::minutes(5),
    };
    let p = s
        .create_verifier_policy(&policy("vp1", "Verifier 1"), &v, t)
        .await
        .unwrap();
    assert_eq!(p.id, "vp1");
    let listed = s.verifier_policies().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].verification_id, "v1");
    assert_eq!(
        listed[0].expires_at.timestamp_millis(),
        v.expires_at.timestamp_millis()
    );
    // The same verification twice: refused, and no policy is left behind.
    let again = VerifierPolicy {
        policy_id: "vp2".into(),
        ..v.clone()
    };
    assert!(s
        .create_verifier_policy(&policy("vp2", "Verifier 2"), &again, t)
        .await
        .is_err());
    assert!(s.get_policy("vp2").await.is_err());
    // Its connector cannot go while the verification is deployed.
    s.create_connector(&connector("c1"), t).await.unwrap();
    assert!(matches!(
        s.delete_connector("c1").await,
        Err(StoreError::InUse(_))
    ));
    s.delete_policy("vp1").await.unwrap();
    assert!(s.verifier_policies().await.unwrap().is_empty());
    s.delete_connector("c1").await.unwrap();
}
