//! The `bench` binary for the smoke tests: built next to the test, run with a bound on how
//! long it may take (a hang fails the test, never a speed threshold), its JSON checked key by
//! key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a smoke run may take before the test fails (a bound on completion, not on speed).
pub const BENCH_LIMIT: Duration = Duration::from_secs(600);

/// Builds `bench`, `backend-agent` and `gateway-agent` into this test's target directory and
/// profile (the benchmark finds the daemons next to itself); returns the `bench` path.
pub fn bench_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test> -> <target>/<profile>
    let dir = exe.parent().unwrap().parent().unwrap();
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut build = Command::new(cargo);
    build
        .args(["build", "--locked", "--bins"])
        .args(["-p", "agentmesh-bench", "-p", "backend-agent"])
        .args(["-p", "gateway-agent"])
        .arg("--target-dir")
        .arg(dir.parent().unwrap())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    assert!(
        build.status().unwrap().success(),
        "building the benchmark failed"
    );
    dir.join("bench")
}

/// Runs `bench ARGS --json OUT` (OUT in a temp dir) and returns the JSON it wrote; panics if
/// it fails or runs past [`BENCH_LIMIT`] (then it is killed).
pub fn run_bench(args: &[&str]) -> Value {
    let bench = bench_binary();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("bench.json");
    let mut child = Command::new(&bench)
        .args(args)
        .arg("--json")
        .arg(&out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + BENCH_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench {args:?} did not finish within {BENCH_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "bench {args:?} exited with {status}");
    read_json(&out)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Asserts `v[section][key]` is a finite number above zero for every key.
pub fn assert_positive(v: &Value, section: &str, keys: &[&str]) {
    for key in keys {
        let x = v[section][key].as_f64();
        assert!(
            x.is_some_and(|x| x > 0.0 && x.is_finite()),
            "{section}.{key} missing or not positive: {:?}\n{v:#}",
            v[section][key]
        );
    }
}
