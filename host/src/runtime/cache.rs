//! The on-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes from milliseconds to seconds;
//! the result is stored under the cache directory, keyed by the SHA-256 of the
//! component's bytes and the engine's compatibility hash (wasmtime version and
//! settings), so a second start loads native code instead of recompiling.
//! Entries are written to a temporary name and renamed, so a crash never
//! leaves a half-written entry behind.
//!
//! # Trust
//!
//! A cache entry is native code that runs in this process: whoever can write
//! the cache directory can run code as this user. So before the cache is
//! used, its directory must be owned by the effective user (or by root, who
//! can replace the `weir` binary itself anyway) and must not be writable by
//! its group or by others. A directory that fails this check makes
//! [`ComponentCache::load`] return an [`UntrustedCache`] error naming the
//! directory, its owner and mode, and the fix; nothing is compiled or loaded
//! around it, so a misconfigured server fails loudly instead of silently
//! running uncached (or worse). The check is made once per
//! [`ComponentCache`], on its first load, not once per plugin: only the owner
//! of a directory (or root) can change its owner or mode afterwards.
//!
//! A missing directory is created (with its missing parents) with mode 0700.
//! One that cannot be created or examined disables the cache with a warning,
//! as before: compiling still works. Entry files are written with mode 0600;
//! an existing entry that is not owned by the user (or root), is writable by
//! its group or others, or is not a regular file is never loaded: it is
//! recompiled and replaced (with a warning), which cuts off anyone who still
//! holds it open for writing from the new entry.
//!
//! Only the cache directory itself is checked, not its ancestors.
//!
//! # Size
//!
//! The directory is bounded ([`DEFAULT_MAX_BYTES`] unless told otherwise):
//! after an entry is stored, the least recently used entries (a load marks
//! its entry used) are removed until the entries fit, the new one last. A
//! server whose tenants upload many versions keeps the ones it runs.

use std::fmt;
use std::fs::Metadata;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: Option<PathBuf>,
    /// The most its entries may hold together.
    max_bytes: u64,
    /// Whether `dir` may be used, decided on the first load.
    verdict: OnceLock<Verdict>,
}

/// What the first load found the cache directory to be.
#[derive(Debug, Clone)]
enum Verdict {
    /// Owned by `user` (the effective user id) or root, writable by no one else.
    Trusted {
        /// The effective user id, kept to check entries without a syscall.
        user: u32,
    },
    /// Cannot be created or examined: compile without a cache (warned once).
    Unusable,
    /// Writable by someone else: every load fails.
    Untrusted(UntrustedCache),
}

/// The error [`ComponentCache::load`] returns when the cache directory may be
/// written by someone other than the user: its owner is another user, or its
/// group or others may write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntrustedCache {
    /// The cache directory.
    pub dir: PathBuf,
    /// Its owner's user id.
    pub owner: u32,
    /// Its permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// The effective user id of this process.
    pub user: u32,
}

impl UntrustedCache {
    fn foreign_owner(&self) -> bool {
        !owned_by(self.owner, self.user)
    }
}

impl fmt::Display for UntrustedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display();
        write!(
            f,
            "refusing to load compiled code from the component cache {dir}: it is "
        )?;
        if self.foreign_owner() {
            write!(
                f,
                "owned by uid {}, not by this user (uid {}) or root",
                self.owner, self.user
            )?;
            if writable_by_others(self.mode) {
                write!(f, ", and ")?;
            }
        }
        if writable_by_others(self.mode) {
            write!(f, "writable by its group or others (mode {:04o})", self.mode)?;
        }
        write!(
            f,
            "; code cached there runs natively, so only its owner may write it. "
        )?;
        if self.foreign_owner() {
            write!(f, "Use a directory you own: ")?;
        } else {
            write!(f, "Run `chmod go-w {dir}`, or use another directory: ")?;
        }
        write!(f, "set WEIR_CACHE_DIR to it (WEIR_CACHE_DIR= disables the cache)")
    }
}

impl std::error::Error for UntrustedCache {}

impl ComponentCache {
    /// A cache in `dir`, bounded at [`DEFAULT_MAX_BYTES`]; `None` disables caching.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            max_bytes: DEFAULT_MAX_BYTES,
            verdict: OnceLock::new(),
        }
    }

    /// The cache, holding at most `max_bytes` of entries.
    pub fn with_max_bytes(self, max_bytes: u64) -> Self {
        Self { max_bytes, ..self }
    }

    /// Compiles `bytes`, or loads the compiled form cached by an earlier run.
    /// `content_hash` is the hex SHA-256 of `bytes`.
    ///
    /// # Errors
    /// A compile error, or an [`UntrustedCache`] when the cache directory may
    /// be written by someone else (see the [module documentation](crate::runtime::cache)).
    pub fn load(&self, engine: &Engine, bytes: &[u8], content_hash: &str) -> wasmtime::Result<Component> {
        let Some(dir) = &self.dir else {
            return Component::new(engine, bytes);
        };
        let user = match self.verdict.get_or_init(|| examine(dir)) {
            Verdict::Trusted { user } => *user,
            Verdict::Unusable => return Component::new(engine, bytes),
            Verdict::Untrusted(refusal) => return Err(refusal.clone().into()),
        };
        let entry = entry_path(dir, engine, content_hash);
        match std::fs::metadata(&entry) {
            Ok(metadata) => match entry_problem(&metadata, user) {
                None => {
                    // SAFETY: `deserialize_file` requires a file that holds
                    // what `Component::serialize` wrote, or at least nothing
                    // crafted. The entry was written by `store` for this
                    // engine's configuration (its compatibility hash is in the
                    // name); the directory was checked to be writable only by
                    // its owner, this user or root, and the file itself to be
                    // a regular file with the same owner and writable by no
                    // one else, so no other user can have placed or changed
                    // it. wasmtime still checks the header and refuses
                    // incompatible artifacts.
                    match unsafe { Component::deserialize_file(engine, &entry) } {
                        Ok(component) => {
                            mark_used(&entry);
                            return Ok(component);
                        }
                        Err(error) => tracing::warn!(
                            entry = %entry.display(),
                            "ignoring unusable compiled-component cache entry: {error:#}"
                        ),
                    }
                }
                Some(problem) => tracing::warn!(
                    entry = %entry.display(),
                    "not loading the compiled-component cache entry, which is {problem}: recompiling and replacing it"
                ),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(
                entry = %entry.display(),
                "cannot examine the compiled-component cache entry: {error}"
            ),
        }
        let component = Component::new(engine, bytes)?;
        match store(&entry, &component) {
            Ok(()) => {
                if let Err(error) = trim(dir, self.max_bytes, &entry) {
                    tracing::warn!(dir = %dir.display(), "cannot trim the component cache: {error}");
                }
            }
            Err(error) => {
                tracing::warn!(entry = %entry.display(), "cannot write the component cache: {error:#}")
            }
        }
        Ok(component)
    }
}

/// The most a cache directory holds unless told otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

/// Marks `entry` as just used (its modification time: the order [`trim`]
/// removes entries in).
fn mark_used(entry: &Path) {
    if let Ok(file) = std::fs::File::options().write(true).open(entry) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the least recently used entries of `dir` (never `keep`) until
/// its entries hold at most `max_bytes`. Returns how many it removed.
fn trim(dir: &Path, max_bytes: u64, keep: &Path) -> std::io::Result<usize> {
    let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let path = item.path();
        if path.extension().is_none_or(|ext| ext != "cwasm") {
            continue;
        }
        let metadata = item.metadata()?;
        let used = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
        entries.push((used, metadata.len(), path));
    }
    let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
    entries.sort();
    let mut removed = 0;
    for (_, size, path) in entries {
        if total <= max_bytes {
            break;
        }
        if path == keep {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= size;
                removed += 1;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => total -= size,
            Err(error) => return Err(error),
        }
    }
    Ok(removed)
}

fn entry_path(dir: &Path, engine: &Engine, content_hash: &str) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("{content_hash}-{:016x}.cwasm", hasher.finish()))
}

/// Creates `dir` (mode 0700) if it is missing and checks that no one but
/// this user (or root) may write it: what a directory that `weir` runs code
/// from must be (the compiled components here; the Python toolchain that
/// `weir plugin build` installs in the same cache).
pub fn check_private_dir(dir: &Path) -> Result<(), String> {
    match examine(dir) {
        Verdict::Trusted { .. } => Ok(()),
        Verdict::Unusable => Err(format!("cannot create or examine {}", dir.display())),
        Verdict::Untrusted(untrusted) => Err(untrusted.to_string()),
    }
}

/// Creates `dir` (mode 0700) if it is missing, then decides whether it may be
/// trusted.
fn examine(dir: &Path) -> Verdict {
    // `recursive` succeeds on an existing directory and creates missing
    // parents with the same mode.
    if let Err(error) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        tracing::warn!(dir = %dir.display(), "cannot create the component cache, compiling without it: {error}");
        return Verdict::Unusable;
    }
    let metadata = match std::fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), "cannot examine the component cache, compiling without it: {error}");
            return Verdict::Unusable;
        }
    };
    if !metadata.is_dir() {
        tracing::warn!(dir = %dir.display(), "the component cache is not a directory, compiling without it");
        return Verdict::Unusable;
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let user = unsafe { libc::geteuid() };
    let (owner, mode) = (metadata.uid(), metadata.mode() & 0o7777);
    if owned_by(owner, user) && !writable_by_others(mode) {
        Verdict::Trusted { user }
    } else {
        Verdict::Untrusted(UntrustedCache {
            dir: dir.to_owned(),
            owner,
            mode,
            user,
        })
    }
}

/// Why an existing entry must not be loaded, if it must not.
fn entry_problem(metadata: &Metadata, user: u32) -> Option<String> {
    if !metadata.is_file() {
        Some("not a regular file".into())
    } else if !owned_by(metadata.uid(), user) {
        Some(format!(
            "owned by uid {}, not by this user (uid {user}) or root",
            metadata.uid()
        ))
    } else if writable_by_others(metadata.mode()) {
        Some(format!(
            "writable by its group or others (mode {:04o})",
            metadata.mode() & 0o7777
        ))
    } else {
        None
    }
}

/// Whether `owner` may own the cache and its entries: the effective user
/// `user`, or root (who can do anything to this process anyway).
fn owned_by(owner: u32, user: u32) -> bool {
    owner == user || owner == 0
}

/// Whether `mode` lets the group or others write.
fn writable_by_others(mode: u32) -> bool {
    mode & 0o022 != 0
}

fn store(entry: &Path, component: &Component) -> anyhow::Result<()> {
    let dir = entry.parent().expect("cache entries live in a directory");
    let bytes = component.serialize()?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        entry.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    // A temporary file left by a crashed process with the same id could have
    // any mode: start afresh, so the entry gets 0600.
    match std::fs::remove_file(&temporary) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(&bytes)?;
    drop(file);
    std::fs::rename(&temporary, entry)?;
    Ok(())
}

/// Hex SHA-256 of `bytes`: the content hash of a plugin.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The smallest component: the preamble alone.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn load(dir: &Path) -> wasmtime::Result<Component> {
        let cache = ComponentCache::new(Some(dir.to_owned()));
        cache.load(
            &Engine::default(),
            EMPTY_COMPONENT,
            &content_hash(EMPTY_COMPONENT),
        )
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    #[test]
    fn the_cache_removes_its_least_recently_used_entries_past_its_size() {
        let scratch = tempfile::tempdir().unwrap();
        set_mode(scratch.path(), 0o700);
        let engine = Engine::default();
        let probe = ComponentCache::new(Some(scratch.path().to_owned()));
        probe.load(&engine, EMPTY_COMPONENT, "probe").unwrap();
        let size = std::fs::metadata(&entries(scratch.path())[0]).unwrap().len();
        std::fs::remove_file(&entries(scratch.path())[0]).unwrap();
        // Room for two entries.
        let cache = ComponentCache::new(Some(scratch.path().to_owned())).with_max_bytes(2 * size + size / 2);
        let entry = |hash: &str| entry_path(scratch.path(), &engine, hash);
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for (hash, age) in [("a", 3), ("b", 2)] {
            cache.load(&engine, EMPTY_COMPONENT, hash).unwrap();
            let file = std::fs::File::options().write(true).open(entry(hash)).unwrap();
            file.set_modified(past - std::time::Duration::from_secs(age))
                .unwrap();
        }
        // `a` is used again: `b` is now the least recently used.
        cache.load(&engine, EMPTY_COMPONENT, "a").unwrap();
        cache.load(&engine, EMPTY_COMPONENT, "c").unwrap();
        assert!(entry("a").exists() && entry("c").exists());
        assert!(!entry("b").exists(), "{:?}", entries(scratch.path()));
        assert_eq!(entries(scratch.path()).len(), 2);
    }

    #[test]
    fn a_private_directory_is_used() {
        let scratch = tempfile::tempdir().unwrap();
        set_mode(scratch.path(), 0o700);
        load(scratch.path()).unwrap();
        let written = entries(scratch.path());
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(mode_of(&written[0]), 0o600);
        // The second load finds the entry.
        load(scratch.path()).unwrap();
        assert_eq!(entries(scratch.path()), written);
    }

    #[test]
    fn a_directory_others_cannot_write_is_used() {
        let scratch = tempfile::tempdir().unwrap();
        set_mode(scratch.path(), 0o755);
        load(scratch.path()).unwrap();
        assert_eq!(entries(scratch.path()).len(), 1);
    }

    #[test]
    fn a_world_writable_directory_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        set_mode(scratch.path(), 0o777);
        let error = load(scratch.path()).unwrap_err();
        let refusal = error
            .downcast_ref::<UntrustedCache>()
            .expect("an UntrustedCache error");
        assert_eq!(refusal.mode, 0o777);
        let message = error.to_string();
        for part in [
            &scratch.path().display().to_string(),
            "mode 0777",
            &format!("chmod go-w {}", scratch.path().display()),
            "WEIR_CACHE_DIR",
        ] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
        assert!(
            entries(scratch.path()).is_empty(),
            "nothing is written to a refused cache"
        );
    }

    #[test]
    fn a_group_writable_directory_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        set_mode(scratch.path(), 0o770);
        let error = load(scratch.path()).unwrap_err();
        assert!(error.to_string().contains("mode 0770"), "{error}");
    }

    #[test]
    fn a_directory_owned_by_another_user_is_refused() {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return; // Only root can give a directory away.
        }
        let scratch = tempfile::tempdir().unwrap();
        set_mode(scratch.path(), 0o700);
        std::os::unix::fs::chown(scratch.path(), Some(54_321), None).unwrap();
        let message = load(scratch.path()).unwrap_err().to_string();
        assert!(message.contains("owned by uid 54321"), "{message}");
        assert!(message.contains("Use a directory you own"), "{message}");
        assert!(
            !message.contains("chmod"),
            "chmod cannot fix the owner: {message}"
        );
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("a").join("cache");
        load(&dir).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&scratch.path().join("a")), 0o700);
        assert_eq!(entries(&dir).len(), 1);
    }

    #[test]
    fn an_entry_others_can_write_is_replaced_not_loaded() {
        let scratch = tempfile::tempdir().unwrap();
        set_mode(scratch.path(), 0o700);
        load(scratch.path()).unwrap();
        let entry = entries(scratch.path()).pop().unwrap();
        set_mode(&entry, 0o666);
        let before = std::fs::metadata(&entry).unwrap().ino();
        load(scratch.path()).unwrap();
        // Had it been loaded, it would still be the same 0666 file.
        assert_eq!(mode_of(&entry), 0o600);
        assert_ne!(std::fs::metadata(&entry).unwrap().ino(), before);
    }

    #[test]
    fn the_directory_is_checked_once_per_cache() {
        let scratch = tempfile::tempdir().unwrap();
        set_mode(scratch.path(), 0o700);
        let cache = ComponentCache::new(Some(scratch.path().to_owned()));
        let engine = Engine::default();
        let hash = content_hash(EMPTY_COMPONENT);
        cache.load(&engine, EMPTY_COMPONENT, &hash).unwrap();
        // Only the owner could do this; the verdict stands for this cache...
        set_mode(scratch.path(), 0o777);
        cache.load(&engine, EMPTY_COMPONENT, &hash).unwrap();
        // ...and a new one looks again.
        assert!(load(scratch.path()).is_err());
    }

    #[test]
    fn no_directory_means_no_cache() {
        let cache = ComponentCache::new(None);
        cache
            .load(
                &Engine::default(),
                EMPTY_COMPONENT,
                &content_hash(EMPTY_COMPONENT),
            )
            .unwrap();
    }
}
