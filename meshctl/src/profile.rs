//! Where the connection comes from: `--url`/`--token`/`--ca` (or `AGENTMESH_URL`,
//! `AGENTMESH_TOKEN`, `AGENTMESH_CA`) first, then the profile file
//! `$XDG_CONFIG_HOME/agentmesh/meshctl.toml` (default `~/.config/...`), one table per profile:
//!
//! ```toml
//! [default]
//! url = "https://front-door.example"
//! token = "amt_..."
//! ca = "/etc/agentmesh/ca.pem"
//! ```
//!
//! The file holds a token, so like ssh with a private key it is refused when group or others
//! may read or write it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::Global;
use crate::Error;

/// A bearer token; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Everything needed to reach the backend.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Base URL of the API.
    pub url: String,
    /// Bearer token.
    pub token: Token,
    /// CA for an https front door.
    pub ca: Option<PathBuf>,
}

/// One profile table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    url: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
}

/// Default location of the profile file, from `XDG_CONFIG_HOME` or `HOME`.
pub fn default_path(xdg_config_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    match (xdg_config_home, home) {
        (Some(x), _) if !x.is_empty() => Some(Path::new(x).join("agentmesh/meshctl.toml")),
        (_, Some(h)) if !h.is_empty() => Some(Path::new(h).join(".config/agentmesh/meshctl.toml")),
        _ => None,
    }
}

/// Resolves the connection from the flags (which already include the environment) and, for
/// anything they leave out or when `--profile` is given, the profile file at `path`.
pub fn resolve(global: &Global, path: Option<&Path>) -> Result<Connection, Error> {
    let complete = global.url.is_some() && global.token.is_some();
    let profile = if complete && global.profile.is_none() {
        Profile::default()
    } else {
        load(path, global.profile.as_deref())?
    };
    let file = path.map_or_else(
        || "(no profile file)".to_owned(),
        |p| p.display().to_string(),
    );
    let url = global.url.clone().or(profile.url).ok_or_else(|| {
        Error::usage(format!(
            "no backend URL: pass --url, set AGENTMESH_URL, or set url in {file}"
        ))
    })?;
    let token = global.token.clone().or(profile.token).ok_or_else(|| {
        Error::usage(format!(
            "no token: pass --token, set AGENTMESH_TOKEN, or set token in {file}"
        ))
    })?;
    Ok(Connection {
        url,
        token: Token(token),
        ca: global.ca.clone().or(profile.ca),
    })
}

/// Reads profile `name` (default "default") from `path`. A missing file is an empty profile
/// unless a profile was asked for by name.
fn load(path: Option<&Path>, name: Option<&str>) -> Result<Profile, Error> {
    let wanted = name.unwrap_or("default");
    let Some(path) = path else {
        return match name {
            Some(_) => Err(Error::usage(
                "--profile given but no profile file: set XDG_CONFIG_HOME or HOME",
            )),
            None => Ok(Profile::default()),
        };
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && name.is_none() => {
            return Ok(Profile::default())
        }
        Err(e) => return Err(Error::usage(format!("{}: {e}", path.display()))),
    };
    check_permissions(path)?;
    let mut all: BTreeMap<String, Profile> =
        toml::from_str(&text).map_err(|e| Error::usage(format!("{}: {e}", path.display())))?;
    match all.remove(wanted) {
        Some(p) => Ok(p),
        None if name.is_none() => Ok(Profile::default()),
        None => Err(Error::usage(format!(
            "{}: no profile [{wanted}] (profiles: {})",
            path.display(),
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Refuses a profile file that group or others may access (it holds a token).
#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|e| Error::usage(format!("{}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::usage(format!(
            "permissions {:04o} for {} are too open: it holds a token, so it must not be \
             accessible by group or others; run: chmod 600 {}",
            mode & 0o777,
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), Error> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn global(url: Option<&str>, token: Option<&str>, profile: Option<&str>) -> Global {
        Global {
            url: url.map(str::to_owned),
            token: token.map(str::to_owned),
            ca: None,
            profile: profile.map(str::to_owned),
            output: None,
        }
    }

    fn file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshctl.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    const TEXT: &str = "[default]\nurl = \"http://a:1\"\ntoken = \"t1\"\n\n[prod]\nurl = \"https://p\"\ntoken = \"t2\"\nca = \"/ca.pem\"\n";

    #[test]
    fn flags_win_over_the_profile() {
        let (_d, path) = file(TEXT, 0o600);
        let c = resolve(&global(Some("http://flag:2"), None, None), Some(&path)).unwrap();
        assert_eq!(
            (c.url.as_str(), c.token.0.as_str()),
            ("http://flag:2", "t1")
        );
        let c = resolve(&global(None, None, Some("prod")), Some(&path)).unwrap();
        assert_eq!(c.url, "https://p");
        assert_eq!(c.ca.unwrap(), PathBuf::from("/ca.pem"));
    }

    #[test]
    fn a_readable_file_is_refused_like_ssh() {
        let (_d, path) = file(TEXT, 0o644);
        let e = resolve(&global(None, None, None), Some(&path)).unwrap_err();
        assert!(e.to_string().contains("too open"), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn unknown_profile_and_missing_url_are_named() {
        let (_d, path) = file(TEXT, 0o600);
        let e = resolve(&global(None, None, Some("nope")), Some(&path)).unwrap_err();
        assert!(e.to_string().contains("no profile [nope]"), "{e}");
        let missing = path.with_file_name("absent.toml");
        let e = resolve(&global(None, Some("t"), None), Some(&missing)).unwrap_err();
        assert!(e.to_string().contains("no backend URL"), "{e}");
    }

    #[test]
    fn xdg_config_home_comes_first() {
        assert_eq!(
            default_path(Some("/x"), Some("/h")).unwrap(),
            PathBuf::from("/x/agentmesh/meshctl.toml")
        );
        assert_eq!(
            default_path(None, Some("/h")).unwrap(),
            PathBuf::from("/h/.config/agentmesh/meshctl.toml")
        );
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        assert_eq!(format!("{:?}", Token("secret".into())), "Token(***)");
    }
}
