//! A private certificate authority and a server certificate for 127.0.0.1, made with
//! `openssl`, for Redis servers that speak only TLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A directory holding `ca.crt`/`ca.key` and a server certificate signed by that CA
/// for `localhost` and 127.0.0.1 (`server.crt`, `server.key`); removed on drop.
pub struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    /// Makes a fresh CA and server certificate (openssl, RSA 2048, valid two days).
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        make_tls_certificates(dir.path());
        Self { dir }
    }

    /// The path of one of the files (`ca.crt`, `server.crt`, `server.key`).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA certificate's path, as a string for settings.
    pub fn ca_file(&self) -> String {
        self.file("ca.crt").to_string_lossy().into_owned()
    }

    /// The CA certificate's PEM bytes.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.file("ca.crt")).expect("the CA file")
    }
}

fn make_tls_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=courier-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}
