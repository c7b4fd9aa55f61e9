//! The claims this node has prepared, kept in the state dir
//! (`<state_dir>/kubernetes/claims/<uid>.json`, one file per claim, written atomically), so
//! that Prepare and Unprepare are idempotent across a restart of the daemon: a claim
//! prepared before the restart is answered from its record, and an unprepared one has none.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::claims::{Allocated, ClaimRef};
use crate::node::TenantKind;
use crate::util::sync::lock;

/// One prepared claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepared {
    /// The claim.
    pub claim: ClaimRef,
    /// Its tenant's kind.
    pub kind: TenantKind,
    /// Its tenant's name.
    pub tenant: String,
    /// The node's device it runs on.
    pub device: String,
    /// The devices allocated to the claim.
    pub allocated: Vec<Allocated>,
    /// The CDI device the pod was given.
    pub cdi_device: String,
}

/// The records, read at start and kept in step with the files.
#[derive(Debug)]
pub struct PreparedClaims {
    dir: PathBuf,
    claims: Mutex<BTreeMap<String, Prepared>>,
}

/// Whether `uid` can name a file: a Kubernetes UID is a UUID; nothing else is taken.
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

impl PreparedClaims {
    /// Reads the records under `dir` (created when missing). A record that cannot be read
    /// stops the start, naming the file: dropping it would forget a tenant the cluster
    /// believes is running here.
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut claims = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let p: Prepared = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a prepared claim's record ({e})", path.display()))?;
            claims.insert(p.claim.uid.clone(), p);
        }
        Ok(PreparedClaims {
            dir: dir.to_path_buf(),
            claims: Mutex::new(claims),
        })
    }

    /// Claim `uid`'s record.
    pub fn get(&self, uid: &str) -> Option<Prepared> {
        lock(&self.claims).get(uid).cloned()
    }

    /// Every record.
    pub fn all(&self) -> Vec<Prepared> {
        lock(&self.claims).values().cloned().collect()
    }

    /// The record of the claim whose tenant is `name`, if any.
    pub fn by_tenant(&self, name: &str) -> Option<Prepared> {
        lock(&self.claims)
            .values()
            .find(|p| p.tenant == name)
            .cloned()
    }

    /// The tenants placed through claims.
    pub fn tenants(&self) -> HashSet<String> {
        lock(&self.claims)
            .values()
            .map(|p| p.tenant.clone())
            .collect()
    }

    /// Records `p` on disk, then in memory.
    pub fn insert(&self, p: Prepared) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&p).map_err(std::io::Error::other)?;
        crate::util::fsio::write_atomic(&self.path(&p.claim.uid), &bytes)?;
        lock(&self.claims).insert(p.claim.uid.clone(), p);
        Ok(())
    }

    /// Forgets claim `uid`, on disk first; an unknown one is not an error.
    pub fn remove(&self, uid: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(uid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        lock(&self.claims).remove(uid);
        Ok(())
    }

    fn path(&self, uid: &str) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str, tenant: &str) -> Prepared {
        Prepared {
            claim: ClaimRef {
                namespace: "ml".into(),
                uid: uid.into(),
                name: format!("claim-{tenant}"),
            },
            kind: TenantKind::Job,
            tenant: tenant.into(),
            device: "cpu".into(),
            allocated: vec![Allocated {
                request: "share".into(),
                pool: "node-a".into(),
                device: "cpu".into(),
            }],
            cdi_device: format!("gpu.setpoint.dev/tenant={uid}"),
        }
    }

    #[test]
    fn records_survive_a_reopen_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = PreparedClaims::open(dir.path()).unwrap();
        store.insert(record("0a-1", "train")).unwrap();
        store.insert(record("0b-2", "serve")).unwrap();
        let again = PreparedClaims::open(dir.path()).unwrap();
        assert_eq!(again.get("0a-1"), Some(record("0a-1", "train")));
        assert_eq!(
            again.by_tenant("serve").map(|p| p.claim.uid),
            Some("0b-2".into())
        );
        assert_eq!(
            again.tenants(),
            HashSet::from(["train".into(), "serve".into()])
        );
        again.remove("0a-1").unwrap();
        again.remove("0a-1").unwrap();
        assert_eq!(PreparedClaims::open(dir.path()).unwrap().all().len(), 1);
    }

    #[test]
    fn a_damaged_record_stops_the_start_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0c.json"), b"{\"claim\":").unwrap();
        let e = PreparedClaims::open(dir.path()).unwrap_err();
        assert!(e.contains("0c.json: not a prepared claim's record"), "{e}");
    }

    #[test]
    fn only_uuids_name_files() {
        assert!(valid_uid("6a2b1c3d-0000-4000-8000-00000000abcd"));
        assert!(!valid_uid("../x"));
        assert!(!valid_uid(""));
    }
}
