//! Package archives as Kibana accepts them — a zip or a gzip'd tar holding
//! exactly one top-level `<name>-<version>/` folder — and package folders
//! on disk.
//!
//! Unpacking is bounded: entries that escape the folder (`..`, absolute
//! paths, links) are refused; only the files Flotilla keeps are read, each
//! at most [`MAX_FILE_BYTES`], all together at most [`MAX_KEPT_BYTES`],
//! from at most [`MAX_ENTRIES`] entries.

use std::io::Read;
use std::path::Path;

use crate::package::{is_kept_file, Files, Package, PackageError};

pub const MAX_ENTRIES: usize = 100_000;
pub const MAX_FILE_BYTES: u64 = 4 << 20;
pub const MAX_KEPT_BYTES: u64 = 32 << 20;
/// A gzip'd tar may inflate to at most this much, skipped entries included.
pub const MAX_INFLATED_BYTES: u64 = 256 << 20;

fn bad(message: impl Into<String>) -> PackageError {
    PackageError::new("", "", message)
}

/// What an archive held: its top-level folder and the kept files.
#[derive(Debug)]
pub struct Unpacked {
    pub folder: String,
    pub files: Files,
}

/// Unpack a zip or gzip'd tar (told apart by their first bytes).
pub fn unpack(bytes: &[u8]) -> Result<Unpacked, PackageError> {
    match bytes {
        [0x50, 0x4b, 0x03, 0x04, ..] => unpack_zip(bytes),
        [0x1f, 0x8b, ..] => unpack_tar_gz(bytes),
        [] => Err(bad(
            "the upload is empty; send a package as a zip or a gzip'd tar",
        )),
        _ => Err(bad("the upload is neither a zip nor a gzip'd tar")),
    }
}

/// Unpack and check: the package must be named by its folder.
pub fn package_from_archive(bytes: &[u8]) -> Result<Package, PackageError> {
    let unpacked = unpack(bytes)?;
    let package = Package::from_files(unpacked.files)?;
    check_folder_name(&unpacked.folder, &package)?;
    Ok(package)
}

/// Kibana requires the top-level folder to be `<name>-<version>`.
pub fn check_folder_name(folder: &str, package: &Package) -> Result<(), PackageError> {
    let expected = format!("{}-{}", package.name(), package.version());
    if folder != expected {
        return Err(PackageError::new(
            "manifest.yml",
            "",
            format!(
                "the package's top-level folder is '{folder}/' but its manifest says name '{}' and version '{}': the folder must be '{expected}/'",
                package.name(),
                package.version()
            ),
        ));
    }
    Ok(())
}

struct Collector {
    folder: Option<String>,
    files: Files,
    entries: usize,
    kept_bytes: u64,
}

impl Collector {
    fn new() -> Self {
        Collector {
            folder: None,
            files: Files::new(),
            entries: 0,
            kept_bytes: 0,
        }
    }

    /// Split an entry's path into its top-level folder and the rest,
    /// refusing anything that could escape.
    fn place(&mut self, raw: &str) -> Result<Option<String>, PackageError> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(bad(format!(
                "the archive has more than {MAX_ENTRIES} entries"
            )));
        }
        let path = raw.trim_start_matches("./");
        if path.starts_with('/')
            || path.contains('\\')
            || path.split('/').any(|p| p == "..")
            || path.contains('\0')
        {
            return Err(bad(format!(
                "the archive entry '{}' is not a plain relative path",
                raw.escape_debug()
            )));
        }
        let (top, rest) = match path.split_once('/') {
            Some((top, rest)) => (top, rest),
            None => (path, ""),
        };
        if top.is_empty() {
            return Ok(None);
        }
        match &self.folder {
            None => self.folder = Some(top.to_owned()),
            Some(f) if f == top => {}
            Some(f) => {
                return Err(bad(format!(
                "the archive must hold exactly one top-level folder, but it has '{f}/' and '{top}'"
            )))
            }
        }
        if rest.is_empty() {
            if !raw.ends_with('/') && !path.ends_with('/') {
                // A file at the top level, beside the folder.
                return Err(bad(format!(
                    "the archive must hold exactly one top-level folder, but '{top}' is a file"
                )));
            }
            return Ok(None);
        }
        let rest = rest.trim_end_matches('/');
        Ok(is_kept_file(rest).then(|| rest.to_owned()))
    }

    fn keep(
        &mut self,
        path: String,
        reader: &mut dyn Read,
        size_hint: u64,
    ) -> Result<(), PackageError> {
        if size_hint > MAX_FILE_BYTES {
            return Err(PackageError::new(
                &path,
                "",
                format!("is larger than {} MiB", MAX_FILE_BYTES >> 20),
            ));
        }
        let mut buf = Vec::new();
        reader
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| {
                PackageError::new(
                    &path,
                    "",
                    format!("could not be read from the archive: {e}"),
                )
            })?;
        if buf.len() as u64 > MAX_FILE_BYTES {
            return Err(PackageError::new(
                &path,
                "",
                format!("is larger than {} MiB", MAX_FILE_BYTES >> 20),
            ));
        }
        self.kept_bytes += buf.len() as u64;
        if self.kept_bytes > MAX_KEPT_BYTES {
            return Err(bad(format!(
                "the package's manifests and templates exceed {} MiB",
                MAX_KEPT_BYTES >> 20
            )));
        }
        let text = String::from_utf8(buf)
            .map_err(|_| PackageError::new(&path, "", "is not UTF-8 text"))?;
        self.files.insert(path, text);
        Ok(())
    }

    fn finish(self) -> Result<Unpacked, PackageError> {
        let folder = self.folder.ok_or_else(|| {
            bad("the archive is empty: it must hold one '<name>-<version>/' folder")
        })?;
        Ok(Unpacked {
            folder,
            files: self.files,
        })
    }
}

fn unpack_zip(bytes: &[u8]) -> Result<Unpacked, PackageError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(format!("the upload is not a readable zip: {e}")))?;
    if zip.len() > MAX_ENTRIES {
        return Err(bad(format!(
            "the archive has more than {MAX_ENTRIES} entries"
        )));
    }
    let mut c = Collector::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("the zip's entry {i} cannot be read: {e}")))?;
        let name = entry.name().to_owned();
        if entry.is_symlink() {
            return Err(bad(format!(
                "the archive entry '{name}' is a link; packages hold plain files"
            )));
        }
        let Some(path) = c.place(&name)? else {
            continue;
        };
        if entry.is_dir() {
            continue;
        }
        let size = entry.size();
        c.keep(path, &mut entry, size)?;
    }
    c.finish()
}

/// Counts what it reads and fails past a limit (a tar must be read
/// through, skipped entries too: a gzip bomb must stop somewhere).
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "the archive inflates to more than {} MiB",
                (MAX_INFLATED_BYTES >> 20).max(1)
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn unpack_tar_gz(bytes: &[u8]) -> Result<Unpacked, PackageError> {
    unpack_tar_gz_capped(bytes, MAX_INFLATED_BYTES)
}

fn unpack_tar_gz_capped(bytes: &[u8], cap: u64) -> Result<Unpacked, PackageError> {
    let gz = Capped {
        inner: flate2::read::GzDecoder::new(bytes),
        left: cap,
    };
    let mut tar = tar::Archive::new(gz);
    let mut c = Collector::new();
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("the upload is not a readable gzip'd tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("the gzip'd tar cannot be read: {e}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
        {
            continue;
        }
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(bad(format!(
                "the archive entry '{name}' is a link; packages hold plain files"
            )));
        }
        let is_dir = kind.is_dir();
        let path_name = if is_dir && !name.ends_with('/') {
            format!("{name}/")
        } else {
            name
        };
        let Some(path) = c.place(&path_name)? else {
            continue;
        };
        if is_dir || !kind.is_file() {
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        c.keep(path, &mut entry, size)?;
    }
    c.finish()
}

/// Read a package folder from disk (only the files Flotilla keeps).
pub fn read_dir(dir: &Path) -> Result<Files, PackageError> {
    let mut files = Files::new();
    let mut total = 0u64;
    walk(dir, dir, &mut files, &mut total)?;
    Ok(files)
}

fn walk(root: &Path, dir: &Path, files: &mut Files, total: &mut u64) -> Result<(), PackageError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| bad(format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(format!("cannot read {}: {e}", dir.display())))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        let rel = path
            .strip_prefix(root)
            .map_err(|_| bad(format!("{} is outside the package", path.display())))?
            .to_string_lossy()
            .replace('\\', "/");
        if meta.is_dir() {
            // Only folders that can hold kept files are walked.
            let depth = rel.split('/').count();
            let wanted = rel == "agent"
                || rel == "data_stream"
                || rel == "agent/input"
                || rel.starts_with("data_stream/") && depth <= 4;
            if wanted {
                walk(root, &path, files, total)?;
            }
        } else if meta.is_file() && is_kept_file(&rel) {
            if meta.len() > MAX_FILE_BYTES {
                return Err(PackageError::new(
                    &rel,
                    "",
                    format!("is larger than {} MiB", MAX_FILE_BYTES >> 20),
                ));
            }
            *total += meta.len();
            if *total > MAX_KEPT_BYTES {
                return Err(bad(format!(
                    "the package's manifests and templates exceed {} MiB",
                    MAX_KEPT_BYTES >> 20
                )));
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| PackageError::new(&rel, "", format!("cannot be read: {e}")))?;
            files.insert(rel, text);
        }
    }
    Ok(())
}

/// Pack a package folder as the zip Kibana accepts: its kept files under
/// one top-level folder named as the folder is.
pub fn zip_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    use std::io::Write;
    let folder = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
        .ok_or_else(|| bad(format!("{} has no folder name", dir.display())))?;
    let files = read_dir(dir)?;
    if !files.contains_key("manifest.yml") {
        return Err(PackageError::new(
            "manifest.yml",
            "",
            format!("is missing from {}", dir.display()),
        ));
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut buf);
    let options = zip::write::SimpleFileOptions::default();
    for (path, text) in &files {
        w.start_file(format!("{folder}/{path}"), options)
            .and_then(|_| w.write_all(text.as_bytes()).map_err(Into::into))
            .map_err(|e| bad(format!("could not pack {path}: {e}")))?;
    }
    w.finish()
        .map_err(|e| bad(format!("could not pack {}: {e}", dir.display())))?;
    Ok(buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MANIFEST: &str = "format_version: 3.0.0\nname: demo\ntitle: Demo\nversion: 1.0.0\ntype: input\npolicy_templates:\n  - name: logs\n    title: Logs\n    type: logs\n    input: logfile\n    template_path: input.yml.hbs\n";

    fn zip_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            for (name, body) in entries {
                w.start_file(*name, zip::write::SimpleFileOptions::default())
                    .unwrap();
                w.write_all(body.as_bytes()).unwrap();
            }
            w.finish().unwrap();
        }
        buf.into_inner()
    }

    fn tar_gz_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        for (name, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, name, body.as_bytes()).unwrap();
        }
        t.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn zip_and_tar_gz_unpack_to_the_same_package() {
        let entries = [
            ("demo-1.0.0/manifest.yml", MANIFEST),
            ("demo-1.0.0/agent/input/input.yml.hbs", "paths: {{paths}}\n"),
            ("demo-1.0.0/docs/README.md", "ignored"),
        ];
        for bytes in [zip_of(&entries), tar_gz_of(&entries)] {
            let p = package_from_archive(&bytes).unwrap();
            assert_eq!(p.name(), "demo");
            assert_eq!(p.files().len(), 2, "docs are not kept");
        }
    }

    #[test]
    fn a_folder_that_does_not_match_the_manifest_is_refused_by_name() {
        let bytes = zip_of(&[
            ("demo-2.0.0/manifest.yml", MANIFEST),
            ("demo-2.0.0/agent/input/input.yml.hbs", ""),
        ]);
        let e = package_from_archive(&bytes).unwrap_err().to_string();
        assert!(
            e.contains("'demo-2.0.0/'") && e.contains("'demo-1.0.0/'"),
            "{e}"
        );
    }

    #[test]
    fn hostile_archives_are_refused() {
        for entries in [
            vec![
                ("a-1.0.0/manifest.yml", MANIFEST),
                ("b-1.0.0/manifest.yml", MANIFEST),
            ],
            vec![("manifest.yml", MANIFEST)],
            vec![("demo-1.0.0/../etc/passwd", "x")],
        ] {
            assert!(unpack(&zip_of(&entries)).is_err(), "{entries:?}");
        }
        assert!(unpack(b"").is_err());
        assert!(unpack(b"PK\x03\x04garbage").is_err());
        assert!(unpack(&[0x1f, 0x8b, 0, 0]).is_err());
        assert!(unpack(b"{\"json\": true}").is_err());
        // A large entry nobody keeps still counts against the inflation cap.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(4 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(
            &mut h,
            "demo-1.0.0/docs/big.bin",
            std::io::repeat(0).take(4 << 20),
        )
        .unwrap();
        let bomb = t.into_inner().unwrap().finish().unwrap();
        let e = unpack_tar_gz_capped(&bomb, 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inflates"), "{e}");
        assert!(unpack_tar_gz_capped(&bomb, 8 << 20).is_ok());
        let big = "x".repeat((MAX_FILE_BYTES + 1) as usize);
        assert!(unpack(&zip_of(&[("demo-1.0.0/manifest.yml", &big)])).is_err());
    }
}
