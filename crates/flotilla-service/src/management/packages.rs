//! Installed packages (Kibana's EPM): install from an upload or a
//! directory, list, show, remove.

use std::path::Path;
use std::sync::Arc;

use flotilla_domain::ValidationError;
use flotilla_packages::{archive, Package, PackageError};

use crate::packages::{Listed, Source};
use crate::ServiceError;

use super::*;

fn refused(e: PackageError) -> ServiceError {
    ValidationError::new("package", e.to_string()).into()
}

impl Management<'_> {
    /// Install a zip or gzip'd tar upload (one `<name>-<version>/` folder).
    pub async fn install_package_archive(
        &self,
        bytes: &[u8],
    ) -> Result<(Arc<Package>, flotilla_store::Installed)> {
        // Unpacking and checking are CPU work: off the async workers.
        let bytes = bytes.to_vec();
        let package = tokio::task::spawn_blocking(move || archive::package_from_archive(&bytes))
            .await
            .map_err(|e| ServiceError::Internal(e.into()))?
            .map_err(refused)?;
        self.services
            .packages
            .install(self.store(), package, Source::Upload)
            .await
    }

    /// Install a package folder (the server's `packages_dir`).
    pub async fn install_package_dir(
        &self,
        dir: &Path,
    ) -> Result<(Arc<Package>, flotilla_store::Installed)> {
        let folder = dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let files = archive::read_dir(dir).map_err(refused)?;
        let package = Package::from_files(files).map_err(refused)?;
        archive::check_folder_name(&folder, &package).map_err(refused)?;
        self.services
            .packages
            .install(self.store(), package, Source::Directory)
            .await
    }

    pub async fn list_packages(&self) -> Result<Vec<Listed>> {
        self.services.packages.list(self.store()).await
    }

    /// One version, or the newest when `version` is `None`.
    pub async fn get_package(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(Arc<Package>, String)> {
        let packages = &self.services.packages;
        let package = match version {
            Some(v) => packages.get(self.store(), name, v).await?,
            None => packages.latest(self.store(), name).await?,
        };
        let source = if packages
            .builtin(package.name(), package.version())
            .is_some()
        {
            Source::Builtin
        } else {
            match self
                .store()
                .list_packages()
                .await?
                .into_iter()
                .find(|p| p.name == package.name() && p.version == package.version())
                .map(|p| p.source)
                .as_deref()
            {
                Some("directory") => Source::Directory,
                Some("builtin") => Source::Builtin,
                _ => Source::Upload,
            }
        };
        Ok((package, source.as_str().to_owned()))
    }

    pub async fn remove_package(&self, name: &str, version: &str) -> Result<()> {
        self.services
            .packages
            .remove(self.store(), name, version)
            .await
    }
}
