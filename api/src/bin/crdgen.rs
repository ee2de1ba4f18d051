//! Writes the CRD YAML, one file per kind: `crdgen <dir>` (what `make crds` runs), or prints them
//! all to stdout without an argument.

use std::{fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let crds = bulwark_api::crd::all();
    match std::env::args_os().nth(1).map(PathBuf::from) {
        None => {
            for (_, crd) in &crds {
                print!("{}", bulwark_api::crd::to_yaml(crd));
            }
        }
        Some(dir) => {
            for (file, crd) in &crds {
                let path = dir.join(file);
                if let Err(e) = fs::write(&path, bulwark_api::crd::to_yaml(crd)) {
                    eprintln!("crdgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}
