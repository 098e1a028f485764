//! Cases for installed packages and the sealed secrets of integrations.

use std::collections::BTreeMap;

use flotilla_domain::package_policy::{NewSecret, SecretReference};

use super::*;
use crate::{Entity, Installed, StoredPackage};

fn package(name: &str, version: &str, manifest: &str) -> StoredPackage {
    StoredPackage {
        name: name.into(),
        version: version.into(),
        title: "Demo".into(),
        package_type: "integration".into(),
        source: "upload".into(),
        digest: format!("digest-of-{manifest}"),
        files: BTreeMap::from([("manifest.yml".to_owned(), manifest.to_owned())]),
        installed_at: Utc::now(),
    }
}

pub async fn packages_install_once_and_are_removed_only_when_unused(s: S) {
    let p = package("nginx", "1.20.0", "name: nginx\n");
    assert_eq!(s.install_package(&p).await.unwrap(), Installed::New);
    // The same content again is a no-op; other content for the same version
    // is refused.
    assert_eq!(
        s.install_package(&p).await.unwrap(),
        Installed::AlreadyInstalled
    );
    let mut other = p.clone();
    other.files.insert("changelog.yml".into(), "x".into());
    other.digest = "another digest".into();
    assert!(matches!(
        s.install_package(&other).await,
        Err(StoreError::Conflict(_))
    ));
    let newer = package("nginx", "1.21.0", "name: nginx\nversion: 1.21.0\n");
    s.install_package(&newer).await.unwrap();

    assert_eq!(
        s.package_digest("nginx", "1.20.0").await.unwrap(),
        Some(p.digest.clone())
    );
    assert_eq!(s.package_digest("nginx", "0.0.1").await.unwrap(), None);
    let got = s.get_package("nginx", "1.20.0").await.unwrap();
    assert_eq!(got.files, p.files);
    assert_eq!(got.source, "upload");
    assert!(matches!(
        s.get_package("nginx", "9.9.9").await,
        Err(StoreError::NotFound {
            entity: Entity::Package,
            ..
        })
    ));
    let listed = s.list_packages().await.unwrap();
    let versions: Vec<_> = listed.iter().map(|p| p.version.as_str()).collect();
    assert_eq!(versions, ["1.20.0", "1.21.0"]);
    assert!(
        listed.iter().all(|p| p.files.is_empty()),
        "listing carries no files"
    );

    // In use by an integration: refused; unused: removed.
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_package_policy(&integration("i", "p"), now)
        .await
        .unwrap();
    assert!(matches!(
        s.delete_package("nginx", "1.20.0").await,
        Err(StoreError::InUse(_))
    ));
    s.delete_package("nginx", "1.21.0").await.unwrap();
    s.delete_package_policy("i", now).await.unwrap();
    s.delete_package("nginx", "1.20.0").await.unwrap();
    assert!(matches!(
        s.delete_package("nginx", "1.20.0").await,
        Err(StoreError::NotFound {
            entity: Entity::Package,
            ..
        })
    ));
    assert!(s.list_packages().await.unwrap().is_empty());
    // An integration needs its package version installed.
    assert!(matches!(
        s.create_package_policy(&integration("j", "p"), now).await,
        Err(StoreError::NotFound {
            entity: Entity::Package,
            ..
        })
    ));
}

fn pairs(v: Vec<crate::SealedSecret>) -> Vec<(String, String)> {
    v.into_iter()
        .map(|s| {
            assert_eq!(s.package_policy_id, "i");
            (s.id, s.sealed)
        })
        .collect()
}

pub async fn integration_secrets_follow_their_references(s: S) {
    install_nginx(&*s).await;
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    let mut new = integration("i", "p");
    new.secret_references = vec![
        SecretReference { id: "s1".into() },
        SecretReference { id: "s2".into() },
    ];
    new.new_secrets = vec![
        NewSecret {
            id: "s1".into(),
            sealed: "sealed-1".into(),
        },
        NewSecret {
            id: "s2".into(),
            sealed: "sealed-2".into(),
        },
    ];
    let pp = s.create_package_policy(&new, now).await.unwrap();
    assert_eq!(pp.secret_references, new.secret_references);
    assert_eq!(
        pairs(s.policy_secrets("p").await.unwrap()),
        vec![
            ("s1".to_owned(), "sealed-1".to_owned()),
            ("s2".to_owned(), "sealed-2".to_owned())
        ]
    );
    // An update that keeps s1, drops s2 and adds s3.
    let mut update = new.clone();
    update.secret_references = vec![
        SecretReference { id: "s1".into() },
        SecretReference { id: "s3".into() },
    ];
    update.new_secrets = vec![NewSecret {
        id: "s3".into(),
        sealed: "sealed-3".into(),
    }];
    s.update_package_policy("i", &update, None, now)
        .await
        .unwrap();
    assert_eq!(
        pairs(s.policy_secrets("p").await.unwrap()),
        vec![
            ("s1".to_owned(), "sealed-1".to_owned()),
            ("s3".to_owned(), "sealed-3".to_owned())
        ]
    );
    // Deleting the integration deletes its secrets.
    s.delete_package_policy("i", now).await.unwrap();
    assert!(s.policy_secrets("p").await.unwrap().is_empty());
}
