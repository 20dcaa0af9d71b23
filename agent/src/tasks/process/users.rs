//! `--user`: names and IDs resolved with the host's user database (NSS).

use std::{
    ffi::{CStr, CString, OsStr},
    io,
    os::unix::ffi::OsStrExt,
    path::PathBuf,
};

use super::SpawnError;

/// Resolves `name`, `uid`, `name:group` or `uid:gid` to (uid, gid) with this host's user
/// database. Without a group: the user's primary group, or gid 0 for a uid that has no
/// entry (as Docker does).
pub(crate) fn resolve_user(user: &str) -> Result<(u32, u32), SpawnError> {
    lookup_user(user).map(|u| (u.uid, u.gid))
}

/// A resolved `--user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct User {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) home: Option<PathBuf>,
}

pub(super) fn lookup_user(user: &str) -> Result<User, SpawnError> {
    let unknown_user = || SpawnError::UnknownUser {
        user: user.to_owned(),
    };
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    if name.is_empty() || name.contains('\0') {
        return Err(unknown_user());
    }
    let entry = match parse_id(name) {
        Some(uid) => passwd_entry(PasswdKey::Uid(uid)).map_err(|_| unknown_user())?,
        None => Some(
            passwd_entry(PasswdKey::Name(name))
                .map_err(|_| unknown_user())?
                .ok_or_else(unknown_user)?,
        ),
    };
    let uid = match (&entry, parse_id(name)) {
        (_, Some(uid)) => uid,
        (Some(entry), None) => entry.0,
        (None, None) => return Err(unknown_user()),
    };
    let gid = match group {
        None => entry.as_ref().map_or(0, |e| e.1),
        Some(group) => {
            let unknown_group = || SpawnError::UnknownGroup {
                group: group.to_owned(),
            };
            match parse_id(group) {
                Some(gid) => gid,
                None if group.is_empty() || group.contains('\0') => return Err(unknown_group()),
                None => group_gid(group)
                    .map_err(|_| unknown_group())?
                    .ok_or_else(unknown_group)?,
            }
        }
    };
    Ok(User {
        uid,
        gid,
        home: entry.map(|e| e.2),
    })
}

/// A decimal ID (no sign, no blanks).
fn parse_id(value: &str) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

enum PasswdKey<'a> {
    Name(&'a str),
    Uid(u32),
}

/// (uid, gid, home) of a passwd entry, through NSS (`getpwnam_r`/`getpwuid_r`).
fn passwd_entry(key: PasswdKey) -> io::Result<Option<(u32, u32, PathBuf)>> {
    let name = match key {
        PasswdKey::Name(name) => Some(CString::new(name)?),
        PasswdKey::Uid(_) => None,
    };
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value to be overwritten.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        let (buf_ptr, buf_len) = (buf.as_mut_ptr().cast(), buf.len());
        // SAFETY: valid name, out-pointers and buffer of the given length.
        let rc = unsafe {
            match (&name, &key) {
                (Some(name), _) => {
                    libc::getpwnam_r(name.as_ptr(), &mut pw, buf_ptr, buf_len, &mut result)
                }
                (None, PasswdKey::Uid(uid)) => {
                    libc::getpwuid_r(*uid, &mut pw, buf_ptr, buf_len, &mut result)
                }
                (None, PasswdKey::Name(_)) => unreachable!("names were made CStrings above"),
            }
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        let home = if pw.pw_dir.is_null() {
            PathBuf::from("/")
        } else {
            // SAFETY: getpw*_r points pw_dir into `buf`, NUL-terminated.
            PathBuf::from(OsStr::from_bytes(
                unsafe { CStr::from_ptr(pw.pw_dir) }.to_bytes(),
            ))
        };
        return Ok(Some((pw.pw_uid, pw.pw_gid, home)));
    }
}

/// The gid of a group name, through NSS (`getgrnam_r`).
fn group_gid(name: &str) -> io::Result<Option<u32>> {
    let name = CString::new(name)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero group is a valid value to be overwritten.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        // SAFETY: valid name, out-pointers and buffer of the given length.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut gr,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        return Ok((!result.is_null()).then_some(gr.gr_gid));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn users_resolve_or_fail_naming_the_user() {
        assert_eq!(resolve_user("root").unwrap(), (0, 0));
        assert_eq!(resolve_user("0").unwrap(), (0, 0));
        assert_eq!(resolve_user("1234:5678").unwrap(), (1234, 5678));
        assert_eq!(resolve_user("root:0").unwrap(), (0, 0));
        assert_eq!(resolve_user("root:root").unwrap(), (0, 0));
        // A uid without an entry gets gid 0, as with Docker.
        assert_eq!(resolve_user("4000000").unwrap(), (4_000_000, 0));
        let root = lookup_user("root").unwrap();
        assert_eq!(root.home.as_deref(), Some(Path::new("/root")));

        for (bad, message) in [
            (
                "skein-no-such-user",
                "unknown user \"skein-no-such-user\": give a user of this host's /etc/passwd, a uid or uid:gid",
            ),
            ("", "unknown user \"\""),
            ("-1", "unknown user \"-1\""),
            (":0", "unknown user \":0\""),
            (
                "root:skein-no-such-group",
                "unknown group \"skein-no-such-group\"",
            ),
            ("0:", "unknown group \"\""),
        ] {
            let e = resolve_user(bad).unwrap_err().to_string();
            assert!(e.starts_with(message), "{bad:?}: {e}");
        }
    }
}
