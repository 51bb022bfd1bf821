//! Analysed binaries shared by every process that runs them. The key is the
//! file's device, inode and build id: a binary replaced at the same path (a
//! redeploy) gets a new inode, and a reused inode with new contents a new
//! build id, so stale offsets are never applied to a different binary.

use super::{BinaryId, Error, GoBinary};
use std::{collections::HashMap, path::Path, sync::Arc};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    id: BinaryId,
    build_id: Option<String>,
}

#[derive(Default)]
pub struct Cache {
    entries: HashMap<Key, Arc<GoBinary>>,
    /// Lookups answered without analysing (exported by callers).
    pub hits: u64,
    /// Binaries analysed.
    pub misses: u64,
}

impl Cache {
    /// The analysis of the binary at `path`, from the cache if the same
    /// file (device, inode, build id) was analysed before.
    pub fn get(&mut self, path: &Path) -> Result<Arc<GoBinary>, Error> {
        let id = BinaryId::of(path).map_err(|e| Error::Open(path.to_path_buf(), e))?;
        let build_id =
            super::read_build_id(path).map_err(|e| Error::Open(path.to_path_buf(), e))?;
        let key = Key { id, build_id };
        if let Some(b) = self.entries.get(&key) {
            self.hits += 1;
            return Ok(b.clone());
        }
        let bin = Arc::new(GoBinary::analyse(path)?);
        self.misses += 1;
        // Key by what the analysis itself read, in case the file changed
        // between the two looks.
        let key = Key {
            id: bin.id,
            build_id: bin.build_id.clone(),
        };
        self.entries.insert(key, bin.clone());
        Ok(bin)
    }

    /// Drops analyses nobody else holds (their last process has exited and
    /// their probes are gone); returns how many were dropped.
    pub fn release_unused(&mut self) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, b| Arc::strong_count(b) > 1);
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
