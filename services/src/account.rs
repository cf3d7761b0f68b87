//! Handing a directory to an unprivileged account: what systemd does for a
//! `StateDirectory=` of a `DynamicUser=` service, done by hand for launchd
//! daemons (launchd creates no directories and changes no owners).

use std::io;
use std::path::Path;

/// Makes `dir` and everything below it owned by `user`:`group`, and `dir`
/// itself mode 0700. Symbolic links are re-owned, never followed, so a link
/// planted in the directory cannot make us re-own a file elsewhere.
#[cfg(unix)]
pub(crate) fn hand_over(dir: &Path, user: &str, group: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let (uid, gid) = ids(user, group)?;
    chown_tree(dir, uid, gid)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The uid of `user` and gid of `group`; an error naming the one that does
/// not exist.
#[cfg(unix)]
fn ids(user: &str, group: &str) -> io::Result<(u32, u32)> {
    let not_found = |what: &str, name: &str| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no {what} named `{name}` on this host; create it or choose another account"),
        )
    };
    let uid = nix::unistd::User::from_name(user)
        .map_err(io::Error::from)?
        .ok_or_else(|| not_found("user", user))?
        .uid
        .as_raw();
    let gid = nix::unistd::Group::from_name(group)
        .map_err(io::Error::from)?
        .ok_or_else(|| not_found("group", group))?
        .gid
        .as_raw();
    Ok((uid, gid))
}

/// Creates `file` if it is missing (mode 0640) and makes it owned by
/// `user`:`group`; a symbolic link in its place is refused, not followed.
#[cfg(unix)]
pub(crate) fn hand_over_file(file: &Path, user: &str, group: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let (uid, gid) = ids(user, group)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(file)?;
    std::os::unix::fs::lchown(file, Some(uid), Some(gid))
}

/// No accounts to hand over to elsewhere.
#[cfg(not(unix))]
pub(crate) fn hand_over_file(_file: &Path, _user: &str, _group: &str) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// No accounts to hand over to elsewhere.
#[cfg(not(unix))]
pub(crate) fn hand_over(_dir: &Path, _user: &str, _group: &str) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_account_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = hand_over(dir.path(), "no-such-user-circles", "nogroup").unwrap_err();
        assert!(err.to_string().contains("no-such-user-circles"), "{err}");
    }

    #[test]
    fn the_tree_changes_owner_and_links_are_not_followed() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/db"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let group = nix::unistd::Group::from_gid(nobody.gid).unwrap().unwrap();
        hand_over(dir.path(), "nobody", &group.name).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        let uid = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        assert_eq!(uid(dir.path()), nobody.uid.as_raw());
        assert_eq!(uid(&dir.path().join("sub/db")), nobody.uid.as_raw());
        assert_eq!(uid(&dir.path().join("link")), nobody.uid.as_raw());
        assert_eq!(uid(outside.path()), 0, "the link's target is left alone");

        // A log file is created for the account; a link in its place is
        // refused rather than followed.
        let log = dir.path().join("out.log");
        hand_over_file(&log, "nobody", &group.name).unwrap();
        assert_eq!(uid(&log), nobody.uid.as_raw());
        assert!(hand_over_file(&dir.path().join("link"), "nobody", &group.name).is_err());
        assert_eq!(uid(outside.path()), 0);
    }
}
