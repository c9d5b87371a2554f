//! Where the paths of a pipeline file lead, and what they may name there.
//!
//! `weir run` resolves a relative path against the pipeline file's
//! directory and takes absolute paths as they are ([`Paths::relative_to`]).
//! A server resolves a tenant's paths inside the tenant's root only
//! ([`Paths::confined_to`]): an absolute path, a `..` component, or a
//! symbolic link on the way that leads out of the root is refused, and the
//! error says which. The symbolic-link check walks the path through cap-std,
//! whose resolution cannot leave the directory it starts from.

use std::path::{Component, Path, PathBuf};

/// How a pipeline file's paths are resolved.
#[derive(Debug, Clone)]
pub struct Paths {
    base_dir: PathBuf,
    confined: bool,
}

impl Paths {
    /// Relative paths start at `dir`; absolute paths stay as written.
    pub fn relative_to(dir: impl Into<PathBuf>) -> Self {
        Self {
            base_dir: dir.into(),
            confined: false,
        }
    }

    /// Every path is relative to `root` and stays inside it.
    pub fn confined_to(root: impl Into<PathBuf>) -> Self {
        Self {
            base_dir: root.into(),
            confined: true,
        }
    }

    /// The directory relative paths start from.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// True when paths must stay inside [`Paths::base_dir`].
    pub fn confined(&self) -> bool {
        self.confined
    }

    /// The path `written` (the value of `key`) leads to, or why it may not
    /// be used.
    pub fn resolve(&self, written: &str, key: &str) -> Result<PathBuf, String> {
        if !self.confined {
            return Ok(self.base_dir.join(written));
        }
        let relative = Path::new(written);
        let refuse = |why: &str| {
            Err(format!(
                "`{key}` = \"{written}\" {why}; paths here stay inside the tenant's root"
            ))
        };
        if written.is_empty() {
            return refuse("is empty");
        }
        for component in relative.components() {
            match component {
                Component::Prefix(_) | Component::RootDir => return refuse("is an absolute path"),
                Component::ParentDir => return refuse("goes up with `..`"),
                Component::CurDir | Component::Normal(_) => {}
            }
        }
        if let Err(why) = stays_inside(&self.base_dir, relative) {
            return refuse(&why);
        }
        Ok(self.base_dir.join(relative))
    }
}

/// A directory a pipeline names, resolved: opened through cap-std, from the
/// tenant's root when the paths are confined, so that a `..` or a symbolic
/// link planted after the pipeline was checked still cannot lead out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPath {
    /// The confining root, if any.
    root: Option<PathBuf>,
    /// The directory below the root (the whole path without a root).
    relative: PathBuf,
    /// The whole path, for messages.
    path: PathBuf,
}

impl DirPath {
    /// A directory outside any confinement.
    pub fn unconfined(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            root: None,
            relative: path.clone(),
            path,
        }
    }

    /// The directory `relative` below this one, in the same confinement.
    pub fn join(&self, relative: &str) -> Self {
        Self {
            root: self.root.clone(),
            relative: self.relative.join(relative),
            path: self.path.join(relative),
        }
    }

    /// The whole path (for messages and logs).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory (making it and its parents first when `create`).
    pub fn open(&self, create: bool) -> std::io::Result<cap_std::fs::Dir> {
        let ambient = cap_std::ambient_authority();
        match &self.root {
            Some(root) => {
                let root = cap_std::fs::Dir::open_ambient_dir(root, ambient)?;
                if create {
                    root.create_dir_all(&self.relative)?;
                }
                root.open_dir(&self.relative)
            }
            None => {
                if create {
                    std::fs::create_dir_all(&self.path)?;
                }
                cap_std::fs::Dir::open_ambient_dir(&self.path, ambient)
            }
        }
    }
}

impl Paths {
    /// Like [`Paths::resolve`], for a directory the engine opens through
    /// cap-std ([`DirPath::open`]).
    pub fn resolve_dir(&self, written: &str, key: &str) -> Result<DirPath, String> {
        let path = self.resolve(written, key)?;
        Ok(if self.confined {
            DirPath {
                root: Some(self.base_dir.clone()),
                relative: PathBuf::from(written),
                path,
            }
        } else {
            DirPath::unconfined(path)
        })
    }
}

/// Checks a name that becomes a file or directory name (a tenant, a
/// pipeline, an uploaded plugin): 1 to 64 ASCII letters, digits, `-`, `_`
/// or `.`, starting with a letter or digit. Returns why it is refused.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("is empty"),
        Some(first) if !first.is_ascii_alphanumeric() => return Err("must start with a letter or a digit"),
        Some(_) => {}
    }
    if name.len() > 64 {
        return Err("is longer than 64 characters");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err("may hold only letters, digits, `-`, `_` and `.`");
    }
    Ok(())
}

/// Checks that `relative`, as far as it exists under `root`, resolves
/// inside `root` through any symbolic links on the way.
fn stays_inside(root: &Path, relative: &Path) -> Result<(), String> {
    let dir = match cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority()) {
        Ok(dir) => dir,
        // The root does not exist yet: nothing can be planted in it.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(format!("cannot be checked ({error})")),
    };
    let mut prefix = PathBuf::new();
    for component in relative.components() {
        prefix.push(component);
        match dir.symlink_metadata(&prefix) {
            Ok(meta) if meta.file_type().is_symlink() => {
                // cap-std refuses to resolve a link that leads out of `dir`.
                if let Err(error) = dir.canonicalize(&prefix) {
                    return Err(if error.kind() == std::io::ErrorKind::NotFound {
                        format!("passes a symbolic link `{}` that leads nowhere", prefix.display())
                    } else {
                        format!(
                            "passes a symbolic link `{}` that leads out of it",
                            prefix.display()
                        )
                    });
                }
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(format!("cannot be checked at `{}` ({error})", prefix.display()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_join_and_absolute_ones_stay() {
        let paths = Paths::relative_to("/etc/weir");
        assert_eq!(paths.resolve("in", "path").unwrap(), Path::new("/etc/weir/in"));
        assert_eq!(paths.resolve("/data", "path").unwrap(), Path::new("/data"));
        assert_eq!(
            paths.resolve("../x", "path").unwrap(),
            Path::new("/etc/weir/../x")
        );
    }

    #[test]
    fn confined_paths_refuse_absolute_parent_and_escaping_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("in")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("in/out")).unwrap();
        std::os::unix::fs::symlink("../in", root.path().join("in/loop-inside")).unwrap();
        let paths = Paths::confined_to(root.path());

        assert_eq!(
            paths.resolve("in/new/dir", "path").unwrap(),
            root.path().join("in/new/dir")
        );
        assert_eq!(
            paths.resolve("in/loop-inside", "path").unwrap(),
            root.path().join("in/loop-inside")
        );
        let abs = paths.resolve("/etc", "path").unwrap_err();
        assert!(abs.contains("is an absolute path"), "{abs}");
        let up = paths.resolve("in/../../b", "read-dir").unwrap_err();
        assert!(
            up.contains("`read-dir` = \"in/../../b\" goes up with `..`"),
            "{up}"
        );
        let link = paths.resolve("in/out/secrets", "path").unwrap_err();
        assert!(
            link.contains("symbolic link `in/out` that leads out of it"),
            "{link}"
        );
        assert!(paths.resolve("", "path").unwrap_err().contains("is empty"));
    }

    #[test]
    fn a_confined_directory_opens_inside_its_root_only() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let paths = Paths::confined_to(root.path());
        let out = paths.resolve_dir("out/a", "path").unwrap();
        assert_eq!(out.path(), root.path().join("out/a"));
        out.open(true).unwrap().write("x", "y").unwrap();
        assert_eq!(std::fs::read_to_string(root.path().join("out/a/x")).unwrap(), "y");
        // A link planted after the check: opening refuses to follow it out.
        let planted = paths.resolve_dir("later", "path").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("later")).unwrap();
        assert!(planted.open(false).is_err());
        assert!(planted.open(true).is_err());
    }

    #[test]
    fn names_are_single_plain_components() {
        assert!(check_name("team-a_1.v2").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "a\\b", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
