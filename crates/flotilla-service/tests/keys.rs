//! The key service over a real (SQLite) store: grant, authenticate,
//! has_privileges, invalidate.

use std::sync::Arc;

use base64::Engine as _;
use secrecy::ExposeSecret;
use serde_json::json;

use flotilla_domain::permissions::{IndexPermission, Permissions, RoleDescriptor};
use flotilla_service::keys::{KeyRejection, KeyService};
use flotilla_store::KeyKind;

fn roles() -> Permissions {
    Permissions(
        [(
            "nginx".to_string(),
            RoleDescriptor {
                cluster: vec![],
                indices: Some(vec![IndexPermission {
                    names: vec!["logs-nginx.*-prod".into()],
                    privileges: vec!["create_doc".into()],
                }]),
            },
        )]
        .into(),
    )
}

#[tokio::test]
async fn grant_authenticate_check_and_invalidate() {
    let dir = tempfile::tempdir().unwrap();
    let store = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
        .await
        .unwrap();
    let keys = KeyService::new(Arc::clone(&store));

    let key = keys.mint(
        "agent-1:default",
        KeyKind::Output,
        Some("agent-1"),
        &roles(),
        json!({"a": 1}),
    );
    store.insert_api_key(&key.record).await.unwrap();
    let plain = key.credential.expose_secret().to_owned();
    let stored = store.get_api_key(&key.record.id).await.unwrap().unwrap();
    assert!(
        !stored
            .secret_hash
            .contains(plain.split(':').nth(1).unwrap()),
        "only a hash is stored"
    );

    // Both the plain `id:secret` and its base64 authenticate.
    let found = keys.authenticate(&key.encoded()).await.unwrap().unwrap();
    assert_eq!(found.id, key.record.id);
    assert!(keys.authenticate(&plain).await.unwrap().is_ok());
    let wrong = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:not-the-secret", key.record.id));
    assert_eq!(
        keys.authenticate(&wrong).await.unwrap().unwrap_err(),
        KeyRejection::Unknown
    );
    assert_eq!(
        keys.authenticate("garbage").await.unwrap().unwrap_err(),
        KeyRejection::Malformed
    );

    let granted = KeyService::permissions(&found).expect("a permissions block");
    assert!(granted.allows("logs-nginx.access-prod", "create_doc"));
    assert!(!granted.allows("logs-nginx.access-prod", "read"));
    assert!(!granted.allows("logs-nginx.access-dev", "create_doc"));

    assert_eq!(
        store
            .invalidate_api_keys(std::slice::from_ref(&key.record.id), chrono::Utc::now())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        keys.authenticate(&key.encoded())
            .await
            .unwrap()
            .unwrap_err(),
        KeyRejection::Invalidated
    );
    assert_eq!(
        store
            .invalidate_api_keys(std::slice::from_ref(&key.record.id), chrono::Utc::now())
            .await
            .unwrap(),
        0,
        "idempotent"
    );
}
