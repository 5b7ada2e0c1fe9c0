//! The `mesh-certs` command line (README, "Identity and pins").
//!
//! Exit codes: 0 on success, 1 when the command fails, 64 (EX_USAGE) for bad arguments.
//! Commands that produce a pin print it, bare, as the last line of stdout so scripts can use
//! `PIN=$(mesh-certs issue-agent ...)`; everything meant for people goes to stderr.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use mesh_certs::{
    certs_der_from_pem, init_ca_dir, inspect_der, issue_agent_to_dir, issue_server_to_dir,
    pin_from_pem, validate_agent_id, Issued, Validity, CA_CERT_FILE, CA_KEY_FILE, CA_VALIDITY_DAYS,
    CERT_FILE, DEFAULT_LEAF_DAYS, KEY_FILE,
};

/// BSD sysexits EX_USAGE: the command was used incorrectly.
const EX_USAGE: u8 = 64;

/// agentmesh certificate tool: mesh CA, agent and server certificates, SPKI pins.
#[derive(Debug, Parser)]
#[command(name = "mesh-certs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new CA: writes DIR/ca.pem and DIR/ca-key.pem (0600). Never overwrites.
    InitCa {
        /// Directory to write the CA into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Common name of the CA certificate.
        #[arg(long, value_name = "NAME", default_value = "agentmesh CA")]
        cn: String,
    },
    /// Issue a hub (server) certificate; prints its pin on stdout.
    IssueServer {
        /// Directory holding ca.pem and ca-key.pem.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Host name: the certificate's CN and first SAN.
        #[arg(long, value_name = "HOST")]
        name: String,
        /// Extra subject alternative name; IP addresses become IP SANs. Repeatable.
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        sans: Vec<String>,
        /// Directory to write cert.pem, key.pem (0600) and ca.pem into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_LEAF_DAYS, value_parser = days)]
        days: i64,
    },
    /// Issue an agent (client) certificate with CN = the agent id; prints its pin on stdout.
    IssueAgent {
        /// Directory holding ca.pem and ca-key.pem.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Agent id: 1-64 of [A-Za-z0-9._-], starting with a letter or digit.
        #[arg(long, value_name = "AGENT_ID", value_parser = agent_id)]
        id: String,
        /// Directory to write cert.pem, key.pem (0600) and ca.pem into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_LEAF_DAYS, value_parser = days)]
        days: i64,
    },
    /// Print the pin of a certificate, public key or CSR (first PEM block of FILE).
    Pin {
        /// PEM file.
        #[arg(value_name = "FILE.pem")]
        file: PathBuf,
    },
    /// Show subject, SANs, validity and pin of every certificate in FILE.
    Inspect {
        /// PEM file.
        #[arg(value_name = "FILE.pem")]
        file: PathBuf,
    },
}

/// Parses arguments, runs the command and maps failures to exit codes.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that go to stdout and succeed.
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            // Nothing sensible is left to do if even this write fails.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-certs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::InitCa { out, cn } => {
            init_ca_dir(&out, &cn)
                .with_context(|| format!("cannot create a CA in {}", out.display()))?;
            eprintln!(
                "wrote {} and {} (mode 0600)",
                out.join(CA_CERT_FILE).display(),
                out.join(CA_KEY_FILE).display()
            );
            Ok(())
        }
        Command::IssueServer {
            ca,
            name,
            sans,
            out,
            days,
        } => {
            let issued = issue_server_to_dir(&ca, &name, &sans, &out, Validity::days(days))
                .with_context(|| format!("cannot issue a server certificate for {name}"))?;
            report_issued(&format!("server {name}"), &out, &issued)
        }
        Command::IssueAgent { ca, id, out, days } => {
            let issued = issue_agent_to_dir(&ca, &id, &out, Validity::days(days))
                .with_context(|| format!("cannot issue an agent certificate for {id}"))?;
            report_issued(&format!("agent {id}"), &out, &issued)
        }
        Command::Pin { file } => {
            let pin = pin_from_pem(&read(&file)?)
                .with_context(|| format!("cannot compute the pin of {}", file.display()))?;
            print_stdout(&pin)
        }
        Command::Inspect { file } => {
            let text = inspect(&read(&file)?)
                .with_context(|| format!("cannot inspect {}", file.display()))?;
            print_stdout(&text)
        }
    }
}

/// One summary per certificate, separated by blank lines.
fn inspect(pem: &str) -> Result<String> {
    let infos = certs_der_from_pem(pem)
        .context("expected a certificate (use `mesh-certs pin` for public keys and CSRs)")?
        .iter()
        .map(|der| inspect_der(der).map(|info| info.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(infos.join("\n\n"))
}

fn report_issued(what: &str, out: &Path, issued: &Issued) -> Result<()> {
    eprintln!(
        "issued {what}: wrote {}, {} (mode 0600) and {}; pin:",
        out.join(CERT_FILE).display(),
        out.join(KEY_FILE).display(),
        out.join(CA_CERT_FILE).display()
    );
    print_stdout(&issued.pin)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Like `println!`, but a closed stdout is an error instead of a panic.
fn print_stdout(line: &str) -> Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

fn agent_id(s: &str) -> Result<String, String> {
    validate_agent_id(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn days(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(n) if (1..CA_VALIDITY_DAYS).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number of days from 1 to {}",
            CA_VALIDITY_DAYS - 1
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        for args in [
            &["mesh-certs"][..],
            &[
                "mesh-certs",
                "issue-agent",
                "--ca",
                "c",
                "--id",
                "bad/id",
                "--out",
                "o",
            ],
            &[
                "mesh-certs",
                "issue-agent",
                "--ca",
                "c",
                "--id",
                "a",
                "--out",
                "o",
                "--days",
                "0",
            ],
            &["mesh-certs", "pin"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert!(err.use_stderr(), "{args:?}");
        }
    }
}
