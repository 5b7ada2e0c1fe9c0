//! `gateway-agent check-config`: what can only be checked on the host itself.
//!
//! [`GatewayConfig::load`](super::GatewayConfig::load) already proved the file is well formed;
//! this looks at the files it points to: programs exist and are executable, `run_as` users
//! exist, the TLS material loads and belongs together, and the certificate's CN is the agent id.

use std::path::Path;

use super::{GatewayConfig, ParamType};
use crate::tls;

/// Advice that does not make the config invalid: string parameters without a `pattern` (any
/// value up to `max_len` reaches the program), those that set `allow_leading_dash`, and a front
/// door's pin listed as a hub pin too.
pub fn config_warnings(config: &GatewayConfig) -> Vec<String> {
    let file = config.file_name();
    let mut warnings = Vec::new();
    let out = &config.outbound;
    for (i, pin) in out.server_pins.iter().enumerate() {
        if out.front_door_pins.contains(pin) {
            warnings.push(format!(
                "{file}: outbound.server_pins[{i}]: {pin} is also in front_door_pins: TLS to it \
                 counts as reaching the hub directly, so an unsigned welcome is accepted through \
                 it; list a front door's pin only in front_door_pins"
            ));
        }
    }
    for (i, verb) in config.verbs.iter().enumerate() {
        for (name, param) in &verb.params {
            if param.kind != ParamType::String {
                continue;
            }
            let key = format!("verbs[{i}].params.{name}");
            if param.pattern.is_none() {
                warnings.push(format!(
                    "{file}: {key}: string parameter without a pattern: any value reaches {}; \
                     add a pattern that accepts only what the program expects",
                    verb.program.display()
                ));
            }
            if param.allow_leading_dash == Some(true) {
                warnings.push(format!(
                    "{file}: {key}: allow_leading_dash = true: values starting with '-' reach \
                     the program, which may read them as options"
                ));
            }
        }
    }
    warnings
}

/// Checks the host-side facts of a loaded config; `Err` lists every problem found.
pub fn check_config(config: &GatewayConfig) -> Result<(), Vec<String>> {
    let file = config.file_name();
    let mut problems = Vec::new();
    let mut report =
        |key: &str, message: String| problems.push(format!("{file}: {key}: {message}"));

    for (i, verb) in config.verbs.iter().enumerate() {
        if let Err(m) = check_executable(&verb.program) {
            report(&format!("verbs[{i}].program"), m);
        }
        if let Some(user) = &verb.run_as {
            match nix::unistd::User::from_name(user) {
                Ok(Some(_)) => {}
                Ok(None) => report(
                    &format!("verbs[{i}].run_as"),
                    format!("user {user:?} does not exist on this host"),
                ),
                Err(e) => report(
                    &format!("verbs[{i}].run_as"),
                    format!("cannot look up user {user:?}: {e}"),
                ),
            }
        }
        if let Some(dir) = &verb.working_dir {
            if !dir.is_dir() {
                report(
                    &format!("verbs[{i}].working_dir"),
                    format!("{} is not a directory", dir.display()),
                );
            }
        }
    }

    let out = &config.outbound;
    let mut files_readable = true;
    for (key, path) in [
        ("outbound.ca", &out.ca),
        ("outbound.cert", &out.cert),
        ("outbound.key", &out.key),
    ] {
        if let Err(e) = std::fs::File::open(path) {
            report(key, format!("cannot read {}: {e}", path.display()));
            files_readable = false;
        }
    }
    if files_readable {
        check_tls_material(config, &mut report);
    }
    if !config.agent.state_dir.is_dir() {
        report(
            "agent.state_dir",
            format!("{} is not a directory", config.agent.state_dir.display()),
        );
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The certificate belongs to this agent and is current, and the whole TLS setup loads.
fn check_tls_material(config: &GatewayConfig, report: &mut impl FnMut(&str, String)) {
    let out = &config.outbound;
    match std::fs::read_to_string(&out.cert)
        .map_err(|e| e.to_string())
        .and_then(|pem| mesh_certs::inspect_pem(&pem).map_err(|e| e.to_string()))
    {
        Ok(info) => {
            if info.common_name.as_deref() != Some(config.agent.id.as_str()) {
                report(
                    "outbound.cert",
                    format!(
                        "certificate CN is {:?} but agent.id is {:?}; the hub refuses the mismatch",
                        info.common_name.unwrap_or_default(),
                        config.agent.id
                    ),
                );
            }
            if info.status != mesh_certs::CertStatus::Valid {
                report(
                    "outbound.cert",
                    format!(
                        "certificate is {} (valid {} to {})",
                        info.status, info.not_before, info.not_after
                    ),
                );
            }
        }
        Err(e) => report("outbound.cert", e),
    }
    if let Err(e) = tls::client_config(out) {
        report("outbound", format!("TLS setup fails: {e}"));
    }
}

fn check_executable(program: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(program).map_err(|e| format!("{}: {e}", program.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", program.display()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(format!("{} is not executable", program.display()));
        }
    }
    Ok(())
}
