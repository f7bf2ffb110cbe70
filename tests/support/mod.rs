//! The test kit (`courier-testkit`, in `testkit/`), imported by every test file as
//! `mod support; use support::*;`, and the fixtures that belong to these tests.

#[allow(unused_imports)]
pub use courier_testkit::*;

/// Path of a test fixture file (`tests/fixtures/<name>`).
#[allow(dead_code)]
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}
