//! Issue 8, "systemd for real": `systemd/install.sh --prefix` into a temporary tree, twice,
//! gives the same tree (paths, modes, contents); `--dry-run` changes nothing; an edited
//! config survives a reinstall; `uninstall` keeps configs and state unless `--purge`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Relative path → (mode, file contents; `None` for a directory).
type Tree = BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn snapshot(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, (mode, None));
                walk(root, &path, out);
            } else {
                out.insert(rel, (mode, Some(std::fs::read(&path).unwrap())));
            }
        }
    }
    let mut out = Tree::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

fn install(args: &[&str], prefix: &Path, bin_dir: &Path) -> String {
    let out = Command::new("bash")
        .arg(repo().join("systemd/install.sh"))
        .args(args)
        .arg("--prefix")
        .arg(prefix)
        .arg("--bin-dir")
        .arg(bin_dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "install.sh {args:?} failed:\n{text}");
    text
}

/// Stand-in binaries: the script copies whatever it is given.
fn fake_bins(dir: &Path) -> PathBuf {
    let bins = dir.join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    for name in ["backend-agent", "gateway-agent"] {
        let p = bins.join(name);
        std::fs::write(&p, format!("#!/bin/sh\necho {name}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bins
}

#[test]
fn install_twice_gives_the_same_tree_and_dry_run_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bins = fake_bins(tmp.path());
    let root = tmp.path().join("root");

    // A dry run into an empty prefix creates nothing at all.
    let said = install(&["--dry-run"], &root, &bins);
    assert!(!root.exists(), "dry run created {}", root.display());
    assert!(said.contains("would: install -m 0755"), "{said}");
    assert!(said.contains("skip (--prefix): useradd"), "{said}");

    let first_run = install(&[], &root, &bins);
    assert!(
        first_run.contains("skip (--prefix): systemctl daemon-reload"),
        "{first_run}"
    );
    let first = snapshot(&root);
    for (path, mode) in [
        ("usr/local/bin/backend-agent", 0o755),
        ("usr/local/bin/gateway-agent", 0o755),
        ("etc/systemd/system/backend-agent.service", 0o644),
        ("etc/systemd/system/gateway-agent.service", 0o644),
        ("etc/agentmesh/backend.toml", 0o640),
        ("etc/agentmesh/gateway.toml", 0o640),
        ("etc/agentmesh", 0o750),
        ("etc/agentmesh/tls", 0o750),
        ("var/lib/agentmesh-backend", 0o700),
        ("var/lib/agentmesh-gateway", 0o700),
        (
            "usr/local/share/agentmesh/widen-system-verbs.conf.example",
            0o644,
        ),
    ] {
        let got = first
            .get(Path::new(path))
            .unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(got.0, mode, "{path} mode {:o}", got.0);
    }
    let unit = std::fs::read(repo().join("systemd/gateway-agent.service")).unwrap();
    assert_eq!(
        first[Path::new("etc/systemd/system/gateway-agent.service")]
            .1
            .as_deref(),
        Some(unit.as_slice())
    );

    let second_run = install(&[], &root, &bins);
    assert_eq!(snapshot(&root), first, "a second install changed the tree");
    assert!(second_run.contains("unchanged: "), "{second_run}");
    assert!(
        !second_run.contains("+ install"),
        "second run installed again:\n{second_run}"
    );

    // A dry run over an installed tree changes nothing either.
    install(&["--dry-run"], &root, &bins);
    assert_eq!(snapshot(&root), first);

    // An operator's config edit survives a reinstall.
    let cfg = root.join("etc/agentmesh/backend.toml");
    std::fs::write(&cfg, "# edited\n").unwrap();
    install(&[], &root, &bins);
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "# edited\n");

    // uninstall keeps configs and state; --purge removes them.
    install(&["uninstall"], &root, &bins);
    let after = snapshot(&root);
    assert!(!after.contains_key(Path::new("usr/local/bin/backend-agent")));
    assert!(!after.contains_key(Path::new("etc/systemd/system/gateway-agent.service")));
    assert!(after.contains_key(Path::new("etc/agentmesh/backend.toml")));
    assert!(after.contains_key(Path::new("var/lib/agentmesh-backend")));
    install(&["uninstall", "--purge"], &root, &bins);
    let purged = snapshot(&root);
    assert!(
        !purged.contains_key(Path::new("etc/agentmesh")),
        "{:?}",
        purged.keys()
    );
    assert!(!purged.contains_key(Path::new("var/lib/agentmesh-gateway")));
}
