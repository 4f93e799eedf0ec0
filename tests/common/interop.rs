//! Where the interop tests find the official SDKs: the repository, the Python venv that
//! `./scripts/test` makes (`./.venv-interop`, or `P11KMS_INTEROP_PYTHON`), and the npm SDKs
//! (`npm ci` in `tests/interop`). They never skip: without them they fail and say what to run.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreter with the Yandex and Alibaba OpenAPI SDKs: `P11KMS_INTEROP_PYTHON`, else
/// `./.venv-interop/bin/python`.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("P11KMS_INTEROP_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = repo().join(".venv-interop/bin/python");
    assert!(
        venv.exists(),
        "this test needs the official Python SDKs: run ./scripts/test to create .venv-interop \
         (or set P11KMS_INTEROP_PYTHON to a python with tests/interop/requirements.txt)"
    );
    venv
}

/// `tests/interop/node_modules`, once it holds the npm package `sdk`.
pub fn node_modules(sdk: &str) -> PathBuf {
    let modules = repo().join("tests/interop/node_modules");
    assert!(
        modules.join(sdk).exists(),
        "this test needs the npm SDK {sdk}: run ./scripts/test (it runs npm ci in tests/interop)"
    );
    modules
}
