//! The configuration files a pack ships, read out of its zip: the `deployment.toml` and the
//! optimizer's per-profile templates (the base every node's file is merged onto), and the config
//! mapper's templates and rule files (what keys the product reads). Only these entries are
//! inflated, each and all together under a size limit, so reading a 1 GiB pack costs its central
//! directory and a few megabytes.

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use super::PackProblem;
use crate::catalogue::layout;

/// Most bytes one configuration file may inflate to.
const MAX_FILE: u64 = 8 << 20;
/// Most bytes all of them may inflate to.
const MAX_TOTAL: u64 = 64 << 20;

/// A pack's configuration files, by path relative to its top directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackConfig {
    /// The pack's top directory, e.g. `wso2am-4.2.0`.
    pub top_dir: String,
    /// Path (relative to the carbon home) → text.
    pub files: BTreeMap<String, String>,
}

impl PackConfig {
    /// A file's text, if the pack ships it.
    pub fn file(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }

    /// The config mapper's templates, path → text.
    pub fn templates(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files
            .iter()
            .filter(|(p, _)| is_config_template(p))
            .map(|(p, t)| (p.as_str(), t.as_str()))
    }
}

fn is_config_template(path: &str) -> bool {
    path.strip_prefix(layout::CONFIG_TEMPLATES_DIR)
        .is_some_and(|rest| rest.starts_with('/') && rest.ends_with(".j2"))
}

/// Whether the file at `path` (relative to the carbon home) is one [`read`] keeps.
fn wanted(path: &str) -> bool {
    path == layout::CONFIG_FILE
        || layout::KEY_RULE_FILES.contains(&path)
        || is_config_template(path)
        || path
            .strip_prefix(layout::DEPLOYMENT_TEMPLATES_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|name| name.ends_with(".toml") && !name.contains('/'))
}

/// Reads a pack's configuration files. Call [`super::inspect`] first: this trusts the entry
/// names no more than to compare them, but relies on it for the archive's shape.
pub fn read<R: Read + Seek>(reader: R) -> Result<PackConfig, PackProblem> {
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|e| PackProblem::NotAZip(e.to_string()))?;
    let mut out = PackConfig::default();
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let mut e = archive
            .by_index(i)
            .map_err(|e| PackProblem::NotAZip(e.to_string()))?;
        if !e.is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(e.name_raw()).into_owned();
        let Some((top, rel)) = name.split_once('/') else {
            continue;
        };
        if out.top_dir.is_empty() {
            out.top_dir = top.to_string();
        }
        if !wanted(rel) {
            continue;
        }
        let limit = |what, limit, actual| PackProblem::Limit {
            what,
            limit,
            actual,
        };
        if e.size() > MAX_FILE {
            return Err(limit("configuration file size", MAX_FILE, e.size()));
        }
        let mut bytes = Vec::new();
        // One byte past the limit tells a lying header from a file exactly at the limit.
        (&mut e)
            .take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| PackProblem::UnsafeEntry {
                entry: name.clone(),
                reason: if err.kind() == std::io::ErrorKind::InvalidData {
                    "corrupt data (checksum mismatch)"
                } else {
                    "unreadable data"
                },
            })?;
        let size = bytes.len() as u64;
        if size > MAX_FILE {
            return Err(limit("configuration file size", MAX_FILE, size));
        }
        total += size;
        if total > MAX_TOTAL {
            return Err(limit("configuration files' total size", MAX_TOTAL, total));
        }
        out.files.insert(
            rel.to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        );
    }
    Ok(out)
}

/// Reads the configuration files of the pack at `path`.
pub fn read_file(path: &std::path::Path) -> Result<PackConfig, PackProblem> {
    let f = std::fs::File::open(path).map_err(|e| PackProblem::NotAZip(e.to_string()))?;
    read(std::io::BufReader::new(f))
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use zip::write::SimpleFileOptions;

    use super::*;

    #[test]
    fn only_configuration_files_are_kept() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in [
            ("wso2am-4.2.0/bin/api-manager.sh", "#!/bin/sh"),
            ("wso2am-4.2.0/repository/conf/deployment.toml", "[server]\n"),
            (
                "wso2am-4.2.0/repository/resources/conf/deployment-templates/gateway-worker.toml",
                "[server]\nserver_role = \"gateway-worker\"\n",
            ),
            (
                "wso2am-4.2.0/repository/resources/conf/deployment-templates/old/x.toml",
                "nested: not a template",
            ),
            (
                "wso2am-4.2.0/repository/resources/conf/templates/repository/conf/carbon.xml.j2",
                "{{server.hostname}}",
            ),
            ("wso2am-4.2.0/repository/resources/conf/default.json", "{}"),
            (
                "wso2am-4.2.0/repository/resources/conf/validator.json",
                "{}",
            ),
        ] {
            w.start_file(name, SimpleFileOptions::default()).unwrap();
            w.write_all(data.as_bytes()).unwrap();
        }
        let c = read(Cursor::new(w.finish().unwrap().into_inner())).unwrap();
        assert_eq!(c.top_dir, "wso2am-4.2.0");
        assert_eq!(
            c.files.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "repository/conf/deployment.toml",
                "repository/resources/conf/default.json",
                "repository/resources/conf/deployment-templates/gateway-worker.toml",
                "repository/resources/conf/templates/repository/conf/carbon.xml.j2",
            ]
        );
        assert_eq!(c.templates().count(), 1);
        assert_eq!(
            c.file(&layout::base_config_file(Some("gateway-worker"))),
            Some("[server]\nserver_role = \"gateway-worker\"\n")
        );
    }
}
