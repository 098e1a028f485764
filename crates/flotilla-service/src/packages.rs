//! The installed packages every request resolves against: the built-in
//! set (in the binary) and those installed into the store (shared by every
//! server instance). A name and version never changes once installed, so
//! parsed packages are cached for the life of the process.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use flotilla_packages::Package;
use flotilla_store::{Entity, Store, StoreError, StoredPackage};

use crate::ServiceError;

/// Where an installed package came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Builtin,
    Upload,
    Directory,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Builtin => "builtin",
            Source::Upload => "upload",
            Source::Directory => "directory",
        }
    }
}

/// A package as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub version: String,
    pub title: String,
    pub package_type: String,
    pub source: String,
    pub installed_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub struct PackageRegistry {
    builtin: Vec<Arc<Package>>,
    /// Parsed packages by name, version and digest: another instance may
    /// remove a version and install other content under it, so the digest
    /// in the store says which content is current.
    cache: RwLock<HashMap<(String, String, String), Arc<Package>>>,
}

/// A digest of a package's files (what the store compares and the cache keys by).
pub fn digest(package: &Package) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (path, text) in package.files() {
        h.update((path.len() as u64).to_be_bytes());
        h.update(path.as_bytes());
        h.update((text.len() as u64).to_be_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

impl Default for PackageRegistry {
    fn default() -> Self {
        PackageRegistry {
            builtin: flotilla_packages::builtin::builtin()
                .iter()
                .cloned()
                .map(Arc::new)
                .collect(),
            cache: Default::default(),
        }
    }
}

/// Versions compare as semantic versions (every installed package has one).
fn version_order(v: &str) -> Option<semver::Version> {
    semver::Version::parse(v).ok()
}

impl PackageRegistry {
    pub fn builtin(&self, name: &str, version: &str) -> Option<&Arc<Package>> {
        self.builtin
            .iter()
            .find(|p| p.name() == name && p.version() == version)
    }

    /// One installed version, parsed.
    pub async fn get(
        &self,
        store: &dyn Store,
        name: &str,
        version: &str,
    ) -> Result<Arc<Package>, ServiceError> {
        if let Some(p) = self.builtin(name, version) {
            return Ok(p.clone());
        }
        let Some(digest) = store.package_digest(name, version).await? else {
            return Err(
                StoreError::not_found(Entity::Package, &format!("{name}-{version}")).into(),
            );
        };
        let key = (name.to_owned(), version.to_owned(), digest);
        if let Some(p) = self.cache.read().expect("package cache").get(&key) {
            return Ok(p.clone());
        }
        let stored = store.get_package(name, version).await?;
        let package = tokio::task::spawn_blocking(move || Package::from_files(stored.files))
            .await
            .map_err(|e| ServiceError::Internal(e.into()))?
            .map_err(|e| {
                ServiceError::Internal(
                    format!("installed package {name} {version} no longer reads: {e}").into(),
                )
            })?;
        let package = Arc::new(package);
        let mut cache = self.cache.write().expect("package cache");
        cache.retain(|(n, v, _), _| !(n == name && v == version));
        cache.insert(key, package.clone());
        Ok(package)
    }

    /// Record the built-in packages in the store (once; idempotent), so that
    /// integrations on them are held by the same row locks as any other.
    pub async fn install_builtins(&self, store: &dyn Store) -> Result<(), ServiceError> {
        for p in &self.builtin {
            store.install_package(&stored(p, Source::Builtin)).await?;
        }
        Ok(())
    }

    /// Every installed package, built-in ones first.
    pub async fn list(&self, store: &dyn Store) -> Result<Vec<Listed>, ServiceError> {
        let mut out: Vec<Listed> = self
            .builtin
            .iter()
            .map(|p| Listed {
                name: p.name().to_owned(),
                version: p.version().to_owned(),
                title: p.manifest.title.clone(),
                package_type: if p.is_input_package() {
                    "input"
                } else {
                    "integration"
                }
                .into(),
                source: Source::Builtin.as_str().into(),
                installed_at: None,
            })
            .collect();
        let stored = store.list_packages().await?;
        out.retain(|b| {
            !stored
                .iter()
                .any(|p| p.name == b.name && p.version == b.version)
        });
        out.extend(stored.into_iter().map(|p| Listed {
            name: p.name,
            version: p.version,
            title: p.title,
            package_type: p.package_type,
            source: p.source,
            installed_at: Some(p.installed_at),
        }));
        out.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| version_order(&a.version).cmp(&version_order(&b.version)))
        });
        Ok(out)
    }

    /// The newest installed version of `name`.
    pub async fn latest(
        &self,
        store: &dyn Store,
        name: &str,
    ) -> Result<Arc<Package>, ServiceError> {
        let newest = self
            .list(store)
            .await?
            .into_iter()
            .filter(|p| p.name == name)
            .max_by_key(|p| version_order(&p.version));
        match newest {
            Some(p) => self.get(store, &p.name, &p.version).await,
            None => Err(StoreError::not_found(Entity::Package, name).into()),
        }
    }

    /// Install a checked package into the store.
    pub async fn install(
        &self,
        store: &dyn Store,
        package: Package,
        source: Source,
    ) -> Result<(Arc<Package>, flotilla_store::Installed), ServiceError> {
        if let Some(b) = self.builtin(package.name(), package.version()) {
            if b.files() == package.files() {
                return Ok((b.clone(), flotilla_store::Installed::AlreadyInstalled));
            }
            return Err(ServiceError::Conflict(format!(
                "package {} {} is built in; give yours another version",
                package.name(),
                package.version()
            )));
        }
        let stored = stored(&package, source);
        let outcome = store.install_package(&stored).await?;
        let package = Arc::new(package);
        self.cache.write().expect("package cache").insert(
            (stored.name, stored.version, stored.digest),
            package.clone(),
        );
        Ok((package, outcome))
    }

    pub async fn remove(
        &self,
        store: &dyn Store,
        name: &str,
        version: &str,
    ) -> Result<(), ServiceError> {
        if self.builtin(name, version).is_some() {
            return Err(ServiceError::Conflict(format!(
                "package {name} {version} is built in and cannot be removed"
            )));
        }
        store.delete_package(name, version).await?;
        self.cache
            .write()
            .expect("package cache")
            .retain(|(n, v, _), _| !(n == name && v == version));
        Ok(())
    }
}

fn stored(package: &Package, source: Source) -> StoredPackage {
    StoredPackage {
        name: package.name().to_owned(),
        version: package.version().to_owned(),
        title: package.manifest.title.clone(),
        package_type: if package.is_input_package() {
            "input"
        } else {
            "integration"
        }
        .into(),
        source: source.as_str().into(),
        digest: digest(package),
        files: package.files().clone(),
        installed_at: chrono::Utc::now(),
    }
}
