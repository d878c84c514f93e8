//! Shared folders (3.x gateways in HA): the newest state of each file of a group, sealed, tagged
//! with the store revision that wrote it. Revisions come from the store's one counter, so a
//! reader that has seen revision R has seen every file written at R or before, whichever
//! controller wrote it.

use apim_proto::v1::SharedFile;

use super::db::params;
use super::{StoreError, Tx};

/// What [`Tx::put_folder_file`] did with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Recorded as the group's newest state of the path.
    Written,
    /// The group already holds exactly this (no change).
    Same,
    /// A joining node's file for a path the group already has: the group's stays.
    GroupKept,
}

impl Tx<'_> {
    /// Records `file` as the newest state of its path in `group`. With `joining`, a path the
    /// group already has (even as deleted) keeps the group's state.
    pub fn put_folder_file(
        &self,
        group: &str,
        file: &SharedFile,
        joining: bool,
    ) -> Result<Put, StoreError> {
        let current = self.query_opt(
            "reading a shared folder file",
            "SELECT sha256, deleted FROM shared_folder_files WHERE grp = ?1 AND path = ?2",
            params![group, file.path.as_str()],
        )?;
        if let Some(row) = current {
            if joining {
                return Ok(Put::GroupKept);
            }
            let deleted = row.int(1)? != 0;
            if deleted == file.deleted && (deleted || row.text(0)? == file.sha256) {
                return Ok(Put::Same);
            }
        } else if file.deleted {
            // Deleting what the group never had changes nothing.
            return Ok(Put::Same);
        }
        let sealed = self
            .seal
            .seal("shared_folder_files.content", &file.content)?;
        self.exec(
            "writing a shared folder file",
            "INSERT INTO shared_folder_files(grp, path, sha256, content, deleted, revision)
             VALUES (?1, ?2, ?3, ?4, ?5, (SELECT n FROM revision WHERE id = 1))
             ON CONFLICT(grp, path) DO UPDATE SET sha256 = excluded.sha256,
                 content = excluded.content, deleted = excluded.deleted,
                 revision = excluded.revision",
            params![
                group,
                file.path.as_str(),
                file.sha256.as_str(),
                sealed,
                i64::from(file.deleted)
            ],
        )?;
        Ok(Put::Written)
    }

    /// The files of `group` written after revision `after`, in revision order, each with the
    /// revision that wrote it.
    pub fn folder_files_since(
        &self,
        group: &str,
        after: u64,
    ) -> Result<Vec<(SharedFile, u64)>, StoreError> {
        let mut out = Vec::new();
        for row in self.query(
            "reading shared folder files",
            "SELECT path, sha256, content, deleted, revision FROM shared_folder_files
             WHERE grp = ?1 AND revision > ?2 ORDER BY revision, path",
            params![group, after],
        )? {
            let deleted = row.int(3)? != 0;
            let revision = u64::try_from(row.int(4)?).unwrap_or(0);
            out.push((
                SharedFile {
                    path: row.text(0)?,
                    sha256: if deleted { String::new() } else { row.text(1)? },
                    content: if deleted {
                        Vec::new()
                    } else {
                        self.seal
                            .open("shared_folder_files.content", &row.bytes(2)?)?
                    },
                    deleted,
                },
                revision,
            ));
        }
        Ok(out)
    }

    /// Forgets every group's files (the cluster is destroyed).
    pub fn forget_folder_files(&self) -> Result<(), StoreError> {
        self.exec(
            "forgetting shared folder files",
            "DELETE FROM shared_folder_files",
            &[],
        )?;
        Ok(())
    }

    /// The newest revision of any shared folder file (0 when none): what another controller's
    /// sessions compare with what they have sent.
    pub fn folder_revision(&self) -> Result<u64, StoreError> {
        self.query_opt(
            "reading the shared folders' revision",
            "SELECT MAX(revision) FROM shared_folder_files",
            &[],
        )?
        .map_or(Ok(0), |r| {
            Ok(r.opt_int(0)?.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
        })
    }
}
