//! The local control plane behaves as a real cluster does: version, discovery, RBAC denial for an
//! unprivileged user, TokenRequest with the `bulwark` audience, and the controller-manager's work.
//! The checks live in `e2e/controlplane/check.sh` (also run by hand); this runs them on the
//! plane the tests use and requires every one to pass.

use bulwark_e2e::ControlPlane;

#[test]
fn control_plane_passes_its_sanity_checks() {
    let cp = ControlPlane::shared();
    let out = std::process::Command::new("bash")
        .arg(bulwark_e2e::repo_root().join("e2e/controlplane/check.sh"))
        .args(["--dir", cp.dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.ends_with(" 0 failed") && !summary.contains(" 0 passed"),
        "{summary}"
    );
}
