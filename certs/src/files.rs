//! Reading and writing PEM files, and the directory-level helpers the CLI uses.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use crate::{Ca, Error, Issued, Result, Validity, CA_CERT_FILE, CA_KEY_FILE};

/// Writes `contents` to `path` readable by the owner only (mode 0600 on Unix).
///
/// The file is created with mode 0600, and an existing file is narrowed to 0600 before anything
/// is written, so the secret is never readable by others, not even briefly.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    let io = |action| {
        move |source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(io("create"))?;
    // `mode` only applies to new files; an existing one may be wider.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io("set permissions on"))?;
    }
    write_all(file, path, contents)
}

/// Writes a non-secret file (certificates), keeping the process umask.
pub(crate) fn write_public(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).map_err(|source| Error::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

/// Reads a whole text file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Creates `dir` and its parents; new directories get mode 0700 on Unix since they hold keys.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| Error::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })
}

fn write_all(mut file: fs::File, path: &Path, contents: &str) -> Result<()> {
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| Error::Io {
            action: "write",
            path: path.to_owned(),
            source,
        })
}

/// Generates a new CA named `common_name` into `out` (`ca.pem`, `ca-key.pem`).
///
/// Refuses to run if either file already exists: overwriting a CA key orphans every certificate
/// it issued.
pub fn init_ca_dir(out: &Path, common_name: &str) -> Result<Ca> {
    for name in [CA_KEY_FILE, CA_CERT_FILE] {
        let path = out.join(name);
        if path.exists() {
            return Err(Error::AlreadyExists { path });
        }
    }
    let ca = Ca::generate(common_name)?;
    ca.save(out)?;
    Ok(ca)
}

/// Loads the CA from `ca_dir`, issues an agent certificate for `id` and saves it into `out`.
pub fn issue_agent_to_dir(
    ca_dir: &Path,
    id: &str,
    out: &Path,
    validity: Validity,
) -> Result<Issued> {
    let issued = Ca::load(ca_dir)?.issue_agent(id, validity)?;
    issued.save(out)?;
    Ok(issued)
}

/// Loads the CA from `ca_dir`, issues a server certificate for `name` (+ `sans`) and saves it
/// into `out`.
pub fn issue_server_to_dir(
    ca_dir: &Path,
    name: &str,
    sans: &[String],
    out: &Path,
    validity: Validity,
) -> Result<Issued> {
    let issued = Ca::load(ca_dir)?.issue_server(name, sans, validity)?;
    issued.save(out)?;
    Ok(issued)
}
