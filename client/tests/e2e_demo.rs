//! `scripts/cluster demo` as a new user runs it, on a machine where
//! `client` was used before: a stale session of another cluster planted
//! where `client login` keeps sessions (the old single file and this
//! cluster's own). The demo must pass all the same: every step of it
//! names its session file or uses none.

mod e2e;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Ports of this cluster: the demo's defaults plus this (all below the
/// range Linux hands out to outgoing connections).
const OFFSET: u16 = 4000;

/// Runs `scripts/cluster` with the test's environment.
struct Demo {
    root: PathBuf,
    home: PathBuf,
    state: PathBuf,
    target: PathBuf,
}

impl Demo {
    fn cluster(&self, what: &str) -> Command {
        let mut cmd = Command::new(self.root.join("scripts/cluster"));
        for (k, _) in std::env::vars() {
            if k.starts_with("DSF_") || k == "XDG_CONFIG_HOME" {
                cmd.env_remove(k);
            }
        }
        cmd.arg(what)
            .env("HOME", &self.home)
            .env("DSF_CLUSTER_STATE", &self.state)
            .env("DSF_CLUSTER_PORT_OFFSET", OFFSET.to_string())
            .env("DSF_CLUSTER_PROFILE", "debug")
            .env("DSF_CLUSTER_BUILD", "0")
            .env("CARGO_TARGET_DIR", &self.target);
        cmd
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.cluster("clean").output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn stale(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        r#"{"token":"a-token-of-another-cluster","user":"admin","expires_at":0}"#,
    )
    .unwrap();
}

#[test]
fn the_demo_passes_with_a_stale_session_planted() {
    // The binaries the demo runs: the ones `cargo test` built.
    let bin = e2e::binary("app-server");
    let target = bin.parent().unwrap().parent().unwrap().to_path_buf();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let base = std::env::temp_dir().join(format!("dsf-demo-{}", std::process::id()));
    let demo = Demo {
        root: root.to_path_buf(),
        home: base.join("home"),
        state: base.join("state"),
        target,
    };
    let config = demo.home.join(".config/dsf");
    stale(&config.join("session"));
    stale(&config.join(format!("sessions/127.0.0.1_{}", 6300 + OFFSET)));

    let out = demo.cluster("demo").output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "scripts/cluster demo failed:\n{stdout}\n{stderr}"
    );
    for step in ["client job watch", "client msg listen", "standby"] {
        assert!(stdout.contains(step), "no {step:?} in the demo:\n{stdout}");
    }
    // It ends with what to export to go on by hand, not a pointer to
    // output long scrolled away.
    let end = stdout.rsplit("Done.").next().unwrap_or_default();
    assert!(end.contains("export DSF_LB="), "the demo's end:\n{end}");
    // A refusal does not stop the demo (it shows some on purpose): none
    // may be of a session.
    for text in [&stdout, &stderr] {
        assert!(!text.contains("session token"), "{stdout}\n{stderr}");
    }
}
